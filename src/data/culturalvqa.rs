//! CulturalVQA from its Hugging Face Parquet files (`data/test-0000k-of-0000n.parquet`): columns
//! `image` (struct<bytes, path>, the `datasets` Image encoding) and `question`; the public
//! release has no answers. Extra columns, where a copy has them, are kept: a list-of-strings
//! `answers` becomes `direct_answers`, scalar columns (e.g. `u_id`, `country`) go to `meta`.
//!
//! Ids: the row's position in the concatenated files (in the order given), as text. The paper's
//! annotated CulturalVQA file joins on this: its `id` is the dataset index (2 … 2086 of 2,374 rows).

use std::fs::File;
use std::path::Path;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::DataType;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{check_decodes, DataError, ImageData, Item, LoadReport, Loaded, Result, SkipPolicy};

pub const SOURCE: &str = "culturalvqa";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CulturalvqaParams {
    /// The split name given to every row (the release has only `test`).
    pub split: String,
    /// What to do with a row without question or image bytes.
    pub on_bad_record: SkipPolicy,
}

impl Default for CulturalvqaParams {
    fn default() -> Self {
        CulturalvqaParams { split: "test".into(), on_bad_record: SkipPolicy::Error }
    }
}

fn pq_err(path: &Path, e: impl std::fmt::Display) -> DataError {
    DataError::Parquet { path: path.to_path_buf(), reason: e.to_string() }
}

fn as_utf8(path: &Path, batch: &RecordBatch, name: &str) -> Result<Option<arrow::array::ArrayRef>> {
    match batch.column_by_name(name) {
        None => Ok(None),
        Some(c) => cast(c, &DataType::Utf8)
            .map(Some)
            .map_err(|e| pq_err(path, format!("column `{name}`: expected text, found {} ({e})", c.data_type()))),
    }
}

/// Why a text cell that arrow's cast turned into null is not null in the file: its bytes are not UTF-8.
fn not_utf8_reason(orig: &dyn Array, row: usize) -> String {
    let bytes = orig
        .as_binary_opt::<i32>()
        .map(|a| a.value(row).to_vec())
        .or_else(|| orig.as_binary_opt::<i64>().map(|a| a.value(row).to_vec()))
        .or_else(|| orig.as_binary_view_opt().map(|a| a.value(row).to_vec()));
    match bytes.map(|b| std::str::from_utf8(&b).map(|_| ()).map_err(|e| e.to_string())) {
        Some(Err(e)) => format!("field `question` is not valid UTF-8 text ({e})"),
        _ => format!("field `question` ({}) cannot be read as text", orig.data_type()),
    }
}

/// Load the given Parquet files in order; row ids continue across files. A file listed twice is an
/// error (its rows would be loaded twice under two sets of ids). Every image is decoded once: bytes
/// that do not decode are a bad record (error or counted skip), as are a null or non-UTF-8 question.
pub fn load_culturalvqa(files: &[&Path], params: &CulturalvqaParams) -> Result<Loaded> {
    let mut seen: std::collections::HashMap<std::path::PathBuf, usize> = std::collections::HashMap::new();
    for (i, &path) in files.iter().enumerate() {
        let canon = path.canonicalize().map_err(|source| DataError::Io { path: path.to_path_buf(), source })?;
        if let Some(j) = seen.insert(canon, i) {
            return Err(DataError::Params(format!(
                "CulturalVQA files: {} is listed twice (positions {j} and {i}); each file's rows would be loaded twice",
                path.display()
            )));
        }
    }
    let mut report = LoadReport::default();
    let mut items = Vec::new();
    let mut row_id = 0usize;
    for &path in files {
        let f = File::open(path).map_err(|source| DataError::Io { path: path.to_path_buf(), source })?;
        let reader = ParquetRecordBatchReaderBuilder::try_new(f).map_err(|e| pq_err(path, e))?.build().map_err(|e| pq_err(path, e))?;
        for batch in reader {
            let batch = batch.map_err(|e| pq_err(path, e))?;
            let question = as_utf8(path, &batch, "question")?.ok_or_else(|| pq_err(path, "expected a `question` column, found none"))?;
            let question = question.as_string::<i32>();
            let question_orig = batch.column_by_name("question").expect("checked by as_utf8");
            let image = batch.column_by_name("image").ok_or_else(|| pq_err(path, "expected an `image` column, found none"))?;
            let image = image
                .as_struct_opt()
                .ok_or_else(|| pq_err(path, format!("column `image`: expected struct<bytes, path>, found {}", image.data_type())))?;
            let bytes = image
                .column_by_name("bytes")
                .map(|c| cast(c, &DataType::Binary))
                .transpose()
                .map_err(|e| pq_err(path, format!("column `image.bytes`: {e}")))?
                .ok_or_else(|| pq_err(path, "column `image` has no `bytes` field"))?;
            let bytes = bytes.as_binary::<i32>();
            let img_path = image
                .column_by_name("path")
                .map(|c| cast(c, &DataType::Utf8))
                .transpose()
                .map_err(|e| pq_err(path, format!("column `image.path`: {e}")))?;
            let img_path = img_path.as_ref().map(|c| c.as_string::<i32>());
            let answers = batch.column_by_name("answers").and_then(|c| c.as_list_opt::<i32>());
            // Scalar extras go to meta as text.
            let extras: Vec<(String, arrow::array::ArrayRef)> = batch
                .schema()
                .fields()
                .iter()
                .filter(|f| !["question", "image", "answers"].contains(&f.name().as_str()))
                .filter_map(|f| {
                    let c = batch.column_by_name(f.name())?;
                    (!c.data_type().is_nested()).then(|| cast(c, &DataType::Utf8).ok().map(|a| (f.name().clone(), a)))?
                })
                .collect();
            // Decode every image of the batch on all cores (the real release holds ~2.4k photos).
            let decoded: Vec<std::result::Result<(), String>> = {
                use rayon::prelude::*;
                (0..batch.num_rows())
                    .into_par_iter()
                    .map(|r| if bytes.is_null(r) { Ok(()) } else { check_decodes(bytes.value(r)) })
                    .collect()
            };
            for r in 0..batch.num_rows() {
                let id = row_id.to_string();
                row_id += 1;
                let record = format!("row {id}");
                if question.is_null(r) {
                    let reason = if question_orig.is_null(r) {
                        "field `question` is null".into()
                    } else {
                        not_utf8_reason(question_orig.as_ref(), r)
                    };
                    let e = DataError::Malformed { path: path.to_path_buf(), record, reason };
                    report.reject(params.on_bad_record, e)?;
                    continue;
                }
                if image.is_null(r) || bytes.is_null(r) || bytes.value(r).is_empty() {
                    let image_name = img_path
                        .filter(|p| !p.is_null(r))
                        .map_or_else(|| format!("(row {id} of {})", path.display()), |p| p.value(r).to_string());
                    let e = DataError::MissingImage { path: path.to_path_buf(), record, image: image_name.into() };
                    report.reject(params.on_bad_record, e)?;
                    continue;
                }
                if let Err(reason) = &decoded[r] {
                    let e = DataError::Malformed { path: path.to_path_buf(), record, reason: format!("field `image.bytes`: {reason}") };
                    report.reject(params.on_bad_record, e)?;
                    continue;
                }
                let mut item = Item::new(id, SOURCE, &params.split, question.value(r));
                item.image = Some(ImageData {
                    bytes: Some(bytes.value(r).to_vec()),
                    path: img_path.filter(|p| !p.is_null(r)).map(|p| p.value(r).to_string()),
                });
                if let Some(a) = answers.filter(|a| !a.is_null(r)) {
                    let v = a.value(r);
                    if let Ok(s) = cast(&v, &DataType::Utf8) {
                        let s = s.as_string::<i32>();
                        item.direct_answers = (0..s.len()).filter(|&k| !s.is_null(k)).map(|k| s.value(k).to_string()).collect();
                    }
                }
                for (name, col) in &extras {
                    let s = col.as_string::<i32>();
                    if !s.is_null(r) {
                        item.meta.insert(name.clone(), json!(s.value(r)));
                    }
                }
                item.meta.insert("source_file".into(), json!(path.file_name().map(|f| f.to_string_lossy())));
                items.push(item);
            }
        }
    }
    Ok(Loaded { items, report })
}
