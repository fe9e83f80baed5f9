//! Where the native runtimes come from: libtorch (linked, rpath set by build.rs) and ONNX Runtime
//! (loaded at run time). One place that knows the paths, so every command reports them the same way.
use std::path::PathBuf;

/// The ONNX Runtime shared library: `$ORT_DYLIB_PATH` at run time, else the path cargo saw at build
/// time (`.deps/onnxruntime/libonnxruntime.so`, linked by scripts/setup.sh).
pub fn onnxruntime_dylib() -> Option<PathBuf> {
    std::env::var_os("ORT_DYLIB_PATH")
        .map(PathBuf::from)
        .or_else(|| option_env!("ORT_DYLIB_PATH").map(PathBuf::from))
}

/// Whether libtorch sees a CUDA device (needs the `--no-as-needed` link fix in build.rs).
pub fn cuda_available() -> bool {
    tch::Cuda::is_available()
}
