//! Folder artifacts (a model folder: config, weights, tokenizer) as deterministic tar files: entries in
//! sorted order with zeroed times and owners, so the same files always give the same bytes and id.
//! Readers get the folder back through [`Store::materialize`], extracted once under `artifacts/cache/`.
use super::artifact::{ArtifactId, ArtifactKind, Store};
use super::error::{IoContext, StoreError};
use super::lineage::Lineage;
use std::path::{Path, PathBuf};

fn files_under(dir: &Path) -> Result<Vec<PathBuf>, StoreError> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).at(&d)? {
            let p = e.at(&d)?.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

impl Store {
    /// Stores every file under `dir` as one tar artifact.
    pub fn put_dir(&self, dir: &Path, lineage: Option<&Lineage>) -> Result<ArtifactId, StoreError> {
        let files = files_under(dir)?;
        if files.is_empty() {
            return Err(StoreError::Io {
                path: dir.to_path_buf(),
                source: std::io::Error::other("folder artifact: the folder has no files"),
            });
        }
        self.put_with(ArtifactKind::Tar, lineage, |w| {
            let mut tar = tar::Builder::new(w);
            for f in &files {
                let rel = f.strip_prefix(dir).expect("under dir");
                let data = std::fs::read(f).at(f)?;
                let mut h = tar::Header::new_gnu();
                h.set_size(data.len() as u64);
                h.set_mode(0o644);
                h.set_mtime(0);
                h.set_uid(0);
                h.set_gid(0);
                tar.append_data(&mut h, rel, data.as_slice()).at(f)?;
            }
            tar.finish().at(dir)?;
            Ok(())
        })
    }

    /// The folder of a tar artifact, extracted (after a hash check) into `artifacts/cache/<id>/` the
    /// first time; an interrupted extraction is never mistaken for a finished one (temp dir + rename).
    pub fn materialize(&self, id: &ArtifactId) -> Result<PathBuf, StoreError> {
        let dest = self.root().join("cache").join(id.as_str());
        if dest.is_dir() {
            return Ok(dest);
        }
        let tar_path = self.path_of(id, ArtifactKind::Tar);
        if !tar_path.exists() {
            return Err(StoreError::Missing { id: id.to_string(), path: tar_path });
        }
        self.check(id, &tar_path)?;
        let parent = dest.parent().expect("cache dir");
        std::fs::create_dir_all(parent).at(parent)?;
        let tmp = tempfile::Builder::new().prefix(".tmp-").tempdir_in(parent).at(parent)?;
        let f = std::fs::File::open(&tar_path).at(&tar_path)?;
        tar::Archive::new(f).unpack(tmp.path()).at(&tar_path)?;
        let tmp = tmp.keep();
        match std::fs::rename(&tmp, &dest) {
            Ok(()) => Ok(dest),
            // Another process finished first: use its copy.
            Err(_) if dest.is_dir() => {
                let _ = std::fs::remove_dir_all(&tmp);
                Ok(dest)
            }
            Err(e) => Err(StoreError::Io { path: dest, source: e }),
        }
    }
}
