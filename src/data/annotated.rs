//! The paper's annotated reasoning chains (its repository's `annotated_data/`).
//!
//! Two files are known: `aokvqa_val_mmb.json` (A-OKVQA records plus `keys` and `keys_filtered`)
//! and `culturalvqa_cvqa_mmb.json` (`question, id, image_info, general_output, keys,
//! keys_filtered`; no gold answer). A chain is `{Image_level: [...], Reasoning_level: [...]}`.
//! Real quirks handled here, each counted in the [`LoadReport`] (notes count kept records):
//! - `Image_level` absent or null in `keys_filtered` (17 A-OKVQA records): kept, perception empty
//!   (`notes["missing_image_level"]`; any empty perception, absent or `[]`, also counts in
//!   `notes["empty_perception"]`);
//! - an empty `Reasoning_level` (the chain was filtered away entirely): a counted skip unless
//!   `keep_empty_reasoning`;
//! - the same question id more than once with different chains (5 A-OKVQA ids, 8 repeats): by
//!   [`DuplicatePolicy`] (`notes["duplicate_id"]` counts the repeats).
//!
//! Loaded standalone the items carry no image (the images are not in the annotation files); joined
//! with [`attach_chains`], the dataset's items get the chains.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{aokvqa, kind, read_json, DataError, Item, LoadReport, Loaded, RecordCtx, ReferenceChain, Result, SkipPolicy};

/// Which chain of a record to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ChainField {
    /// `keys_filtered`: the chains after the paper's filtering (what it trains on).
    #[default]
    KeysFiltered,
    /// `keys`: the chains before filtering.
    Keys,
}

impl ChainField {
    pub fn key(self) -> &'static str {
        match self {
            ChainField::KeysFiltered => "keys_filtered",
            ChainField::Keys => "keys",
        }
    }
}

/// What to do when one question id carries several chains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DuplicatePolicy {
    /// Keep every chain as its own row; the k-th repeat (k ≥ 1) gets id `"{id}#{k}"` and
    /// `meta.annotation_index = k`. The paper does not say; its duplicates differ in their chains,
    /// so each is a distinct reference.
    #[default]
    KeepAll,
    /// Keep the first chain; later ones are counted skips.
    KeepFirst,
    /// Fail on the first repeated id.
    Error,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct AnnotatedParams {
    pub chain_field: ChainField,
    pub duplicates: DuplicatePolicy,
    /// Keep records whose `Reasoning_level` is empty (default: skip them, counted).
    pub keep_empty_reasoning: bool,
    /// Malformed records (and, in a join, annotation ids with no match in the dataset).
    pub on_bad_record: SkipPolicy,
    /// In a join: keep dataset items that have no annotation (default: leave them out, counted in
    /// `notes["unannotated_items"]`).
    pub keep_unannotated: bool,
}

/// Which annotated file a JSON list is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnnotatedKind {
    /// Records carry `question_id` and the A-OKVQA fields.
    Aokvqa,
    /// Records carry an integer `id` and `general_output`.
    CulturalVqa,
}

/// One annotation: the id it joins on, its chain, where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Annotation {
    pub id: String,
    /// Position in the file (0-based).
    pub record: usize,
    pub chain: ReferenceChain,
    /// The record as a standalone item (no image).
    pub item: Item,
}

/// Everything read from one annotated file.
#[derive(Debug, Clone)]
pub struct Annotations {
    pub file: PathBuf,
    pub kind: AnnotatedKind,
    pub annotations: Vec<Annotation>,
    pub report: LoadReport,
}

fn detect(file: &Path, records: &[Value]) -> Result<AnnotatedKind> {
    let first = records.first().ok_or_else(|| DataError::Malformed {
        path: file.to_path_buf(),
        record: "(top level)".into(),
        reason: "expected a non-empty list of annotated records, found an empty list".into(),
    })?;
    if first.get("question_id").is_some() {
        Ok(AnnotatedKind::Aokvqa)
    } else if first.get("id").is_some() && first.get("general_output").is_some() {
        Ok(AnnotatedKind::CulturalVqa)
    } else {
        Err(DataError::Malformed {
            path: file.to_path_buf(),
            record: "#0".into(),
            reason: "expected `question_id` (A-OKVQA) or `id` + `general_output` (CulturalVQA), found neither".into(),
        })
    }
}

/// The chain of a record, from `field`, and whether `Image_level` was absent (rather than
/// an empty list). Err for a wrong shape.
fn parse_chain(ctx: &RecordCtx, rec: &Value, field: ChainField) -> Result<(ReferenceChain, bool)> {
    let keys = ctx.field(rec, field.key())?;
    if !keys.is_object() {
        return Err(ctx.malformed(format!("field `{}`: expected an object, found {}", field.key(), kind(keys))));
    }
    let (perception, missing) = match keys.get("Image_level") {
        None | Some(Value::Null) => (Vec::new(), true),
        Some(v) => (ctx.str_list_value(v, &format!("{}.Image_level", field.key()))?, false),
    };
    let reasoning = match keys.get("Reasoning_level") {
        None | Some(Value::Null) => return Err(ctx.malformed(format!("field `{}.Reasoning_level` is missing", field.key()))),
        Some(v) => ctx.str_list_value(v, &format!("{}.Reasoning_level", field.key()))?,
    };
    Ok((ReferenceChain { perception, reasoning }, missing))
}

fn parse_culturalvqa(ctx: &RecordCtx, rec: &Value) -> Result<Item> {
    let id = ctx.field(rec, "id")?;
    let id = id
        .as_i64()
        .map(|i| i.to_string())
        .or_else(|| id.as_str().map(str::to_string))
        .ok_or_else(|| ctx.malformed(format!("field `id`: expected an integer, found {}", kind(id))))?;
    let question = ctx.str(rec, "question")?;
    let mut item = Item::new(id, super::culturalvqa::SOURCE, "test", question);
    if let Some(g) = ctx.opt_str(rec, "general_output")? {
        item.meta.insert("general_output".into(), json!(g));
    }
    if let Some(info) = ctx.opt_str(rec, "image_info")? {
        item.meta.insert("image_info".into(), json!(info));
    }
    Ok(item)
}

/// A record's id as text (`question_id`, else `id`), if it has one.
fn raw_id(rec: &Value) -> Option<String> {
    rec.get("question_id").or_else(|| rec.get("id")).map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
}

/// Read an annotated file (kind detected from its first record).
pub fn read_annotations(file: &Path, params: &AnnotatedParams) -> Result<Annotations> {
    let root = read_json(file)?;
    let records = root.as_array().ok_or_else(|| DataError::Malformed {
        path: file.to_path_buf(),
        record: "(top level)".into(),
        reason: format!("expected a list of records, found {}", kind(&root)),
    })?;
    let kind_ = detect(file, records)?;
    let mut report = LoadReport::default();
    let mut seen: HashMap<String, usize> = HashMap::new();
    // Every id the file uses as it is, and every id given out so far: a suffixed repeat must collide
    // with neither (ids `qX, qX, qX#1` become `qX, qX#2, qX#1`).
    let raw_ids: std::collections::HashSet<String> = records.iter().filter_map(raw_id).collect();
    let mut used: std::collections::HashSet<String> = std::collections::HashSet::new();
    let mut annotations = Vec::with_capacity(records.len());
    for (i, rec) in records.iter().enumerate() {
        let raw_id = raw_id(rec);
        let ctx = RecordCtx { file, record: raw_id.as_deref().map_or(format!("#{i}"), |q| format!("#{i} ({q})")) };
        let parsed = match kind_ {
            AnnotatedKind::Aokvqa => aokvqa::parse_record(&ctx, rec),
            AnnotatedKind::CulturalVqa => parse_culturalvqa(&ctx, rec),
        }
        .and_then(|item| Ok((item, parse_chain(&ctx, rec, params.chain_field)?)));
        let (mut item, (chain, missing_image_level)) = match parsed {
            Ok(x) => x,
            Err(e) => {
                report.reject(params.on_bad_record, e)?;
                continue;
            }
        };
        if chain.reasoning.is_empty() && !params.keep_empty_reasoning {
            // A content filter, not an input error: counted whatever the skip policy.
            report.skipped.push(super::Skip {
                file: file.to_path_buf(),
                record: ctx.record.clone(),
                reason: format!("`{}.Reasoning_level` is empty", params.chain_field.key()),
            });
            continue;
        }
        let id = item.id.clone();
        let k = *seen.entry(id.clone()).and_modify(|k| *k += 1).or_insert(0);
        if k > 0 {
            report.note("duplicate_id");
            match params.duplicates {
                DuplicatePolicy::KeepAll => {
                    // The first free `{id}#{n}`, n ≥ k: never an id the file itself uses, nor one given out.
                    let mut n = k;
                    while raw_ids.contains(&format!("{id}#{n}")) || used.contains(&format!("{id}#{n}")) {
                        n += 1;
                    }
                    item.id = format!("{id}#{n}");
                }
                DuplicatePolicy::KeepFirst => {
                    report.skipped.push(super::Skip {
                        file: file.to_path_buf(),
                        record: ctx.record.clone(),
                        reason: format!("id {id} repeated (occurrence {k}); duplicate policy keeps the first"),
                    });
                    continue;
                }
                DuplicatePolicy::Error => return Err(DataError::DuplicateId { path: file.to_path_buf(), record: ctx.record.clone(), id }),
            }
        }
        // Quirks are counted on the records that are kept.
        if missing_image_level {
            report.note("missing_image_level");
        }
        if chain.perception.is_empty() {
            report.note("empty_perception");
        }
        if kind_ == AnnotatedKind::Aokvqa && aokvqa::missing_rationales(rec) {
            report.note("missing_rationales");
        }
        used.insert(item.id.clone());
        item.chain = chain.clone();
        item.meta.insert("annotation".into(), json!({"file": file.file_name().map(|f| f.to_string_lossy()), "record": i, "index": k, "chain_field": params.chain_field.key()}));
        annotations.push(Annotation { id, record: i, chain, item });
    }
    Ok(Annotations { file: file.to_path_buf(), kind: kind_, annotations, report })
}

/// Load an annotated file as items on their own (no images: the files do not carry them).
pub fn load_annotated(file: &Path, params: &AnnotatedParams) -> Result<Loaded> {
    let a = read_annotations(file, params)?;
    Ok(Loaded { items: a.annotations.into_iter().map(|a| a.item).collect(), report: a.report })
}

/// Join chains onto a loaded dataset by id (A-OKVQA `question_id`; CulturalVQA row index).
///
/// Each dataset item gets the chain of its annotation (several rows under
/// [`DuplicatePolicy::KeepAll`], ids suffixed as in the annotations). An annotation whose id is
/// not in `items` is an error or a counted skip (`on_bad_record`); items without an annotation
/// are left out (counted) unless `keep_unannotated`.
pub fn attach_chains(items: Vec<Item>, annotations: &Annotations, params: &AnnotatedParams) -> Result<Loaded> {
    let mut report = annotations.report.clone();
    let mut by_id: HashMap<&str, Vec<&Annotation>> = HashMap::new();
    for a in &annotations.annotations {
        by_id.entry(a.id.as_str()).or_default().push(a);
    }
    let known: std::collections::HashSet<&str> = items.iter().map(|i| i.id.as_str()).collect();
    for a in &annotations.annotations {
        if !known.contains(a.id.as_str()) {
            let err = DataError::UnmatchedId { path: annotations.file.clone(), record: format!("#{}", a.record), id: a.id.clone() };
            report.reject(params.on_bad_record, err)?;
        }
    }
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        match by_id.get(item.id.as_str()) {
            Some(list) => {
                for a in list {
                    let mut joined = item.clone();
                    joined.id = a.item.id.clone();
                    joined.chain = a.chain.clone();
                    if let Some(v) = a.item.meta.get("annotation") {
                        joined.meta.insert("annotation".into(), v.clone());
                    }
                    out.push(joined);
                }
            }
            None if params.keep_unannotated => out.push(item),
            None => report.note("unannotated_items"),
        }
    }
    Ok(Loaded { items: out, report })
}
