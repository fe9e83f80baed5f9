//! AWS credentials and region the way the AWS CLI finds them: `AWS_ACCESS_KEY_ID` /
//! `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN` first, then the profile `AWS_PROFILE` (default `default`)
//! in `AWS_SHARED_CREDENTIALS_FILE` (`~/.aws/credentials`) and `AWS_CONFIG_FILE` (`~/.aws/config`, where
//! sections are `[profile NAME]`).
use super::error::RemoteError;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The selected profile's keys from both files (credentials file first).
#[derive(Debug, Default)]
pub struct Profile {
    pub name: String,
    pub paths: Vec<PathBuf>,
    pub keys: BTreeMap<String, String>,
}

pub struct Credentials {
    pub key_id: String,
    pub secret: String,
    pub token: Option<String>,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

impl Profile {
    pub fn load() -> Result<Self, RemoteError> {
        let name = env("AWS_PROFILE").unwrap_or_else(|| "default".into());
        let home = env("HOME").map(PathBuf::from);
        let creds = env("AWS_SHARED_CREDENTIALS_FILE").map(PathBuf::from).or_else(|| home.as_ref().map(|h| h.join(".aws/credentials")));
        let config = env("AWS_CONFIG_FILE").map(PathBuf::from).or_else(|| home.as_ref().map(|h| h.join(".aws/config")));
        let mut p = Profile { name: name.clone(), ..Default::default() };
        for (path, section) in [(creds, name.clone()), (config, if name == "default" { name.clone() } else { format!("profile {name}") })] {
            let Some(path) = path else { continue };
            p.paths.push(path.clone());
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(RemoteError::Profile(path, e.to_string())),
            };
            for (k, v) in parse_section(&text, &section).map_err(|m| RemoteError::Profile(path.clone(), m))? {
                p.keys.entry(k).or_insert(v);
            }
        }
        Ok(p)
    }

    pub fn files(&self) -> String {
        let paths: Vec<String> = self.paths.iter().map(|p| p.display().to_string()).collect();
        format!("[{}] of {}", self.name, if paths.is_empty() { "~/.aws/credentials".into() } else { paths.join(" / ") })
    }
}

/// `key = value` lines of one `[section]` of an INI file.
fn parse_section(text: &str, section: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut inside = false;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(s) = line.strip_prefix('[') {
            let s = s.strip_suffix(']').ok_or_else(|| format!("line {}: unclosed section header `{line}`", n + 1))?;
            inside = s.trim() == section;
            continue;
        }
        if inside {
            if let Some((k, v)) = line.split_once('=') {
                out.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
    }
    Ok(out)
}

/// Environment first, then the profile; None when neither has a key pair.
pub fn credentials(p: &Profile) -> Option<Credentials> {
    if let (Some(key_id), Some(secret)) = (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
        return Some(Credentials { key_id, secret, token: env("AWS_SESSION_TOKEN") });
    }
    let key_id = p.keys.get("aws_access_key_id")?.clone();
    let secret = p.keys.get("aws_secret_access_key")?.clone();
    Some(Credentials { key_id, secret, token: p.keys.get("aws_session_token").cloned() })
}

pub fn region(p: &Profile) -> Option<String> {
    env("AWS_REGION").or_else(|| env("AWS_DEFAULT_REGION")).or_else(|| p.keys.get("region").cloned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_sections_are_read_like_the_aws_cli() {
        let text = "# c\n[default]\naws_access_key_id = A\naws_secret_access_key = B\n\n[team]\naws_access_key_id=C\naws_secret_access_key = D\naws_session_token = T\n";
        assert_eq!(
            parse_section(text, "team").unwrap(),
            vec![
                ("aws_access_key_id".to_string(), "C".to_string()),
                ("aws_secret_access_key".to_string(), "D".to_string()),
                ("aws_session_token".to_string(), "T".to_string()),
            ]
        );
        assert_eq!(parse_section(text, "default").unwrap().len(), 2);
        assert!(parse_section("[default\nx=1", "default").unwrap_err().contains("line 1"));
        let p = Profile { name: "team".into(), paths: vec![], keys: parse_section(text, "team").unwrap().into_iter().collect() };
        // (The environment wins when set; the CI environment may set it, so only the profile path is checked here.)
        if std::env::var("AWS_ACCESS_KEY_ID").is_err() {
            let c = credentials(&p).unwrap();
            assert_eq!((c.key_id.as_str(), c.secret.as_str(), c.token.as_deref()), ("C", "D", Some("T")));
        }
    }
}
