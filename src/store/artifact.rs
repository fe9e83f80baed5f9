use super::error::{IoContext, StoreError};
use super::lineage::Lineage;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The blake3 hash of an artifact's bytes, lowercase hex; also its file name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct ArtifactId(String);

impl ArtifactId {
    pub fn parse(s: &str) -> Result<Self, StoreError> {
        if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) {
            Ok(Self(s.to_string()))
        } else {
            Err(StoreError::BadId(s.to_string()))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The first 12 hex digits, for people.
    pub fn short(&self) -> &str {
        &self.0[..12]
    }
}

impl std::fmt::Display for ArtifactId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What an artifact holds; decides its file extension and where its lineage lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ArtifactKind {
    Parquet,
    Safetensors,
    Onnx,
    Json,
    Png,
    Svg,
    Html,
    Markdown,
    Tar,
    Bin,
}

impl ArtifactKind {
    pub fn extension(self) -> &'static str {
        match self {
            Self::Parquet => "parquet",
            Self::Safetensors => "safetensors",
            Self::Onnx => "onnx",
            Self::Json => "json",
            Self::Png => "png",
            Self::Svg => "svg",
            Self::Html => "html",
            Self::Markdown => "md",
            Self::Tar => "tar",
            Self::Bin => "bin",
        }
    }
    pub fn from_extension(ext: &str) -> Option<Self> {
        [Self::Parquet, Self::Safetensors, Self::Onnx, Self::Json, Self::Png, Self::Svg, Self::Html, Self::Markdown, Self::Tar, Self::Bin]
            .into_iter()
            .find(|k| k.extension() == ext)
    }
}

/// A folder of content-addressed artifacts.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

const TMP_PREFIX: &str = ".tmp-";
const LINEAGE_SUFFIX: &str = ".lineage.json";

impl Store {
    /// Opens (creating if needed) the store rooted at `root` (usually `artifacts/`).
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let root = root.into();
        let objects = root.join("objects");
        fs::create_dir_all(&objects).at(&objects)?;
        Ok(Self { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn objects_dir(&self) -> PathBuf {
        self.root.join("objects")
    }

    /// Path of an artifact of a known kind (whether or not it exists).
    pub fn path_of(&self, id: &ArtifactId, kind: ArtifactKind) -> PathBuf {
        self.objects_dir().join(format!("{}.{}", id, kind.extension()))
    }

    /// Finds an artifact by id or unique id prefix (≥ 4 hex digits), whatever its kind.
    pub fn find(&self, prefix: &str) -> Result<(ArtifactId, ArtifactKind, PathBuf), StoreError> {
        if prefix.len() < 4 || !prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(StoreError::BadId(prefix.to_string()));
        }
        let mut hits = Vec::new();
        for entry in fs::read_dir(self.objects_dir()).at(self.objects_dir())? {
            let entry = entry.at(self.objects_dir())?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some((id, kind)) = parse_object_name(&name) {
                if id.as_str().starts_with(prefix) {
                    hits.push((id, kind, entry.path()));
                }
            }
        }
        match hits.len() {
            0 => Err(StoreError::Missing { id: prefix.to_string(), path: self.objects_dir() }),
            1 => Ok(hits.pop().expect("one hit")),
            count => Err(StoreError::Ambiguous { prefix: prefix.to_string(), count }),
        }
    }

    /// Every artifact in the store.
    pub fn list(&self) -> Result<Vec<(ArtifactId, ArtifactKind, PathBuf)>, StoreError> {
        let dir = self.objects_dir();
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).at(&dir)? {
            let entry = entry.at(&dir)?;
            if let Some((id, kind)) = parse_object_name(&entry.file_name().to_string_lossy()) {
                out.push((id, kind, entry.path()));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Writes an artifact through `write`, hashing the bytes as they go; the file appears under its
    /// hash only once complete and synced. Non-Parquet artifacts get their lineage in a sidecar.
    pub fn put_with<F>(&self, kind: ArtifactKind, lineage: Option<&Lineage>, write: F) -> Result<ArtifactId, StoreError>
    where
        F: FnOnce(&mut HashingWriter) -> Result<(), StoreError>,
    {
        self.put_checked(kind, lineage, None, write)
    }

    /// As [`Store::put_with`], for bytes that must hash to `expected` (a download): on a mismatch the temp
    /// file is dropped and nothing enters the store (`HashMismatch` names `source` and both hashes).
    pub fn put_expected<F>(
        &self,
        kind: ArtifactKind,
        lineage: Option<&Lineage>,
        expected: &ArtifactId,
        source: &Path,
        write: F,
    ) -> Result<ArtifactId, StoreError>
    where
        F: FnOnce(&mut HashingWriter) -> Result<(), StoreError>,
    {
        self.put_checked(kind, lineage, Some((expected, source)), write)
    }

    fn put_checked<F>(
        &self,
        kind: ArtifactKind,
        lineage: Option<&Lineage>,
        expected: Option<(&ArtifactId, &Path)>,
        write: F,
    ) -> Result<ArtifactId, StoreError>
    where
        F: FnOnce(&mut HashingWriter) -> Result<(), StoreError>,
    {
        let dir = self.objects_dir();
        let tmp = tempfile::Builder::new().prefix(TMP_PREFIX).tempfile_in(&dir).at(&dir)?;
        let (file, tmp_path) = tmp.into_parts();
        hold_while_writing(&file);
        let mut w = HashingWriter { inner: io::BufWriter::with_capacity(1 << 20, file), hasher: blake3::Hasher::new() };
        write(&mut w)?;
        let HashingWriter { inner, hasher } = w;
        let file = inner.into_inner().map_err(|e| e.into_error()).at(&*tmp_path)?;
        // Artifacts are shared read-only data: readable by everyone (tempfile creates 0600).
        file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644)).at(&*tmp_path)?;
        file.sync_all().at(&*tmp_path)?;
        drop(file);
        let id = ArtifactId(hasher.finalize().to_hex().to_string());
        if let Some((want, source)) = expected {
            if *want != id {
                // `tmp_path` is removed when it drops.
                return Err(StoreError::HashMismatch { path: source.to_path_buf(), expected: want.to_string(), found: id.to_string() });
            }
        }
        let dest = self.path_of(&id, kind);
        if kind != ArtifactKind::Parquet {
            if let Some(lineage) = lineage {
                let side = sidecar_path(&dest);
                let json = serde_json::to_vec_pretty(lineage).expect("lineage serializes");
                write_atomic(&side, &json)?;
            }
        }
        // Same bytes → same name: an existing file is already this artifact.
        tmp_path.persist(&dest).map_err(|e| e.error).at(&dest)?;
        sync_dir(&dir)?;
        Ok(id)
    }

    /// Stores a byte buffer.
    pub fn put_bytes(&self, kind: ArtifactKind, bytes: &[u8], lineage: Option<&Lineage>) -> Result<ArtifactId, StoreError> {
        self.put_with(kind, lineage, |w| w.write_all(bytes).at("<artifact bytes>"))
    }

    /// Copies a file on disk into the store.
    pub fn put_file(&self, kind: ArtifactKind, src: &Path, lineage: Option<&Lineage>) -> Result<ArtifactId, StoreError> {
        let mut f = File::open(src).at(src)?;
        self.put_with(kind, lineage, |w| io::copy(&mut f, w).map(|_| ()).at(src))
    }

    /// Lineage of a non-Parquet artifact (from its sidecar), if it has one.
    pub fn sidecar_lineage(&self, path: &Path) -> Result<Option<Lineage>, StoreError> {
        let side = sidecar_path(path);
        match fs::read(&side) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| StoreError::Lineage { path: side, msg: e.to_string() }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::Io { path: side, source: e }),
        }
    }

    /// Rehashes an artifact and checks it against its name.
    pub fn check(&self, id: &ArtifactId, path: &Path) -> Result<(), StoreError> {
        let found = hash_file(path)?;
        if found != id.as_str() {
            return Err(StoreError::HashMismatch { path: path.to_path_buf(), expected: id.to_string(), found });
        }
        Ok(())
    }

    /// Removes temp files left by a writer that died mid-write. Call only while holding the store lock.
    /// A temp file whose writer still lives (a Slurm task writing into this store without the store
    /// lock) is locked by it and stays.
    pub fn remove_stale_temps(&self) -> Result<usize, StoreError> {
        let dir = self.objects_dir();
        let mut n = 0;
        for entry in fs::read_dir(&dir).at(&dir)? {
            let entry = entry.at(&dir)?;
            if entry.file_name().to_string_lossy().starts_with(TMP_PREFIX) && !being_written(&entry.path()) {
                match fs::remove_file(entry.path()) {
                    Ok(()) => n += 1,
                    // Its writer finished (renamed it) meanwhile.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(StoreError::Io { path: entry.path(), source: e }),
                }
            }
        }
        Ok(n)
    }

    /// Deletes an artifact and its sidecar.
    pub fn remove(&self, path: &Path) -> Result<(), StoreError> {
        fs::remove_file(path).at(path)?;
        let side = sidecar_path(path);
        if side.exists() {
            fs::remove_file(&side).at(&side)?;
        }
        Ok(())
    }
}

pub(crate) fn sidecar_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(LINEAGE_SUFFIX);
    PathBuf::from(s)
}

fn parse_object_name(name: &str) -> Option<(ArtifactId, ArtifactKind)> {
    if name.ends_with(LINEAGE_SUFFIX) || name.starts_with(TMP_PREFIX) {
        return None;
    }
    let (stem, ext) = name.split_once('.')?;
    Some((ArtifactId::parse(stem).ok()?, ArtifactKind::from_extension(ext)?))
}

/// blake3 of a file: memory-mapped and hashed on all cores for large files.
pub fn hash_file(path: &Path) -> Result<String, StoreError> {
    let mut h = blake3::Hasher::new();
    h.update_mmap_rayon(path).at(path)?;
    Ok(h.finalize().to_hex().to_string())
}

/// A writer that hashes what passes through it.
pub struct HashingWriter {
    inner: io::BufWriter<File>,
    hasher: blake3::Hasher,
}

impl Write for HashingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A writer holds an OS lock on its temp file until it is renamed or the writer dies, so that a cleaner
/// can tell a live write from a dead one's leftovers (where locks are unsupported, every temp is stale).
fn hold_while_writing(file: &File) {
    let _ = file.try_lock();
}

/// Whether a temp file's writer is still at work (holds its lock).
fn being_written(path: &Path) -> bool {
    // Opened for writing: where flock is emulated with fcntl locks (NFS), an exclusive lock needs it.
    match fs::OpenOptions::new().read(true).write(true).open(path) {
        Ok(f) => matches!(f.try_lock(), Err(fs::TryLockError::WouldBlock)),
        Err(_) => false,
    }
}

/// Writes small files (lock file, sidecars) atomically: temp, fsync, rename, fsync the folder.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs::create_dir_all(dir).at(dir)?;
    let mut tmp = tempfile::Builder::new().prefix(TMP_PREFIX).tempfile_in(dir).at(dir)?;
    hold_while_writing(tmp.as_file());
    tmp.write_all(bytes).at(tmp.path())?;
    tmp.as_file().sync_all().at(tmp.path())?;
    tmp.persist(path).map_err(|e| e.error).at(path)?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|d| d.sync_all()).at(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_temps_are_removed_but_a_live_writers_temp_stays() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let objects = store.objects_dir();
        // A dead writer's leftover (no lock) and a live writer's temp (locked, as put_with holds it).
        fs::write(objects.join(".tmp-dead"), b"half").unwrap();
        let live = File::create(objects.join(".tmp-live")).unwrap();
        hold_while_writing(&live);
        assert_eq!(store.remove_stale_temps().unwrap(), 1);
        assert!(!objects.join(".tmp-dead").exists());
        assert!(objects.join(".tmp-live").exists(), "a temp still being written is kept");
        drop(live);
        assert_eq!(store.remove_stale_temps().unwrap(), 1);
        assert!(!objects.join(".tmp-live").exists());
    }
}
