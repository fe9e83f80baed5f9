//! The runs of `mmb sweep --seeds N`: the main pipeline again with every seed that draws something after
//! the base model changed to `k` — the sampled warm-up chains (`generate`), the statement draw (`map`), SFT's
//! data order, PPO's question draws, rollouts and mini-batches, and eval's sampling. The benchmark and the
//! (demo) base model stay: every run answers the same items with the same starting model, so the runs'
//! items pair up, and the spread is that of the method's own randomness.
use super::StageConfigs;
use std::collections::BTreeMap;

/// The seed-`k` run's name (its lock); seed 0 is the main run itself.
pub fn seed_run_name(k: u64) -> String {
    format!("seed-{k}")
}

/// The overrides that make the seed-`k` run out of `configs` (the main run's stage files): each seed
/// param set to `k`; the trainers' settings are the resolved ones with only `seed` changed, so nothing else
/// of theirs moves. Seed 0 is the main run's own settings (no overrides), so its run is the main run's cache.
pub fn seed_overrides(configs: &StageConfigs, k: u64) -> anyhow::Result<BTreeMap<String, toml::Table>> {
    if k == 0 {
        return Ok(BTreeMap::new());
    }
    let seed = toml::Value::Integer(i64::try_from(k).map_err(|_| anyhow::anyhow!("seed {k} does not fit a TOML integer"))?);
    let with_seed = |trainer: serde_json::Value, stage: &str| -> anyhow::Result<toml::Value> {
        let mut t = match trainer {
            serde_json::Value::Object(m) => m,
            serde_json::Value::Null => serde_json::Map::new(),
            other => anyhow::bail!("stage `{stage}`: trainer must be a table, found {other}"),
        };
        t.insert("seed".into(), serde_json::json!(k));
        Ok(toml::Value::try_from(serde_json::Value::Object(t))?)
    };
    let table = |pairs: Vec<(&str, toml::Value)>| pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect::<toml::Table>();
    let sft: super::sft::SftStageParams = configs.params("sft")?;
    let ppo: super::ppo::PpoStageParams = configs.params("ppo")?;
    Ok(BTreeMap::from([
        ("generate".to_string(), table(vec![("seed", seed.clone())])),
        ("map".to_string(), table(vec![("seed", seed.clone())])),
        ("sft".to_string(), table(vec![("trainer", with_seed(sft.trainer, "sft")?)])),
        ("ppo".to_string(), table(vec![("seed", seed.clone()), ("trainer", with_seed(ppo.trainer, "ppo")?)])),
        ("eval".to_string(), table(vec![("seed", seed)])),
    ]))
}
