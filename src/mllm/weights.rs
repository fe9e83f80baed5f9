//! Hugging Face `*.safetensors` (single file or sharded with `model.safetensors.index.json`), f32 / bf16 /
//! f16, copied into tch variables whose names are the Hugging Face keys. Every missing and unexpected key
//! is listed, and a wrong shape names the key and its file.
use super::{MllmError, Result};
use safetensors::{Dtype, SafeTensors};
use std::collections::{BTreeSet, HashMap};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

/// How checkpoint keys relate to the model's variable names.
pub struct KeyPolicy<'a> {
    /// Maps a checkpoint key to a variable name (None: drop the key silently).
    pub rename: &'a dyn Fn(&str) -> Option<String>,
    /// Variables that may legitimately be absent from the checkpoint (LoRA adapters, a value head).
    pub optional: &'a dyn Fn(&str) -> bool,
}

impl KeyPolicy<'_> {
    pub fn identity() -> KeyPolicy<'static> {
        KeyPolicy { rename: &|k| Some(k.to_string()), optional: &|_| false }
    }
}

/// The safetensors files of a model folder, in load order.
pub fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let text = std::fs::read_to_string(&index).map_err(super::io_err(&index))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| MllmError::Weights { path: index.display().to_string(), msg: e.to_string() })?;
        let map = v.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| MllmError::Weights {
            path: index.display().to_string(),
            msg: "expected an object field \"weight_map\"".into(),
        })?;
        let files: BTreeSet<String> = map.values().filter_map(|f| f.as_str().map(String::from)).collect();
        return Ok(files.into_iter().map(|f| dir.join(f)).collect());
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(super::io_err(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(MllmError::Weights {
            path: dir.display().to_string(),
            msg: "expected model.safetensors, sharded files with model.safetensors.index.json, or *.safetensors; found none".into(),
        });
    }
    Ok(files)
}

fn kind_of(dtype: Dtype) -> Option<Kind> {
    match dtype {
        Dtype::F32 => Some(Kind::Float),
        Dtype::BF16 => Some(Kind::BFloat16),
        Dtype::F16 => Some(Kind::Half),
        Dtype::F64 => Some(Kind::Double),
        _ => None,
    }
}

/// What a load did (for logs).
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    pub loaded: usize,
    pub files: usize,
    pub optional_absent: Vec<String>,
}

/// Copies every tensor of the folder's safetensors into `vars` (converted to each variable's kind and
/// device). Fails listing all missing and unexpected keys, or naming the first wrong shape.
pub fn load_safetensors_dir(vars: &HashMap<String, Tensor>, dir: &Path, policy: &KeyPolicy) -> Result<LoadReport> {
    let files = safetensors_files(dir)?;
    let mut seen = BTreeSet::new();
    let mut unexpected = Vec::new();
    for file in &files {
        let f = std::fs::File::open(file).map_err(super::io_err(file))?;
        // SAFETY: read-only mapping of a file we do not modify while it is mapped.
        let mmap = unsafe { memmap2::Mmap::map(&f) }.map_err(super::io_err(file))?;
        let st =
            SafeTensors::deserialize(&mmap).map_err(|e| MllmError::Weights { path: file.display().to_string(), msg: e.to_string() })?;
        for (key, view) in st.tensors() {
            let Some(name) = (policy.rename)(&key) else { continue };
            let Some(var) = vars.get(&name) else {
                unexpected.push(key.clone());
                continue;
            };
            let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
            if shape != var.size() {
                return Err(MllmError::Shape { key, file: file.display().to_string(), expected: var.size(), found: shape });
            }
            let kind = kind_of(view.dtype()).ok_or_else(|| MllmError::Weights {
                path: file.display().to_string(),
                msg: format!("tensor {key}: dtype {:?} is not supported (expected F32, BF16 or F16)", view.dtype()),
            })?;
            let t = Tensor::f_from_data_size(view.data(), &shape, kind)?;
            tch::no_grad(|| var.shallow_clone().f_copy_(&t.to_kind(var.kind()).to_device(var.device())))?;
            seen.insert(name);
        }
    }
    let mut missing = Vec::new();
    let mut optional_absent = Vec::new();
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort();
    for name in names {
        if !seen.contains(name) {
            if (policy.optional)(name) {
                optional_absent.push(name.clone())
            } else {
                missing.push(name.clone())
            }
        }
    }
    if !missing.is_empty() || !unexpected.is_empty() {
        unexpected.sort();
        return Err(MllmError::KeyMismatch { dir: dir.display().to_string(), missing, unexpected });
    }
    Ok(LoadReport { loaded: seen.len(), files: files.len(), optional_absent })
}

/// The safetensors dtype of a tensor kind (f32, bf16, f16, f64, i64 and i32 supported).
fn dtype_of(kind: Kind) -> Result<Dtype> {
    Ok(match kind {
        Kind::Float => Dtype::F32,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Half => Dtype::F16,
        Kind::Double => Dtype::F64,
        Kind::Int64 => Dtype::I64,
        Kind::Int => Dtype::I32,
        k => return Err(MllmError::Input(format!("cannot serialize tensor kind {k:?}"))),
    })
}

/// One tensor as safetensors writes it: contiguous on the CPU, its bytes copied out only when the writer
/// reaches it, so a checkpoint costs one tensor's bytes beside the model, not a second copy of it.
struct HostTensor {
    tensor: Tensor,
    dtype: Dtype,
    shape: Vec<usize>,
}

impl HostTensor {
    fn new(t: &Tensor) -> Result<Self> {
        let dtype = dtype_of(t.kind())?;
        let tensor = t.f_to_device(tch::Device::Cpu)?.f_contiguous()?;
        let shape = tensor.size().iter().map(|&d| d as usize).collect();
        Ok(Self { tensor, dtype, shape })
    }
}

impl safetensors::View for &HostTensor {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        let numel = self.tensor.numel();
        let mut bytes = vec![0u8; self.data_len()];
        // A contiguous CPU tensor of a kind `dtype_of` accepted: the copy has nothing left that can fail.
        self.tensor.copy_data_u8(&mut bytes, numel);
        bytes.into()
    }
    fn data_len(&self) -> usize {
        self.tensor.numel() * self.tensor.kind().elt_size_in_bytes()
    }
}

/// Writes named tensors (plus string metadata) to one safetensors file, streamed tensor by tensor, with its
/// header's keys in order and fsynced before an atomic rename (temp file + rename).
pub fn write_safetensors(path: &Path, tensors: &[(String, Tensor)], metadata: HashMap<String, String>) -> Result<()> {
    let host = tensors.iter().map(|(n, t)| Ok((n.clone(), HostTensor::new(t)?))).collect::<Result<Vec<_>>>()?;
    let tmp = path.with_extension("safetensors.tmp");
    let err = |msg: String| MllmError::Checkpoint { path: tmp.display().to_string(), msg };
    safetensors::serialize_to_file(host.iter().map(|(n, t)| (n.as_str(), t)), Some(metadata), &tmp).map_err(|e| err(e.to_string()))?;
    let mut f = std::fs::OpenOptions::new().read(true).write(true).open(&tmp).map_err(super::io_err(&tmp))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).map_err(super::io_err(&tmp))?;
    let mut head = len.to_vec();
    head.resize(8 + u64::from_le_bytes(len) as usize, 0);
    f.read_exact(&mut head[8..]).map_err(super::io_err(&tmp))?;
    sort_header(&mut head).map_err(err)?;
    f.seek(std::io::SeekFrom::Start(0)).and_then(|_| f.write_all(&head)).and_then(|_| f.sync_all()).map_err(super::io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(super::io_err(path))?;
    Ok(())
}

/// Rewrites a serialized file's JSON header (its first 8 + n bytes) with every object's keys in order. safetensors writes its
/// metadata map in hash order, so the same weights would give other bytes, and another artifact id, on
/// every run. The header keeps its length (same keys, same values, compact JSON), so the offsets hold.
fn sort_header(bytes: &mut [u8]) -> std::result::Result<(), String> {
    fn sorted(v: serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Object(m) => {
                let mut entries: Vec<_> = m.into_iter().collect();
                entries.sort_by(|a, b| a.0.cmp(&b.0));
                serde_json::Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
            }
            serde_json::Value::Array(a) => serde_json::Value::Array(a.into_iter().map(sorted).collect()),
            v => v,
        }
    }
    let n = bytes.get(..8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize).ok_or("no header length")?;
    let header = bytes.get_mut(8..8 + n).ok_or("header past the end")?;
    let value: serde_json::Value = serde_json::from_slice(header).map_err(|e| format!("header: {e}"))?;
    let json = serde_json::to_vec(&sorted(value)).map_err(|e| format!("header: {e}"))?;
    if json.len() > n {
        return Err(format!("sorted header is {} bytes, more than the {n} written", json.len()));
    }
    // safetensors pads the header with spaces to its length.
    header[..json.len()].copy_from_slice(&json);
    header[json.len()..].fill(b' ');
    Ok(())
}

/// Reads every tensor of one safetensors file with its metadata.
pub fn read_safetensors(path: &Path) -> Result<(HashMap<String, Tensor>, HashMap<String, String>)> {
    let bytes = std::fs::read(path).map_err(super::io_err(path))?;
    let err = |e: safetensors::SafeTensorError| MllmError::Checkpoint { path: path.display().to_string(), msg: e.to_string() };
    let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(err)?;
    let st = SafeTensors::deserialize(&bytes).map_err(err)?;
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        let kind = match view.dtype() {
            Dtype::I64 => Kind::Int64,
            d => kind_of(d).ok_or_else(|| MllmError::Checkpoint {
                path: path.display().to_string(),
                msg: format!("tensor {name}: unsupported dtype {d:?}"),
            })?,
        };
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        out.insert(name, Tensor::f_from_data_size(view.data(), &shape, kind)?);
    }
    Ok((out, meta.metadata().clone().unwrap_or_default()))
}
