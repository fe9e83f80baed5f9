//! Where the native runtimes come from: libtorch (linked into the `mmb-torch` worker and tests, rpath set
//! by build.rs) and ONNX Runtime (loaded at run time). One place that knows the paths.
use std::path::PathBuf;
use std::sync::OnceLock;

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

/// Caps the threads of one stage's native runtimes (libtorch's intra-op pool, ONNX Runtime's, rayon's).
/// `mmb run -j N` sets it for each `mmb-torch` worker; a person may set it for any run.
pub const THREADS_ENV: &str = "MMB_THREADS";

static STAGE_THREADS: OnceLock<Option<usize>> = OnceLock::new();

/// Reads `$MMB_THREADS` once, at the start of a binary; a value that is not a positive whole number is an
/// error naming it. Some(n) when it is set.
pub fn init_threads() -> anyhow::Result<Option<usize>> {
    let n = match std::env::var(THREADS_ENV) {
        Ok(v) => Some(parse_threads(&v)?),
        Err(std::env::VarError::NotPresent) => None,
        Err(e) => anyhow::bail!("{THREADS_ENV}: {e}"),
    };
    Ok(*STAGE_THREADS.get_or_init(|| n))
}

fn parse_threads(v: &str) -> anyhow::Result<usize> {
    match v.trim().parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => anyhow::bail!("{THREADS_ENV}={v}: expected a whole number of threads, at least 1"),
    }
}

/// The cores this process may use (its affinity and cgroup limits included).
pub fn cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

thread_local! {
    static SHARE: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// The threads a stage in this process may use: its share while it runs beside others (on the thread the
/// engine runs it on, [`with_share`]), else `$MMB_THREADS` as read by [`init_threads`], else every core.
pub fn stage_threads() -> usize {
    thread_cap().unwrap_or_else(cores)
}

/// The cap on this thread's stage, if any: its share, else `$MMB_THREADS`. None: every runtime keeps its
/// own default, all cores.
pub fn thread_cap() -> Option<usize> {
    SHARE.get().or_else(|| STAGE_THREADS.get().copied().flatten())
}

/// Runs `f` with [`stage_threads`] at `share` on this thread (None: unchanged).
pub fn with_share<T>(share: Option<usize>, f: impl FnOnce() -> T) -> T {
    /// Puts the thread's share back, also when `f` panics.
    struct Restore(Option<usize>);
    impl Drop for Restore {
        fn drop(&mut self) {
            SHARE.set(self.0);
        }
    }
    let _restore = Restore(SHARE.replace(share.or(SHARE.get())));
    f()
}

/// Each of `jobs` stages running side by side gets an equal share of `threads` (at least one). Pools that
/// each take every core spin against each other: two libtorch workers on 2 cores ran about 6× slower, not 2×.
pub fn thread_share(threads: usize, jobs: usize) -> usize {
    (threads / jobs.max(1)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_side_by_side_share_the_threads() {
        assert_eq!(thread_share(2, 1), 2);
        assert_eq!(thread_share(2, 2), 1);
        assert_eq!(thread_share(2, 4), 1, "never below one");
        assert_eq!(thread_share(16, 3), 5);
        assert_eq!(thread_share(16, 0), 16, "no jobs reads as one");
    }

    #[test]
    fn a_share_holds_on_its_thread_while_its_stage_runs() {
        let all = stage_threads();
        assert_eq!(with_share(Some(all + 3), stage_threads), all + 3);
        assert_eq!(with_share(Some(all + 3), thread_cap), Some(all + 3));
        assert_eq!(with_share(Some(2), || with_share(None, stage_threads)), 2, "None keeps the share");
        assert_eq!(with_share(Some(2), || std::thread::spawn(stage_threads).join().unwrap()), all, "only on its thread");
        assert_eq!(stage_threads(), all, "restored after");
    }

    #[test]
    fn a_thread_count_is_a_positive_whole_number() {
        assert_eq!(parse_threads("4").unwrap(), 4);
        assert_eq!(parse_threads(" 1 ").unwrap(), 1);
        for bad in ["0", "-1", "two", "1.5", ""] {
            assert_eq!(
                parse_threads(bad).unwrap_err().to_string(),
                format!("MMB_THREADS={bad}: expected a whole number of threads, at least 1")
            );
        }
    }
}
