//! The mmb-torch worker for a test binary of the root package (only there does cargo name it, so this module
//! is included by path, not from common/mod.rs, which the jobs package's tests share).
use std::path::Path;
use std::sync::OnceLock;

/// One private copy of the worker for the whole test binary, set as `MMB_TORCH`, kept until the process ends:
/// the target folder may be shared and a concurrent build would replace the binary under a running test, and
/// tests run in parallel while `MMB_TORCH` is the process's, so a copy per test vanished under the others
/// when its test ended.
pub fn worker() -> &'static Path {
    static W: OnceLock<tempfile::TempDir> = OnceLock::new();
    let d = W.get_or_init(|| {
        let d = tempfile::tempdir().unwrap();
        std::fs::copy(env!("CARGO_BIN_EXE_mmb-torch"), d.path().join("mmb-torch")).unwrap();
        d
    });
    std::env::set_var("MMB_TORCH", d.path().join("mmb-torch"));
    d.path()
}
