//! Link-time fixes for libtorch (see notes/build-stack.md):
//! - an rpath to the libtorch folder, so the binary runs with no LD_LIBRARY_PATH;
//! - `--no-as-needed -ltorch_cuda`, because rustc links `--as-needed` and would drop libtorch_cuda.so,
//!   which makes `tch::Cuda::is_available()` false even on a GPU machine (tch-rs #980).
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
        if Path::new(&lib).join("libtorch_cuda.so").exists() {
            println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
        }
    }
}
