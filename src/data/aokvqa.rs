//! A-OKVQA from its official release: `aokvqa_v1p0_{split}.json` (a list of records with
//! `split, image_id, question_id, question, choices, correct_choice_idx, direct_answers,
//! difficult_direct_answer, rationales`; the test split has no answers) and the COCO 2017 image
//! folder laid out as `{coco_dir}/{split}2017/{image_id:012}.jpg` (the official `get_coco_path`).

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{attach_image, kind, read_json, DataError, ImageMode, Item, LoadReport, Loaded, RecordCtx, Result, SkipPolicy};

pub const SOURCE: &str = "aokvqa";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct AokvqaParams {
    /// What to do with a malformed record or a missing image.
    pub on_bad_record: SkipPolicy,
    /// Copy the COCO files into the rows or reference them by path and hash.
    pub images: ImageMode,
}

/// The COCO file of an image, relative to the COCO folder: `val2017/000000377368.jpg`.
pub fn coco_relative_path(split: &str, image_id: i64) -> String {
    format!("{split}2017/{image_id:012}.jpg")
}

/// The fields every A-OKVQA-shaped record has (also used for the paper's annotated file).
pub(crate) fn parse_record(ctx: &RecordCtx, rec: &Value) -> Result<Item> {
    if !rec.is_object() {
        return Err(ctx.malformed(format!("expected an object, found {}", kind(rec))));
    }
    let qid = ctx.str(rec, "question_id")?;
    let split = ctx.str(rec, "split")?;
    let question = ctx.str(rec, "question")?;
    let image_id = ctx.int(rec, "image_id")?;
    let choices = ctx.str_list(rec, "choices")?;
    if choices.len() < 2 {
        return Err(ctx.malformed(format!("field `choices`: expected at least 2 options, found {}", choices.len())));
    }
    let mut item = Item::new(qid, SOURCE, &split, question);
    item.choices = choices;
    // The test split carries no answers; elsewhere they are required.
    match rec.get("correct_choice_idx") {
        None | Some(Value::Null) => {}
        Some(v) => {
            let idx = v.as_u64().filter(|&i| (i as usize) < item.choices.len()).ok_or_else(|| {
                ctx.malformed(format!("field `correct_choice_idx`: expected an index below {}, found {v}", item.choices.len()))
            })?;
            item.correct_choice = Some(idx as u32);
            item.answer = Some(item.choices[idx as usize].clone());
        }
    }
    if rec.get("direct_answers").is_some_and(|v| !v.is_null()) {
        item.direct_answers = ctx.str_list(rec, "direct_answers")?;
    }
    // Absent or null rationales (the test split has none) stay null, not an empty list: callers count
    // them with [`missing_rationales`].
    let rationales = if missing_rationales(rec) { Value::Null } else { json!(ctx.str_list(rec, "rationales")?) };
    item.meta.insert("image_id".into(), json!(image_id));
    item.meta.insert("coco_file".into(), json!(coco_relative_path(&split, image_id)));
    item.meta.insert("rationales".into(), rationales);
    if let Some(d) = rec.get("difficult_direct_answer").and_then(Value::as_bool) {
        item.meta.insert("difficult_direct_answer".into(), json!(d));
    }
    Ok(item)
}

/// Whether a record's `rationales` field is absent or null (counted as `notes["missing_rationales"]`).
pub(crate) fn missing_rationales(rec: &Value) -> bool {
    rec.get("rationales").is_none_or(Value::is_null)
}

/// Load an official A-OKVQA JSON file. With `coco_dir`, each image is read (bytes kept as they
/// are) and a missing one is an error or a counted skip; without it, items carry no image and
/// the report notes `images_not_requested`. Records without rationales are kept (null in
/// `meta.rationales`) and counted in `notes["missing_rationales"]`.
pub fn load_aokvqa(json_path: &Path, coco_dir: Option<&Path>, params: &AokvqaParams) -> Result<Loaded> {
    let root = read_json(json_path)?;
    let records = root.as_array().ok_or_else(|| DataError::Malformed {
        path: json_path.to_path_buf(),
        record: "(top level)".into(),
        reason: format!("expected a list of records, found {}", kind(&root)),
    })?;
    let mut report = LoadReport::default();
    let mut items = Vec::with_capacity(records.len());
    let mut seen = std::collections::HashSet::new();
    for (i, rec) in records.iter().enumerate() {
        let label = rec.get("question_id").and_then(Value::as_str).map_or(format!("#{i}"), |q| format!("#{i} ({q})"));
        let ctx = RecordCtx { file: json_path, record: label };
        let mut item = match parse_record(&ctx, rec) {
            Ok(it) => it,
            Err(e) => {
                report.reject(params.on_bad_record, e)?;
                continue;
            }
        };
        if !seen.insert(item.id.clone()) {
            let id = item.id.clone();
            report
                .reject(params.on_bad_record, DataError::DuplicateId { path: json_path.to_path_buf(), record: ctx.record.clone(), id })?;
            continue;
        }
        match coco_dir {
            Some(dir) => {
                let rel = item.meta["coco_file"].as_str().expect("set by parse_record").to_string();
                if let Err(e) = attach_image(&mut item, json_path, &ctx.record, &dir.join(&rel), rel, params.images) {
                    report.reject(params.on_bad_record, e)?;
                    continue;
                }
            }
            None => report.note("images_not_requested"),
        }
        if missing_rationales(rec) {
            report.note("missing_rationales");
        }
        items.push(item);
    }
    Ok(Loaded { items, report })
}
