//! Stage params set for one run on the command line (`mmb run --set dataset.seed=7`): laid over the stage
//! files and a preset, recorded under a lock named after them, so the default run's lock stays as it is.
use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr;

/// One `STAGE.KEY[.KEY…]=VALUE`, the value read as TOML (a bare word such as `cuda` as a string).
#[derive(Debug, Clone, PartialEq)]
pub struct Setting {
    pub stage: String,
    pub path: Vec<String>,
    pub value: toml::Value,
}

impl FromStr for Setting {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        let (key, value) = s.split_once('=').ok_or_else(|| anyhow::anyhow!("--set {s}: expected STAGE.KEY=VALUE"))?;
        let mut parts = key.trim().split('.').map(str::trim);
        let stage = parts.next().unwrap_or_default().to_string();
        let path: Vec<String> = parts.map(String::from).collect();
        anyhow::ensure!(
            !stage.is_empty() && !path.is_empty() && path.iter().all(|p| !p.is_empty()),
            "--set {s}: the key must be STAGE.KEY (e.g. dataset.seed), got `{key}`"
        );
        Ok(Setting { stage, path, value: parse_value(value.trim()).map_err(|e| anyhow::anyhow!("--set {s}: {e}"))? })
    }
}

/// `STAGE.KEY=VALUE` with the value in TOML, as it parses back (the task command of a Slurm job carries it).
impl std::fmt::Display for Setting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}={}", self.stage, self.path.join("."), self.value)
    }
}

/// A TOML value; a bare word (letters, digits, `_ - . / :`) that is not one is taken as a string, so
/// `--set eval.device=cuda` needs no quotes. Anything else that does not parse is an error, not a string.
fn parse_value(v: &str) -> anyhow::Result<toml::Value> {
    match toml::from_str::<toml::Table>(&format!("v = {v}")) {
        Ok(mut t) if t.len() == 1 => t.remove("v").ok_or_else(|| anyhow::anyhow!("`{v}` is not a TOML value")),
        _ if !v.is_empty() && v.chars().all(|c| c.is_alphanumeric() || "_-./:".contains(c)) => Ok(toml::Value::String(v.into())),
        Ok(_) => anyhow::bail!("`{v}` is more than one TOML value"),
        Err(e) => anyhow::bail!("`{v}` is not a TOML value: {}", e.message()),
    }
}

impl Setting {
    /// `{path[0]: {path[1]: … value}}`, the shape of a stage's params override.
    fn as_table(&self) -> toml::Table {
        let mut value = self.value.clone();
        for key in self.path.iter().skip(1).rev() {
            value = toml::Value::Table(toml::Table::from_iter([(key.clone(), value)]));
        }
        toml::Table::from_iter([(self.path[0].clone(), value)])
    }
}

/// Stage → params override of the settings, in order (a later one wins on the same key).
pub fn overrides(settings: &[Setting]) -> BTreeMap<String, toml::Table> {
    let mut out: BTreeMap<String, toml::Table> = BTreeMap::new();
    for s in settings {
        super::config::merge(out.entry(s.stage.clone()).or_default(), &s.as_table());
    }
    out
}

/// `base` with `over` deep-merged on top, stage by stage.
pub fn layered(mut base: BTreeMap<String, toml::Table>, over: &BTreeMap<String, toml::Table>) -> BTreeMap<String, toml::Table> {
    for (stage, table) in over {
        super::config::merge(base.entry(stage.clone()).or_default(), table);
    }
    base
}

/// The lock a run with these settings records in: `set-` and 12 hex digits of the blake3 of the settings'
/// canonical TOML (the same for the same values in any order); None without settings.
pub fn lock_suffix(settings: &[Setting]) -> anyhow::Result<Option<String>> {
    if settings.is_empty() {
        return Ok(None);
    }
    let canonical = toml::to_string(&overrides(settings))?;
    Ok(Some(format!("set-{}", &blake3::hash(canonical.as_bytes()).to_hex()[..12])))
}

/// Every setting names a stage that has a file in `dir` (`<stage>.toml`): a typo in the stage is an error,
/// not an override nobody reads. (A typo in a key is the stage params' error, naming the file.)
pub fn check_stages(settings: &[Setting], dir: &Path) -> anyhow::Result<()> {
    for s in settings {
        if !dir.join(format!("{}.toml", s.stage)).is_file() {
            let mut known: Vec<String> = std::fs::read_dir(dir)
                .map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?
                .filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(".toml").map(String::from))
                .collect();
            known.sort();
            anyhow::bail!(
                "--set {}.{}: no stage file {}/{}.toml (there are: {})",
                s.stage,
                s.path.join("."),
                dir.display(),
                s.stage,
                known.join(", ")
            );
        }
    }
    Ok(())
}

/// The stage configs of one run: the stage files in `stages`, under the preset `preset` of `presets.toml`
/// and then `set` (in that order), with the lock the run records in (`preset-NAME`, `set-…`,
/// `preset-NAME-set-…`; None: the default run's).
pub fn run_configs(stages: &Path, preset: Option<&str>, set: &[Setting]) -> anyhow::Result<(super::StageConfigs, Option<String>)> {
    let mut overrides = BTreeMap::new();
    let mut lock = None;
    if let Some(name) = preset {
        let file = stages.join("presets.toml");
        let presets = super::SweepFile::load(&file)?;
        let known: Vec<&str> = presets.variant.iter().map(|v| v.name.as_str()).collect();
        let v = presets
            .variant
            .iter()
            .find(|v| v.name == name)
            .ok_or_else(|| anyhow::anyhow!("{}: no preset named `{name}` (known: {})", file.display(), known.join(", ")))?;
        overrides = v.params.clone();
        lock = Some(format!("preset-{name}"));
    }
    if let Some(suffix) = lock_suffix(set)? {
        check_stages(set, stages)?;
        overrides = layered(overrides, &self::overrides(set));
        lock = Some(lock.map_or(suffix.clone(), |l| format!("{l}-{suffix}")));
    }
    Ok((super::StageConfigs { dir: stages.to_path_buf(), overrides }, lock))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(s: &str) -> Setting {
        s.parse().unwrap()
    }

    #[test]
    fn values_are_toml_and_bare_words_are_strings() {
        assert_eq!(
            set("dataset.seed=20261130"),
            Setting { stage: "dataset".into(), path: vec!["seed".into()], value: toml::Value::Integer(20261130) }
        );
        assert_eq!(set("ppo.trainer.learning_rate = 1e-5").value, toml::Value::Float(1e-5));
        assert_eq!(set("ppo.trainer.learning_rate=1e-5").path, ["trainer", "learning_rate"]);
        assert_eq!(set("eval.device=cuda").value, toml::Value::String("cuda".into()));
        assert_eq!(set("eval.device=\"cuda:1\"").value, toml::Value::String("cuda:1".into()));
        assert_eq!(set("eval.image_swap=false").value, toml::Value::Boolean(false));
        // Written as it parses back.
        for s in ["eval.device=cuda", "ppo.trainer={ learning_rate = 1e-5, seed = 2 }", "eval.splits=[\"val\"]", "dataset.seed=7"] {
            assert_eq!(set(&set(s).to_string()), set(s), "{s} → {}", set(s));
        }
        assert_eq!(set("eval.device=cuda").to_string(), "eval.device=\"cuda\"");
        assert_eq!(
            set("eval.splits=[\"val\", \"test\"]").value,
            toml::Value::Array(vec![toml::Value::String("val".into()), toml::Value::String("test".into())])
        );
    }

    #[test]
    fn malformed_settings_are_errors_that_quote_them() {
        let err = |s: &str| s.parse::<Setting>().unwrap_err().to_string();
        assert_eq!(err("dataset.seed"), "--set dataset.seed: expected STAGE.KEY=VALUE");
        assert_eq!(err("seed=3"), "--set seed=3: the key must be STAGE.KEY (e.g. dataset.seed), got `seed`");
        assert_eq!(err("dataset..seed=3"), "--set dataset..seed=3: the key must be STAGE.KEY (e.g. dataset.seed), got `dataset..seed`");
        assert!(
            err("eval.splits=[\"val\"").starts_with("--set eval.splits=[\"val\": `[\"val\"` is not a TOML value"),
            "{}",
            err("eval.splits=[\"val\"")
        );
        assert_eq!(err("a.b=1\nw = 2"), "--set a.b=1\nw = 2: `1\nw = 2` is more than one TOML value");
        assert!(err("a.b=").contains("is not a TOML value"), "an empty value");
    }

    #[test]
    fn settings_nest_merge_in_order_and_name_one_lock_whatever_their_order() {
        let a = [set("ppo.trainer.learning_rate=1e-5"), set("ppo.trainer.seed=3"), set("dataset.seed=1"), set("dataset.seed=2")];
        let o = overrides(&a);
        assert_eq!(toml::to_string(&o["ppo"]).unwrap(), "[trainer]\nlearning_rate = 0.00001\nseed = 3\n");
        assert_eq!(o["dataset"]["seed"], toml::Value::Integer(2), "a later setting wins");
        let b = [set("dataset.seed=2"), set("ppo.trainer.seed=3"), set("ppo.trainer.learning_rate=1e-5")];
        let name = lock_suffix(&a).unwrap().unwrap();
        assert_eq!(lock_suffix(&b).unwrap().unwrap(), name);
        assert!(name.starts_with("set-") && name.len() == 16, "{name}");
        assert_ne!(lock_suffix(&[set("dataset.seed=3")]).unwrap().unwrap(), name);
        assert_eq!(lock_suffix(&[]).unwrap(), None);
        // Over a preset's overrides: the setting wins on its key, the preset's other keys stay.
        let preset = overrides(&[set("ppo.trainer.learning_rate=1e-4"), set("ppo.trainer.ppo_epochs=2")]);
        let l = layered(preset, &overrides(&[set("ppo.trainer.learning_rate=1e-5")]));
        assert_eq!(toml::to_string(&l["ppo"]).unwrap(), "[trainer]\nlearning_rate = 0.00001\nppo_epochs = 2\n");
    }

    #[test]
    fn a_run_lays_settings_over_its_preset_and_names_its_lock_after_both() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("dataset.toml"), "[params]\nseed = 0\n").unwrap();
        std::fs::write(dir.path().join("presets.toml"), "[[variant]]\nname = \"small\"\n[variant.params.dataset]\nseed = 5\nitems = 10\n")
            .unwrap();
        let (c, lock) = run_configs(dir.path(), None, &[]).unwrap();
        assert!(c.overrides.is_empty() && lock.is_none(), "the default run: no overrides, the default lock");
        let (c, lock) = run_configs(dir.path(), Some("small"), &[]).unwrap();
        assert_eq!(toml::to_string(&c.overrides["dataset"]).unwrap(), "items = 10\nseed = 5\n");
        assert_eq!(lock.as_deref(), Some("preset-small"));
        let s = [set("dataset.seed=7")];
        let suffix = lock_suffix(&s).unwrap().unwrap();
        let (c, lock) = run_configs(dir.path(), Some("small"), &s).unwrap();
        assert_eq!(
            toml::to_string(&c.overrides["dataset"]).unwrap(),
            "items = 10\nseed = 7\n",
            "the setting wins, the preset's other key stays"
        );
        assert_eq!(lock, Some(format!("preset-small-{suffix}")));
        assert_eq!(run_configs(dir.path(), None, &s).unwrap().1, Some(suffix));
        let err = run_configs(dir.path(), Some("big"), &[]).unwrap_err().to_string();
        assert_eq!(err, format!("{}: no preset named `big` (known: small)", dir.path().join("presets.toml").display()));
        let err = run_configs(dir.path(), None, &[set("datset.seed=1")]).unwrap_err().to_string();
        assert!(err.starts_with("--set datset.seed: no stage file"), "{err}");
    }
}
