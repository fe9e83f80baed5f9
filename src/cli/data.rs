//! `mmb data …`: generate the Penumbra benchmark for a person to look at (PNG files, a contact
//! sheet, a text view). Artifacts (Parquet) are the store's business, not this command's.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use rayon::prelude::*;

use crate::data::penumbra::{self, PenumbraParams};
use crate::data::sheet::{self, SheetParams};
use crate::data::Item;

#[derive(clap::Args, Debug, Clone)]
pub struct DataArgs {
    #[command(subcommand)]
    pub command: DataCommand,
}

/// What the Penumbra generator is asked for (shared by the subcommands).
#[derive(clap::Args, Debug, Clone)]
pub struct GenOptions {
    /// Number of items.
    #[arg(long, short = 'n', default_value_t = 1000)]
    pub n: usize,
    /// Seed: the same seed and params give the same items, byte for byte.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// A TOML file with Penumbra params (difficulty ladder, splits, image size, …); --n and --seed win.
    #[arg(long)]
    pub params: Option<PathBuf>,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum DataCommand {
    /// Generate N items into DIR: images/<id>.png, contact_sheet.png, show.txt; print the rate.
    Generate {
        #[command(flatten)]
        gen: GenOptions,
        /// Output directory (created).
        #[arg(long, short = 'o')]
        out: PathBuf,
        /// Samples per difficulty level on the contact sheet.
        #[arg(long, default_value_t = 8)]
        per_level: usize,
    },
    /// Write only a contact sheet PNG: one row of samples per difficulty level.
    Sheet {
        #[command(flatten)]
        gen: GenOptions,
        /// The PNG to write.
        #[arg(long, short = 'o')]
        out: PathBuf,
        #[arg(long, default_value_t = 8)]
        per_level: usize,
    },
    /// Write a sentence corpus (questions, reference-chain sentences, captions; distinct, seeded order), one
    /// sentence per line: the project's own encoder-benchmark and int8-calibration corpus is
    /// `mmb data corpus -n 3000 --sentences 4000 -o benches/corpus/penumbra_sentences.txt`.
    Corpus {
        #[command(flatten)]
        gen: GenOptions,
        /// Sentences to write (fewer if the items have fewer distinct ones: an error).
        #[arg(long, default_value_t = 4000)]
        sentences: usize,
        /// The text file to write.
        #[arg(long, short = 'o')]
        out: PathBuf,
    },
    /// Print items as text (question, options, chain by level).
    Show {
        #[command(flatten)]
        gen: GenOptions,
        /// How many items to print.
        #[arg(long, default_value_t = 5)]
        count: usize,
    },
}

fn penumbra_params(gen: &GenOptions) -> anyhow::Result<PenumbraParams> {
    let mut p = match &gen.params {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            toml::from_str(&text).with_context(|| format!("{}: not a Penumbra params TOML", path.display()))?
        }
        None => PenumbraParams::default(),
    };
    p.n_items = gen.n;
    p.seed = gen.seed;
    p.validate()?;
    Ok(p)
}

/// Generate with the requested thread count; returns the items and the seconds taken.
fn generate(gen: &GenOptions, p: &PenumbraParams) -> anyhow::Result<(Vec<Item>, f64)> {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(gen.threads.unwrap_or(0)).build()?;
    let t = Instant::now();
    let items = pool.install(|| penumbra::generate(p))?;
    Ok((items, t.elapsed().as_secs_f64()))
}

fn write_sheet(items: &[Item], per_level: usize, tile: u32, out: &Path) -> anyhow::Result<()> {
    let img = sheet::contact_sheet(items, &SheetParams { per_level, tile, ..SheetParams::default() })?;
    let png = penumbra::render::encode_png(&img)?;
    std::fs::write(out, png).with_context(|| format!("writing {}", out.display()))
}

pub fn run(args: DataArgs) -> anyhow::Result<()> {
    match args.command {
        DataCommand::Generate { gen, out, per_level } => {
            let p = penumbra_params(&gen)?;
            let (items, secs) = generate(&gen, &p)?;
            let images = out.join("images");
            std::fs::create_dir_all(&images).with_context(|| format!("creating {}", images.display()))?;
            items.par_iter().try_for_each(|it| -> anyhow::Result<()> {
                let img = it.image.as_ref().and_then(|i| i.bytes.as_ref()).context("generated item without image")?;
                let path = images.join(format!("{}.png", it.id));
                std::fs::write(&path, img).with_context(|| format!("writing {}", path.display()))
            })?;
            write_sheet(&items, per_level, p.image_size, &out.join("contact_sheet.png"))?;
            let text: String =
                items.iter().map(|it| sheet::show(it, Some(&format!("images/{}.png", it.id)))).collect::<Vec<_>>().join("\n");
            std::fs::write(out.join("show.txt"), text)?;
            println!(
                "generated {} Penumbra items (seed {}) in {:.2} s = {:.0} items/s on {} threads → {}",
                items.len(),
                p.seed,
                secs,
                items.len() as f64 / secs.max(1e-9),
                gen.threads.unwrap_or_else(rayon::current_num_threads),
                out.display()
            );
        }
        DataCommand::Sheet { gen, out, per_level } => {
            let p = penumbra_params(&gen)?;
            let (items, _) = generate(&gen, &p)?;
            write_sheet(&items, per_level, p.image_size, &out)?;
            println!("contact sheet of {} levels → {}", p.ladder.levels.len(), out.display());
        }
        DataCommand::Corpus { gen, sentences, out } => {
            let p = penumbra_params(&gen)?;
            let (items, _) = generate(&gen, &p)?;
            let lines = crate::data::corpus::sentences(&items, sentences, p.seed);
            anyhow::ensure!(
                lines.len() == sentences,
                "{} items hold only {} distinct sentences, {sentences} asked for: raise -n",
                items.len(),
                lines.len()
            );
            std::fs::write(&out, format!("{}\n", lines.join("\n"))).with_context(|| format!("writing {}", out.display()))?;
            println!("{} sentences of {} Penumbra items (seed {}) → {}", lines.len(), items.len(), p.seed, out.display());
        }
        DataCommand::Show { gen, count } => {
            let p = penumbra_params(&GenOptions { n: gen.n.max(count), ..gen.clone() })?;
            for i in 0..count.min(p.n_items) {
                let g = penumbra::generate_one(&p, i)?;
                println!("{}", sheet::show(&g.item, None));
            }
        }
    }
    Ok(())
}
