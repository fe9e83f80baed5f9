//! Stage params from `stages/<stage>.toml`, optionally overlaid by a sweep variant's overrides.
use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A stage's TOML file: `[params]` overrides the defaults of its params struct.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct StageToml {
    /// What the stage is for (documentation only).
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub params: Option<toml::Table>,
}

/// Where every stage's params come from: the stage files in `dir`, then per-stage overrides on top.
#[derive(Debug, Clone, Default)]
pub struct StageConfigs {
    pub dir: PathBuf,
    /// Stage → a params table deep-merged over the file's `[params]` (a sweep variant's changes).
    pub overrides: BTreeMap<String, toml::Table>,
}

impl StageConfigs {
    pub fn new(dir: &Path) -> Self {
        Self { dir: dir.to_path_buf(), overrides: BTreeMap::new() }
    }

    /// The params of `stage`: defaults in code < what `<dir>/project.toml` sets for it
    /// ([`super::project::Project::layer`]) < `<dir>/<stage>.toml` < overrides. Unknown keys are errors
    /// that name the file, so a typo never silently keeps a default.
    pub fn params<P: DeserializeOwned + Default>(&self, stage: &str) -> anyhow::Result<P> {
        let path = self.dir.join(format!("{stage}.toml"));
        let mut table = super::project::Project::load(&self.dir)?.layer(stage);
        merge(&mut table, &self.file_params(stage)?);
        if let Some(over) = self.overrides.get(stage) {
            merge(&mut table, over);
        }
        if table.is_empty() {
            return Ok(P::default());
        }
        P::deserialize(toml::Value::Table(table))
            .map_err(|e| anyhow::anyhow!("{} (with stages/project.toml and overrides for `{stage}`): params: {e}", path.display()))
    }
}

impl StageConfigs {
    /// The `[params]` of `<dir>/<stage>.toml` (empty when there is no file).
    fn file_params(&self, stage: &str) -> anyhow::Result<toml::Table> {
        let path = self.dir.join(format!("{stage}.toml"));
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                Ok(toml::from_str::<StageToml>(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?.params.unwrap_or_default())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(toml::Table::new()),
            Err(e) => anyhow::bail!("{}: {e}", path.display()),
        }
    }

    /// Where `stage`'s params key `key` was set last: the overrides (a preset or sweep variant), its stage
    /// file, or `project.toml`; "the default" when none sets it.
    pub fn origin(&self, stage: &str, key: &str) -> anyhow::Result<String> {
        if self.overrides.get(stage).is_some_and(|o| o.contains_key(key)) {
            return Ok(format!("the preset's or sweep variant's overrides of `{stage}`"));
        }
        if self.file_params(stage)?.contains_key(key) {
            return Ok(self.dir.join(format!("{stage}.toml")).display().to_string());
        }
        if super::project::Project::load(&self.dir)?.layer(stage).contains_key(key) {
            return Ok(self.dir.join(super::project::FILE).display().to_string());
        }
        Ok("the default".into())
    }
}

pub(super) fn merge(base: &mut toml::Table, over: &toml::Table) {
    for (k, v) in over {
        match (base.get_mut(k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            _ => {
                base.insert(k.clone(), v.clone());
            }
        }
    }
}

/// Reads `<dir>/<name>.toml` into `P` (no overrides).
pub fn load_stage_toml<P: DeserializeOwned + Default>(dir: &Path, name: &str) -> anyhow::Result<P> {
    StageConfigs::new(dir).params(name)
}

/// `stages/sweep.toml`: named variants, each a set of per-stage param overrides (the paper's ablations).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepFile {
    #[serde(default)]
    pub variant: Vec<Variant>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Variant {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    /// Stage → params overrides.
    #[serde(default)]
    pub params: BTreeMap<String, toml::Table>,
    /// Which policy of the variant's `eval` is its result (`vanilla`, `sft`, `full`, `sc` or `dpo`; None: `full`). A
    /// prompting baseline (`mmb compare`'s DPV, DPS) is the vanilla model under its own prompt.
    #[serde(default)]
    pub row: Option<String>,
}

impl Variant {
    /// The eval policy whose rows are this variant's result.
    pub fn row(&self) -> &str {
        self.row.as_deref().unwrap_or("full")
    }
}

impl SweepFile {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let f: Self = toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let mut seen = std::collections::BTreeSet::new();
        for v in &f.variant {
            anyhow::ensure!(
                !v.name.is_empty() && v.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
                "{}: variant name {:?}: use letters, digits, - and _",
                path.display(),
                v.name
            );
            anyhow::ensure!(seen.insert(v.name.clone()), "{}: variant {:?} appears twice", path.display(), v.name);
            anyhow::ensure!(
                super::eval::VARIANTS.contains(&v.row()) || [super::self_consistency::SC_POLICY, super::dpo::DPO_POLICY].contains(&v.row()),
                "{}: variant {:?}: row {:?} is not an eval policy (expected one of {:?}, {:?} or {:?})",
                path.display(),
                v.name,
                v.row(),
                super::eval::VARIANTS,
                super::self_consistency::SC_POLICY,
                super::dpo::DPO_POLICY
            );
        }
        Ok(f)
    }
}
