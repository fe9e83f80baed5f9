//! Which real datasets the `dataset` stage loads, from paths in each dataset's official layout, joined
//! with the paper's annotated chains where a file is given.
//!
//! - `aokvqa`: `dir` holds `aokvqa_v1p0_{split}.json`; `coco` is the COCO 2017 folder
//!   (`{split}2017/{image_id:012}.jpg`); `annotated` (optional) is the paper's `aokvqa_val_mmb.json`.
//! - `scienceqa`: `dir` holds `problems.json` and `pid_splits.json`; images under `dir/images`
//!   (`{split}/{pid}/image.png`) unless `image_dir` says otherwise.
//! - `culturalvqa`: `dir` is the Hugging Face dataset folder (every `data/*.parquet`, in name order), or
//!   `files` lists the shards; `annotated` (optional) is the paper's `culturalvqa_cvqa_mmb.json`.
//!
//! Splits follow the paper: `train` for warm-up and RL, `val` for evaluation, CulturalVQA (its one
//! `test` split) as the out-of-distribution test, named `ood` here as in the embedded benchmark.
//!
//! Images: CulturalVQA's are inside its Parquet files and are copied into the rows. For the COCO and
//! ScienceQA folders the default is [`ImageMode::Reference`]: a row keeps the file's absolute path and
//! blake3 hash, not its bytes. COCO is 19 GB, and every stage that reads the items artifact reads it
//! whole, so copying A-OKVQA's ~18k images (~3 GB) would cost each of them that much memory; the hash in
//! each row makes every downstream cache key depend on the pixels, and [`super::image_bytes`] refuses a
//! file that changed since. `images = "embed"` copies instead (a self-contained, portable artifact).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::annotated::{self, AnnotatedParams, ChainField, DuplicatePolicy};
use super::aokvqa::{self, AokvqaParams};
use super::culturalvqa::{self, CulturalvqaParams};
use super::scienceqa::{self, ScienceqaParams};
use super::{DataError, ImageMode, Item, LoadReport, Result, SkipPolicy};

/// A dataset the stage can load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceName {
    /// The embedded benchmark (generated; see [`super::penumbra`]).
    Penumbra,
    Aokvqa,
    Scienceqa,
    Culturalvqa,
}

impl SourceName {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceName::Penumbra => "penumbra",
            SourceName::Aokvqa => aokvqa::SOURCE,
            SourceName::Scienceqa => scienceqa::SOURCE,
            SourceName::Culturalvqa => culturalvqa::SOURCE,
        }
    }
}

/// One source (`source = "aokvqa"`) or several (`source = ["aokvqa", "culturalvqa"]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Sources(pub Vec<SourceName>);

impl Default for Sources {
    fn default() -> Self {
        Sources(vec![SourceName::Penumbra])
    }
}

impl<'de> Deserialize<'de> for Sources {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        use serde::de::{Error as _, IntoDeserializer};
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum OneOrMany {
            One(String),
            Many(Vec<String>),
        }
        let names = match OneOrMany::deserialize(d) {
            Ok(OneOrMany::One(s)) => vec![s],
            Ok(OneOrMany::Many(v)) => v,
            Err(_) => {
                return Err(D::Error::custom("`source`: expected a name or a list of names (penumbra, aokvqa, scienceqa, culturalvqa)"))
            }
        };
        let mut out = Vec::with_capacity(names.len());
        for s in &names {
            let de: serde::de::value::StrDeserializer<'_, serde::de::value::Error> = s.as_str().into_deserializer();
            match SourceName::deserialize(de) {
                Ok(n) => out.push(n),
                Err(_) => {
                    return Err(D::Error::custom(format!(
                        "`source`: unknown dataset {s:?} (known: penumbra, aokvqa, scienceqa, culturalvqa)"
                    )))
                }
            }
        }
        Ok(Sources(out))
    }
}

impl Sources {
    pub fn is_penumbra(&self) -> bool {
        self.0 == [SourceName::Penumbra]
    }
}

/// How the paper's annotated chains are joined (see [`super::annotated`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JoinOptions {
    pub chain_field: ChainField,
    pub duplicates: DuplicatePolicy,
    pub keep_empty_reasoning: bool,
    /// Keep items the annotated file has no chain for (A-OKVQA train has none). Default true.
    pub keep_unannotated: bool,
}

impl Default for JoinOptions {
    fn default() -> Self {
        JoinOptions {
            chain_field: ChainField::KeysFiltered,
            duplicates: DuplicatePolicy::KeepAll,
            keep_empty_reasoning: false,
            keep_unannotated: true,
        }
    }
}

impl JoinOptions {
    fn params(&self, on_bad_record: SkipPolicy) -> AnnotatedParams {
        AnnotatedParams {
            chain_field: self.chain_field,
            duplicates: self.duplicates,
            keep_empty_reasoning: self.keep_empty_reasoning,
            on_bad_record,
            keep_unannotated: self.keep_unannotated,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AokvqaSource {
    /// The folder with `aokvqa_v1p0_{split}.json`.
    pub dir: PathBuf,
    /// The COCO 2017 folder (`train2017/`, `val2017/`).
    pub coco: PathBuf,
    pub splits: Vec<String>,
    /// The paper's annotated file (`aokvqa_val_mmb.json`), joined by `question_id`.
    pub annotated: Option<PathBuf>,
    pub join: JoinOptions,
    pub images: ImageMode,
    pub on_bad_record: SkipPolicy,
}

impl Default for AokvqaSource {
    fn default() -> Self {
        AokvqaSource {
            dir: PathBuf::new(),
            coco: PathBuf::new(),
            splits: vec!["train".into(), "val".into()],
            annotated: None,
            join: JoinOptions::default(),
            images: ImageMode::Reference,
            on_bad_record: SkipPolicy::Error,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScienceqaSource {
    /// The folder with `problems.json` and `pid_splits.json` (the release's `data/scienceqa`).
    pub dir: PathBuf,
    /// The image folder (`{split}/{pid}/image.png`); default `dir/images`.
    pub image_dir: Option<PathBuf>,
    pub splits: Vec<String>,
    pub images: ImageMode,
    pub on_bad_record: SkipPolicy,
}

impl Default for ScienceqaSource {
    fn default() -> Self {
        ScienceqaSource {
            dir: PathBuf::new(),
            image_dir: None,
            splits: vec!["train".into(), "val".into()],
            images: ImageMode::Reference,
            on_bad_record: SkipPolicy::Error,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CulturalvqaSource {
    /// The Hugging Face dataset folder: its `data/*.parquet` are loaded in name order.
    pub dir: Option<PathBuf>,
    /// The Parquet shards, in order (instead of `dir`).
    pub files: Vec<PathBuf>,
    /// The paper's annotated file (`culturalvqa_cvqa_mmb.json`), joined on the row index.
    pub annotated: Option<PathBuf>,
    pub join: JoinOptions,
    /// The split name of every row: the paper's out-of-distribution test.
    pub split: String,
    pub on_bad_record: SkipPolicy,
}

impl Default for CulturalvqaSource {
    fn default() -> Self {
        CulturalvqaSource {
            dir: None,
            files: Vec::new(),
            annotated: None,
            join: JoinOptions::default(),
            split: "ood".into(),
            on_bad_record: SkipPolicy::Error,
        }
    }
}

impl CulturalvqaSource {
    /// The shards to load: `files`, or every `*.parquet` of `dir/data` (else `dir`) in name order.
    pub fn shard_files(&self) -> Result<Vec<PathBuf>> {
        match (&self.dir, self.files.is_empty()) {
            (Some(_), false) => Err(DataError::Params("culturalvqa: set `dir` or `files`, not both".into())),
            (None, true) => Err(DataError::Params("culturalvqa: set `dir` (the dataset folder) or `files` (its Parquet shards)".into())),
            (None, false) => Ok(self.files.clone()),
            (Some(dir), true) => {
                let data = if dir.join("data").is_dir() { dir.join("data") } else { dir.clone() };
                let rd = std::fs::read_dir(&data).map_err(|source| DataError::Io { path: data.clone(), source })?;
                let mut files = Vec::new();
                for e in rd {
                    let p = e.map_err(|source| DataError::Io { path: data.clone(), source })?.path();
                    if p.extension().is_some_and(|x| x == "parquet") {
                        files.push(p);
                    }
                }
                files.sort();
                if files.is_empty() {
                    return Err(DataError::Params(format!("culturalvqa: no *.parquet files in {}", data.display())));
                }
                Ok(files)
            }
        }
    }
}

/// Everything the stage needs to load real data.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RealSources {
    pub sources: Vec<SourceName>,
    pub aokvqa: Option<AokvqaSource>,
    pub scienceqa: Option<ScienceqaSource>,
    pub culturalvqa: Option<CulturalvqaSource>,
}

/// What one source contributed: rows per split, and its skips and notes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceSummary {
    pub source: String,
    pub items: usize,
    pub by_split: BTreeMap<String, usize>,
    pub report: LoadReport,
}

/// The rows of every source, in the order listed, and a summary per source.
#[derive(Debug, Clone)]
pub struct LoadedSources {
    pub items: Vec<Item>,
    pub summaries: Vec<SourceSummary>,
}

fn required(path: &Path, what: &str) -> Result<()> {
    if path.as_os_str().is_empty() {
        return Err(DataError::Params(format!("{what} is required")));
    }
    Ok(())
}

impl RealSources {
    /// Every listed source has its table, every table is listed, and penumbra is not mixed in.
    pub fn validate(&self) -> Result<()> {
        if self.sources.is_empty() {
            return Err(DataError::Params("`source` lists no dataset".into()));
        }
        if self.sources.contains(&SourceName::Penumbra) {
            return Err(DataError::Params("`source`: penumbra (the embedded benchmark) cannot be combined with real datasets".into()));
        }
        let mut seen = std::collections::HashSet::new();
        for s in &self.sources {
            if !seen.insert(*s) {
                return Err(DataError::Params(format!("`source` lists {} twice", s.as_str())));
            }
        }
        for (name, set) in [
            (SourceName::Aokvqa, self.aokvqa.is_some()),
            (SourceName::Scienceqa, self.scienceqa.is_some()),
            (SourceName::Culturalvqa, self.culturalvqa.is_some()),
        ] {
            match (self.sources.contains(&name), set) {
                (true, false) => {
                    return Err(DataError::Params(format!(
                        "`source` lists {0} but there is no [params.{0}] table with its paths",
                        name.as_str()
                    )))
                }
                (false, true) => {
                    return Err(DataError::Params(format!("[params.{0}] is set but `source` does not list {0}", name.as_str())))
                }
                _ => {}
            }
        }
        if let Some(a) = &self.aokvqa {
            required(&a.dir, "aokvqa.dir (the folder with aokvqa_v1p0_{split}.json)")?;
            required(&a.coco, "aokvqa.coco (the COCO 2017 folder)")?;
        }
        if let Some(s) = &self.scienceqa {
            required(&s.dir, "scienceqa.dir (the folder with problems.json and pid_splits.json)")?;
        }
        Ok(())
    }

    /// The index files whose content decides the rows (JSON, Parquet, annotations): the stage's cache
    /// key hashes them. (Images are covered by the hash in each row; see the module doc.)
    pub fn index_files(&self) -> Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        if let Some(a) = &self.aokvqa {
            out.extend(a.splits.iter().map(|s| a.dir.join(format!("aokvqa_v1p0_{s}.json"))));
            out.extend(a.annotated.clone());
        }
        if let Some(s) = &self.scienceqa {
            out.push(s.dir.join("problems.json"));
            out.push(s.dir.join("pid_splits.json"));
        }
        if let Some(c) = &self.culturalvqa {
            out.extend(c.shard_files()?);
            out.extend(c.annotated.clone());
        }
        Ok(out)
    }

    /// Load every listed source. With more than one source, ids become `{source}:{id}` (CulturalVQA's
    /// row numbers and ScienceQA's pids would collide otherwise).
    pub fn load(&self) -> Result<LoadedSources> {
        self.validate()?;
        let mut items = Vec::new();
        let mut summaries = Vec::new();
        let prefix = self.sources.len() > 1;
        for &name in &self.sources {
            let (mut rows, report) = match name {
                SourceName::Aokvqa => load_aokvqa(self.aokvqa.as_ref().expect("validated"))?,
                SourceName::Scienceqa => load_scienceqa(self.scienceqa.as_ref().expect("validated"))?,
                SourceName::Culturalvqa => load_culturalvqa(self.culturalvqa.as_ref().expect("validated"))?,
                SourceName::Penumbra => unreachable!("validated"),
            };
            if prefix {
                for it in &mut rows {
                    it.id = format!("{}:{}", name.as_str(), it.id);
                }
            }
            let mut by_split = BTreeMap::new();
            for it in &rows {
                *by_split.entry(it.split.clone()).or_insert(0) += 1;
            }
            summaries.push(SourceSummary { source: name.as_str().into(), items: rows.len(), by_split, report });
            items.extend(rows);
        }
        Ok(LoadedSources { items, summaries })
    }
}

fn merge_reports(into: &mut LoadReport, from: LoadReport) {
    into.skipped.extend(from.skipped);
    for (k, v) in from.notes {
        *into.notes.entry(k).or_insert(0) += v;
    }
}

fn join(
    items: Vec<Item>,
    annotated: &Option<PathBuf>,
    join: &JoinOptions,
    policy: SkipPolicy,
    report: &mut LoadReport,
) -> Result<Vec<Item>> {
    let Some(file) = annotated else {
        return Ok(items);
    };
    let params = join.params(policy);
    let ann = annotated::read_annotations(file, &params)?;
    let joined = annotated::attach_chains(items, &ann, &params)?;
    merge_reports(report, joined.report);
    Ok(joined.items)
}

fn load_aokvqa(a: &AokvqaSource) -> Result<(Vec<Item>, LoadReport)> {
    let mut report = LoadReport::default();
    let mut items = Vec::new();
    let p = AokvqaParams { on_bad_record: a.on_bad_record, images: a.images };
    for split in &a.splits {
        let json = a.dir.join(format!("aokvqa_v1p0_{split}.json"));
        let loaded = aokvqa::load_aokvqa(&json, Some(a.coco.as_path()), &p)?;
        for it in &loaded.items {
            if &it.split != split {
                return Err(DataError::Malformed {
                    path: json.clone(),
                    record: it.id.clone(),
                    reason: format!("field `split` says {:?} in the {split} file", it.split),
                });
            }
        }
        merge_reports(&mut report, loaded.report);
        items.extend(loaded.items);
    }
    let items = join(items, &a.annotated, &a.join, a.on_bad_record, &mut report)?;
    Ok((items, report))
}

fn load_scienceqa(s: &ScienceqaSource) -> Result<(Vec<Item>, LoadReport)> {
    let image_dir = s.image_dir.clone().unwrap_or_else(|| s.dir.join("images"));
    let p = ScienceqaParams { splits: s.splits.clone(), on_bad_record: s.on_bad_record, images: s.images };
    let loaded = scienceqa::load_scienceqa(&s.dir.join("problems.json"), &s.dir.join("pid_splits.json"), &image_dir, &p)?;
    Ok((loaded.items, loaded.report))
}

fn load_culturalvqa(c: &CulturalvqaSource) -> Result<(Vec<Item>, LoadReport)> {
    let files = c.shard_files()?;
    let refs: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    let p = CulturalvqaParams { split: c.split.clone(), on_bad_record: c.on_bad_record };
    let loaded = culturalvqa::load_culturalvqa(&refs, &p)?;
    let mut report = loaded.report;
    let items = join(loaded.items, &c.annotated, &c.join, c.on_bad_record, &mut report)?;
    Ok((items, report))
}
