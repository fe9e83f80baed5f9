//! A remote opened for transfers: an `object_store` client (S3 or a folder) under the remote's prefix,
//! driven from plain threads through one small tokio runtime.
use super::config::{Location, RemoteSpec};
use super::error::RemoteError;
use bytes::Bytes;
use futures::StreamExt;
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// An open remote.
pub struct Remote {
    pub name: String,
    /// For messages: the URL, and the endpoint when not AWS's.
    pub at: String,
    store: Arc<dyn ObjectStore>,
    prefix: String,
    rt: tokio::runtime::Runtime,
}

/// Above this size, uploads go in parts (S3 multipart), streamed from the file.
pub const MULTIPART_ABOVE: u64 = 32 << 20;
const PART_SIZE: usize = 16 << 20;

impl Remote {
    /// Opens the remote `name` described by `spec`; `project` resolves relative `file://` paths.
    pub fn open(name: &str, spec: &RemoteSpec, project: &Path) -> Result<Self, RemoteError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("mmb-remote")
            .enable_all()
            .build()
            .map_err(|e| RemoteError::Io { path: PathBuf::from("<tokio runtime>"), source: e })?;
        let mut at = spec.url.clone();
        let (store, prefix): (Arc<dyn ObjectStore>, String) = match spec.location(project)? {
            Location::Folder(dir) => {
                std::fs::create_dir_all(&dir).map_err(|e| RemoteError::Io { path: dir.clone(), source: e })?;
                let fs = object_store::local::LocalFileSystem::new_with_prefix(&dir).map_err(|e| RemoteError::Backend {
                    remote: name.to_string(),
                    at: spec.url.clone(),
                    op: "open",
                    key: dir.display().to_string(),
                    source: e,
                })?;
                (Arc::new(fs), String::new())
            }
            Location::S3 { bucket, prefix } => {
                if let Some(e) = &spec.endpoint {
                    at = format!("{} at {e}", spec.url);
                }
                (s3(name, spec, &bucket, &at)?, prefix)
            }
        };
        Ok(Self { name: name.to_string(), at, store, prefix, rt })
    }

    /// The full key of `rel` under the remote's prefix.
    pub fn key(&self, rel: &str) -> Key {
        if self.prefix.is_empty() {
            Key::from(rel)
        } else {
            Key::from(format!("{}/{rel}", self.prefix))
        }
    }

    fn err(&self, op: &'static str, key: &Key, source: object_store::Error) -> RemoteError {
        RemoteError::Backend { remote: self.name.clone(), at: self.at.clone(), op, key: key.to_string(), source }
    }

    /// Size of an object, or None if the remote has no such object (asked every time: no local index).
    pub fn head(&self, rel: &str) -> Result<Option<u64>, RemoteError> {
        let key = self.key(rel);
        match self.rt.block_on(self.store.head(&key)) {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err("HEAD", &key, e)),
        }
    }

    /// Writes a small object only if absent (`If-None-Match: *`); Ok(false) when it was already there.
    pub fn put_new(&self, rel: &str, bytes: Bytes) -> Result<bool, RemoteError> {
        let key = self.key(rel);
        let opts = PutOptions { mode: PutMode::Create, ..Default::default() };
        match self.rt.block_on(self.store.put_opts(&key, PutPayload::from_bytes(bytes), opts)) {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(self.err("PUT", &key, e)),
        }
    }

    /// Replaces an object (a corrupt copy found on the remote), in one atomic PUT.
    pub fn put_overwrite(&self, rel: &str, bytes: Bytes) -> Result<(), RemoteError> {
        let key = self.key(rel);
        self.rt.block_on(self.store.put(&key, PutPayload::from_bytes(bytes))).map(|_| ()).map_err(|e| self.err("PUT", &key, e))
    }

    /// Uploads a large object in parts from `bytes` (memory-mapped file), calling `progress` per part.
    /// S3 has no create-if-absent for multipart uploads; callers HEAD first, and since keys are content
    /// hashes, a concurrent upload of the same key writes the same bytes.
    pub fn put_multipart(&self, rel: &str, bytes: Bytes, progress: &dyn Fn(u64)) -> Result<(), RemoteError> {
        let key = self.key(rel);
        self.rt.block_on(async {
            let upload = self.store.put_multipart(&key).await.map_err(|e| self.err("multipart start", &key, e))?;
            let mut w = object_store::WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
            for chunk in bytes.chunks(PART_SIZE) {
                w.wait_for_capacity(2).await.map_err(|e| self.err("multipart part", &key, e))?;
                w.put(bytes.slice_ref(chunk));
                progress(chunk.len() as u64);
            }
            w.finish().await.map(|_| ()).map_err(|e| self.err("multipart complete", &key, e))
        })
    }

    /// Reads a small object whole; None if absent.
    pub fn get_small(&self, rel: &str) -> Result<Option<Bytes>, RemoteError> {
        let key = self.key(rel);
        self.rt.block_on(async {
            match self.store.get(&key).await {
                Ok(r) => r.bytes().await.map(Some).map_err(|e| self.err("GET", &key, e)),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(self.err("GET", &key, e)),
            }
        })
    }

    /// Streams an object into `sink`, chunk by chunk (never whole in memory).
    pub fn get_stream(&self, rel: &str, sink: &mut dyn FnMut(&[u8]) -> std::io::Result<()>) -> Result<(), RemoteError> {
        let key = self.key(rel);
        self.rt.block_on(async {
            let r = self.store.get(&key).await.map_err(|e| self.err("GET", &key, e))?;
            let mut stream = r.into_stream();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| self.err("GET", &key, e))?;
                sink(&chunk).map_err(|e| RemoteError::Io { path: PathBuf::from(key.to_string()), source: e })?;
            }
            Ok(())
        })
    }

    /// Object names (relative to `dir` under the prefix) and sizes: one paginated LIST.
    pub fn list(&self, dir: &str) -> Result<Vec<(String, u64)>, RemoteError> {
        let key = self.key(dir);
        let base = format!("{key}/");
        self.rt.block_on(async {
            let mut out = Vec::new();
            let mut stream = self.store.list(Some(&key));
            while let Some(meta) = stream.next().await {
                let meta = meta.map_err(|e| self.err("LIST", &key, e))?;
                let loc = meta.location.to_string();
                out.push((loc.strip_prefix(&base).unwrap_or(&loc).to_string(), meta.size));
            }
            Ok(out)
        })
    }

    /// Deletes an object (tests and repairs only; transfers never delete).
    pub fn delete(&self, rel: &str) -> Result<(), RemoteError> {
        let key = self.key(rel);
        self.rt.block_on(self.store.delete(&key)).map_err(|e| self.err("DELETE", &key, e))
    }
}

#[cfg(feature = "s3")]
fn s3(name: &str, spec: &RemoteSpec, bucket: &str, at: &str) -> Result<Arc<dyn ObjectStore>, RemoteError> {
    use object_store::aws::{AmazonS3Builder, Checksum};
    use object_store::{ClientOptions, RetryConfig};
    // reqwest is built without a default TLS crypto provider (ring instead of aws-lc: a lighter build).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let profile = super::credentials::Profile::load()?;
    let creds = super::credentials::credentials(&profile)
        .ok_or_else(|| RemoteError::NoCredentials { remote: name.to_string(), files: profile.files() })?;
    let region = spec.region.clone().or_else(|| super::credentials::region(&profile)).unwrap_or_else(|| "us-east-1".into());
    let endpoint =
        spec.endpoint.clone().or_else(|| std::env::var("AWS_ENDPOINT_URL_S3").ok()).or_else(|| std::env::var("AWS_ENDPOINT_URL").ok());
    let retry = RetryConfig { max_retries: 3, retry_timeout: std::time::Duration::from_secs(20), ..Default::default() };
    let client =
        ClientOptions::new().with_connect_timeout(std::time::Duration::from_secs(5)).with_timeout(std::time::Duration::from_secs(600));
    let mut b = AmazonS3Builder::new()
        .with_bucket_name(bucket)
        .with_region(region)
        .with_access_key_id(creds.key_id)
        .with_secret_access_key(creds.secret)
        .with_checksum_algorithm(Checksum::SHA256)
        .with_retry(retry)
        .with_client_options(client);
    if let Some(t) = creds.token {
        b = b.with_token(t);
    }
    if let Some(e) = endpoint {
        // A local server: plain http allowed when asked for, path-style addressing.
        b = b.with_allow_http(e.starts_with("http://")).with_endpoint(e).with_virtual_hosted_style_request(false);
    }
    let s3 = b.build().map_err(|e| RemoteError::Backend {
        remote: name.to_string(),
        at: at.to_string(),
        op: "configure",
        key: bucket.to_string(),
        source: e,
    })?;
    Ok(Arc::new(s3))
}

#[cfg(not(feature = "s3"))]
fn s3(name: &str, spec: &RemoteSpec, _bucket: &str, _at: &str) -> Result<Arc<dyn ObjectStore>, RemoteError> {
    Err(RemoteError::NoS3 { remote: name.to_string(), url: spec.url.clone() })
}
