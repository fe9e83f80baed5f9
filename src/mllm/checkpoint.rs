//! What the fine-tuning trainers (SFT, DPO) share about resumable training: where a run stands in its data
//! (optimizer steps, epoch, step within the epoch) and the checkpoint file that records it with the trainable
//! weights and the optimizer state.
use super::optim::AdamW;
use super::weights::{read_safetensors, write_safetensors};
use super::{MllmError, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::Tensor;

/// A checkpoint written by a trainer: path and blake3 of its bytes (also in its file name).
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    pub path: PathBuf,
    pub blake3: String,
    pub step: usize,
}

/// Where a run stands: optimizer steps done, the epoch, and the optimizer steps done within it (a checkpoint
/// at `max_steps` can fall mid-epoch).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Position {
    pub step: usize,
    pub epoch: usize,
    pub group_in_epoch: usize,
}

impl Position {
    /// Records optimizer step `step`, the next of an epoch of `groups` steps; true when it ended the epoch
    /// (the position then points at the start of the next one).
    pub fn finish_step(&mut self, step: usize, groups: usize) -> bool {
        self.step = step;
        self.group_in_epoch += 1;
        let epoch_end = self.group_in_epoch == groups;
        if epoch_end {
            self.epoch += 1;
            self.group_in_epoch = 0;
        }
        epoch_end
    }
}

/// What identifies a run's checkpoints: the file stem (`sft`, `dpo`), the format written into them, the
/// data-order seed a resume must share, and the run's params (recorded for the reader).
pub struct CheckpointKind<'a> {
    pub stem: &'a str,
    pub format: &'a str,
    pub seed: u64,
    pub params_json: String,
}

/// Writes the trainable weights and AdamW state of `opt` with `pos` as
/// `{stem}-step{N}-{blake3[..16]}.safetensors`, atomically (a pending name, then a rename).
pub fn write_checkpoint(opt: &AdamW, dir: &Path, kind: &CheckpointKind<'_>, pos: Position) -> Result<Checkpoint> {
    let mut tensors: Vec<(String, Tensor)> = opt.params.iter().map(|(n, t)| (format!("param.{n}"), t.detach())).collect();
    tensors.extend(opt.state());
    let meta = HashMap::from([
        ("format".to_string(), kind.format.to_string()),
        ("step".into(), pos.step.to_string()),
        ("epoch".into(), pos.epoch.to_string()),
        ("group_in_epoch".into(), pos.group_in_epoch.to_string()),
        ("seed".into(), kind.seed.to_string()),
        ("params".into(), kind.params_json.clone()),
        ("adam_t".into(), opt.t.to_string()),
    ]);
    let (stem, step) = (kind.stem, pos.step);
    let tmp = dir.join(format!("{stem}-step{step:06}.pending.safetensors"));
    write_safetensors(&tmp, &tensors, meta)?;
    let bytes = std::fs::read(&tmp).map_err(super::io_err(&tmp))?;
    let hash = blake3::hash(&bytes).to_hex().to_string();
    let path = dir.join(format!("{stem}-step{step:06}-{}.safetensors", &hash[..16]));
    std::fs::rename(&tmp, &path).map_err(super::io_err(&path))?;
    Ok(Checkpoint { path, blake3: hash, step })
}

/// Restores the weights and AdamW state of `opt` from a checkpoint written by [`write_checkpoint`] with the
/// same format and seed (another is refused, naming the file), and returns where that run stood.
pub fn read_checkpoint(opt: &mut AdamW, path: &Path, kind: &CheckpointKind<'_>) -> Result<Position> {
    let at = path.display().to_string();
    let (tensors, meta) = read_safetensors(path)?;
    let get = |k: &str| -> Result<usize> {
        meta.get(k)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| MllmError::Checkpoint { path: at.clone(), msg: format!("metadata field {k} missing or not a number") })
    };
    if meta.get("format").map(String::as_str) != Some(kind.format) {
        return Err(MllmError::Checkpoint {
            path: at.clone(),
            msg: format!("expected format {}, found {:?}", kind.format, meta.get("format")),
        });
    }
    let found = get("seed")? as u64;
    if found != kind.seed {
        return Err(MllmError::Checkpoint {
            path: at.clone(),
            msg: format!("data-order seed {found} differs from this run's {}", kind.seed),
        });
    }
    tch::no_grad(|| -> Result<()> {
        for (n, p) in &opt.params {
            let src = tensors
                .get(&format!("param.{n}"))
                .ok_or_else(|| MllmError::Checkpoint { path: at.clone(), msg: format!("missing weight {n}") })?;
            if src.size() != p.size() {
                return Err(MllmError::Shape { key: n.clone(), file: at.clone(), expected: p.size(), found: src.size() });
            }
            p.shallow_clone().f_copy_(&src.to_kind(p.kind()).to_device(p.device()))?;
        }
        Ok(())
    })?;
    opt.load_state(&tensors, get("adam_t")? as i64, &at)?;
    Ok(Position { step: get("step")?, epoch: get("epoch")?, group_in_epoch: get("group_in_epoch")? })
}

/// The latest finished checkpoint of `stem` in `dir` (`{stem}-step{N:06}-{hash}.safetensors`; a
/// `.pending.` file an interrupted write left behind is not one): where SFT and DPO resume.
pub fn latest_checkpoint(dir: &Path, stem: &str) -> Result<Option<PathBuf>> {
    let mut done: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(super::io_err(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            name.starts_with(&format!("{stem}-step")) && name.ends_with(".safetensors") && !name.contains(".pending.")
        })
        .collect();
    done.sort();
    Ok(done.pop())
}

#[cfg(test)]
mod tests {
    use super::Position;

    #[test]
    fn a_position_walks_epochs_of_three_steps() {
        let mut p = Position::default();
        let ends: Vec<bool> = (1..=7).map(|s| p.finish_step(s, 3)).collect();
        assert_eq!(ends, [false, false, true, false, false, true, false]);
        assert_eq!(p, Position { step: 7, epoch: 2, group_in_epoch: 1 });
    }
}
