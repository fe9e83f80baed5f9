//! The embedded benchmark's own MLLM: a small LLaVA-style model (CLIP patch features → 2-layer GELU
//! projector → Llama decoder with SmolLM2's tokenizer) trained with [`super::sft`] on Penumbra's reference
//! chains, so the method's signals come from a model that really knows easy scenes and not hard ones.
//!
//! Plain values in and out: examples are (patch features, prompt text, target text); the result is a
//! Hugging Face `LlavaForConditionalGeneration`-style folder (config.json, model.safetensors,
//! tokenizer.json) that [`super::llava::Llava::load`] reads, and [`DemoModel`] answers with it.
//! The image token `<image>` is added to SmolLM2's vocabulary as one extra id (the last row of the
//! embedding), so the tokenizer is SmolLM2's own plus that one special token.
use super::config::LlamaConfig;
use super::generate::{generate_llava, GenerationParams};
use super::gguf::{load_llama_gguf, GgufFile};
use super::llava::Llava;
use super::sft::{FineTuneMode, SftExample, SftParams, SftStepRow, SftTrainer};
use super::weights::write_safetensors;
use super::{io_err, DType, MllmError, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{nn, Device, Kind, Tensor};

pub const IMAGE_TOKEN: &str = "<image>";
/// SmolLM2's chat-turn markers; its GGUF marks them as control (special) tokens.
const IM_START: &str = "<|im_start|>";
const IM_END: &str = "<|im_end|>";

/// Shape of a decoder trained from scratch (random init, seeded).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ScratchDecoder {
    pub hidden_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub num_key_value_heads: i64,
    pub intermediate_size: i64,
    /// Std of the normal init of every weight matrix (transformers' `initializer_range`).
    pub init_std: f64,
}

impl Default for ScratchDecoder {
    /// Small enough to train on 2 CPU cores in minutes; most parameters sit in SmolLM2's 49k-token
    /// embedding (tied with the output head), whose logits dominate the cost of a step.
    fn default() -> Self {
        Self {
            hidden_size: 128,
            num_hidden_layers: 4,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            intermediate_size: 384,
            init_std: 0.02,
        }
    }
}

/// Which decoder the LLaVA model gets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecoderChoice {
    /// A small Llama decoder with random (seeded) weights and SmolLM2's tokenizer.
    Scratch(ScratchDecoder),
    /// SmolLM2-135M-Instruct's own weights from the GGUF (the `--preset smollm2-135m` path); every
    /// weight trains (LoRA would leave the new projector frozen).
    Smollm2Gguf,
}

impl Default for DecoderChoice {
    fn default() -> Self {
        Self::Scratch(ScratchDecoder::default())
    }
}

/// Settings of [`train`]. The paper fine-tunes LLaVA-style 7B models; these are our choices for a model
/// small enough to train from scratch on a CPU.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DemoParams {
    pub decoder: DecoderChoice,
    /// Peak learning rate (10 % linear warm-up, then linear decay: the SFT trainer's schedule). From-scratch
    /// training wants far more than fine-tuning's 5e-5.
    pub learning_rate: f64,
    pub epochs: usize,
    pub batch_size: usize,
    /// Seed of the weight init and of the SFT data order.
    pub seed: u64,
    /// Width of the projector's output and hidden layer is the decoder's; its activation is LLaVA-1.5's.
    pub projector_hidden_act: String,
    /// Stop after this many optimizer steps (bounded runs, tests).
    pub max_steps: Option<usize>,
    /// More text the compact vocabulary must cover beyond the training examples (the confidence
    /// statements that later fine-tuning teaches), so no word of them falls outside the tokenizer.
    #[serde(default)]
    pub extra_vocabulary: Vec<String>,
}

impl Default for DemoParams {
    fn default() -> Self {
        Self {
            decoder: DecoderChoice::default(),
            learning_rate: 3e-3,
            epochs: 4,
            batch_size: 16,
            seed: 0,
            projector_hidden_act: "gelu".into(),
            max_steps: None,
            extra_vocabulary: Vec::new(),
        }
    }
}

/// One training (or question) example.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DemoExample {
    /// CLIP penultimate-layer patch features without CLS, row-major `[n_patches, vision_hidden]`.
    pub patches: Vec<f32>,
    pub n_patches: usize,
    /// The user turn after the image (question and choices).
    pub prompt: String,
    /// The assistant turn (the reference chain); ignored when answering.
    pub target: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DemoReport {
    pub rows: Vec<SftStepRow>,
    pub steps: usize,
    /// Mean response-token loss of the last optimizer step.
    pub final_loss: f64,
    pub parameters: i64,
    /// Bytes of the saved folder.
    pub bytes: u64,
    pub seconds: f64,
    pub out_dir: PathBuf,
}

/// `<|im_start|>user\n<image>×n\n{prompt}<|im_end|>\n<|im_start|>assistant\n` (SmolLM2's chat format).
pub fn chat_prompt(prompt: &str, n_patches: usize) -> String {
    format!("{IM_START}user\n{}\n{prompt}{IM_END}\n{IM_START}assistant\n", IMAGE_TOKEN.repeat(n_patches))
}

/// The answer after the chain's last "the answer is", without the final period.
pub fn answer_of(text: &str) -> Option<String> {
    let lower = text.to_lowercase();
    let at = lower.rfind("the answer is")?;
    let rest = text[at + "the answer is".len()..].trim();
    let end = rest.find(['\n']).unwrap_or(rest.len());
    let ans = rest[..end].trim().trim_end_matches('.').trim();
    (!ans.is_empty()).then(|| ans.to_string())
}

fn check_examples(examples: &[DemoExample], vision_hidden: usize, need_target: bool) -> Result<()> {
    if examples.is_empty() {
        return Err(MllmError::Input("demo: expected at least one example, found none".into()));
    }
    for (i, e) in examples.iter().enumerate() {
        if e.n_patches == 0 || e.patches.len() != e.n_patches * vision_hidden {
            return Err(MllmError::Input(format!(
                "demo example {i}: expected {} × {vision_hidden} patch features, found {} floats",
                e.n_patches,
                e.patches.len()
            )));
        }
        if let Some(j) = e.patches.iter().position(|v| !v.is_finite()) {
            return Err(MllmError::Input(format!("demo example {i}: patch feature #{j} is not finite")));
        }
        if need_target && e.target.trim().is_empty() {
            return Err(MllmError::Input(format!("demo example {i}: empty target text")));
        }
    }
    Ok(())
}

fn features(e: &DemoExample, vision_hidden: usize) -> Tensor {
    Tensor::from_slice(&e.patches).view([e.n_patches as i64, vision_hidden as i64])
}

/// SmolLM2's tokenizer with `<image>` added as the next id.
fn with_image_token(mut tok: tokenizers::Tokenizer) -> Result<(tokenizers::Tokenizer, i64)> {
    tok.add_special_tokens([tokenizers::AddedToken::from(IMAGE_TOKEN, true)])
        .map_err(|e| MllmError::Tokenizer(format!("adding {IMAGE_TOKEN}: {e}")))?;
    let id = tok.token_to_id(IMAGE_TOKEN).ok_or_else(|| MllmError::Tokenizer("<image> was not added".into()))? as i64;
    Ok((tok, id))
}

/// SmolLM2's tokenizer cut down to the tokens `corpus` needs: the tokens it encodes to, every
/// intermediate token of the merges that build them, the 256 byte-level base symbols (any text still
/// encodes) and every special token; ids renumbered densely in SmolLM2's order. On corpus text the
/// tokenization is SmolLM2's own (every merge BPE applies there is kept, and a kept merge is the
/// lowest-ranked applicable one whenever it was before); elsewhere words fall back to shorter pieces.
/// Why: a from-scratch decoder's cost is dominated by the 49k-way output head; the benchmark uses
/// well under a thousand of those tokens.
pub fn compact_tokenizer(tok: &tokenizers::Tokenizer, corpus: &[&str]) -> Result<tokenizers::Tokenizer> {
    use serde_json::Value;
    use std::collections::{BTreeSet, HashSet};
    let bad = |m: String| MllmError::Tokenizer(format!("compacting the tokenizer: {m}"));
    let mut j: Value = serde_json::from_str(&tok.to_string(false).map_err(|e| bad(e.to_string()))?).map_err(|e| bad(e.to_string()))?;
    let vocab: HashMap<String, u64> = serde_json::from_value(j["model"]["vocab"].clone()).map_err(|e| bad(format!("model.vocab: {e}")))?;
    let merges: Vec<(String, String)> = j["model"]["merges"]
        .as_array()
        .ok_or_else(|| bad("model.merges is not an array".into()))?
        .iter()
        .map(|m| match m {
            Value::String(s) => s.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())).ok_or_else(|| bad(format!("merge {s:?}"))),
            Value::Array(a) if a.len() == 2 => {
                Ok((a[0].as_str().unwrap_or_default().to_string(), a[1].as_str().unwrap_or_default().to_string()))
            }
            other => Err(bad(format!("merge {other}"))),
        })
        .collect::<Result<_>>()?;
    let by_id: HashMap<u64, &String> = vocab.iter().map(|(k, v)| (*v, k)).collect();
    let parts: HashMap<String, (String, String)> = merges.iter().map(|(a, b)| (format!("{a}{b}"), (a.clone(), b.clone()))).collect();
    let mut keep: HashSet<String> = HashSet::new();
    let mut stack: Vec<String> = Vec::new();
    for text in corpus {
        let enc = tok.encode(*text, false).map_err(|e| bad(format!("encoding {text:?}: {e}")))?;
        stack.extend(enc.get_ids().iter().filter_map(|i| by_id.get(&(*i as u64)).map(|s| s.to_string())));
    }
    // the byte-level alphabet: the single-character tokens
    stack.extend(vocab.keys().filter(|k| k.chars().count() == 1).cloned());
    let added: Vec<String> = tok.get_added_tokens_decoder().values().map(|t| t.content.clone()).collect();
    stack.extend(added.iter().filter(|t| vocab.contains_key(*t)).cloned());
    while let Some(t) = stack.pop() {
        if keep.insert(t.clone()) {
            if let Some((a, b)) = parts.get(&t) {
                stack.push(a.clone());
                stack.push(b.clone());
            }
        }
    }
    let order: BTreeSet<(u64, String)> = keep.iter().filter_map(|t| vocab.get(t).map(|&i| (i, t.clone()))).collect();
    let new_id: HashMap<String, u64> = order.iter().enumerate().map(|(n, (_, t))| (t.clone(), n as u64)).collect();
    j["model"]["vocab"] = serde_json::to_value(&new_id).expect("json");
    j["model"]["merges"] = Value::Array(
        merges
            .iter()
            .filter(|(a, b)| new_id.contains_key(&format!("{a}{b}")) && new_id.contains_key(a) && new_id.contains_key(b))
            .map(|(a, b)| Value::Array(vec![Value::String(a.clone()), Value::String(b.clone())]))
            .collect(),
    );
    if let Some(Value::Array(list)) = j.get_mut("added_tokens") {
        for t in list.iter_mut() {
            let content = t["content"].as_str().unwrap_or_default().to_string();
            let id = new_id.get(&content).ok_or_else(|| bad(format!("special token {content:?} is not in the vocabulary")))?;
            t["id"] = Value::from(*id);
        }
    }
    let text = serde_json::to_string(&j).expect("json");
    text.parse::<tokenizers::Tokenizer>().map_err(|e| bad(format!("rebuilding: {e}")))
}

fn encode(tok: &tokenizers::Tokenizer, text: &str) -> Result<Vec<i64>> {
    let enc = tok.encode(text, false).map_err(|e| MllmError::Tokenizer(format!("encoding {text:?}: {e}")))?;
    Ok(enc.get_ids().iter().map(|&i| i as i64).collect())
}

fn llava_config_json(text: &serde_json::Value, vision_hidden: usize, image_token: i64, n_patches: usize, act: &str) -> serde_json::Value {
    serde_json::json!({
        "architectures": ["LlavaForConditionalGeneration"],
        "model_type": "llava",
        "text_config": text,
        "vision_config": {"model_type": "clip_vision_model", "hidden_size": vision_hidden},
        "image_token_index": image_token,
        "image_seq_length": n_patches,
        "projector_hidden_act": act,
        "multimodal_projector_bias": true,
        "vision_feature_layer": -2,
        "vision_feature_select_strategy": "default",
        "tie_word_embeddings": text["tie_word_embeddings"],
    })
}

/// Seeded init of a fresh model: norms 1, biases 0, every other weight N(0, std²), in name order.
fn init_weights(vs: &nn::VarStore, std: f64, seed: u64) {
    tch::manual_seed(seed as i64);
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    tch::no_grad(|| {
        for (name, t) in vars {
            let mut t = t;
            if name.contains("norm") {
                let _ = t.fill_(1.0);
            } else if name.ends_with(".bias") {
                let _ = t.zero_();
            } else {
                let _ = t.normal_(0.0, std);
            }
        }
    });
}

/// Trains the demo MLLM on `examples` and saves it to `out_dir` (created; existing files overwritten).
/// `gguf` is SmolLM2's GGUF (its tokenizer always; its weights with [`DecoderChoice::Smollm2Gguf`]).
pub fn train(examples: &[DemoExample], vision_hidden: usize, gguf: &Path, out_dir: &Path, params: &DemoParams) -> Result<DemoReport> {
    let started = std::time::Instant::now();
    check_examples(examples, vision_hidden, true)?;
    if vision_hidden == 0 {
        return Err(MllmError::Input("demo: vision_hidden must be ≥ 1".into()));
    }
    let file = GgufFile::open(gguf)?;
    let full = file.tokenizer()?;
    let full = match params.decoder {
        // SmolLM2's weights need SmolLM2's ids; a scratch decoder only needs the benchmark's tokens.
        DecoderChoice::Smollm2Gguf => full,
        DecoderChoice::Scratch(_) => {
            let mut corpus: Vec<String> = examples.iter().flat_map(|e| [chat_prompt(&e.prompt, 0), e.target.clone()]).collect();
            corpus.extend((0..=20).map(|n| n.to_string()));
            corpus.extend(params.extra_vocabulary.iter().cloned());
            compact_tokenizer(&full, &corpus.iter().map(String::as_str).collect::<Vec<_>>())?
        }
    };
    let (tok, image_token) = with_image_token(full)?;
    let base = file.llama_config()?;
    let eos = tok.token_to_id(IM_END).ok_or_else(|| MllmError::Tokenizer(format!("{IM_END} is not in SmolLM2's vocabulary")))? as i64;
    let bos = tok.token_to_id(IM_START).map(|i| i as i64);
    let vocab = image_token + 1;
    let text_cfg = match &params.decoder {
        DecoderChoice::Scratch(d) => serde_json::json!({
            "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": vocab,
            "hidden_size": d.hidden_size, "intermediate_size": d.intermediate_size,
            "num_hidden_layers": d.num_hidden_layers, "num_attention_heads": d.num_attention_heads,
            "num_key_value_heads": d.num_key_value_heads, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
            "max_position_embeddings": 2048, "hidden_act": "silu", "tie_word_embeddings": true,
            "bos_token_id": bos, "eos_token_id": eos, "pad_token_id": eos,
        }),
        DecoderChoice::Smollm2Gguf => serde_json::json!({
            "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": vocab,
            "hidden_size": base.hidden_size, "intermediate_size": base.intermediate_size,
            "num_hidden_layers": base.num_hidden_layers, "num_attention_heads": base.num_attention_heads,
            "num_key_value_heads": base.num_kv_heads(), "rms_norm_eps": base.rms_norm_eps,
            "rope_theta": base.rope_theta(), "max_position_embeddings": base.max_position_embeddings.unwrap_or(8192),
            "hidden_act": "silu", "tie_word_embeddings": base.tie_word_embeddings,
            "bos_token_id": bos, "eos_token_id": eos, "pad_token_id": eos,
        }),
    };
    let n_patches = examples[0].n_patches;
    let cfg_json = llava_config_json(&text_cfg, vision_hidden, image_token, n_patches, &params.projector_hidden_act);
    let cfg: super::config::LlavaConfig =
        serde_json::from_value(cfg_json.clone()).map_err(|e| MllmError::Config { path: "demo config".into(), msg: e.to_string() })?;
    cfg.text_config.validate("demo text_config")?;

    let vs = nn::VarStore::new(Device::Cpu);
    let mut model = Llava::new(&vs, &cfg)?;
    let std = match &params.decoder {
        DecoderChoice::Scratch(d) => d.init_std,
        DecoderChoice::Smollm2Gguf => 0.02,
    };
    init_weights(&vs, std, params.seed);
    if params.decoder == DecoderChoice::Smollm2Gguf {
        copy_gguf_decoder(&vs, gguf, &base)?;
    }

    let data: Vec<SftExample> = examples
        .iter()
        .map(|e| {
            let prompt = encode(&tok, &chat_prompt(&e.prompt, e.n_patches))?;
            let mut response = encode(&tok, &e.target)?;
            response.push(eos);
            Ok(SftExample { prompt, response, images: vec![features(e, vision_hidden)] })
        })
        .collect::<Result<_>>()?;
    let sft = SftParams {
        mode: FineTuneMode::Full,
        learning_rate: params.learning_rate,
        epochs: params.epochs,
        batch_size: params.batch_size,
        seed: params.seed,
        max_steps: params.max_steps,
        ..SftParams::default()
    };
    let mut trainer = SftTrainer::new(&vs, &mut model, sft)?;
    // Trainer checkpoints (weights + AdamW moments) are only for resuming; they are dropped once done.
    let ckpt = out_dir.join(".sft-checkpoints");
    let report = trainer.train(&model, &data, &ckpt)?;
    std::fs::remove_dir_all(&ckpt).map_err(io_err(&ckpt))?;

    std::fs::create_dir_all(out_dir).map_err(io_err(out_dir))?;
    let mut tensors: Vec<(String, Tensor)> = vs.variables().into_iter().map(|(k, t)| (k, t.detach())).collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let parameters = tensors.iter().map(|(_, t)| t.numel() as i64).sum();
    let mut meta = HashMap::new();
    meta.insert("format".into(), "pt".into());
    write_safetensors(&out_dir.join("model.safetensors"), &tensors, meta)?;
    let cfg_path = out_dir.join("config.json");
    std::fs::write(&cfg_path, serde_json::to_string_pretty(&cfg_json).expect("json")).map_err(io_err(&cfg_path))?;
    let tok_path = out_dir.join("tokenizer.json");
    tok.save(&tok_path, false).map_err(|e| MllmError::Tokenizer(format!("saving {}: {e}", tok_path.display())))?;
    let params_path = out_dir.join("demo_params.json");
    std::fs::write(&params_path, serde_json::to_string_pretty(params).expect("json")).map_err(io_err(&params_path))?;
    let bytes = ["model.safetensors", "config.json", "tokenizer.json", "demo_params.json"]
        .iter()
        .filter_map(|f| std::fs::metadata(out_dir.join(f)).ok())
        .map(|m| m.len())
        .sum();
    Ok(DemoReport {
        final_loss: report.rows.last().map(|r| r.loss).unwrap_or(f64::NAN),
        steps: report.steps_run,
        rows: report.rows,
        parameters,
        bytes,
        seconds: started.elapsed().as_secs_f64(),
        out_dir: out_dir.to_path_buf(),
    })
}

/// Copies SmolLM2's decoder weights (GGUF, dequantized) into the LLaVA model's text tower; the
/// embedding gets one more row (the image token, left at its random init: it is always overwritten by
/// projected features).
fn copy_gguf_decoder(vs: &nn::VarStore, gguf: &Path, base: &LlamaConfig) -> Result<()> {
    let (src_vs, _lm, _file) = load_llama_gguf(gguf, Device::Cpu, DType::F32)?;
    let dst = vs.variables();
    tch::no_grad(|| -> Result<()> {
        for (name, t) in src_vs.variables() {
            let key = format!("language_model.{name}");
            let d = dst.get(&key).ok_or_else(|| MllmError::KeyMismatch {
                dir: gguf.display().to_string(),
                missing: vec![],
                unexpected: vec![key.clone()],
            })?;
            let mut d = d.shallow_clone();
            if name == "model.embed_tokens.weight" || name == "lm_head.weight" {
                d.narrow(0, 0, base.vocab_size).f_copy_(&t)?;
            } else {
                d.f_copy_(&t)?;
            }
        }
        Ok(())
    })
}

/// A trained demo model, ready to answer.
pub struct DemoModel {
    pub vs: nn::VarStore,
    pub model: Llava,
    pub tokenizer: tokenizers::Tokenizer,
    pub eos: i64,
}

impl DemoModel {
    pub fn load(dir: &Path) -> Result<Self> {
        let (vs, model) = Llava::load(dir, Device::Cpu, DType::F32)?;
        let tok_path = dir.join("tokenizer.json");
        let tokenizer = tokenizers::Tokenizer::from_file(&tok_path)
            .map_err(|e| MllmError::Tokenizer(format!("loading {}: {e}", tok_path.display())))?;
        let eos = *model.cfg.text_config.eos_token_ids().first().ok_or_else(|| MllmError::Config {
            path: dir.join("config.json").display().to_string(),
            msg: "text_config has no eos_token_id".into(),
        })?;
        Ok(Self { vs, model, tokenizer, eos })
    }

    /// Prompt token ids (image tokens included) for one example.
    pub fn prompt_ids(&self, e: &DemoExample) -> Result<Vec<i64>> {
        encode(&self.tokenizer, &chat_prompt(&e.prompt, e.n_patches))
    }

    /// Greedy answers (the generated chains), `batch` prompts at a time.
    pub fn generate(&self, examples: &[DemoExample], max_new_tokens: usize, batch: usize) -> Result<Vec<String>> {
        let vision = self.model.cfg.vision_config.hidden_size as usize;
        check_examples(examples, vision, false)?;
        let params =
            GenerationParams { max_new_tokens, eos_token_ids: vec![self.eos], pad_token_id: self.eos, ..GenerationParams::default() };
        let mut out = Vec::with_capacity(examples.len());
        for chunk in examples.chunks(batch.max(1)) {
            let prompts: Vec<(Vec<i64>, Vec<Tensor>)> =
                chunk.iter().map(|e| Ok((self.prompt_ids(e)?, vec![features(e, vision).to_kind(Kind::Float)]))).collect::<Result<_>>()?;
            out.extend(generate_llava(&self.model, &prompts, &params, Some(&self.tokenizer))?.into_iter().map(|g| g.text));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answer_is_read_from_the_last_conclusion() {
        assert_eq!(answer_of("There is a red circle. So, the answer is yes.").as_deref(), Some("yes"));
        assert_eq!(answer_of("So, the answer is 3. So, the answer is large red circle.").as_deref(), Some("large red circle"));
        assert_eq!(answer_of("I cannot tell."), None);
        assert_eq!(answer_of("So, the answer is ."), None);
    }

    #[test]
    fn chat_prompt_has_one_image_token_per_patch() {
        let p = chat_prompt("Q?", 3);
        assert_eq!(p.matches(IMAGE_TOKEN).count(), 3);
        assert!(p.ends_with("<|im_start|>assistant\n"));
    }
}
