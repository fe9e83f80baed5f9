//! Datasets as rows of one schema ([`Item`]), ready for the artifact store.
//!
//! Every source ends as `Vec<Item>` and, through [`items_to_record_batch`], as one Arrow
//! `RecordBatch` with a fixed schema and Hugging Face `datasets` features ([`hf_features`]).
//! Loaders never write files: the store turns the batch into a Parquet artifact.
//!
//! - [`aokvqa`]: the official A-OKVQA JSON plus a COCO image folder.
//! - [`scienceqa`]: `problems.json` + `pid_splits.json` + the image folder (image questions only).
//! - [`culturalvqa`]: the Hugging Face Parquet files of CulturalVQA.
//! - [`annotated`]: the paper's two-level reasoning chains (`keys_filtered`), joined by question id
//!   or loaded standalone.
//! - [`penumbra`]: the embedded benchmark, generated from a seed, with known ground truth.
//! - [`sources`]: what the `dataset` stage loads (the real datasets above by their paths, joined with
//!   the annotated chains), and how images enter the store ([`ImageMode`]).
//!
//! Bad input never disappears silently: a loader either fails with a [`DataError`] that names the
//! file and the record, or (with [`SkipPolicy::SkipAndCount`]) records each skip in a [`LoadReport`].

pub mod annotated;
pub mod aokvqa;
pub mod corpus;
pub mod culturalvqa;
pub mod penumbra;
pub mod schema;
pub mod scienceqa;
pub mod sheet;
pub mod sources;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use schema::{
    hf_features, hf_metadata_json, item_schema, items_from_record_batch, items_to_record_batch, ImageData, Item, ReferenceChain,
};

/// The one error type of the data library. Every variant says where (file, record, field).
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not valid JSON of the expected shape: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}, record {record}: {reason}")]
    Malformed { path: PathBuf, record: String, reason: String },
    #[error("{path}, record {record}: image file {image} is missing")]
    MissingImage { path: PathBuf, record: String, image: PathBuf },
    #[error("{path}, record {record}: id {id} has no match in the dataset it is joined onto")]
    UnmatchedId { path: PathBuf, record: String, id: String },
    #[error("{path}, record {record}: id {id} occurs more than once")]
    DuplicateId { path: PathBuf, record: String, id: String },
    #[error("{path}: Parquet/Arrow read failed: {reason}")]
    Parquet { path: PathBuf, reason: String },
    #[error("record batch does not match the item schema: {0}")]
    Schema(String),
    #[error("arrow error while building the item batch: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("invalid parameters: {0}")]
    Params(String),
    #[error("image encode/decode failed for {what}: {reason}")]
    Image { what: String, reason: String },
}

pub type Result<T> = std::result::Result<T, DataError>;

/// What a loader does with a record it cannot use (malformed, image missing, id without match).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SkipPolicy {
    /// Fail on the first bad record, naming file and record.
    #[default]
    Error,
    /// Leave the record out and count it, with the reason, in the [`LoadReport`].
    SkipAndCount,
}

/// One record left out under [`SkipPolicy::SkipAndCount`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skip {
    pub file: PathBuf,
    pub record: String,
    pub reason: String,
}

/// What a load did besides producing items: skips and notable (kept) quirks, by name.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LoadReport {
    pub skipped: Vec<Skip>,
    /// Counts of quirks met while loading, by name (e.g. `missing_image_level`); each loader
    /// documents what it counts.
    pub notes: std::collections::BTreeMap<String, usize>,
}

impl LoadReport {
    pub fn note(&mut self, what: &str) {
        *self.notes.entry(what.to_string()).or_insert(0) += 1;
    }

    pub fn skip_count(&self) -> usize {
        self.skipped.len()
    }

    /// Apply the policy to a bad record: an error under `Error`, a counted skip otherwise.
    pub(crate) fn reject(&mut self, policy: SkipPolicy, err: DataError) -> Result<()> {
        match policy {
            SkipPolicy::Error => Err(err),
            SkipPolicy::SkipAndCount => {
                let (file, record) = err_location(&err);
                self.skipped.push(Skip { file, record, reason: err.to_string() });
                Ok(())
            }
        }
    }
}

fn err_location(err: &DataError) -> (PathBuf, String) {
    match err {
        DataError::Malformed { path, record, .. }
        | DataError::MissingImage { path, record, .. }
        | DataError::UnmatchedId { path, record, .. }
        | DataError::DuplicateId { path, record, .. } => (path.clone(), record.clone()),
        DataError::Io { path, .. } | DataError::Json { path, .. } | DataError::Parquet { path, .. } => (path.clone(), String::new()),
        _ => (PathBuf::new(), String::new()),
    }
}

/// Items plus the report of what was skipped or noted while loading them.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    pub items: Vec<Item>,
    pub report: LoadReport,
}

pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| DataError::Io { path: path.to_path_buf(), source })
}

pub(crate) fn read_json(path: &Path) -> Result<serde_json::Value> {
    let bytes = read_file(path)?;
    serde_json::from_slice(&bytes).map_err(|source| DataError::Json { path: path.to_path_buf(), source })
}

/// How a file-based source's images enter the items artifact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ImageMode {
    /// Copy each file's bytes into the row (`image.bytes`), as read (no re-encoding): the artifact is
    /// self-contained and portable, at the cost of its size (and of every stage that reads the items).
    #[default]
    Embed,
    /// Keep only the file's absolute path (`image.path`, `image.bytes` null) and its blake3 hash
    /// (`meta.image_blake3`); readers go through [`image_bytes`], which refuses a file whose bytes changed.
    Reference,
}

/// The key in `Item::meta` holding the blake3 hash of a referenced image file.
pub const IMAGE_HASH_KEY: &str = "image_blake3";

/// An image of `record` in `file`: its bytes ([`ImageMode::Embed`]) or a checked reference
/// ([`ImageMode::Reference`]). A missing file is [`DataError::MissingImage`]; anything else that makes
/// it unusable (a folder, unreadable, not an image) is [`DataError::Malformed`] naming the record.
/// Sets `item.image` and, for a reference, the file's blake3 hash in `item.meta` ([`IMAGE_HASH_KEY`]).
pub(crate) fn attach_image(
    item: &mut Item,
    file: &Path,
    record: &str,
    image_path: &Path,
    display_path: String,
    mode: ImageMode,
) -> Result<()> {
    let (image, hash) = load_image(file, record, image_path, display_path, mode)?;
    item.image = Some(image);
    if let Some(h) = hash {
        item.meta.insert(IMAGE_HASH_KEY.into(), serde_json::json!(h));
    }
    Ok(())
}

fn load_image(file: &Path, record: &str, image_path: &Path, display_path: String, mode: ImageMode) -> Result<(ImageData, Option<String>)> {
    let bad = |reason: String| DataError::Malformed {
        path: file.to_path_buf(),
        record: record.to_string(),
        reason: format!("image file {}: {reason}", image_path.display()),
    };
    let meta = match std::fs::metadata(image_path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(DataError::MissingImage { path: file.to_path_buf(), record: record.to_string(), image: image_path.to_path_buf() })
        }
        Err(e) => return Err(bad(e.to_string())),
    };
    if !meta.is_file() {
        return Err(bad("is not a file".into()));
    }
    match mode {
        ImageMode::Embed => {
            let bytes = std::fs::read(image_path).map_err(|e| bad(e.to_string()))?;
            image::guess_format(&bytes).map_err(|e| bad(format!("not an image: {e}")))?;
            Ok((ImageData { bytes: Some(bytes), path: Some(display_path) }, None))
        }
        ImageMode::Reference => {
            let abs = std::path::absolute(image_path).map_err(|e| bad(e.to_string()))?;
            let mut h = blake3::Hasher::new();
            h.update_mmap(&abs).map_err(|e| bad(e.to_string()))?;
            let hash = h.finalize().to_hex().to_string();
            image::ImageReader::open(&abs)
                .and_then(|r| r.with_guessed_format())
                .map_err(|e| bad(e.to_string()))?
                .into_dimensions()
                .map_err(|e| bad(format!("not a readable image: {e}")))?;
            Ok((ImageData { bytes: None, path: Some(abs.to_string_lossy().into_owned()) }, Some(hash)))
        }
    }
}

/// The encoded bytes of an item's image: embedded ones as they are, a referenced file read from its
/// path and checked against the hash the dataset stage recorded (a changed file is an error that says
/// to rerun the dataset stage, never silently different pixels).
pub fn image_bytes(item: &Item) -> Result<std::borrow::Cow<'_, [u8]>> {
    let img = item.image.as_ref().ok_or_else(|| DataError::Params(format!("item {}: has no image", item.id)))?;
    if let Some(b) = &img.bytes {
        return Ok(std::borrow::Cow::Borrowed(b));
    }
    let path = img.path.as_deref().ok_or_else(|| DataError::Params(format!("item {}: image has neither bytes nor a path", item.id)))?;
    let want = item.meta.get(IMAGE_HASH_KEY).and_then(|v| v.as_str()).ok_or_else(|| {
        DataError::Params(format!("item {}: image {path} is referenced without its hash (meta.{IMAGE_HASH_KEY})", item.id))
    })?;
    let bytes = read_file(Path::new(path))?;
    let found = blake3::hash(&bytes).to_hex().to_string();
    if found != want {
        return Err(DataError::Image {
            what: format!("item {} ({path})", item.id),
            reason: format!(
                "the file changed since the dataset stage read it (blake3 {found}, recorded {want}): rerun the dataset stage (`mmb run dataset --force`)"
            ),
        });
    }
    Ok(std::borrow::Cow::Owned(bytes))
}

/// Decode encoded image bytes completely (a format sniff is not enough: bytes that start like a PNG
/// may still not decode). Err: the reason.
pub(crate) fn check_decodes(bytes: &[u8]) -> std::result::Result<(), String> {
    if bytes.is_empty() {
        return Err("empty image bytes".into());
    }
    image::load_from_memory(bytes).map(|_| ()).map_err(|e| format!("undecodable image bytes: {e}"))
}

/// Field helpers for records parsed as `serde_json::Value`: each error names file, record, field.
pub(crate) struct RecordCtx<'a> {
    pub file: &'a Path,
    pub record: String,
}

impl RecordCtx<'_> {
    pub fn malformed(&self, reason: impl Into<String>) -> DataError {
        DataError::Malformed { path: self.file.to_path_buf(), record: self.record.clone(), reason: reason.into() }
    }

    pub fn field<'v>(&self, v: &'v serde_json::Value, name: &str) -> Result<&'v serde_json::Value> {
        v.get(name).ok_or_else(|| self.malformed(format!("field `{name}` is missing")))
    }

    pub fn str(&self, v: &serde_json::Value, name: &str) -> Result<String> {
        let f = self.field(v, name)?;
        f.as_str().map(str::to_string).ok_or_else(|| self.malformed(format!("field `{name}`: expected a string, found {}", kind(f))))
    }

    pub fn opt_str(&self, v: &serde_json::Value, name: &str) -> Result<Option<String>> {
        match v.get(name) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(_) => self.str(v, name).map(Some),
        }
    }

    pub fn int(&self, v: &serde_json::Value, name: &str) -> Result<i64> {
        let f = self.field(v, name)?;
        f.as_i64().ok_or_else(|| self.malformed(format!("field `{name}`: expected an integer, found {}", kind(f))))
    }

    pub fn str_list(&self, v: &serde_json::Value, name: &str) -> Result<Vec<String>> {
        let f = self.field(v, name)?;
        self.str_list_value(f, name)
    }

    pub fn str_list_value(&self, f: &serde_json::Value, name: &str) -> Result<Vec<String>> {
        let arr = f.as_array().ok_or_else(|| self.malformed(format!("field `{name}`: expected a list of strings, found {}", kind(f))))?;
        arr.iter()
            .enumerate()
            .map(|(i, s)| {
                s.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| self.malformed(format!("field `{name}`[{i}]: expected a string, found {}", kind(s))))
            })
            .collect()
    }
}

pub(crate) fn kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "a list",
        serde_json::Value::Object(_) => "an object",
    }
}
