//! What the model stages share: each item's image inputs (CLIP patch features by item, or the family's own
//! processor and vision tower), and prompts with the image slot expanded.
use super::{JobError, Result};
use arrow::array::{Array, AsArray};
use arrow::datatypes::{Float32Type, UInt32Type};
use arrow::record_batch::RecordBatch;
use mllm::family::Mllm;
use mmboundary::data::Item;
use mmboundary::encoders::llava_next_image::LlavaNextImageProcessor;
use mmboundary::encoders::qwen2_vl_image::Qwen2VlImageProcessor;
use mmboundary::stages::features::features_schema;
use mmboundary::stages::generate::render_prompt_with;
use mmboundary::stages::models::ModelSettings;
use std::collections::HashMap;
use std::path::Path;
use tch::Tensor;

/// Patch features `[n_patches, dim]` of every item of a `features` artifact.
pub struct Features {
    rows: HashMap<String, (i64, i64, Vec<f32>)>,
}

impl Features {
    pub fn from_batch(b: &RecordBatch) -> Result<Self> {
        const TABLE: &str = "features artifact";
        let col = |n: &str| b.column_by_name(n).ok_or_else(|| JobError::column(TABLE, n));
        let wrong = |n: &str, t: &str| JobError::stage(TABLE, format!("column `{n}` is not {t}"));
        let ids = col("item_id")?.as_string_opt::<i32>().ok_or_else(|| wrong("item_id", "a string column"))?;
        let n_p = col("n_patches")?.as_primitive_opt::<UInt32Type>().ok_or_else(|| wrong("n_patches", "UInt32"))?;
        let dims = col("dim")?.as_primitive_opt::<UInt32Type>().ok_or_else(|| wrong("dim", "UInt32"))?;
        let patches = col("patches")?.as_list_opt::<i32>().ok_or_else(|| wrong("patches", "a list column"))?;
        let mut rows = HashMap::with_capacity(ids.len());
        for i in 0..ids.len() {
            let v = patches.value(i);
            let v = v.as_primitive_opt::<Float32Type>().ok_or_else(|| wrong("patches", "a list of Float32"))?.values();
            let (n, d) = (n_p.value(i) as i64, dims.value(i) as i64);
            // Checked here: a tensor view of the wrong size would panic in libtorch.
            if v.len() as i64 != n * d {
                return Err(JobError::item(ids.value(i), format!("{} feature values for {n} patches × {d}", v.len())));
            }
            rows.insert(ids.value(i).to_string(), (n, d, v.to_vec()));
        }
        Ok(Self { rows })
    }

    pub fn tensor(&self, item: &str) -> Result<(i64, Tensor)> {
        let (n, d, v) = self.rows.get(item).ok_or_else(|| JobError::item(item, "no CLIP features"))?;
        Ok((*n, Tensor::from_slice(v).view([*n, *d])))
    }
}

/// The prompt template a model stage runs with: the one its params set, else the model's own
/// (`stages::models::prompt`: the demo MLLM's format, or the folder's chat template rendered by
/// `mllm::chat::pipeline_prompt`, with the image slot where the model's image token goes).
pub fn prompt_template(
    model: &Option<std::path::PathBuf>,
    prompt: &Option<String>,
    model_dir: &std::path::Path,
    image_token_index: i64,
) -> Result<String> {
    match mmboundary::stages::models::prompt(model, prompt) {
        Some(p) => Ok(p),
        None => mllm::chat::pipeline_prompt(model_dir, image_token_index).map_err(JobError::step(format!(
            "{}: the prompt in the model's own chat format (set `prompt` in stages/project.toml [model] to give one)",
            model_dir.display()
        ))),
    }
}

/// Where a model's image inputs come from. LLaVA: the `features` artifact (the CLIP tower on ONNX
/// Runtime, computed once by the `features` stage). LLaVA-NeXT and Qwen2-VL: the item's image through the
/// family's processor (`preprocessor_config.json` in the model folder) and the model's own frozen vision
/// tower, here in the worker: their towers ship in the model folder as safetensors (the goldens check them
/// in tch against transformers), and their variable-length outputs (LLaVA-NeXT: base features and the
/// unpadded tile grid; Qwen2-VL: merged features and the grid) are cheap next to the decoder's work.
pub enum ImageInputs {
    Features(Features),
    LlavaNext(LlavaNextImageProcessor),
    Qwen2Vl(Qwen2VlImageProcessor),
}

impl ImageInputs {
    pub fn new(model: &Mllm, model_dir: &Path, features: &RecordBatch) -> Result<Self> {
        Ok(match model {
            Mllm::Llava(_) => Self::Features(Features::from_batch(features)?),
            Mllm::LlavaNext(_) => Self::LlavaNext(LlavaNextImageProcessor::from_dir(model_dir)?),
            Mllm::Qwen2Vl(_) => Self::Qwen2Vl(Qwen2VlImageProcessor::from_dir(model_dir)?),
        })
    }

    /// The image tokens and the input tensors of one item's image, for `model`.
    pub fn get(&self, model: &Mllm, it: &Item) -> Result<(i64, Vec<Tensor>)> {
        let image = || -> Result<image::RgbImage> {
            let bytes = mmboundary::data::image_bytes(it)?;
            Ok(mmboundary::encoders::clip::decode_image_bytes(&bytes, &it.id)?)
        };
        self.inputs(model, &it.id, image)
    }

    /// The image tokens and the input tensors of a decoded image (`id` names it in errors; `image` is only
    /// called by the families that read pixels: the features artifact is looked up by `id`).
    pub fn inputs(&self, model: &Mllm, id: &str, image: impl Fn() -> Result<image::RgbImage>) -> Result<(i64, Vec<Tensor>)> {
        let images = match (self, model) {
            (Self::Features(f), Mllm::Llava(_)) => vec![f.tensor(id)?.1],
            (Self::LlavaNext(proc), Mllm::LlavaNext(m)) => {
                let px = proc.preprocess(&image()?);
                let s = m.cfg.vision_config.image_size;
                let pv = Tensor::from_slice(&px.pixel_values).view([px.n_patches as i64, 3, s, s]);
                tch::no_grad(|| m.image_inputs(&pv, px.size))
                    .map_err(JobError::step(format!("item {id}: LLaVA-NeXT image features")))?
                    .into()
            }
            (Self::Qwen2Vl(proc), Mllm::Qwen2Vl(m)) => {
                let px = proc.preprocess(&image()?, id)?;
                let rows = px.grid_thw.iter().product::<i64>();
                let patches = Tensor::from_slice(&px.patches).view([rows, -1]);
                m.image_inputs(&patches, px.grid_thw).map_err(JobError::step(format!("item {id}: Qwen2-VL image features")))?.into()
            }
            _ => return Err(JobError::item(id, format!("image inputs made for another model family than {:?}", model.family()))),
        };
        Ok((model.image_token_count(&images)?, images))
    }
}

/// What a training stage (`sft`, `dpo`) starts from: its model loaded from the resolved folder on the
/// stage's device (trainable, with its var store), the tokenizer, the end-of-sequence id closing each
/// response, the prompt template, the dataset's items and where their image inputs come from.
pub struct Trainable {
    pub vs: tch::nn::VarStore,
    pub model: Mllm,
    pub tok: tokenizers::Tokenizer,
    pub eos: Option<i64>,
    pub template: String,
    pub items: Vec<Item>,
    pub images: ImageInputs,
}

impl Trainable {
    /// Loads stage `stage`'s model (`settings`: its folder, device and dtype, `super::policy::ModelRun`), with
    /// its prompt (the one set, else the model's own), items (input `items`) and image inputs (input
    /// `features`).
    pub fn load(ctx: &mmboundary::engine::StageContext, stage: &str, settings: &ModelSettings) -> Result<Self> {
        use mllm::llava::EmbedInputs;
        let super::policy::ModelRun { dir: model_dir, device, dtype } = super::policy::ModelRun::resolve(ctx, stage, settings)?;
        let (vs, m) = Mllm::load(&model_dir, device, dtype)?;
        let tok = Prompter::tokenizer(&model_dir)?;
        let eos = m.text_model().cfg.eos_token_ids().first().copied();
        let template = prompt_template(settings.model, settings.prompt, &model_dir, m.image_token_id())?;
        let items = mmboundary::data::items_from_record_batch(&ctx.input_table("items")?.concat()?)?;
        let images = ImageInputs::new(&m, &model_dir, &ctx.input_table_as("features", &features_schema())?.concat()?)?;
        Ok(Self { vs, model: m, tok, eos, template, items, images })
    }

    /// The prompter of this model and template.
    pub fn prompter(&self) -> Prompter<'_> {
        Prompter::new(&self.tok, &self.model, &self.template)
    }

    /// The items by id.
    pub fn items_by_id(&self) -> HashMap<&str, &Item> {
        self.items.iter().map(|i| (i.id.as_str(), i)).collect()
    }
}

/// Prompt token ids with `{image}` expanded to one image token per patch (between the family's image
/// delimiters, if it has any).
pub struct Prompter<'a> {
    pub tok: &'a tokenizers::Tokenizer,
    pub image_token: i64,
    pub template: &'a str,
    /// Ids right before and right after the image tokens (Qwen2-VL's vision start and end).
    pub delimiters: (Option<i64>, Option<i64>),
    /// A line closing the user's turn (`eval.instruction`, `ppo.instruction`).
    pub instruction: Option<&'a str>,
}

impl<'a> Prompter<'a> {
    pub fn new(tok: &'a tokenizers::Tokenizer, model: &Mllm, template: &'a str) -> Self {
        Self { tok, image_token: model.image_token_id(), template, delimiters: model.image_delimiters(), instruction: None }
    }

    pub fn with_instruction(self, instruction: Option<&'a str>) -> Self {
        Self { instruction, ..self }
    }

    /// The tokenizer of a model folder.
    pub fn tokenizer(model_dir: &Path) -> Result<tokenizers::Tokenizer> {
        let p = model_dir.join("tokenizer.json");
        tokenizers::Tokenizer::from_file(&p).map_err(|e| JobError::file(&p, e))
    }

    pub fn encode(&self, s: &str) -> Result<Vec<i64>> {
        let enc =
            self.tok.encode(s, false).map_err(|e| JobError::Step { what: format!("tokenizing {s:?}"), cause: anyhow::anyhow!("{e}") })?;
        Ok(enc.get_ids().iter().map(|&i| i as i64).collect())
    }

    /// A target response's ids as they follow this prompt, the way the model's own generations begin:
    /// right after a template that ends its turn with a newline (the demo's and Qwen2-VL's chat formats
    /// end on "assistant\n"), after a space when it ends on a word (LLaVA-1.5's "ASSISTANT:"). A space
    /// there would teach a first token (" There") the base model never starts with.
    pub fn response(&self, text: &str) -> Result<Vec<i64>> {
        let (_, after) = render_prompt_with(self.template, "", &[], self.instruction);
        match after.ends_with(char::is_whitespace) || text.starts_with(char::is_whitespace) {
            true => self.encode(text),
            false => self.encode(&format!(" {text}")),
        }
    }

    pub fn prompt(&self, question: &str, choices: &[String], n_patches: i64) -> Result<Vec<i64>> {
        let (before, after) = render_prompt_with(self.template, question, choices, self.instruction);
        let mut ids = self.encode(&before)?;
        let after = self.encode(&after)?;
        // A chat template that writes the delimiters itself (Qwen2-VL's renders
        // `<|vision_start|>{image}<|vision_end|>`) already has them: never twice.
        if ids.last().copied() != self.delimiters.0 {
            ids.extend(self.delimiters.0);
        }
        ids.extend(std::iter::repeat_n(self.image_token, n_patches as usize));
        if after.first().copied() != self.delimiters.1 {
            ids.extend(self.delimiters.1);
        }
        ids.extend(after);
        Ok(ids)
    }
}

/// A trainer's params: its defaults with the stage's JSON table laid over them, nested tables merged key
/// by key. An unknown key is an error naming where it is (`what.key.subkey`), never silently ignored.
pub fn overlay_params<T: serde::Serialize + serde::de::DeserializeOwned + Default>(overrides: &serde_json::Value, what: &str) -> Result<T> {
    fn merge(
        base: &mut serde_json::Map<String, serde_json::Value>,
        over: &serde_json::Map<String, serde_json::Value>,
        at: &str,
    ) -> Result<()> {
        for (k, x) in over {
            let Some(b) = base.get_mut(k) else {
                return Err(JobError::param(
                    at,
                    format!("unknown key `{k}` (known: {})", base.keys().cloned().collect::<Vec<_>>().join(", ")),
                ));
            };
            match (b.as_object_mut(), x.as_object()) {
                (Some(b), Some(o)) => merge(b, o, &format!("{at}.{k}"))?,
                _ => *b = x.clone(),
            }
        }
        Ok(())
    }
    let mut v = serde_json::to_value(T::default())?;
    match (v.as_object_mut(), overrides) {
        (Some(base), serde_json::Value::Object(over)) => merge(base, over, what)?,
        (_, serde_json::Value::Null) => {}
        (_, other) => return Err(JobError::param(what, format!("expected a table, found {other}"))),
    }
    serde_json::from_value(v).map_err(|e| JobError::param(what, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::{Features, Prompter};
    use arrow::array::{ArrayRef, Float32Array, ListArray, StringArray, UInt32Array};
    use arrow::datatypes::{DataType, Field};
    use arrow::record_batch::RecordBatch;
    use std::str::FromStr;
    use std::sync::Arc;

    /// A features table of one item `a` with 2 patches of dim 2, `dim` given as `dims`.
    fn features(dims: ArrayRef, values: Vec<f32>) -> RecordBatch {
        let field = Arc::new(Field::new("item", DataType::Float32, false));
        let n = values.len() as i32;
        let list = ListArray::new(field, arrow::buffer::OffsetBuffer::new(vec![0, n].into()), Arc::new(Float32Array::from(values)), None);
        RecordBatch::try_from_iter([
            ("item_id", Arc::new(StringArray::from(vec!["a"])) as ArrayRef),
            ("n_patches", Arc::new(UInt32Array::from(vec![2])) as ArrayRef),
            ("dim", dims),
            ("patches", Arc::new(list) as ArrayRef),
        ])
        .unwrap()
    }

    #[test]
    fn features_are_read_by_item_and_bad_tables_are_named() {
        let f = Features::from_batch(&features(Arc::new(UInt32Array::from(vec![2])), vec![1., 2., 3., 4.])).unwrap();
        let (n, t) = f.tensor("a").unwrap();
        assert_eq!(n, 2);
        assert_eq!(t.size(), [2, 2]);
        assert_eq!(Vec::<f32>::try_from(t.flatten(0, -1)).unwrap(), [1., 2., 3., 4.]);
        assert!(f.tensor("b").unwrap_err().to_string().contains("item b: no CLIP features"));
        // A column of the wrong type is named, not a panic.
        let e = Features::from_batch(&features(Arc::new(StringArray::from(vec!["2"])), vec![1., 2., 3., 4.]));
        let e = e.err().expect("a string `dim` column is refused").to_string();
        assert!(e.contains("features artifact: column `dim` is not UInt32"), "{e}");
        // Values that are not n_patches × dim are refused with the item named.
        let e = Features::from_batch(&features(Arc::new(UInt32Array::from(vec![2])), vec![1., 2., 3.]));
        let e = e.err().expect("3 values for 2 × 2 are refused").to_string();
        assert!(e.contains("item a: 3 feature values for 2 patches × 2"), "{e}");
    }

    /// Word-level ids: [UNK] 0, q 1, a 2, <vs> 3, <ve> 4 (the image token is 9).
    fn tokenizer() -> tokenizers::Tokenizer {
        let special = |id: u32, s: &str| serde_json::json!({"id": id, "content": s, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true});
        let json = serde_json::json!({
            "version": "1.0", "truncation": null, "padding": null,
            "added_tokens": [special(3, "<vs>"), special(4, "<ve>")],
            "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null, "decoder": null,
            "model": {"type": "WordLevel", "vocab": {"[UNK]": 0, "q": 1, "a": 2, "<vs>": 3, "<ve>": 4}, "unk_token": "[UNK]"}
        });
        tokenizers::Tokenizer::from_str(&json.to_string()).unwrap()
    }

    #[test]
    fn image_delimiters_enclose_the_image_tokens_once() {
        let tok = tokenizer();
        let prompter = |template| Prompter { tok: &tok, image_token: 9, template, delimiters: (Some(3), Some(4)), instruction: None };
        // A template without them (a text-only chat format): the prompter adds them.
        assert_eq!(prompter("q {image} a").prompt("", &[], 2).unwrap(), [1, 3, 9, 9, 4, 2]);
        // A template that writes them (Qwen2-VL's own chat template): not twice.
        assert_eq!(prompter("q <vs>{image}<ve> a").prompt("", &[], 2).unwrap(), [1, 3, 9, 9, 4, 2]);
        // A family without delimiters (LLaVA).
        let plain = Prompter { tok: &tok, image_token: 9, template: "q {image} a", delimiters: (None, None), instruction: None };
        assert_eq!(plain.prompt("", &[], 3).unwrap(), [1, 9, 9, 9, 2]);
        // An instruction closes the turn after the options: `{options}` then a line of its own.
        let asked = Prompter { template: "{image} q {options}", ..plain }.with_instruction(Some("a"));
        assert_eq!(asked.prompt("", &["q".into()], 1).unwrap(), [9, 1, 0, 0, 0, 1, 2]);
        // "(", "A", ")" are unknown
    }

    /// Word-level ids keep the space visible: a tokenizer whose pre-tokenizer splits on whitespace but
    /// keeps it (ByteLevel-like), so " a" and "a" differ.
    fn spaced_tokenizer() -> tokenizers::Tokenizer {
        let json = serde_json::json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
            "normalizer": null, "pre_tokenizer": {"type": "Split", "pattern": {"String": " "}, "behavior": "MergedWithNext", "invert": false},
            "post_processor": null, "decoder": null,
            "model": {"type": "WordLevel", "vocab": {"[UNK]": 0, "a": 1, " a": 2, "b": 3, " b": 4}, "unk_token": "[UNK]"}
        });
        tokenizers::Tokenizer::from_str(&json.to_string()).unwrap()
    }

    #[test]
    fn a_response_starts_as_the_models_own_generations_do() {
        let tok = spaced_tokenizer();
        let prompter = |template| Prompter { tok: &tok, image_token: 9, template, delimiters: (None, None), instruction: None };
        // After a turn that ends with a newline (the demo's and Qwen2-VL's chat formats): no space.
        assert_eq!(prompter("{image} q<|im_start|>assistant\n").response("a b").unwrap(), [1, 4]);
        // After one that ends on a word (LLaVA-1.5's "ASSISTANT:"): a space, once.
        assert_eq!(prompter("USER: {image} q ASSISTANT:").response("a b").unwrap(), [2, 4]);
        assert_eq!(prompter("USER: {image} q ASSISTANT:").response(" a b").unwrap(), [2, 4]);
    }
}
