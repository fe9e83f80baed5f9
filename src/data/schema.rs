//! The one row type for every source, and its fixed Arrow schema and Hugging Face features.
//!
//! Column layout (fixed order; the store writes it as Parquet and `datasets` reads it back):
//! `id, source, split, question, image{bytes,path}, choices, correct_choice, direct_answers,
//! answer, perception, reasoning, difficulty, captions, hard_negatives, meta`.
//! `perception` holds the paper's `Image_level` sentences, `reasoning` its `Reasoning_level`
//! sentences (the last one usually "So, the answer is X"). `meta` is a JSON object as text for
//! source-specific fields (A-OKVQA rationales, ScienceQA hint/lecture, the Penumbra scene graph).

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BinaryBuilder, Int32Array, ListBuilder, RecordBatch, StringArray, StringBuilder, StructArray,
};
use arrow::buffer::NullBuffer;
use arrow::datatypes::{DataType, Field, Fields, Int32Type, Schema, SchemaRef};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::{DataError, Result};

/// An image as Hugging Face `datasets` stores it: encoded file bytes and/or a path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ImageData {
    /// The encoded file (PNG/JPEG), exactly as read or rendered.
    pub bytes: Option<Vec<u8>>,
    /// The file name or path relative to the source's image folder.
    pub path: Option<String>,
}

/// A reference reasoning chain in the paper's two levels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ReferenceChain {
    /// `Image_level`: what is seen.
    pub perception: Vec<String>,
    /// `Reasoning_level`: the steps from what is seen to the answer.
    pub reasoning: Vec<String>,
}

impl ReferenceChain {
    pub fn is_empty(&self) -> bool {
        self.perception.is_empty() && self.reasoning.is_empty()
    }

    /// All sentences in order, perception first (how the paper lays out a chain).
    pub fn sentences(&self) -> impl Iterator<Item = &str> {
        self.perception.iter().chain(self.reasoning.iter()).map(String::as_str)
    }
}

/// One question about one image, from any source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Item {
    /// Unique within a dataset (e.g. the A-OKVQA `question_id`, the ScienceQA pid).
    pub id: String,
    /// Which source the row came from (`aokvqa`, `scienceqa`, `culturalvqa`, `penumbra`, …).
    pub source: String,
    pub split: String,
    pub question: String,
    pub image: Option<ImageData>,
    /// Multiple-choice options; empty where the source has none (CulturalVQA).
    pub choices: Vec<String>,
    /// Index into `choices` of the correct option, where known.
    pub correct_choice: Option<u32>,
    /// Free-form accepted answers (A-OKVQA's ten, Penumbra's synonyms).
    pub direct_answers: Vec<String>,
    /// The canonical answer text, where known.
    pub answer: Option<String>,
    pub chain: ReferenceChain,
    /// A difficulty level (Penumbra: 0 = easiest), where the source has one.
    pub difficulty: Option<u32>,
    /// True image captions (Penumbra; for contrastive image–text training).
    pub captions: Vec<String>,
    /// Hard-negative captions: a true caption with exactly one attribute or relation made false.
    pub hard_negatives: Vec<String>,
    /// Source-specific fields, as a JSON object.
    pub meta: Map<String, Value>,
}

impl Item {
    /// A row with only the required fields set.
    pub fn new(id: impl Into<String>, source: &str, split: &str, question: impl Into<String>) -> Self {
        Item {
            id: id.into(),
            source: source.to_string(),
            split: split.to_string(),
            question: question.into(),
            image: None,
            choices: Vec::new(),
            correct_choice: None,
            direct_answers: Vec::new(),
            answer: None,
            chain: ReferenceChain::default(),
            difficulty: None,
            captions: Vec::new(),
            hard_negatives: Vec::new(),
            meta: Map::new(),
        }
    }
}

const LIST_COLUMNS: [&str; 6] = ["choices", "direct_answers", "perception", "reasoning", "captions", "hard_negatives"];

fn string_list() -> DataType {
    DataType::List(Arc::new(Field::new("item", DataType::Utf8, true)))
}

fn image_fields() -> Fields {
    Fields::from(vec![Field::new("bytes", DataType::Binary, true), Field::new("path", DataType::Utf8, true)])
}

/// The fixed Arrow schema of an item batch (without metadata; the store adds lineage and
/// `huggingface` metadata, see [`hf_metadata_json`]).
pub fn item_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("source", DataType::Utf8, false),
        Field::new("split", DataType::Utf8, false),
        Field::new("question", DataType::Utf8, false),
        Field::new("image", DataType::Struct(image_fields()), true),
        Field::new("choices", string_list(), false),
        Field::new("correct_choice", DataType::Int32, true),
        Field::new("direct_answers", string_list(), false),
        Field::new("answer", DataType::Utf8, true),
        Field::new("perception", string_list(), false),
        Field::new("reasoning", string_list(), false),
        Field::new("difficulty", DataType::Int32, true),
        Field::new("captions", string_list(), false),
        Field::new("hard_negatives", string_list(), false),
        Field::new("meta", DataType::Utf8, false),
    ]))
}

/// The columns in Hugging Face `datasets` Features JSON form (what `Features.to_dict()` gives
/// and `Features.from_dict()` reads), in schema order.
///
/// Lists are written as `Sequence` (read by `datasets` 2.x–4.x alike; 4.x maps it to `List`).
pub fn hf_features() -> Value {
    let string = || json!({"dtype": "string", "_type": "Value"});
    let int32 = || json!({"dtype": "int32", "_type": "Value"});
    let seq = || json!({"feature": {"dtype": "string", "_type": "Value"}, "_type": "Sequence"});
    let mut m = Map::new();
    m.insert("id".into(), string());
    m.insert("source".into(), string());
    m.insert("split".into(), string());
    m.insert("question".into(), string());
    m.insert("image".into(), json!({"_type": "Image"}));
    m.insert("choices".into(), seq());
    m.insert("correct_choice".into(), int32());
    m.insert("direct_answers".into(), seq());
    m.insert("answer".into(), string());
    m.insert("perception".into(), seq());
    m.insert("reasoning".into(), seq());
    m.insert("difficulty".into(), int32());
    m.insert("captions".into(), seq());
    m.insert("hard_negatives".into(), seq());
    m.insert("meta".into(), string());
    debug_assert_eq!(m.len(), item_schema().fields().len());
    // The map's key order need not follow the columns: `datasets` matches features to columns
    // by name (checked with datasets 5.2 by scripts/check_hf_parquet.py).
    Value::Object(m)
}

/// The value for the Parquet schema metadata key `huggingface`: `{"info": {"features": …}}`.
pub fn hf_metadata_json() -> String {
    json!({"info": {"features": hf_features()}}).to_string()
}

/// Convert rows into one batch of the fixed schema.
pub fn items_to_record_batch(items: &[Item]) -> Result<RecordBatch> {
    let n = items.len();
    let mut id = StringBuilder::with_capacity(n, n * 16);
    let mut source = StringBuilder::new();
    let mut split = StringBuilder::new();
    let mut question = StringBuilder::new();
    let mut img_bytes = BinaryBuilder::new();
    let mut img_path = StringBuilder::new();
    let mut img_valid = Vec::with_capacity(n);
    let mut correct = Vec::with_capacity(n);
    let mut answer = StringBuilder::new();
    let mut difficulty = Vec::with_capacity(n);
    let mut meta = StringBuilder::new();
    let mut lists: Vec<ListBuilder<StringBuilder>> = (0..LIST_COLUMNS.len()).map(|_| ListBuilder::new(StringBuilder::new())).collect();

    for it in items {
        id.append_value(&it.id);
        source.append_value(&it.source);
        split.append_value(&it.split);
        question.append_value(&it.question);
        match &it.image {
            Some(img) => {
                img_valid.push(true);
                img_bytes.append_option(img.bytes.as_deref());
                img_path.append_option(img.path.as_deref());
            }
            None => {
                img_valid.push(false);
                img_bytes.append_null();
                img_path.append_null();
            }
        }
        let cc = match it.correct_choice {
            Some(c) => {
                if c as usize >= it.choices.len() {
                    return Err(DataError::Schema(format!(
                        "item {}: correct_choice {c} is out of range for {} choices",
                        it.id,
                        it.choices.len()
                    )));
                }
                Some(i32::try_from(c).map_err(|_| DataError::Schema(format!("item {}: correct_choice {c} too large", it.id)))?)
            }
            None => None,
        };
        correct.push(cc);
        answer.append_option(it.answer.as_deref());
        difficulty.push(match it.difficulty {
            Some(d) => Some(i32::try_from(d).map_err(|_| DataError::Schema(format!("item {}: difficulty {d} too large", it.id)))?),
            None => None,
        });
        let cols: [&Vec<String>; 6] =
            [&it.choices, &it.direct_answers, &it.chain.perception, &it.chain.reasoning, &it.captions, &it.hard_negatives];
        for (b, col) in lists.iter_mut().zip(cols) {
            for s in col {
                b.values().append_value(s);
            }
            b.append(true);
        }
        meta.append_value(serde_json::to_string(&it.meta).expect("a JSON map always serializes"));
    }

    let image = StructArray::try_new(
        image_fields(),
        vec![Arc::new(img_bytes.finish()) as ArrayRef, Arc::new(img_path.finish())],
        Some(NullBuffer::from(img_valid)),
    )?;
    let mut lists = lists.into_iter().map(|mut b| Arc::new(b.finish()) as ArrayRef);
    let mut next_list = || lists.next().expect("six list columns");
    let choices = next_list();
    let direct = next_list();
    let perception = next_list();
    let reasoning = next_list();
    let captions = next_list();
    let negatives = next_list();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(id.finish()),
        Arc::new(source.finish()),
        Arc::new(split.finish()),
        Arc::new(question.finish()),
        Arc::new(image),
        choices,
        Arc::new(Int32Array::from(correct)),
        direct,
        Arc::new(answer.finish()),
        perception,
        reasoning,
        Arc::new(Int32Array::from(difficulty)),
        captions,
        negatives,
        Arc::new(meta.finish()),
    ];
    // try_new checks every column against the fixed schema.
    Ok(RecordBatch::try_new(item_schema(), columns)?)
}

/// Read rows back from a batch of the fixed schema (metadata on the schema is ignored).
pub fn items_from_record_batch(batch: &RecordBatch) -> Result<Vec<Item>> {
    let want = item_schema();
    let got = batch.schema();
    if got.fields().len() != want.fields().len() {
        return Err(DataError::Schema(format!("expected {} columns, found {}", want.fields().len(), got.fields().len())));
    }
    for (w, g) in want.fields().iter().zip(got.fields().iter()) {
        if w.name() != g.name() || !types_match(w.data_type(), g.data_type()) {
            return Err(DataError::Schema(format!(
                "column `{}` of type {}: found `{}` of type {}",
                w.name(),
                w.data_type(),
                g.name(),
                g.data_type()
            )));
        }
    }
    let col = |i: usize| batch.column(i);
    let strings = |i: usize| col(i).as_string::<i32>();
    let (id, source, split, question) = (strings(0), strings(1), strings(2), strings(3));
    let image = col(4).as_struct();
    let img_bytes = image.column(0).as_binary::<i32>();
    let img_path = image.column(1).as_string::<i32>();
    let correct = col(6).as_primitive::<Int32Type>();
    let answer = strings(8);
    let difficulty = col(11).as_primitive::<Int32Type>();
    let meta = strings(14);
    let list_at = |i: usize, row: usize| -> Vec<String> {
        let l = col(i).as_list::<i32>();
        if l.is_null(row) {
            return Vec::new();
        }
        let v = l.value(row);
        let s: &StringArray = v.as_string::<i32>();
        (0..s.len()).map(|k| s.value(k).to_string()).collect()
    };
    let opt_str = |a: &StringArray, row: usize| (!a.is_null(row)).then(|| a.value(row).to_string());

    let mut out = Vec::with_capacity(batch.num_rows());
    for r in 0..batch.num_rows() {
        let meta_map = match serde_json::from_str::<Value>(meta.value(r)) {
            Ok(Value::Object(m)) => m,
            Ok(_) | Err(_) => return Err(DataError::Schema(format!("row {r} (id {}): column `meta` is not a JSON object", id.value(r)))),
        };
        let nonneg = |v: i32, what: &str| -> Result<u32> {
            u32::try_from(v).map_err(|_| DataError::Schema(format!("row {r} (id {}): `{what}` is negative ({v})", id.value(r))))
        };
        out.push(Item {
            id: id.value(r).to_string(),
            source: source.value(r).to_string(),
            split: split.value(r).to_string(),
            question: question.value(r).to_string(),
            image: (!image.is_null(r))
                .then(|| ImageData { bytes: (!img_bytes.is_null(r)).then(|| img_bytes.value(r).to_vec()), path: opt_str(img_path, r) }),
            choices: list_at(5, r),
            correct_choice: if correct.is_null(r) { None } else { Some(nonneg(correct.value(r), "correct_choice")?) },
            direct_answers: list_at(7, r),
            answer: opt_str(answer, r),
            chain: ReferenceChain { perception: list_at(9, r), reasoning: list_at(10, r) },
            difficulty: if difficulty.is_null(r) { None } else { Some(nonneg(difficulty.value(r), "difficulty")?) },
            captions: list_at(12, r),
            hard_negatives: list_at(13, r),
            meta: meta_map,
        });
    }
    Ok(out)
}

/// Types equal up to the nullability and name of nested fields (Parquet round trips and
/// `datasets` may rename `item` → `element` or mark fields nullable).
fn types_match(a: &DataType, b: &DataType) -> bool {
    match (a, b) {
        (DataType::List(x), DataType::List(y)) => types_match(x.data_type(), y.data_type()),
        (DataType::Struct(x), DataType::Struct(y)) => {
            x.len() == y.len() && x.iter().zip(y.iter()).all(|(f, g)| f.name() == g.name() && types_match(f.data_type(), g.data_type()))
        }
        _ => a == b,
    }
}
