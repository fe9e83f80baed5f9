//! Sharing the store through remotes (`mmb remote`, `push`, `pull`, `fetch`, `status --remote`): an
//! S3-compatible bucket or a shared folder, through `object_store`. Objects keep their blake3 names; a
//! content-addressed manifest of the pushed lock records travels with them; every download is hashed
//! before it enters the store and every upload carries a checksum the server verifies.
//!
//! It sits above `store` and `engine` (it moves artifacts and lock records); nothing below imports it.
mod backend;
mod config;
mod credentials;
mod error;
mod manifest;
mod transfer;

pub use backend::{Remote, MULTIPART_ABOVE};
pub use config::{Location, RemoteSpec, RemotesFile};
pub use error::RemoteError;
pub use manifest::{ArtifactEntry, Manifest, RefEntry};
pub use transfer::{latest_manifest, pull, push, remote_status, PullReport, PushReport, StageSync, TransferOptions};

/// Opens a remote of the project whose stage files are in `stages` (None: the default remote).
pub fn open(stages: &std::path::Path, name: Option<&str>) -> Result<Remote, RemoteError> {
    let (name, spec) = RemotesFile::load(stages)?.get(name)?;
    let project = stages.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    Remote::open(&name, &spec, project)
}
