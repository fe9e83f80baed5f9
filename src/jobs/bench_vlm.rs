//! One round of the VLM benchmark on our side (`mmb-torch bench-vlm`): a LLaVA-NeXT or Qwen2-VL folder
//! written by `scripts/bench_vlm.py build` (a small real-architecture configuration with random weights),
//! one image, a fixed prompt, and one task:
//! - `generate`: greedy decoding of `new_tokens` tokens from the one-image prompt, the family's image
//!   processor, its vision tower and the prefill included in the timed region (the image is decoded
//!   before it, as transformers' side decodes it before calling the processor);
//! - `train`: `steps` LoRA SFT steps (rank 8 on every text-tower projection, batch 1, the prompt with
//!   its image features computed once, plus a fixed response), as the `sft` stage trains.
//!
//! `scripts/bench_vlm.py run` measures transformers on the same folder, image, prompt and task, and
//! `scripts/bench_vlm.py rounds` interleaves both sides and checks that they did the same work (the
//! prompt, the tokens generated, the first step's loss). Each round reports the CPU share of its timed
//! region (process CPU seconds over wall seconds × threads) and the machine's load average.
use super::inputs::ImageInputs;
use super::{JobError, Result};
use mllm::family::Mllm;
use mllm::generate::{generate_multimodal, GenerationParams};
use mllm::lora::LoraParams;
use mllm::sft::{FineTuneMode, SftExample, SftParams, SftTrainer};
use mllm::DType;
use mmboundary::encoders::bench::{load_average, process_cpu_seconds};
use mmboundary::encoders::llava_next_image::LlavaNextImageProcessor;
use mmboundary::encoders::qwen2_vl_image::Qwen2VlImageProcessor;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{Device, Tensor};

/// The prompt's text tokens before and after the image slot (the image delimiters, if the family has
/// them, around the image tokens). `scripts/bench_vlm.py` builds the same prompt.
pub const PROMPT_BEFORE: [i64; 3] = [1, 2, 3];
pub const PROMPT_AFTER: [i64; 4] = [4, 5, 6, 7];

/// The SFT response: `response_len` tokens `10 + 97·k` (the same on transformers' side).
pub fn response_tokens(response_len: usize) -> Vec<i64> {
    (0..response_len as i64).map(|k| 10 + 97 * k).collect()
}

#[derive(Debug, Clone)]
pub struct VlmBenchConfig {
    /// A model folder with its `preprocessor_config.json` (family read from `config.json`).
    pub model_dir: PathBuf,
    pub image: PathBuf,
    /// (x, y, width, height) cut from the image before anything else (`None`: the whole image).
    pub crop: Option<[u32; 4]>,
    pub dtype: DType,
    pub task: String,
    pub threads: usize,
    pub new_tokens: usize,
    pub steps: usize,
    pub response_len: usize,
}

/// One round's figures (JSON for the driver).
#[derive(Debug, Clone, Serialize)]
pub struct VlmBenchRound {
    pub side: &'static str,
    pub family: String,
    pub dtype: String,
    pub task: String,
    pub threads: usize,
    pub image_tokens: i64,
    pub prompt_tokens: usize,
    /// `generate`: the tokens generated.
    pub tokens: Vec<i64>,
    /// `generate`: tokens / seconds of the timed region.
    pub tokens_per_s: Option<f64>,
    /// `generate`: the whole timed region; `train`: the fastest step after the first.
    pub seconds: f64,
    /// `train`: each step's loss and seconds.
    pub losses: Vec<f64>,
    pub step_seconds: Vec<f64>,
    /// Process CPU seconds over (wall seconds × threads) of the timed region (`train`: all steps).
    pub cpu_share: Option<f64>,
    pub load_before: Option<f64>,
    pub load_after: Option<f64>,
}

fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::F32 => "f32",
        DType::Bf16 => "bf16",
        DType::F16 => "f16",
    }
}

/// Parses `f32` or `bf16`.
pub fn parse_dtype(s: &str) -> Result<DType> {
    match s {
        "f32" => Ok(DType::F32),
        "bf16" => Ok(DType::Bf16),
        other => Err(JobError::param("--dtype", format!("expected f32 or bf16, found `{other}`"))),
    }
}

/// Runs one task once, as configured, and reports it.
pub fn run(cfg: &VlmBenchConfig) -> Result<VlmBenchRound> {
    if cfg.task != "generate" && cfg.task != "train" {
        return Err(JobError::param("--task", format!("expected generate or train, found `{}`", cfg.task)));
    }
    tch::set_num_threads(cfg.threads as i32);
    let (vs, mut model) =
        Mllm::load(&cfg.model_dir, Device::Cpu, cfg.dtype).map_err(JobError::step(format!("loading {}", cfg.model_dir.display())))?;
    let processor = match &model {
        Mllm::LlavaNext(_) => ImageInputs::LlavaNext(LlavaNextImageProcessor::from_dir(&cfg.model_dir)?),
        Mllm::Qwen2Vl(_) => ImageInputs::Qwen2Vl(Qwen2VlImageProcessor::from_dir(&cfg.model_dir)?),
        Mllm::Llava(_) => return Err(JobError::file(&cfg.model_dir, "the VLM benchmark is for LLaVA-NeXT and Qwen2-VL folders")),
    };
    let decoded = mmboundary::encoders::clip::decode_image_file(&cfg.image)?;
    let img = match cfg.crop {
        Some([x, y, w, h]) => {
            if x + w > decoded.width() || y + h > decoded.height() {
                let msg = format!("crop {x},{y} {w}×{h} outside the {}×{} image", decoded.width(), decoded.height());
                return Err(JobError::file(&cfg.image, msg));
            }
            image::imageops::crop_imm(&decoded, x, y, w, h).to_image()
        }
        None => decoded,
    };
    let id = cfg.image.display().to_string();
    let inputs = |m: &Mllm| processor.inputs(m, &id, || Ok(img.clone()));
    let prompt = |m: &Mllm, n_img: i64| -> Vec<i64> {
        let (start, end) = m.image_delimiters();
        let mut ids = PROMPT_BEFORE.to_vec();
        ids.extend(start);
        ids.extend(std::iter::repeat_n(m.image_token_id(), n_img as usize));
        ids.extend(end);
        ids.extend(PROMPT_AFTER);
        ids
    };
    let copy = |v: &[Tensor]| v.iter().map(|t| t.shallow_clone()).collect::<Vec<_>>();
    let mut round = VlmBenchRound {
        side: "ours",
        family: format!("{:?}", model.family()),
        dtype: dtype_name(cfg.dtype).into(),
        task: cfg.task.clone(),
        threads: cfg.threads,
        image_tokens: 0,
        prompt_tokens: 0,
        tokens: vec![],
        tokens_per_s: None,
        seconds: 0.0,
        losses: vec![],
        step_seconds: vec![],
        cpu_share: None,
        load_before: load_average(),
        load_after: None,
    };
    let share = |cpu0: Option<f64>, wall: f64| Some((process_cpu_seconds()? - cpu0?) / (wall * cfg.threads as f64));
    if cfg.task == "generate" {
        let params = GenerationParams { max_new_tokens: cfg.new_tokens, eos_token_ids: vec![-1], ..Default::default() };
        // warm-up: the same work, 2 new tokens
        let (n_img, images) = inputs(&model)?;
        generate_multimodal(&model, &[(prompt(&model, n_img), images)], &GenerationParams { max_new_tokens: 2, ..params.clone() }, None)?;
        let (cpu0, t0) = (process_cpu_seconds(), Instant::now());
        let (n_img, images) = inputs(&model)?;
        let ids = prompt(&model, n_img);
        let out = generate_multimodal(&model, &[(ids.clone(), images)], &params, None)?;
        let wall = t0.elapsed().as_secs_f64();
        round.cpu_share = share(cpu0, wall);
        round.image_tokens = n_img;
        round.prompt_tokens = ids.len();
        round.tokens = out.into_iter().next().map(|g| g.tokens).unwrap_or_default();
        round.tokens_per_s = Some(round.tokens.len() as f64 / wall);
        round.seconds = wall;
    } else {
        let (n_img, images) = tch::no_grad(|| inputs(&model))?;
        let ids = prompt(&model, n_img);
        round.image_tokens = n_img;
        round.prompt_tokens = ids.len();
        // One example repeated: every step sees the same batch whatever the data order.
        let data: Vec<SftExample> = (0..cfg.steps)
            .map(|_| SftExample { prompt: ids.clone(), response: response_tokens(cfg.response_len), images: copy(&images) })
            .collect();
        let sp = SftParams {
            mode: FineTuneMode::Lora(LoraParams::default()),
            batch_size: 1,
            grad_accum_steps: 1,
            epochs: 1,
            max_steps: Some(cfg.steps),
            learning_rate: 1e-4,
            // no warm-up: the first step updates with lr 1e-4, as transformers' side does (a warm-up would
            // start at lr 0; the compute is the same either way)
            warmup_ratio: 0.0,
            ..Default::default()
        };
        let mut tr = SftTrainer::new(&vs, &mut model, sp)?;
        let ck = tempfile::tempdir().map_err(JobError::io(std::env::temp_dir()))?;
        let (cpu0, t0) = (process_cpu_seconds(), Instant::now());
        let report = tr.train(&model, &data, ck.path())?;
        round.cpu_share = share(cpu0, t0.elapsed().as_secs_f64());
        round.losses = report.rows.iter().map(|r| r.loss).collect();
        round.step_seconds = report.rows.iter().map(|r| r.seconds).collect();
        round.seconds = round.step_seconds.iter().skip(1).copied().fold(f64::INFINITY, f64::min);
        if !round.seconds.is_finite() {
            return Err(JobError::param("--steps", "must be at least 2 (the first step is a warm-up)"));
        }
    }
    round.load_after = load_average();
    Ok(round)
}

/// The default image: the committed photo both sides read (`tests/fixtures/encoders/photos/chelsea.png`).
pub fn default_image(root: &Path) -> PathBuf {
    root.join("tests/fixtures/encoders/photos/chelsea.png")
}
