//! A synthetic pipeline for benchmarking the engine and the store at DVC's scale: a chain of stages,
//! each writing one large binary artifact derived from its input (blake3 XOF bytes, incompressible).
use super::{InputSpec, Pipeline, Stage, StageContext};
use crate::store::ArtifactKind;
use std::io::Write;

struct ChainStage {
    name: String,
    index: usize,
    bytes: u64,
}

impl Stage for ChainStage {
    fn name(&self) -> &str {
        &self.name
    }
    fn code_version(&self) -> &str {
        "1"
    }
    fn inputs(&self) -> Vec<InputSpec> {
        if self.index == 0 {
            vec![]
        } else {
            vec![InputSpec::new("prev", &format!("s{}", self.index - 1), "out")]
        }
    }
    fn outputs(&self) -> Vec<String> {
        vec!["out".into()]
    }
    fn params(&self) -> serde_json::Value {
        serde_json::json!({ "bytes": self.bytes })
    }
    fn run(&self, ctx: &StageContext) -> anyhow::Result<()> {
        let seed = if self.index == 0 { "root".to_string() } else { ctx.input_id("prev")?.to_string() };
        let mut xof = blake3::Hasher::new().update(seed.as_bytes()).finalize_xof();
        let mut buf = vec![0u8; 1 << 20];
        let bar = ctx.progress(self.bytes, "writing");
        ctx.write_with("out", ArtifactKind::Bin, |w| {
            let mut left = self.bytes;
            while left > 0 {
                let n = left.min(buf.len() as u64) as usize;
                xof.fill(&mut buf[..n]);
                w.write_all(&buf[..n]).map_err(|source| crate::store::StoreError::Io { path: "<bench>".into(), source })?;
                left -= n as u64;
                bar.inc(n as u64);
            }
            Ok(())
        })?;
        bar.finish_and_clear();
        Ok(())
    }
}

/// `stages` chained stages writing `total_bytes` in all.
pub fn synthetic_chain(stages: usize, total_bytes: u64) -> Pipeline {
    let per = total_bytes / stages as u64;
    let v: Vec<Box<dyn Stage>> =
        (0..stages).map(|i| Box::new(ChainStage { name: format!("s{i}"), index: i, bytes: per }) as Box<dyn Stage>).collect();
    Pipeline::new(v).expect("a chain is a valid pipeline")
}
