//! `mmb`: parse arguments and hand over to the CLI layer; nothing else lives here.
fn main() -> std::process::ExitCode {
    mmboundary::cli::main()
}
