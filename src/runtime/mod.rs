//! Where the native runtimes come from: libtorch (linked into the `mmb-torch` worker and tests, rpath set
//! by build.rs) and ONNX Runtime (loaded at run time). One place that knows the paths.
use std::path::PathBuf;

/// The ONNX Runtime shared library: `$ORT_DYLIB_PATH` at run time, else the path cargo saw at build
/// time (`.deps/onnxruntime/libonnxruntime.so`, linked by scripts/setup.sh).
pub fn onnxruntime_dylib() -> Option<PathBuf> {
    std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from).or_else(|| option_env!("ORT_DYLIB_PATH").map(PathBuf::from))
}

/// Whether this build linked libtorch_cuda (see build.rs: `MMB_CUDA=1`, or a GPU seen at build time).
/// Without it CUDA cannot be used even on a GPU machine, and a `--device cuda` must say so.
pub const CUDA_LINKED: bool = cfg!(mmb_cuda_linked);

/// An error and its causes on one line, each cause shown only if the text so far does not already hold
/// it (our error types print their source inline, and anyhow's `{:#}` would print it a second time).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut msg = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let s = c.to_string();
        if !msg.contains(&s) {
            msg.push_str(": ");
            msg.push_str(&s);
        }
        cause = c.source();
    }
    msg
}
