//! A llama.cpp GGUF (v2/v3) reader for Llama-architecture files: metadata, tensors dequantized to f32
//! (F32, F16, Q8_0, Q4_0, Q4_1: the types SmolLM2-135M-Instruct's Q4_1 file uses, plus their nearest
//! kin), the Q/K row permutation undone exactly as transformers does when it loads GGUF, and the
//! byte-level BPE tokenizer rebuilt from `tokenizer.ggml.*`.
use super::config::LlamaConfig;
use super::llama::CausalLm;
use super::{DType, MllmError, Result};
use std::collections::HashMap;
use std::path::Path;
use tch::{nn, Device, Kind, Tensor};

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U(u64),
    I(i64),
    F(f64),
    Bool(bool),
    Str(String),
    Array(Vec<Value>),
}

impl Value {
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Self::U(v) => Some(*v),
            Self::I(v) if *v >= 0 => Some(*v as u64),
            _ => None,
        }
    }
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Self::F(v) => Some(*v),
            Self::U(v) => Some(*v as f64),
            Self::I(v) => Some(*v as f64),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::Str(s) => Some(s),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    /// GGUF order: innermost (row length) first.
    pub dims: Vec<u64>,
    pub ggml_type: u32,
    pub offset: u64,
}

pub struct GgufFile {
    pub path: String,
    pub metadata: HashMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    data_start: usize,
    mmap: memmap2::Mmap,
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a str,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len()).ok_or_else(|| MllmError::Gguf {
            path: self.path.to_string(),
            msg: format!("truncated: wanted {n} bytes at offset {}, file has {}", self.pos, self.buf.len()),
        })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn string(&mut self) -> Result<String> {
        let n = self.u64()? as usize;
        Ok(String::from_utf8_lossy(self.take(n)?).into_owned())
    }
    fn value(&mut self, ty: u32) -> Result<Value> {
        Ok(match ty {
            0 => Value::U(self.take(1)?[0] as u64),
            1 => Value::I(self.take(1)?[0] as i8 as i64),
            2 => Value::U(u16::from_le_bytes(self.take(2)?.try_into().unwrap()) as u64),
            3 => Value::I(i16::from_le_bytes(self.take(2)?.try_into().unwrap()) as i64),
            4 => Value::U(self.u32()? as u64),
            5 => Value::I(self.u32()? as i32 as i64),
            6 => Value::F(f32::from_le_bytes(self.take(4)?.try_into().unwrap()) as f64),
            7 => Value::Bool(self.take(1)?[0] != 0),
            8 => Value::Str(self.string()?),
            9 => {
                let inner = self.u32()?;
                let n = self.u64()? as usize;
                let mut v = Vec::with_capacity(n.min(1 << 20));
                for _ in 0..n {
                    v.push(self.value(inner)?);
                }
                Value::Array(v)
            }
            10 => Value::U(self.u64()?),
            11 => Value::I(self.u64()? as i64),
            12 => Value::F(f64::from_le_bytes(self.take(8)?.try_into().unwrap())),
            t => {
                return Err(MllmError::Gguf {
                    path: self.path.to_string(),
                    msg: format!("unknown metadata value type {t} at offset {}", self.pos),
                })
            }
        })
    }
}

fn f16_to_f32(b: [u8; 2]) -> f32 {
    half_to_f32(u16::from_le_bytes(b))
}

/// IEEE half → f32 (exact).
fn half_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let man = (h & 0x3ff) as u32;
    let bits = if exp == 0 {
        if man == 0 {
            sign
        } else {
            // subnormal: value = man · 2^-24
            let v = man as f32 * (1.0 / 16_777_216.0);
            return if sign != 0 { -v } else { v };
        }
    } else if exp == 31 {
        sign | 0x7f80_0000 | (man << 13)
    } else {
        sign | ((exp + 112) << 23) | (man << 13)
    };
    f32::from_bits(bits)
}

/// (block elements, block bytes) per ggml type we dequantize.
fn block_layout(ty: u32) -> Option<(usize, usize, &'static str)> {
    match ty {
        0 => Some((1, 4, "F32")),
        1 => Some((1, 2, "F16")),
        2 => Some((32, 18, "Q4_0")),
        3 => Some((32, 20, "Q4_1")),
        8 => Some((32, 34, "Q8_0")),
        _ => None,
    }
}

fn dequantize(ty: u32, data: &[u8], out: &mut Vec<f32>) {
    match ty {
        0 => out.extend(data.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap()))),
        1 => out.extend(data.chunks_exact(2).map(|c| f16_to_f32([c[0], c[1]]))),
        2 => {
            for b in data.chunks_exact(18) {
                let d = f16_to_f32([b[0], b[1]]);
                let qs = &b[2..18];
                out.extend(qs.iter().map(|q| ((q & 0xf) as i32 - 8) as f32 * d));
                out.extend(qs.iter().map(|q| ((q >> 4) as i32 - 8) as f32 * d));
            }
        }
        3 => {
            for b in data.chunks_exact(20) {
                let d = f16_to_f32([b[0], b[1]]);
                let m = f16_to_f32([b[2], b[3]]);
                let qs = &b[4..20];
                // Same order and rounding as gguf-py: (d * q) + m in f32.
                out.extend(qs.iter().map(|q| d * (q & 0xf) as f32 + m));
                out.extend(qs.iter().map(|q| d * (q >> 4) as f32 + m));
            }
        }
        8 => {
            for b in data.chunks_exact(34) {
                let d = f16_to_f32([b[0], b[1]]);
                out.extend(b[2..34].iter().map(|&q| d * (q as i8) as f32));
            }
        }
        _ => unreachable!("checked by block_layout"),
    }
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self> {
        let p = path.display().to_string();
        let f = std::fs::File::open(path).map_err(super::io_err(path))?;
        // SAFETY: read-only mapping of a file we do not modify.
        let mmap = unsafe { memmap2::Mmap::map(&f) }.map_err(super::io_err(path))?;
        let mut c = Cursor { buf: &mmap, pos: 0, path: &p };
        let magic = c.take(4)?;
        if magic != b"GGUF" {
            return Err(MllmError::Gguf { path: p.clone(), msg: format!("expected magic \"GGUF\", found {magic:?}") });
        }
        let version = c.u32()?;
        if !(2..=3).contains(&version) {
            return Err(MllmError::Gguf { path: p.clone(), msg: format!("expected GGUF version 2 or 3, found {version}") });
        }
        let n_tensors = c.u64()?;
        let n_kv = c.u64()?;
        let mut metadata = HashMap::new();
        for _ in 0..n_kv {
            let k = c.string()?;
            let ty = c.u32()?;
            let v = c.value(ty)?;
            metadata.insert(k, v);
        }
        let mut tensors = Vec::new();
        for _ in 0..n_tensors {
            let name = c.string()?;
            let nd = c.u32()?;
            let dims = (0..nd).map(|_| c.u64()).collect::<Result<Vec<_>>>()?;
            let ggml_type = c.u32()?;
            let offset = c.u64()?;
            tensors.push(TensorInfo { name, dims, ggml_type, offset });
        }
        let align = metadata.get("general.alignment").and_then(|v| v.as_u64()).unwrap_or(32) as usize;
        let data_start = c.pos.div_ceil(align) * align;
        Ok(Self { path: p, metadata, tensors, data_start, mmap })
    }

    pub fn meta_u64(&self, key: &str) -> Result<u64> {
        self.metadata.get(key).and_then(|v| v.as_u64()).ok_or_else(|| self.missing(key))
    }
    pub fn meta_f64(&self, key: &str) -> Result<f64> {
        self.metadata.get(key).and_then(|v| v.as_f64()).ok_or_else(|| self.missing(key))
    }
    pub fn meta_str(&self, key: &str) -> Result<&str> {
        self.metadata.get(key).and_then(|v| v.as_str()).ok_or_else(|| self.missing(key))
    }
    fn missing(&self, key: &str) -> MllmError {
        MllmError::Gguf { path: self.path.clone(), msg: format!("metadata key {key} missing or of the wrong type") }
    }

    /// One tensor dequantized to f32, shaped as PyTorch sees it (GGUF dims reversed).
    pub fn tensor(&self, info: &TensorInfo) -> Result<Tensor> {
        let (blk, bytes, _) = block_layout(info.ggml_type).ok_or_else(|| MllmError::Gguf {
            path: self.path.clone(),
            msg: format!("tensor {}: ggml type {} is not supported (supported: F32, F16, Q4_0, Q4_1, Q8_0)", info.name, info.ggml_type),
        })?;
        let n: u64 = info.dims.iter().product();
        if n as usize % blk != 0 {
            return Err(MllmError::Gguf {
                path: self.path.clone(),
                msg: format!("tensor {}: {n} elements not a multiple of block {blk}", info.name),
            });
        }
        let start = self.data_start + info.offset as usize;
        let len = n as usize / blk * bytes;
        let data = self.mmap.get(start..start + len).ok_or_else(|| MllmError::Gguf {
            path: self.path.clone(),
            msg: format!("tensor {}: data [{start}, {}) lies past the end of the file", info.name, start + len),
        })?;
        let mut out = Vec::with_capacity(n as usize);
        dequantize(info.ggml_type, data, &mut out);
        let shape: Vec<i64> = info.dims.iter().rev().map(|&d| d as i64).collect();
        Ok(Tensor::from_slice(&out).reshape(shape))
    }

    /// The Llama config the metadata describes (only `general.architecture = llama` is accepted).
    pub fn llama_config(&self) -> Result<LlamaConfig> {
        let arch = self.meta_str("general.architecture")?;
        if arch != "llama" {
            return Err(MllmError::UnsupportedArchitecture {
                found: format!("GGUF general.architecture {arch:?}"),
                path: self.path.clone(),
                supported: "llama (GGUF)",
            });
        }
        let heads = self.meta_u64("llama.attention.head_count")? as i64;
        let hidden = self.meta_u64("llama.embedding_length")? as i64;
        let vocab = match self.metadata.get("llama.vocab_size").and_then(|v| v.as_u64()) {
            Some(v) => v as i64,
            None => match self.metadata.get("tokenizer.ggml.tokens") {
                Some(Value::Array(a)) => a.len() as i64,
                _ => return Err(self.missing("llama.vocab_size")),
            },
        };
        let tied = !self.tensors.iter().any(|t| t.name == "output.weight");
        let cfg = serde_json::json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": vocab,
            "hidden_size": hidden,
            "intermediate_size": self.meta_u64("llama.feed_forward_length")?,
            "num_hidden_layers": self.meta_u64("llama.block_count")?,
            "num_attention_heads": heads,
            "num_key_value_heads": self.metadata.get("llama.attention.head_count_kv").and_then(|v| v.as_u64()).unwrap_or(heads as u64),
            "rms_norm_eps": self.meta_f64("llama.attention.layer_norm_rms_epsilon")?,
            "rope_theta": self.metadata.get("llama.rope.freq_base").and_then(|v| v.as_f64()).unwrap_or(10000.0),
            "tie_word_embeddings": tied,
            "max_position_embeddings": self.metadata.get("llama.context_length").and_then(|v| v.as_u64()),
            "bos_token_id": self.metadata.get("tokenizer.ggml.bos_token_id").and_then(|v| v.as_u64()),
            "eos_token_id": self.metadata.get("tokenizer.ggml.eos_token_id").and_then(|v| v.as_u64()),
        });
        if let Some(s) = self.metadata.get("llama.rope.scaling.type").and_then(|v| v.as_str()) {
            if s != "none" {
                return Err(MllmError::Gguf { path: self.path.clone(), msg: format!("llama.rope.scaling.type {s:?} is not supported") });
            }
        }
        let cfg: LlamaConfig = serde_json::from_value(cfg).map_err(|e| MllmError::Gguf { path: self.path.clone(), msg: e.to_string() })?;
        cfg.validate(&self.path)?;
        Ok(cfg)
    }

    /// The byte-level BPE tokenizer (`tokenizer.ggml.model = gpt2`) rebuilt from the metadata, with
    /// control tokens as special tokens. Pre-tokenizer: single digits, then GPT-2 byte-level (SmolLM's).
    pub fn tokenizer(&self) -> Result<tokenizers::Tokenizer> {
        use tokenizers::models::bpe::BPE;
        use tokenizers::pre_tokenizers::{byte_level::ByteLevel, digits::Digits, sequence::Sequence, PreTokenizerWrapper};
        let model = self.meta_str("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(MllmError::Tokenizer(format!("GGUF tokenizer model {model:?}: only gpt2 (byte-level BPE) is supported")));
        }
        let strings = |key: &str| -> Result<Vec<String>> {
            match self.metadata.get(key) {
                Some(Value::Array(a)) => Ok(a.iter().map(|v| v.as_str().unwrap_or_default().to_string()).collect()),
                _ => Err(self.missing(key)),
            }
        };
        let tokens = strings("tokenizer.ggml.tokens")?;
        let merges: Vec<(String, String)> = strings("tokenizer.ggml.merges")?
            .into_iter()
            .filter_map(|m| m.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())))
            .collect();
        let vocab: tokenizers::models::bpe::Vocab = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| MllmError::Tokenizer(format!("building BPE from {}: {e}", self.path)))?;
        let mut tok = tokenizers::Tokenizer::new(bpe);
        let pre = Sequence::new(vec![
            PreTokenizerWrapper::Digits(Digits::new(true)),
            PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, true)),
        ]);
        tok.with_pre_tokenizer(Some(pre));
        tok.with_decoder(Some(tokenizers::decoders::byte_level::ByteLevel::default()));
        if let Some(Value::Array(types)) = self.metadata.get("tokenizer.ggml.token_type") {
            // 3 = control (<|im_start|>, <|endoftext|>, …): matched whole and never split.
            let special: Vec<tokenizers::AddedToken> = types
                .iter()
                .zip(&tokens)
                .filter(|(t, _)| t.as_u64() == Some(3))
                .map(|(_, s)| tokenizers::AddedToken::from(s.clone(), true))
                .collect();
            tok.add_special_tokens(special).map_err(|e| MllmError::Tokenizer(e.to_string()))?;
        }
        Ok(tok)
    }
}

/// GGUF tensor name → Hugging Face key.
fn hf_name(gguf: &str) -> Option<String> {
    match gguf {
        "token_embd.weight" => return Some("model.embed_tokens.weight".into()),
        "output_norm.weight" => return Some("model.norm.weight".into()),
        "output.weight" => return Some("lm_head.weight".into()),
        _ => {}
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let hf = match part {
        "attn_norm.weight" => "input_layernorm.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "attn_q.bias" => "self_attn.q_proj.bias",
        "attn_k.bias" => "self_attn.k_proj.bias",
        "attn_v.bias" => "self_attn.v_proj.bias",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}"))
}

/// Undoes llama.cpp's interleaving of Q/K rows (convert_hf_to_gguf `permute`), as transformers'
/// `reverse_permute_weights` does: reshape (heads, d/heads/2, 2, …) → swap axes 1, 2.
fn reverse_permute(w: &Tensor, n_head: i64) -> Tensor {
    let s = w.size();
    let mut shape = vec![n_head, s[0] / n_head / 2, 2];
    shape.extend_from_slice(&s[1..]);
    w.reshape(shape).swapaxes(1, 2).reshape(s)
}

/// Loads a Llama GGUF file into a fresh `CausalLm` (weights dequantized to f32, then cast to `dtype`).
pub fn load_llama_gguf(path: &Path, device: Device, dtype: DType) -> Result<(nn::VarStore, CausalLm, GgufFile)> {
    let file = GgufFile::open(path)?;
    let cfg = file.llama_config()?;
    let mut vs = nn::VarStore::new(device);
    let lm = CausalLm::new(&vs.root(), &cfg)?;
    let vars = vs.variables();
    let mut seen = std::collections::BTreeSet::new();
    let mut unexpected = Vec::new();
    for info in &file.tensors {
        let Some(name) = hf_name(&info.name) else {
            if info.name != "rope_freqs.weight" {
                unexpected.push(info.name.clone());
            }
            continue;
        };
        let Some(var) = vars.get(&name) else {
            unexpected.push(info.name.clone());
            continue;
        };
        let mut t = file.tensor(info)?;
        if name.ends_with("q_proj.weight") || name.ends_with("q_proj.bias") {
            t = reverse_permute(&t, cfg.num_attention_heads);
        } else if name.ends_with("k_proj.weight") || name.ends_with("k_proj.bias") {
            t = reverse_permute(&t, cfg.num_kv_heads());
        }
        if t.size() != var.size() {
            return Err(MllmError::Shape { key: info.name.clone(), file: file.path.clone(), expected: var.size(), found: t.size() });
        }
        tch::no_grad(|| var.shallow_clone().f_copy_(&t.to_kind(Kind::Float).to_device(device)))?;
        seen.insert(name);
    }
    let mut missing: Vec<String> = vars.keys().filter(|k| !seen.contains(*k)).cloned().collect();
    missing.sort();
    if !missing.is_empty() || !unexpected.is_empty() {
        return Err(MllmError::KeyMismatch { dir: file.path.clone(), missing, unexpected });
    }
    vs.set_kind(dtype.kind());
    Ok((vs, lm, file))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_conversion_matches_known_values() {
        assert_eq!(half_to_f32(0x3c00), 1.0);
        assert_eq!(half_to_f32(0xc000), -2.0);
        assert_eq!(half_to_f32(0x0001), 5.960_464_5e-8);
        assert_eq!(half_to_f32(0x7bff), 65504.0);
        assert!(half_to_f32(0x7e00).is_nan());
    }

    #[test]
    fn q4_1_block_dequantizes_as_d_times_q_plus_m() {
        // d = 0.5 (0x3800), m = -1 (0xbc00); byte j holds q=j&0xf (low) and 15-j (high).
        let mut b = vec![0x00, 0x38, 0x00, 0xbc];
        b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let mut out = Vec::new();
        dequantize(3, &b, &mut out);
        assert_eq!(out.len(), 32);
        assert_eq!(out[0], -1.0);
        assert_eq!(out[15], 6.5);
        assert_eq!(out[16], 6.5);
        assert_eq!(out[31], -1.0);
    }

    #[test]
    fn reverse_permute_inverts_llama_cpp_permute() {
        // llama.cpp permute: reshape(h, 2, d/h/2, …).swapaxes(1, 2).
        let w = Tensor::arange(8 * 3, (Kind::Float, Device::Cpu)).reshape([8, 3]);
        let permuted = w.reshape([2, 2, 2, 3]).swapaxes(1, 2).reshape([8, 3]);
        assert!(reverse_permute(&permuted, 2).equal(&w));
    }
}
