//! The make-like core: stages declare inputs, outputs, params and a code version; the engine keys
//! each stage by all of them, records key → outputs in a lock file, and reruns only what is stale,
//! independent stages in parallel.
pub mod bench;
mod context;
mod error;
pub mod executor;
mod gc;
mod key;
mod lockfile;
mod pipeline;
mod runner;
pub mod shard;
pub mod slurm;
mod stage;
mod state;
mod status;

pub use context::{StageContext, WorkerJob};
pub use error::EngineError;
pub use gc::{collect_garbage, GcReport};
pub use key::cache_key;
pub use lockfile::{LockFile, OutputRecord, RunCache, StageRecord};
pub use pipeline::Pipeline;
pub use runner::{RunOptions, RunSummary};
pub use shard::{item_seed, ShardSpec};
pub use stage::{InputSpec, Stage};
pub use state::ModelHashes;
pub use status::{StageStatus, Staleness};
