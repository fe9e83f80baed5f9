//! ScienceQA from its official release: `problems.json` (an object keyed by problem id, each with
//! `question, choices, answer, hint, image, task, grade, subject, topic, category, skill, lecture,
//! solution, split`), `pid_splits.json` (`{"train": [pid…], "val": […], "test": […], …}`) and the
//! image folder `{image_dir}/{split}/{pid}/{image}`. Only questions with an image are loaded, as
//! in the paper; text-only ones are counted in `notes["text_only"]`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{attach_image, kind, read_file, read_json, DataError, ImageMode, Item, LoadReport, Loaded, RecordCtx, Result, SkipPolicy};

pub const SOURCE: &str = "scienceqa";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ScienceqaParams {
    /// Which lists of `pid_splits.json` to load, in this order.
    pub splits: Vec<String>,
    /// What to do with a malformed record, a missing image or a pid with no problem.
    pub on_bad_record: SkipPolicy,
    /// Copy the image files into the rows or reference them by path and hash.
    pub images: ImageMode,
}

impl Default for ScienceqaParams {
    fn default() -> Self {
        ScienceqaParams {
            splits: vec!["train".into(), "val".into(), "test".into()],
            on_bad_record: SkipPolicy::Error,
            images: ImageMode::Embed,
        }
    }
}

/// A JSON object read with every key kept: `serde_json::Value` keeps only the last of two equal keys,
/// which would let a repeated problem id replace the first one silently.
struct KeyedObject {
    entries: HashMap<String, Value>,
    /// Keys that occur more than once, with how often.
    repeated: BTreeMap<String, usize>,
}

impl<'de> serde::Deserialize<'de> for KeyedObject {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = KeyedObject;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object keyed by problem id")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> std::result::Result<KeyedObject, A::Error> {
                let mut out = KeyedObject { entries: HashMap::new(), repeated: BTreeMap::new() };
                while let Some((k, v)) = map.next_entry::<String, Value>()? {
                    if out.entries.insert(k.clone(), v).is_some() {
                        *out.repeated.entry(k).or_insert(1) += 1;
                    }
                }
                Ok(out)
            }
        }
        d.deserialize_map(V)
    }
}

fn read_problems(path: &Path) -> Result<KeyedObject> {
    let bytes = read_file(path)?;
    serde_json::from_slice(&bytes).map_err(|source| DataError::Json { path: path.to_path_buf(), source })
}

/// Fields copied into `meta` when present (the hint matters for prompting: "Context: …").
const META_FIELDS: [&str; 9] = ["hint", "task", "grade", "subject", "topic", "category", "skill", "lecture", "solution"];

fn parse_problem(ctx: &RecordCtx, pid: &str, split: &str, rec: &Value) -> Result<Option<Item>> {
    if !rec.is_object() {
        return Err(ctx.malformed(format!("expected an object, found {}", kind(rec))));
    }
    let image = ctx.opt_str(rec, "image")?;
    let Some(image) = image else {
        return Ok(None);
    };
    if image.trim().is_empty() || image.contains(['/', '\\']) || image == ".." {
        return Err(ctx.malformed(format!("field `image`: expected a file name, found {image:?}")));
    }
    let question = ctx.str(rec, "question")?;
    let choices = ctx.str_list(rec, "choices")?;
    if choices.len() < 2 {
        return Err(ctx.malformed(format!("field `choices`: expected at least 2 options, found {}", choices.len())));
    }
    let answer = ctx.int(rec, "answer")?;
    if answer < 0 || answer as usize >= choices.len() {
        return Err(ctx.malformed(format!("field `answer`: expected an index below {}, found {answer}", choices.len())));
    }
    if let Some(own) = ctx.opt_str(rec, "split")? {
        if own != split {
            return Err(ctx.malformed(format!("field `split` says {own:?} but pid_splits.json lists it under {split:?}")));
        }
    }
    let mut item = Item::new(pid, SOURCE, split, question);
    item.answer = Some(choices[answer as usize].clone());
    item.direct_answers = vec![choices[answer as usize].clone()];
    item.correct_choice = Some(answer as u32);
    item.choices = choices;
    for f in META_FIELDS {
        if let Some(v) = rec.get(f).filter(|v| !v.is_null()) {
            item.meta.insert(f.into(), v.clone());
        }
    }
    item.meta.insert("image_file".into(), json!(format!("{split}/{pid}/{image}")));
    Ok(Some(item))
}

/// Load the image questions of the chosen splits, images read from `image_dir`.
pub fn load_scienceqa(problems_path: &Path, pid_splits_path: &Path, image_dir: &Path, params: &ScienceqaParams) -> Result<Loaded> {
    let KeyedObject { entries: problems, repeated } = read_problems(problems_path)?;
    let splits = read_json(pid_splits_path)?;
    let mut report = LoadReport::default();
    // A problem id given twice: which of its records is meant is unknowable, so both are refused
    // (an error, or one counted skip per id).
    for (pid, n) in &repeated {
        let e = DataError::Malformed {
            path: problems_path.to_path_buf(),
            record: pid.clone(),
            reason: format!("problem id {pid:?} occurs {n} times (JSON keeps only the last); none of them is loaded"),
        };
        report.reject(params.on_bad_record, e)?;
    }
    let mut items = Vec::new();
    let mut seen = HashSet::new();
    for split in &params.splits {
        let list = splits.get(split).ok_or_else(|| DataError::Malformed {
            path: pid_splits_path.to_path_buf(),
            record: split.clone(),
            reason: format!("split {split:?} is not in the file"),
        })?;
        let sctx = RecordCtx { file: pid_splits_path, record: split.clone() };
        let pids = sctx.str_list_value(list, split)?;
        for pid in pids {
            let ctx = RecordCtx { file: problems_path, record: pid.clone() };
            if !seen.insert(pid.clone()) {
                let e = DataError::DuplicateId { path: pid_splits_path.to_path_buf(), record: split.clone(), id: pid.clone() };
                report.reject(params.on_bad_record, e)?;
                continue;
            }
            if repeated.contains_key(&pid) {
                continue;
            }
            let Some(rec) = problems.get(&pid) else {
                let e = DataError::UnmatchedId { path: pid_splits_path.to_path_buf(), record: split.clone(), id: pid.clone() };
                report.reject(params.on_bad_record, e)?;
                continue;
            };
            let mut item = match parse_problem(&ctx, &pid, split, rec) {
                Ok(Some(it)) => it,
                Ok(None) => {
                    report.note("text_only");
                    continue;
                }
                Err(e) => {
                    report.reject(params.on_bad_record, e)?;
                    continue;
                }
            };
            let rel = item.meta["image_file"].as_str().expect("set by parse_problem").to_string();
            if let Err(e) = attach_image(&mut item, problems_path, &pid, &image_dir.join(&rel), rel, params.images) {
                report.reject(params.on_bad_record, e)?;
                continue;
            }
            items.push(item);
        }
    }
    Ok(Loaded { items, report })
}
