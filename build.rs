//! Link-time fixes for libtorch (see notes/build-stack.md):
//! - an rpath to the libtorch folder, so binaries run with no LD_LIBRARY_PATH;
//! - `--no-as-needed -ltorch_cuda` when CUDA is wanted, because rustc links `--as-needed` and would drop
//!   libtorch_cuda.so, which makes `tch::Cuda::is_available()` false even on a GPU machine (tch-rs #980).
//!   CUDA is wanted when `MMB_CUDA=1`, or when `MMB_CUDA` is unset and `nvidia-smi -L` works at build time.
//!   It is not forced on CPU machines: loading the CUDA libraries costs ~0.4 GB of memory per process.
//!
//! The `mmb` binary itself never references libtorch (torch stages run in the `mmb-torch` worker), so it
//! starts in milliseconds; tests/cli.rs checks that.
use std::path::Path;
use std::process::Command;

fn main() {
    // `rerun-if-changed` paths are relative to the package being built, and src/mllm and src/jobs use this file
    // as `../../build.rs`: a bare "build.rs" names a file that does not exist there, which cargo takes as
    // changed, so every cargo command rebuilt those crates and all that depends on them.
    let manifest = std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let script = manifest.ancestors().map(|d| d.join("build.rs")).find(|p| p.is_file()).expect("build.rs above the package");
    println!("cargo:rerun-if-changed={}", script.display());
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=MMB_CUDA");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else { return };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    let wanted = match std::env::var("MMB_CUDA").as_deref() {
        Ok("1") => true,
        Ok(_) => false,
        Err(_) => Command::new("nvidia-smi").arg("-L").output().map(|o| o.status.success()).unwrap_or(false),
    };
    if wanted && Path::new(&lib).join("libtorch_cuda.so").exists() {
        let arg = "-Wl,--no-as-needed,-ltorch_cuda,--as-needed";
        if std::env::var("CARGO_PKG_NAME").as_deref() == Ok("mmboundary") {
            println!("cargo:rustc-link-arg-bin=mmb-torch={arg}");
        } else {
            println!("cargo:rustc-link-arg-bins={arg}");
        }
        println!("cargo:rustc-link-arg-tests={arg}");
        println!("cargo:rustc-link-arg-benches={arg}");
        println!("cargo:rustc-cfg=mmb_cuda_linked");
    }
    println!("cargo:rustc-check-cfg=cfg(mmb_cuda_linked)");
}
