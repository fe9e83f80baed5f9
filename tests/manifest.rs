//! What Cargo.toml promises about the toolchain.
use std::process::Command;

fn version(s: &str) -> Vec<u64> {
    s.split('.').map(|p| p.parse().unwrap()).collect()
}

/// The store lock uses `File::try_lock` (stable since Rust 1.89).
const OWN_CODE_NEEDS: &str = "1.89";

#[test]
fn rust_version_is_what_the_code_and_every_dependency_need() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--locked", "--offline"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ours = version(env!("CARGO_PKG_RUST_VERSION"));
    let mut need = (version(OWN_CODE_NEEDS), "our own code".to_string());
    for p in meta["packages"].as_array().unwrap() {
        if let Some(v) = p["rust_version"].as_str() {
            let v = version(v);
            if v > need.0 {
                need = (v, p["name"].as_str().unwrap().to_string());
            }
        }
    }
    assert!(ours >= need.0, "Cargo.toml says rust-version {ours:?}, but {} needs {:?}", need.1, need.0);
    assert_eq!(ours[..2], need.0[..2], "rust-version must be the oldest toolchain that builds ({:?}, for {}), not newer", need.0, need.1);
}
