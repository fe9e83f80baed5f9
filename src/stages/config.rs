use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::path::Path;

/// A stage's TOML file: `[params]` overrides the defaults of its params struct.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct StageToml<P> {
    /// What the stage is for (documentation only).
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub params: Option<P>,
}

/// Reads `<dir>/<name>.toml` into the params struct `P` (defaults when the file is absent).
/// Unknown keys are errors that name the file, so a typo never silently keeps a default.
pub fn load_stage_toml<P: DeserializeOwned + Default>(dir: &Path, name: &str) -> anyhow::Result<P> {
    let path = dir.join(format!("{name}.toml"));
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(P::default()),
        Err(e) => anyhow::bail!("{}: {e}", path.display()),
    };
    let parsed: StageToml<P> = toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(parsed.params.unwrap_or_default())
}
