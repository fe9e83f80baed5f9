//! LoRA adapters (Hu et al. 2021, as PEFT does it): `y = x Wᵀ + b + (alpha / r) · x Aᵀ Bᵀ` on chosen
//! linear layers, A Kaiming-uniform and B zero so training starts at the base model. Adapter variables
//! live beside their layer (`….q_proj.lora_A.weight`, `….q_proj.lora_B.weight`). The model-wide switch
//! (`CausalLm::set_lora_enabled(false)`) gives the frozen base, which PPO uses as its reference.
use super::llama::CausalLm;
use super::{MllmError, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

/// LoRA settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LoraParams {
    /// Rank r. The paper does not give its LoRA settings (LLaMA-Factory defaults: r 8, alpha 16).
    pub rank: i64,
    /// Scale numerator: the update is multiplied by alpha / r.
    pub alpha: f64,
    /// Module names (the last key component) that get adapters; LLaMA-Factory's `all` = every projection.
    pub target_modules: Vec<String>,
    /// Seed for A's initialisation.
    pub seed: u64,
}

impl Default for LoraParams {
    fn default() -> Self {
        Self {
            rank: 8,
            alpha: 16.0,
            target_modules: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"].map(String::from).to_vec(),
            seed: 0,
        }
    }
}

/// One adapter: A [r, in], B [out, r].
#[derive(Debug)]
pub struct LoraAdapter {
    pub a: Tensor,
    pub b: Tensor,
    pub scale: f64,
}

impl LoraAdapter {
    pub fn delta(&self, x: &Tensor) -> Tensor {
        x.matmul(&self.a.tr()).matmul(&self.b.tr()) * self.scale
    }
}

/// True for variable names that belong to LoRA adapters.
pub fn is_lora_key(name: &str) -> bool {
    name.contains(".lora_A.") || name.contains(".lora_B.")
}

/// Adds adapters to the targeted layers (variables created in `vs`, whose root must be where the
/// model's variables live) and freezes every base weight. Returns the adapter variable names.
pub fn attach(vs: &nn::VarStore, model: &mut CausalLm, params: &LoraParams) -> Result<Vec<String>> {
    if params.rank <= 0 || !params.alpha.is_finite() {
        return Err(MllmError::Input(format!("LoRA rank must be > 0 and alpha finite, found r={} alpha={}", params.rank, params.alpha)));
    }
    let root = vs.root();
    let mut names = Vec::new();
    let mut matched = std::collections::BTreeSet::new();
    for lin in model.linears_mut() {
        let module = lin.name.rsplit('.').next().unwrap_or("").to_string();
        if !params.target_modules.iter().any(|t| *t == module) {
            continue;
        }
        matched.insert(module);
        let (out_dim, in_dim) = (lin.weight.size()[0], lin.weight.size()[1]);
        let mut p = root.clone();
        for c in lin.name.split('.') {
            p = &p / c;
        }
        let bound = 1.0 / (in_dim as f32).sqrt();
        // Own seeded RNG per layer (not torch's global one): the same adapters whatever else runs.
        let mut rng = ChaCha8Rng::seed_from_u64(
            params.seed ^ blake3::hash(lin.name.as_bytes()).as_bytes()[..8].iter().fold(0u64, |h, &b| (h << 8) | b as u64),
        );
        let init: Vec<f32> = (0..params.rank * in_dim).map(|_| rng.random_range(-bound..bound)).collect();
        let init = Tensor::from_slice(&init).view([params.rank, in_dim]).to_kind(lin.weight.kind()).to_device(lin.weight.device());
        let a = (&p / "lora_A").var_copy("weight", &init);
        let b = (&p / "lora_B").var_copy("weight", &Tensor::zeros([out_dim, params.rank], (lin.weight.kind(), lin.weight.device())));
        names.push(format!("{}.lora_A.weight", lin.name));
        names.push(format!("{}.lora_B.weight", lin.name));
        lin.lora = Some(LoraAdapter { a, b, scale: params.alpha / params.rank as f64 });
    }
    let unknown: Vec<&String> = params.target_modules.iter().filter(|t| !matched.contains(*t)).collect();
    if !unknown.is_empty() {
        return Err(MllmError::Input(format!(
            "LoRA target modules {unknown:?} match no layer (expected some of q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)"
        )));
    }
    for (name, t) in vs.variables() {
        if !is_lora_key(&name) {
            let _ = t.set_requires_grad(false);
        }
    }
    Ok(names)
}
