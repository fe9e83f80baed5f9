use super::error::{IoContext, StoreError};
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// An exclusive lock on a store, held by one `mmb` process at a time.
///
/// It is an OS file lock (flock), so the kernel drops it when the process ends for any reason:
/// Ctrl-C or `kill -9` never leave a stale lock behind (DVC's rwlock file does, dvc#2797).
/// The file's content (pid, command, start time) only serves the message of whoever is refused.
#[derive(Debug)]
pub struct StoreLock {
    _file: File,
    path: PathBuf,
}

impl StoreLock {
    pub fn acquire(root: &Path, what: &str) -> Result<Self, StoreError> {
        std::fs::create_dir_all(root).at(root)?;
        let path = root.join(".mmb.lock");
        let mut file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).at(&path)?;
        // A short grace period: a lock just released can still be held for a moment by a copy of its
        // descriptor in a child this process is forking (the copy lives until the child's exec).
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(500);
        let mut attempt = file.try_lock();
        while matches!(attempt, Err(TryLockError::WouldBlock)) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
            attempt = file.try_lock();
        }
        match attempt {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = if holder.trim().is_empty() { "unknown holder".to_string() } else { holder.trim().to_string() };
                return Err(StoreError::Locked { path, holder });
            }
            Err(TryLockError::Error(e)) => return Err(StoreError::Io { path, source: e }),
        }
        file.set_len(0).at(&path)?;
        file.rewind().at(&path)?;
        write!(file, "pid {}, `{}`, since {}", std::process::id(), what, super::Lineage::now()).at(&path)?;
        file.flush().at(&path)?;
        Ok(Self { _file: file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}
