//! Auditing and sharing: rehash everything (`verify`), drop what nothing references (`gc`), and move
//! artifacts between teams (`export` / `import`) with their hash and lineage checked at the door.
use super::artifact::{hash_file, sidecar_path, ArtifactId, ArtifactKind, Store};
use super::error::{IoContext, StoreError};
use super::lineage::Lineage;
use super::table::read_parquet;
use rayon::prelude::*;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// One artifact whose bytes do not match its name.
#[derive(Debug, Clone)]
pub struct Mismatch {
    pub path: PathBuf,
    pub expected: String,
    pub found: String,
}

#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    pub checked: usize,
    pub bytes: u64,
    pub mismatches: Vec<Mismatch>,
}

impl Store {
    /// Rehashes every artifact in parallel (files across threads; blake3's mmap + rayon inside large
    /// files) and lists those whose bytes no longer match their name.
    pub fn verify(&self) -> Result<VerifyReport, StoreError> {
        let all = self.list()?;
        let results: Vec<Result<(u64, Option<Mismatch>), StoreError>> = all
            .par_iter()
            .map(|(id, _, path)| {
                let bytes = std::fs::metadata(path).at(path)?.len();
                let found = hash_file(path)?;
                let bad = (found != id.as_str()).then(|| Mismatch { path: path.clone(), expected: id.to_string(), found });
                Ok((bytes, bad))
            })
            .collect();
        let mut report = VerifyReport::default();
        for r in results {
            let (bytes, bad) = r?;
            report.checked += 1;
            report.bytes += bytes;
            report.mismatches.extend(bad);
        }
        Ok(report)
    }

    /// Artifacts not in `keep`; deleted only when `apply` (a dry run by default, unlike `dvc gc`).
    pub fn gc(&self, keep: &BTreeSet<String>, apply: bool) -> Result<Vec<(PathBuf, u64)>, StoreError> {
        let mut out = Vec::new();
        for (id, _, path) in self.list()? {
            if keep.contains(id.as_str()) {
                continue;
            }
            let bytes = std::fs::metadata(&path).at(&path)?.len();
            if apply {
                self.remove(&path)?;
            }
            out.push((path, bytes));
        }
        Ok(out)
    }

    /// Copies an artifact (and its sidecar lineage) into `dir`, under its hash name.
    pub fn export(&self, prefix: &str, dir: &Path) -> Result<PathBuf, StoreError> {
        let (id, kind, path) = self.find(prefix)?;
        self.check(&id, &path)?;
        std::fs::create_dir_all(dir).at(dir)?;
        let dest = dir.join(path.file_name().expect("object has a name"));
        std::fs::copy(&path, &dest).at(&dest)?;
        let side = sidecar_path(&path);
        if side.exists() {
            std::fs::copy(&side, sidecar_path(&dest)).at(sidecar_path(&dest))?;
        }
        let _ = kind;
        Ok(dest)
    }

    /// Imports a file exported by another store. Refused unless: its name is `<blake3>.<ext>` and the
    /// bytes hash to that name; it carries lineage (Parquet metadata or sidecar) that parses; and for
    /// tables, the lineage's row count equals the rows actually in the file.
    pub fn import(&self, file: &Path) -> Result<(ArtifactId, Lineage), StoreError> {
        let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let (stem, ext) = name.split_once('.').ok_or_else(|| StoreError::Lineage {
            path: file.to_path_buf(),
            msg: "expected a file named <blake3>.<ext>, as `mmb export` writes".into(),
        })?;
        let id = ArtifactId::parse(stem)?;
        let kind = ArtifactKind::from_extension(ext)
            .ok_or_else(|| StoreError::Lineage { path: file.to_path_buf(), msg: format!("unknown artifact extension `.{ext}`") })?;
        let found = hash_file(file)?;
        if found != id.as_str() {
            return Err(StoreError::HashMismatch { path: file.to_path_buf(), expected: id.to_string(), found });
        }
        let lineage = if kind == ArtifactKind::Parquet {
            let table = read_parquet(file, id.clone())?;
            let lineage = table.lineage.clone().ok_or_else(|| StoreError::Lineage {
                path: file.to_path_buf(),
                msg: "no mmboundary.lineage entry: not an mmb artifact".into(),
            })?;
            let rows = table.num_rows() as u64;
            if lineage.rows != Some(rows) {
                return Err(StoreError::Lineage {
                    path: file.to_path_buf(),
                    msg: format!("lineage says {:?} rows but the file holds {rows}: tampered", lineage.rows),
                });
            }
            lineage
        } else {
            self.sidecar_lineage(file)?
                .ok_or_else(|| StoreError::Lineage { path: sidecar_path(file), msg: "missing lineage sidecar".into() })?
        };
        let stored = self.put_file(kind, file, (kind != ArtifactKind::Parquet).then_some(&lineage))?;
        debug_assert_eq!(stored, id);
        Ok((id, lineage))
    }
}
