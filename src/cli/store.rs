use crate::engine::LockFile;
use crate::store::{read_parquet, ArtifactKind, Store};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct ShowArgs {
    /// An artifact hash (or unique prefix), or a stage name.
    pub what: String,
    /// Rows of a table to print.
    #[arg(long, default_value_t = 5)]
    pub rows: usize,
}

#[derive(clap::Args, Debug)]
pub struct GcArgs {
    /// Delete (without it, only list what would go).
    #[arg(long)]
    pub apply: bool,
}

#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    /// Artifact hash or unique prefix.
    pub artifact: String,
    /// Destination folder.
    pub dir: PathBuf,
}

#[derive(clap::Args, Debug)]
pub struct ImportArgs {
    /// Files written by `mmb export` (named <blake3>.<ext>).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

pub fn show(store: &Path, _stages: &Path, a: ShowArgs) -> anyhow::Result<ExitCode> {
    let store = Store::open(store)?;
    let lock = LockFile::load(store.root())?;
    if let Some(rec) = lock.stages.get(&a.what) {
        let threads = rec.threads.map(|n| format!(" on {n} threads")).unwrap_or_default();
        println!(
            "stage {}  (key {}, {:.2} s, device {}{threads}, finished {})",
            a.what,
            &rec.key[..12],
            rec.seconds,
            rec.device,
            rec.finished
        );
        println!("params: {}", serde_json::to_string_pretty(&rec.params)?);
        for (name, o) in &rec.outputs {
            println!("\n== output {name}");
            show_artifact(&store, &o.id, a.rows)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    show_artifact(&store, &a.what, a.rows)?;
    Ok(ExitCode::SUCCESS)
}

fn show_artifact(store: &Store, prefix: &str, rows: usize) -> anyhow::Result<()> {
    let (id, kind, path) = store.find(prefix)?;
    let bytes = std::fs::metadata(&path)?.len();
    println!("artifact {id}\nkind     {}\npath     {}\nbytes    {bytes}", kind.extension(), path.display());
    if kind == ArtifactKind::Parquet {
        let t = read_parquet(&path, id)?;
        println!("rows     {}", t.num_rows());
        println!("schema:");
        for f in t.schema.fields() {
            println!("  {}: {}", f.name(), f.data_type());
        }
        if let Some(l) = &t.lineage {
            println!("lineage: {}", serde_json::to_string_pretty(l)?);
        }
        let batch = t.concat()?;
        let head = batch.slice(0, rows.min(batch.num_rows()));
        if t.schema.fields().len() == crate::data::item_schema().fields().len() && t.schema.field_with_name("perception").is_ok() {
            // A dataset: show items as a person reads them (question, options, chain by level).
            for item in crate::data::items_from_record_batch(&head)? {
                println!("{}", crate::data::sheet::show(&item, item.image.as_ref().and_then(|i| i.path.as_deref())));
            }
        } else {
            println!("{}", arrow::util::pretty::pretty_format_batches(&[head])?);
        }
    } else if let Some(l) = store.sidecar_lineage(&path)? {
        println!("lineage: {}", serde_json::to_string_pretty(&l)?);
    }
    Ok(())
}

pub fn verify(store: &Path) -> anyhow::Result<ExitCode> {
    let store = Store::open(store)?;
    let t = std::time::Instant::now();
    let r = store.verify()?;
    let secs = t.elapsed().as_secs_f64();
    for m in &r.mismatches {
        println!("MISMATCH {}: bytes hash to {}", m.path.display(), m.found);
    }
    eprintln!(
        "verified {} artifacts, {:.1} MB in {:.3} s ({:.2} GB/s): {} mismatch(es)",
        r.checked,
        r.bytes as f64 / 1e6,
        secs,
        r.bytes as f64 / 1e9 / secs.max(1e-9),
        r.mismatches.len()
    );
    Ok(if r.mismatches.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

pub fn gc(store: &Path, a: GcArgs) -> anyhow::Result<ExitCode> {
    let store = Store::open(store)?;
    let r = crate::engine::collect_garbage(&store, a.apply)?;
    let verb = if a.apply { "deleted" } else { "would delete" };
    for (p, b) in r.artifacts.iter().chain(&r.work) {
        println!("{verb} {} ({b} bytes)", p.display());
    }
    for (p, b) in &r.resumable {
        println!("kept {} ({b} bytes): resume state of a run that has not finished", p.display());
    }
    let mb = |v: &[(PathBuf, u64)]| v.iter().map(|(_, b)| b).sum::<u64>() as f64 / 1e6;
    eprintln!(
        "{} {} unreferenced artifact(s), {:.1} MB, and {} work folder(s) of finished runs, {:.1} MB; kept {} artifact(s){}",
        if a.apply { "deleted" } else { "found" },
        r.artifacts.len(),
        mb(&r.artifacts),
        r.work.len(),
        mb(&r.work),
        r.kept,
        if a.apply { "" } else { " (dry run: pass --apply to delete)" }
    );
    Ok(ExitCode::SUCCESS)
}

pub fn export(store: &Path, a: ExportArgs) -> anyhow::Result<ExitCode> {
    let store = Store::open(store)?;
    let dest = store.export(&a.artifact, &a.dir)?;
    println!("{}", dest.display());
    Ok(ExitCode::SUCCESS)
}

pub fn import(store: &Path, a: ImportArgs) -> anyhow::Result<ExitCode> {
    let store = Store::open(store)?;
    let _guard = crate::store::StoreLock::acquire(store.root(), "mmb import")?;
    for f in &a.files {
        let (id, l) = store.import(f)?;
        println!("imported {id} (stage {}, output {}, {} rows)", l.stage, l.output, l.rows.map(|r| r.to_string()).unwrap_or("-".into()));
    }
    Ok(ExitCode::SUCCESS)
}
