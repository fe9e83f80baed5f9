//! `stages/remotes.toml`: the project's named remotes. It sits beside the stage files because it is part
//! of the project's definition that teams share through version control (as DVC's `.dvc/config`), not of
//! one machine's store (`artifacts/` is ignored by git); it never holds secrets (credentials come from the
//! standard AWS environment variables and profile files).
use super::error::RemoteError;
use crate::store::write_atomic;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One remote: where it is and how to reach it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteSpec {
    /// `s3://bucket/prefix` or `file://PATH` (a relative PATH is taken from the project folder).
    pub url: String,
    /// S3 endpoint (a local S3-compatible server: `http://127.0.0.1:8333`); default: AWS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// S3 region; default: `AWS_REGION`, `AWS_DEFAULT_REGION`, the profile's, then `us-east-1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
}

/// Where a remote's URL points.
#[derive(Debug, Clone, PartialEq)]
pub enum Location {
    S3 { bucket: String, prefix: String },
    Folder(PathBuf),
}

impl RemoteSpec {
    /// Parses and checks the URL. `project` resolves a relative `file://` path.
    pub fn location(&self, project: &Path) -> Result<Location, RemoteError> {
        let bad = |msg: &str| RemoteError::BadUrl { url: self.url.clone(), msg: msg.to_string() };
        if let Some(rest) = self.url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            let ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.';
            if bucket.len() < 3 || bucket.len() > 63 || !bucket.chars().all(ok) {
                return Err(bad("the bucket name must be 3-63 lowercase letters, digits, '-' or '.'"));
            }
            let prefix = prefix.trim_matches('/');
            if prefix.split('/').any(|s| s == "." || s == "..") {
                return Err(bad("the prefix may not contain `.` or `..` segments"));
            }
            Ok(Location::S3 { bucket: bucket.to_string(), prefix: prefix.to_string() })
        } else if let Some(rest) = self.url.strip_prefix("file://") {
            if rest.is_empty() {
                return Err(bad("`file://` needs a folder: file:///abs/path or file://relative/path"));
            }
            if self.endpoint.is_some() || self.region.is_some() {
                return Err(bad("--endpoint and --region apply to s3:// remotes only"));
            }
            let p = Path::new(rest);
            Ok(Location::Folder(if p.is_absolute() { p.to_path_buf() } else { project.join(p) }))
        } else {
            Err(bad("expected s3://bucket/prefix or file://PATH"))
        }
    }
}

/// The remotes file: `[remote.NAME]` tables and the default remote.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemotesFile {
    /// The remote `push`/`pull` use without `-r`; the first one added unless changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    #[serde(default)]
    pub remote: BTreeMap<String, RemoteSpec>,
}

impl RemotesFile {
    pub const NAME: &'static str = "remotes.toml";

    pub fn path(stages: &Path) -> PathBuf {
        stages.join(Self::NAME)
    }

    /// The remotes of the project whose stage files are in `stages` (none if the file is absent).
    pub fn load(stages: &Path) -> Result<Self, RemoteError> {
        let path = Self::path(stages);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(RemoteError::Config { path, msg: e.to_string() }),
        };
        let file: Self = toml::from_str(&text).map_err(|e| RemoteError::Config { path: path.clone(), msg: e.to_string() })?;
        for (name, spec) in &file.remote {
            check_name(name).map_err(|msg| RemoteError::Config { path: path.clone(), msg })?;
            spec.location(Path::new(".")).map_err(|e| RemoteError::Config { path: path.clone(), msg: format!("remote `{name}`: {e}") })?;
        }
        if let Some(d) = &file.default {
            if !file.remote.contains_key(d) {
                return Err(RemoteError::Config { path, msg: format!("default remote `{d}` is not defined") });
            }
        }
        Ok(file)
    }

    pub fn save(&self, stages: &Path) -> Result<(), RemoteError> {
        let text = toml::to_string_pretty(self).expect("remotes serialize");
        let text = format!("# Remotes for `mmb push` / `mmb pull` (edit with `mmb remote add|remove`). No secrets here:\n# credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or ~/.aws/credentials (AWS_PROFILE).\n{text}");
        write_atomic(&Self::path(stages), text.as_bytes())?;
        Ok(())
    }

    /// Adds a remote (an existing name is an error); the first becomes the default.
    pub fn add(&mut self, name: &str, spec: RemoteSpec) -> Result<(), RemoteError> {
        check_name(name).map_err(|msg| RemoteError::BadName { name: name.to_string(), msg })?;
        spec.location(Path::new("."))?;
        if self.remote.contains_key(name) {
            return Err(RemoteError::BadName { name: name.to_string(), msg: "a remote of this name exists; remove it first".into() });
        }
        self.remote.insert(name.to_string(), spec);
        if self.default.is_none() {
            self.default = Some(name.to_string());
        }
        Ok(())
    }

    pub fn remove(&mut self, name: &str) -> Result<RemoteSpec, RemoteError> {
        let spec = self.remote.remove(name).ok_or_else(|| self.unknown(name))?;
        if self.default.as_deref() == Some(name) {
            self.default = self.remote.keys().next().cloned();
        }
        Ok(spec)
    }

    /// The named remote, or the default one.
    pub fn get(&self, name: Option<&str>) -> Result<(String, RemoteSpec), RemoteError> {
        let name = match name.or(self.default.as_deref()) {
            Some(n) => n.to_string(),
            None => return Err(RemoteError::NoRemote),
        };
        let spec = self.remote.get(&name).ok_or_else(|| self.unknown(&name))?;
        Ok((name, spec.clone()))
    }

    fn unknown(&self, name: &str) -> RemoteError {
        RemoteError::UnknownRemote { name: name.to_string(), known: self.remote.keys().cloned().collect::<Vec<_>>().join(", ") }
    }
}

fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err(format!("remote name `{name}`: use letters, digits, '-' and '_'"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_bad_ones_are_refused() {
        let spec = |u: &str| RemoteSpec { url: u.into(), endpoint: None, region: None };
        assert_eq!(
            spec("s3://team-bucket/shared/scored/").location(Path::new("/p")).unwrap(),
            Location::S3 { bucket: "team-bucket".into(), prefix: "shared/scored".into() }
        );
        assert_eq!(spec("s3://mmb").location(Path::new("/p")).unwrap(), Location::S3 { bucket: "mmb".into(), prefix: "".into() });
        assert_eq!(spec("file://rel/dir").location(Path::new("/p")).unwrap(), Location::Folder("/p/rel/dir".into()));
        assert_eq!(spec("file:///abs").location(Path::new("/p")).unwrap(), Location::Folder("/abs".into()));
        for bad in ["http://x", "s3://AB", "s3://ok-bucket/a/../b", "file://", "gs://x/y"] {
            let e = spec(bad).location(Path::new("/p")).unwrap_err().to_string();
            assert!(e.contains(bad), "{e}");
        }
    }

    #[test]
    fn add_list_remove_round_trip_through_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = RemotesFile::load(dir.path()).unwrap();
        f.add("origin", RemoteSpec { url: "s3://mmb/team".into(), endpoint: Some("http://127.0.0.1:8333".into()), region: None }).unwrap();
        f.add("nfs", RemoteSpec { url: "file:///mnt/shared".into(), endpoint: None, region: None }).unwrap();
        assert!(f.add("nfs", RemoteSpec { url: "file:///x".into(), endpoint: None, region: None }).is_err());
        assert!(f.add("bad name", RemoteSpec { url: "file:///x".into(), endpoint: None, region: None }).is_err());
        f.save(dir.path()).unwrap();
        let mut g = RemotesFile::load(dir.path()).unwrap();
        assert_eq!(g, f);
        assert_eq!(g.get(None).unwrap().0, "origin");
        g.remove("origin").unwrap();
        assert_eq!(g.get(None).unwrap().0, "nfs");
        assert!(g.get(Some("origin")).unwrap_err().to_string().contains("nfs"));
        std::fs::write(RemotesFile::path(dir.path()), "[remote.x]\nurl = \"s3://mmb\"\nendpont = \"http://a\"\n").unwrap();
        let e = RemotesFile::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("remotes.toml") && e.contains("endpont"), "{e}");
    }
}
