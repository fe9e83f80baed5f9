//! The device an MLLM stage runs on, resolved before the stage is keyed: `auto` becomes `cuda:0` or
//! `cpu` here, so the cache key, the lineage and the log name the device actually used, and CPU and GPU
//! runs never share a key. `mmb` does not link libtorch, so it decides from what `mmb-torch` was linked
//! with (`build.rs` sets `mmb_cuda_linked` when it links libtorch_cuda) and whether a GPU is visible;
//! the worker resolves the same choice with libtorch and refuses to run when the two disagree
//! ([`check_worker_device`]), and `cuda` where there is none is an error, never a silent CPU run.

/// Whether `mmb-torch` was built with libtorch's CUDA library linked.
pub fn cuda_linked() -> bool {
    cfg!(mmb_cuda_linked)
}

/// Whether an NVIDIA GPU is visible to this process (a driver device node, and CUDA_VISIBLE_DEVICES not
/// hiding every device).
pub fn gpu_visible() -> bool {
    let hidden = std::env::var("CUDA_VISIBLE_DEVICES").is_ok_and(|v| v.trim().is_empty() || v.trim() == "-1");
    !hidden && std::path::Path::new("/dev/nvidia0").exists()
}

/// `auto`, `cpu`, `cuda`, `cuda:N` → the device the stage will run on (`cpu` or `cuda:N`).
pub fn resolve_device(choice: &str) -> anyhow::Result<String> {
    match choice {
        "cpu" => Ok("cpu".into()),
        "auto" => Ok(if cuda_linked() && gpu_visible() { "cuda:0".into() } else { "cpu".into() }),
        "cuda" => Ok("cuda:0".into()),
        _ => match choice.strip_prefix("cuda:").and_then(|n| n.parse::<usize>().ok()) {
            Some(n) => Ok(format!("cuda:{n}")),
            None => anyhow::bail!("device: expected auto, cpu, cuda or cuda:N, found {choice:?}"),
        },
    }
}

/// The device part of an MLLM stage's cache key: the resolved device and the dtype (`cuda:0/bf16`). A
/// device that does not parse keys as written (the run then fails with the parse error).
pub fn device_key(choice: &str, dtype: &str) -> String {
    format!("{}/{dtype}", resolve_device(choice).unwrap_or_else(|_| choice.to_string()))
}

/// The worker's check: libtorch resolved `choice` to `used` (`cpu` or `cuda:N`); it must be the device the
/// stage was keyed on.
pub fn check_worker_device(stage: &str, choice: &str, used: &str) -> anyhow::Result<()> {
    let keyed = resolve_device(choice)?;
    anyhow::ensure!(
        keyed == used,
        "{stage}: device = {choice:?} resolved to {used} in the worker but to {keyed} when the stage was keyed \
         (mmb-torch linked with CUDA: {}, GPU visible: {}); set the device explicitly",
        cuda_linked(),
        gpu_visible()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_resolve_to_the_device_used() {
        assert_eq!(resolve_device("cpu").unwrap(), "cpu");
        assert_eq!(resolve_device("cuda").unwrap(), "cuda:0");
        assert_eq!(resolve_device("cuda:3").unwrap(), "cuda:3");
        let auto = resolve_device("auto").unwrap();
        assert_eq!(auto == "cuda:0", cuda_linked() && gpu_visible());
        assert!(auto == "cpu" || auto == "cuda:0");
        assert!(resolve_device("gpu").unwrap_err().to_string().contains("\"gpu\""));
        assert_eq!(device_key("cpu", "bf16"), "cpu/bf16");
        assert_ne!(device_key("auto", "f32"), "auto/f32");
        assert!(check_worker_device("generate", "cpu", "cpu").is_ok());
        let e = check_worker_device("generate", "cpu", "cuda:0").unwrap_err().to_string();
        assert!(e.contains("generate") && e.contains("cuda:0") && e.contains("cpu"), "{e}");
    }
}
