use crate::engine::EngineError;
use crate::store::StoreError;
use std::path::PathBuf;

/// Everything that can go wrong between the store and a remote; each variant names the remote, the
/// object key or the file it is about.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("{path}: {msg}")]
    Config { path: PathBuf, msg: String },
    #[error("remote URL `{url}`: {msg}")]
    BadUrl { url: String, msg: String },
    #[error("{name}: {msg}")]
    BadName { name: String, msg: String },
    #[error("no remote named `{name}` (remotes: {known}); add one with `mmb remote add NAME URL`")]
    UnknownRemote { name: String, known: String },
    #[error("no remote configured: add one with `mmb remote add NAME s3://bucket/prefix` (or file://PATH)")]
    NoRemote,
    #[error("remote `{remote}`: no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or a profile in {files} (AWS_PROFILE selects one)")]
    NoCredentials { remote: String, files: String },
    #[error("{0}: unreadable AWS profile file: {1}")]
    Profile(PathBuf, String),
    #[error("remote `{remote}` ({url}): this mmb was built without S3 support; build with `--features s3`")]
    NoS3 { remote: String, url: String },
    #[error("remote `{remote}` ({at}): {op} `{key}`: {}", describe(.source))]
    Backend { remote: String, at: String, op: &'static str, key: String, source: object_store::Error },
    #[error("remote `{remote}` ({at}): `{key}` is corrupt: its bytes hash to {found}, not {expected}; refused (nothing stored); push it again from a good copy")]
    Corrupt { remote: String, at: String, key: String, expected: String, found: String },
    #[error("remote `{remote}` ({at}): nothing pushed yet for lock `{lock}` (no {key}); run `mmb push` first")]
    NothingPushed { remote: String, at: String, lock: String, key: String },
    #[error("remote `{remote}` ({at}): manifest `{key}`: {msg}")]
    Manifest { remote: String, at: String, key: String, msg: String },
    #[error("target `{target}`: {msg}")]
    Target { target: String, msg: String },
    #[error("{failed} of {total} transfer(s) failed; first: {first}")]
    Failed { failed: usize, total: usize, first: Box<RemoteError> },
    #[error("concurrent pushes kept moving `{key}` on remote `{remote}`; {tries} tries, giving up (run push again)")]
    RefContention { remote: String, key: String, tries: usize },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// object_store's errors, with what a person should check for the usual ones.
fn describe(e: &object_store::Error) -> String {
    let chain = crate::runtime::error_chain(e);
    match e {
        object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. } => format!(
            "access denied ({chain}); check the credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or the AWS_PROFILE profile) and the bucket"
        ),
        object_store::Error::NotFound { .. } => format!("not found on the remote ({chain})"),
        _ => {
            let lower = chain.to_lowercase();
            if lower.contains("connect") || lower.contains("dns") || lower.contains("timed out") || lower.contains("connection") {
                format!("cannot reach the server ({chain}); is it running and is the endpoint right?")
            } else if lower.contains("signaturedoesnotmatch") || lower.contains("invalidaccesskeyid") || lower.contains("accessdenied") {
                format!("access denied ({chain}); check the credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or the AWS_PROFILE profile)")
            } else if lower.contains("nosuchbucket") {
                format!("no such bucket ({chain})")
            } else {
                chain
            }
        }
    }
}
