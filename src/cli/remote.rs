use crate::remote::{self, RemoteSpec, RemotesFile, TransferOptions};
use crate::store::Store;
use std::path::Path;
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct RemoteArgs {
    #[command(subcommand)]
    pub action: RemoteAction,
}

#[derive(clap::Subcommand, Debug)]
pub enum RemoteAction {
    /// Add a remote: `s3://bucket/prefix` or `file://PATH` (recorded in `<stages>/remotes.toml`).
    Add {
        name: String,
        url: String,
        /// S3 endpoint of an S3-compatible server, e.g. http://127.0.0.1:8333 (plain http allowed).
        #[arg(long)]
        endpoint: Option<String>,
        /// S3 region (default: AWS_REGION, AWS_DEFAULT_REGION, the profile's, then us-east-1).
        #[arg(long)]
        region: Option<String>,
        /// Make it the default remote.
        #[arg(long)]
        default: bool,
    },
    /// List the remotes (the default one marked `*`).
    List,
    /// Remove a remote from the project (nothing on the remote is deleted).
    Remove { name: String },
}

#[derive(clap::Args, Debug)]
pub struct PushArgs {
    /// Stages (with everything they depend on), artifact hashes or prefixes; none: every stage of the lock file.
    pub targets: Vec<String>,
    /// The remote (default: the project's default remote).
    #[arg(short, long)]
    pub remote: Option<String>,
    /// Transfers at once.
    #[arg(short, long, default_value_t = 8)]
    pub jobs: usize,
    /// Push a variant's lock (`locks/NAME.json`, e.g. a sweep variant) instead of the main one.
    #[arg(long)]
    pub lock: Option<String>,
}

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// Compare the lock file with a remote (the default one, or NAME): what is pushed, what is missing where.
    #[arg(long, num_args = 0..=1, default_missing_value = "", value_name = "NAME")]
    pub remote: Option<String>,
    /// The state of a `mmb run --preset NAME` (its params, its lock).
    #[arg(long, conflicts_with = "remote")]
    pub preset: Option<String>,
    /// The state of a `mmb run --set …` with these settings (its params, its lock).
    #[arg(long = "set", value_name = "STAGE.KEY=VALUE", conflicts_with = "remote")]
    pub set: Vec<crate::stages::settings::Setting>,
}

pub fn remote_cmd(stages: &Path, a: RemoteArgs) -> anyhow::Result<ExitCode> {
    let mut file = RemotesFile::load(stages)?;
    match a.action {
        RemoteAction::Add { name, url, endpoint, region, default } => {
            file.add(&name, RemoteSpec { url, endpoint, region })?;
            if default {
                file.default = Some(name.clone());
            }
            file.save(stages)?;
            eprintln!("added remote `{name}` to {}", RemotesFile::path(stages).display());
        }
        RemoteAction::List => {
            for (name, spec) in &file.remote {
                let mark = if file.default.as_deref() == Some(name) { "*" } else { " " };
                let mut extra = String::new();
                if let Some(e) = &spec.endpoint {
                    extra.push_str(&format!("  endpoint {e}"));
                }
                if let Some(r) = &spec.region {
                    extra.push_str(&format!("  region {r}"));
                }
                println!("{mark} {name:<12} {}{extra}", spec.url);
            }
        }
        RemoteAction::Remove { name } => {
            file.remove(&name)?;
            file.save(stages)?;
            eprintln!("removed remote `{name}`");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `N stage(s): a, b, c` (the first 8, then a count).
fn list(names: &[String]) -> String {
    let head: Vec<&str> = names.iter().take(8).map(String::as_str).collect();
    let more = if names.len() > 8 { format!(", … ({} more)", names.len() - 8) } else { String::new() };
    format!("{} stage(s){}{}{more}", names.len(), if names.is_empty() { "" } else { ": " }, head.join(", "))
}

fn mb(b: u64) -> f64 {
    b as f64 / 1e6
}

pub fn push(store: &Path, stages: &Path, a: PushArgs) -> anyhow::Result<ExitCode> {
    let store = Store::open(store)?;
    let remote = remote::open(stages, a.remote.as_deref())?;
    let r = remote::push(&store, &remote, &a.targets, &TransferOptions { jobs: a.jobs, lock: a.lock })?;
    eprintln!(
        "pushed to `{}`: {} uploaded ({:.1} MB, {:.1} MB/s), {} already there{}; {} in manifest {} ({:.2} s)",
        remote.name,
        r.uploaded,
        mb(r.bytes),
        mb(r.bytes) / r.seconds.max(1e-9),
        r.present,
        if r.repaired > 0 { format!(", {} corrupt copies replaced", r.repaired) } else { String::new() },
        list(&r.stages),
        &r.manifest[..12],
        r.seconds
    );
    Ok(ExitCode::SUCCESS)
}

pub fn pull(store: &Path, stages: &Path, a: PushArgs, record: bool) -> anyhow::Result<ExitCode> {
    let store = Store::open(store)?;
    let remote = remote::open(stages, a.remote.as_deref())?;
    let r = remote::pull(&store, &remote, &a.targets, &TransferOptions { jobs: a.jobs, lock: a.lock }, record)?;
    eprintln!(
        "{} from `{}`: {} downloaded and verified ({:.1} MB, {:.1} MB/s), {} already in the store{} ({:.2} s)",
        if record { "pulled" } else { "fetched" },
        remote.name,
        r.downloaded,
        mb(r.bytes),
        mb(r.bytes) / r.seconds.max(1e-9),
        r.present,
        if record { format!("; recorded {}", list(&r.recorded)) } else { String::new() },
        r.seconds
    );
    Ok(ExitCode::SUCCESS)
}

pub fn status(store: &Path, stages: &Path, name: &str) -> anyhow::Result<ExitCode> {
    let store = Store::open(store)?;
    let remote = remote::open(stages, (!name.is_empty()).then_some(name))?;
    let t = std::time::Instant::now();
    let rows = remote::remote_status(&store, &remote, None)?;
    for r in &rows {
        println!("{:<10} {}", r.stage, r.describe());
    }
    let synced = rows.iter().filter(|r| r.describe() == "in sync").count();
    eprintln!(
        "remote `{}` ({}): {} of {} stage(s) in sync ({:.2} s)",
        remote.name,
        remote.at,
        synced,
        rows.len(),
        t.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}
