//! The one ONNX Runtime environment of the process, session options, and loaded models.
//!
//! ONNX Runtime allows a single environment per process, so it lives in a `OnceLock` shared by every
//! session (and every test). Execution providers are registered with `error_on_failure`: a CUDA/TensorRT
//! provider that cannot register is an error naming the model, unless the caller allowed a CPU fallback,
//! in which case the fallback is recorded in [`OnnxModel::provider`] (never silent).
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use ort::environment::Environment;
use ort::session::builder::{AutoDevicePolicy, GraphOptimizationLevel};
use ort::session::{Session, SessionInputValue};
use ort::value::{TensorElementType, ValueType};
use serde::{Deserialize, Serialize};

use super::{EncoderError, Result};

/// Where the model runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum ExecutionProvider {
    #[default]
    Cpu,
    Cuda {
        #[serde(default)]
        device_id: i32,
    },
    TensorRt {
        #[serde(default)]
        device_id: i32,
        /// Build fp16 engines (TensorRT's `trt_fp16_enable`).
        #[serde(default)]
        fp16: bool,
        /// Cache built engines here (`trt_engine_cache_enable` + path); building one takes minutes.
        #[serde(default)]
        engine_cache_dir: Option<PathBuf>,
    },
}

impl ExecutionProvider {
    pub fn is_cpu(&self) -> bool {
        matches!(self, Self::Cpu)
    }

    /// `cpu`, `cuda` or `tensorrt` (the `--ep` spelling).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Cuda { .. } => "cuda",
            Self::TensorRt { .. } => "tensorrt",
        }
    }

    /// Parses the `--ep` value (device 0, TensorRT without fp16 or cache).
    pub fn parse(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda { device_id: 0 }),
            "tensorrt" | "trt" => Ok(Self::TensorRt { device_id: 0, fp16: false, engine_cache_dir: None }),
            other => {
                Err(EncoderError::BadInput { item: "--ep".into(), reason: format!("expected cpu, cuda or tensorrt, found {other:?}") })
            }
        }
    }
}

/// ONNX Runtime graph optimization level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum GraphOptimization {
    Disable,
    Basic,
    Extended,
    /// Everything, layout optimizations included (ORT's `ORT_ENABLE_ALL`, "level 3" in its docs; Python's default).
    #[default]
    All,
}

/// Session options shared by every encoder. The paper says nothing about inference settings; these are
/// ONNX Runtime's fastest CPU defaults, all configurable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SessionOptions {
    /// Graph optimization level (default: all).
    pub optimization: GraphOptimization,
    /// Intra-op threads; `None` = the stage's share (`$MMB_THREADS`, else the cores this process may use).
    pub intra_threads: Option<usize>,
    pub provider: ExecutionProvider,
    /// When the chosen GPU provider cannot register, run on the CPU instead of failing. Off by default:
    /// silent fallback hides a 10–100× slowdown.
    pub allow_cpu_fallback: bool,
}

impl Default for SessionOptions {
    fn default() -> Self {
        Self { optimization: GraphOptimization::All, intra_threads: None, provider: ExecutionProvider::Cpu, allow_cpu_fallback: false }
    }
}

impl SessionOptions {
    pub fn threads(&self) -> usize {
        self.intra_threads.unwrap_or_else(crate::runtime::stage_threads).max(1)
    }
}

static ENVIRONMENT: OnceLock<std::result::Result<Environment, (String, String)>> = OnceLock::new();

/// The process-wide ONNX Runtime environment, loaded from [`crate::runtime::onnxruntime_dylib`] on first use.
pub fn environment() -> Result<&'static Environment> {
    let env = ENVIRONMENT.get_or_init(|| {
        let path = crate::runtime::onnxruntime_dylib().ok_or_else(|| ("(unset)".to_string(), "ORT_DYLIB_PATH is not set".to_string()))?;
        let shown = path.display().to_string();
        if !path.exists() {
            return Err((shown, "no such file".into()));
        }
        let builder = ort::init_from(&path).map_err(|e| (shown.clone(), e.to_string()))?;
        builder.with_name("mmboundary").with_telemetry(false).build().map_err(|e| (shown, e.to_string()))
    });
    env.as_ref().map_err(|(path, reason)| EncoderError::RuntimeLoad { path: path.clone(), reason: reason.clone() })
}

/// One expected input or output of an encoder's ONNX graph.
#[derive(Debug, Clone, Copy)]
pub struct Port {
    pub name: &'static str,
    pub elem: TensorElementType,
    pub rank: usize,
    pub required: bool,
}

/// A loaded ONNX model: its session (behind a mutex: `Session::run` needs `&mut`), the provider it really
/// runs on, and its declared inputs/outputs.
pub struct OnnxModel {
    session: Mutex<Session>,
    path: PathBuf,
    provider: ExecutionProvider,
    fallback_reason: Option<String>,
    inputs: Vec<(String, ValueType)>,
    outputs: Vec<(String, ValueType)>,
}

impl std::fmt::Debug for OnnxModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnnxModel").field("path", &self.path).field("provider", &self.provider).finish()
    }
}

fn ort_err<'a>(path: &'a Path, during: &'static str) -> impl FnOnce(ort::Error) -> EncoderError + 'a {
    move |e| EncoderError::Ort { path: path.to_path_buf(), during, reason: e.to_string() }
}

fn provider_dispatch(ep: &ExecutionProvider) -> Option<ort::ep::ExecutionProviderDispatch> {
    match ep {
        ExecutionProvider::Cpu => None,
        ExecutionProvider::Cuda { device_id } => Some(ort::ep::CUDA::default().with_device_id(*device_id).build().error_on_failure()),
        ExecutionProvider::TensorRt { device_id, fp16, engine_cache_dir } => {
            let mut trt = ort::ep::TensorRT::default().with_device_id(*device_id).with_fp16(*fp16);
            if let Some(dir) = engine_cache_dir {
                trt = trt.with_engine_cache(true).with_engine_cache_path(dir.display().to_string());
            }
            Some(trt.build().error_on_failure())
        }
    }
}

/// Whether this process's ONNX Runtime offers `ep` (the CPU always; CUDA/TensorRT when the loaded
/// library was built with them). Says nothing about a GPU being there: see `stages::device`.
pub fn provider_available(ep: &ExecutionProvider) -> Result<bool> {
    use ort::ep::ExecutionProvider as Ep;
    if ep.is_cpu() {
        return Ok(true);
    }
    let lib = crate::runtime::onnxruntime_dylib().unwrap_or_default();
    environment()?;
    let available = match ep {
        ExecutionProvider::Cuda { .. } => <ort::ep::CUDA as Ep>::is_available(),
        _ => <ort::ep::TensorRT as Ep>::is_available(),
    };
    available.map_err(ort_err(&lib, "listing its execution providers"))
}

impl OnnxModel {
    /// Loads `path` with `options`. A missing file, an unregistrable provider (without fallback) or an invalid
    /// graph is an error naming the file.
    pub fn load(path: &Path, options: &SessionOptions) -> Result<Self> {
        if !path.is_file() {
            return Err(EncoderError::MissingFile { what: "ONNX model", path: path.to_path_buf(), hint: String::new() });
        }
        let env = environment()?;
        let level = match options.optimization {
            GraphOptimization::Disable => GraphOptimizationLevel::Disable,
            GraphOptimization::Basic => GraphOptimizationLevel::Level1,
            GraphOptimization::Extended => GraphOptimizationLevel::Level2,
            GraphOptimization::All => GraphOptimizationLevel::All,
        };
        let base = Session::builder(env)
            .map_err(ort_err(path, "creating session options"))?
            .with_optimization_level(level)
            .map_err(|e| ort_err(path, "setting the optimization level")(e.into()))?
            .with_intra_threads(options.threads())
            .map_err(|e| ort_err(path, "setting intra-op threads")(e.into()))?
            .with_inter_threads(1)
            .map_err(|e| ort_err(path, "setting inter-op threads")(e.into()))?
            // ort defaults to "max efficiency" automatic EP selection, which may place a model on an NPU/GPU
            // nobody asked for; only the providers named in `options` may run it
            .with_auto_device(AutoDevicePolicy::PreferCPU)
            .map_err(|e| ort_err(path, "setting the device policy")(e.into()))?;
        let mut provider = options.provider.clone();
        let mut fallback_reason = None;
        let mut builder = match provider_dispatch(&options.provider) {
            None => base,
            Some(dispatch) => match base.clone().with_execution_providers([dispatch]) {
                Ok(b) => b,
                Err(e) => {
                    let reason = e.to_string().trim_end_matches('.').to_string();
                    if !options.allow_cpu_fallback {
                        return Err(EncoderError::ProviderUnavailable {
                            ep: options.provider.name().into(),
                            model: path.to_path_buf(),
                            reason,
                        });
                    }
                    tracing::warn!(model = %path.display(), ep = options.provider.name(), %reason,
                        "execution provider unavailable; running on the CPU as allowed by allow_cpu_fallback");
                    provider = ExecutionProvider::Cpu;
                    fallback_reason = Some(reason);
                    base
                }
            },
        };
        let session = builder.commit_from_file(path).map_err(ort_err(path, "loading the model"))?;
        let inputs = session.inputs().iter().map(|o| (o.name().to_string(), o.dtype().clone())).collect();
        let outputs = session.outputs().iter().map(|o| (o.name().to_string(), o.dtype().clone())).collect();
        Ok(Self { session: Mutex::new(session), path: path.to_path_buf(), provider, fallback_reason, inputs, outputs })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Maps an ONNX Runtime error met `during` a step on this model to an error naming the model file.
    pub fn ort_error(&self, during: &'static str) -> impl Fn(ort::Error) -> EncoderError + Copy + '_ {
        move |e| EncoderError::Ort { path: self.path.clone(), during, reason: e.to_string() }
    }

    /// The provider the session really runs on (CPU after an allowed fallback).
    pub fn provider(&self) -> &ExecutionProvider {
        &self.provider
    }

    /// Why the requested provider was replaced by the CPU, when it was.
    pub fn fallback_reason(&self) -> Option<&str> {
        self.fallback_reason.as_deref()
    }

    pub fn input_names(&self) -> Vec<&str> {
        self.inputs.iter().map(|(n, _)| n.as_str()).collect()
    }

    pub fn output_names(&self) -> Vec<&str> {
        self.outputs.iter().map(|(n, _)| n.as_str()).collect()
    }

    pub fn has_input(&self, name: &str) -> bool {
        self.inputs.iter().any(|(n, _)| n == name)
    }

    /// Checks the graph's inputs and outputs against what `encoder` feeds and reads: every input must be
    /// known (required or optional) with the right element type and rank, and every required output present.
    pub fn expect_signature(&self, encoder: &'static str, inputs: &[Port], outputs: &[Port]) -> Result<()> {
        let bad = |detail: String| EncoderError::ModelSignature { path: self.path.clone(), encoder, detail };
        let describe = |list: &[(String, ValueType)]| list.iter().map(|(n, t)| format!("{n}: {t}")).collect::<Vec<_>>().join(", ");
        for (name, ty) in &self.inputs {
            let Some(port) = inputs.iter().find(|p| p.name == name) else {
                return Err(bad(format!(
                    "unexpected input {name:?}; expected inputs {:?}, the graph has [{}]",
                    inputs.iter().map(|p| p.name).collect::<Vec<_>>(),
                    describe(&self.inputs)
                )));
            };
            check_port(port, ty).map_err(|d| bad(format!("input {name:?}: {d}")))?;
        }
        for port in inputs.iter().filter(|p| p.required) {
            if !self.has_input(port.name) {
                return Err(bad(format!("missing input {:?}; the graph has [{}]", port.name, describe(&self.inputs))));
            }
        }
        for port in outputs.iter().filter(|p| p.required) {
            let Some((_, ty)) = self.outputs.iter().find(|(n, _)| n == port.name) else {
                return Err(bad(format!("missing output {:?}; the graph has [{}]", port.name, describe(&self.outputs))));
            };
            check_port(port, ty).map_err(|d| bad(format!("output {:?}: {d}", port.name)))?;
        }
        Ok(())
    }

    /// Runs the model and returns the named outputs as (shape, f32 values), in the order asked.
    pub fn run(&self, inputs: Vec<(&str, SessionInputValue<'_>)>, outputs: &[&str]) -> Result<Vec<(Vec<usize>, Vec<f32>)>> {
        self.run_with(inputs, outputs, |views| Ok(views.iter().map(|(shape, data)| (shape.clone(), data.to_vec())).collect()))
    }

    /// Runs the model and hands the named outputs, borrowed from ONNX Runtime's buffers (no copy), to `read`.
    pub fn run_with<T>(
        &self,
        inputs: Vec<(&str, SessionInputValue<'_>)>,
        outputs: &[&str],
        read: impl FnOnce(&[(Vec<usize>, &[f32])]) -> Result<T>,
    ) -> Result<T> {
        let mut session = self.session.lock().unwrap_or_else(|p| p.into_inner());
        let result = session.run(inputs).map_err(ort_err(&self.path, "running the model"))?;
        let views = outputs
            .iter()
            .map(|name| {
                let value = result.get(*name).ok_or_else(|| EncoderError::ModelSignature {
                    path: self.path.clone(),
                    encoder: "ONNX",
                    detail: format!("output {name:?} not produced"),
                })?;
                let (shape, data) = value.try_extract_tensor::<f32>().map_err(ort_err(&self.path, "reading an output as f32"))?;
                Ok((shape.iter().map(|&d| d.max(0) as usize).collect::<Vec<usize>>(), data))
            })
            .collect::<Result<Vec<_>>>()?;
        read(&views)
    }
}

fn check_port(port: &Port, ty: &ValueType) -> std::result::Result<(), String> {
    match ty {
        ValueType::Tensor { ty, shape, .. } => {
            if *ty != port.elem {
                return Err(format!("expected element type {}, found {ty}", port.elem));
            }
            if shape.len() != port.rank {
                return Err(format!("expected rank {}, found shape {shape:?}", port.rank));
            }
            Ok(())
        }
        other => Err(format!("expected a tensor, found {other}")),
    }
}

/// An i64 tensor input built from a flat row-major buffer.
pub fn i64_input(shape: [usize; 2], data: Vec<i64>) -> std::result::Result<SessionInputValue<'static>, ort::Error> {
    Ok(ort::value::Tensor::from_array((shape, data))?.into())
}

/// An f32 tensor input built from a flat row-major buffer.
pub fn f32_input<const N: usize>(shape: [usize; N], data: Vec<f32>) -> std::result::Result<SessionInputValue<'static>, ort::Error> {
    Ok(ort::value::Tensor::from_array((shape, data))?.into())
}
