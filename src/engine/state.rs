use super::error::EngineError;
use crate::store::{hash_file, write_atomic};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Hashes of external model files, cached by (size, mtime, inode) as DVC's state DB does, so an
/// unchanged multi-GB model folder is never rehashed; a touched file is rehashed once (blake3, mmap,
/// all cores) and keeps its key if its bytes did not change.
#[derive(Debug, Default)]
pub struct ModelHashes {
    path: PathBuf,
    entries: Mutex<BTreeMap<String, StatEntry>>,
    dirty: Mutex<bool>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct StatEntry {
    size: u64,
    mtime_ns: i128,
    inode: u64,
    hash: String,
}

impl ModelHashes {
    pub const NAME: &'static str = "state.json";

    pub fn load(root: &Path) -> Self {
        let path = root.join(Self::NAME);
        // A damaged cache costs only rehashing: start empty rather than fail.
        let entries = std::fs::read(&path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
        Self { path, entries: Mutex::new(entries), dirty: Mutex::new(false) }
    }

    /// blake3 of a file, or of a folder (its files' relative paths and hashes, sorted).
    pub fn hash(&self, stage: &str, path: &Path) -> Result<String, EngineError> {
        let err = |source| EngineError::Model { stage: stage.into(), path: path.to_path_buf(), source };
        let meta = std::fs::metadata(path).map_err(err)?;
        if meta.is_dir() {
            let mut files = Vec::new();
            collect_files(path, &mut files).map_err(err)?;
            files.sort();
            let mut h = blake3::Hasher::new();
            for f in files {
                let rel = f.strip_prefix(path).unwrap_or(&f).to_string_lossy().into_owned();
                h.update(rel.as_bytes());
                h.update(&[0]);
                h.update(self.hash(stage, &f)?.as_bytes());
            }
            return Ok(h.finalize().to_hex().to_string());
        }
        let key = path.canonicalize().map_err(err)?.to_string_lossy().into_owned();
        let stat = StatEntry {
            size: meta.len(),
            mtime_ns: meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
            inode: meta.ino(),
            hash: String::new(),
        };
        if let Some(e) = self.entries.lock().expect("state lock").get(&key) {
            if e.size == stat.size && e.mtime_ns == stat.mtime_ns && e.inode == stat.inode {
                return Ok(e.hash.clone());
            }
        }
        let hash = hash_file(path)?;
        self.entries.lock().expect("state lock").insert(key, StatEntry { hash: hash.clone(), ..stat });
        *self.dirty.lock().expect("state lock") = true;
        Ok(hash)
    }

    pub fn save(&self) -> Result<(), EngineError> {
        if !*self.dirty.lock().expect("state lock") {
            return Ok(());
        }
        let bytes = serde_json::to_vec(&*self.entries.lock().expect("state lock")).expect("state serializes");
        write_atomic(&self.path, &bytes)?;
        Ok(())
    }
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let p = entry.path();
        if entry.file_type()?.is_dir() {
            collect_files(&p, out)?;
        } else {
            out.push(p);
        }
    }
    Ok(())
}
