//! `mmb`: parse arguments and hand over to the CLI layer; nothing else lives here.
fn main() -> std::process::ExitCode {
    // Behave like a Unix tool when piped into `head`: exit quietly on a closed pipe instead of panicking.
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    mmboundary::cli::main()
}
