//! AdamW (PyTorch semantics) with its state exposed for exact checkpoint/resume, the linear warm-up /
//! linear decay schedule of transformers' `get_linear_schedule_with_warmup`, and global-norm clipping.
use super::{MllmError, Result};
use std::collections::HashMap;
use tch::{Kind, Tensor};

#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct AdamWParams {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWParams {
    fn default() -> Self {
        Self { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 }
    }
}

/// AdamW over named parameters; moments kept in f32. Parameters in bf16 or f16 get an f32 master copy:
/// the update is applied to the master and the parameter is its rounding (mixed-precision training: the
/// forward and backward run in half precision, the optimizer in f32). Without it, an update smaller than
/// half a bf16 ulp (2^-9 relative) would round away and training would stall.
#[derive(Debug)]
pub struct AdamW {
    pub hp: AdamWParams,
    pub params: Vec<(String, Tensor)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    /// f32 master weights of the half-precision parameters (None for f32 ones).
    master: Vec<Option<Tensor>>,
    /// Number of updates applied so far.
    pub t: i64,
}

impl AdamW {
    pub fn new(params: Vec<(String, Tensor)>, hp: AdamWParams) -> Self {
        let m = params.iter().map(|(_, p)| Tensor::zeros(p.size(), (Kind::Float, p.device()))).collect();
        let v = params.iter().map(|(_, p)| Tensor::zeros(p.size(), (Kind::Float, p.device()))).collect();
        let master = params.iter().map(|(_, p)| (p.kind() != Kind::Float).then(|| p.detach().to_kind(Kind::Float))).collect();
        Self { hp, params, m, v, master, t: 0 }
    }

    pub fn zero_grad(&mut self) {
        for (_, p) in &self.params {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
    }

    /// Scales gradients so their global L2 norm is at most `max_norm` (as torch's clip_grad_norm_);
    /// returns the norm before clipping.
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> f64 {
        let mut sq = 0.0;
        for (_, p) in &self.params {
            let g = p.grad();
            if g.defined() {
                sq += g.to_kind(Kind::Double).pow_tensor_scalar(2).sum(Kind::Double).double_value(&[]);
            }
        }
        let norm = sq.sqrt();
        let coef = max_norm / (norm + 1e-6);
        if coef < 1.0 && max_norm > 0.0 {
            for (_, p) in &self.params {
                let mut g = p.grad();
                if g.defined() {
                    let _ = g.f_mul_(&Tensor::from(coef)).map(|_| ());
                }
            }
        }
        norm
    }

    pub fn step(&mut self, lr: f64) {
        self.t += 1;
        let (b1, b2) = (self.hp.beta1, self.hp.beta2);
        let bc1 = 1.0 - b1.powi(self.t as i32);
        let bc2 = 1.0 - b2.powi(self.t as i32);
        tch::no_grad(|| {
            for (i, (_, p)) in self.params.iter().enumerate() {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                let g = g.to_kind(Kind::Float);
                // The update goes to the f32 master when there is one; `half` is then its rounded copy.
                let (mut p, half) = match &self.master[i] {
                    Some(master) => (master.shallow_clone(), Some(p.shallow_clone())),
                    None => (p.shallow_clone(), None),
                };
                // m, v and step have p's shape by construction, so these in-place ops cannot fail.
                let ok = |r: std::result::Result<Tensor, tch::TchError>| drop(r.expect("AdamW: in-place update of same-shaped tensors"));
                if self.hp.weight_decay != 0.0 {
                    ok(p.f_mul_scalar_(1.0 - lr * self.hp.weight_decay));
                }
                // In place, in torch's order (denom = √v / √bc2 + ε, p −= lr/bc1 · m / denom): the step is
                // memory-bound, and this makes two temporaries per tensor where out-of-place ops made a dozen.
                let m = &mut self.m[i];
                let v = &mut self.v[i];
                ok(m.f_lerp_(&g, 1.0 - b1));
                ok(v.f_mul_scalar_(b2));
                ok(v.f_addcmul_(&g, &(&g * (1.0 - b2))));
                let mut step = v.sqrt();
                ok(step.f_div_scalar_(bc2.sqrt()));
                ok(step.f_add_scalar_(self.hp.eps));
                ok(step.f_reciprocal_());
                ok(step.f_mul_scalar_(-lr / bc1));
                ok(step.f_mul_(m));
                ok(p.f_add_(&step));
                if let Some(mut half) = half {
                    half.f_copy_(&p).expect("AdamW: copy of a master into its same-shaped parameter");
                }
            }
        });
    }

    /// Moments as named tensors (`adam.m.<name>`, `adam.v.<name>`, and `adam.master.<name>` for a
    /// half-precision parameter) for a checkpoint.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (i, (n, _)) in self.params.iter().enumerate() {
            out.push((format!("adam.m.{n}"), self.m[i].shallow_clone()));
            out.push((format!("adam.v.{n}"), self.v[i].shallow_clone()));
            if let Some(master) = &self.master[i] {
                out.push((format!("adam.master.{n}"), master.shallow_clone()));
            }
        }
        out
    }

    /// Restores moments written by `state`; every parameter must have both.
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>, t: i64, at: &str) -> Result<()> {
        for (i, (n, p)) in self.params.iter().enumerate() {
            for (which, slot) in [("m", &mut self.m[i]), ("v", &mut self.v[i])] {
                let key = format!("adam.{which}.{n}");
                let src = tensors
                    .get(&key)
                    .ok_or_else(|| MllmError::Checkpoint { path: at.into(), msg: format!("missing optimizer state {key}") })?;
                if src.size() != p.size() {
                    return Err(MllmError::Checkpoint {
                        path: at.into(),
                        msg: format!("{key}: expected shape {:?}, found {:?}", p.size(), src.size()),
                    });
                }
                *slot = src.to_kind(Kind::Float).to_device(p.device());
            }
            if self.master[i].is_some() {
                // A checkpoint from an f32 run (or one without masters) resumes from the parameter itself.
                let master = match tensors.get(&format!("adam.master.{n}")) {
                    Some(src) if src.size() == p.size() => src.to_kind(Kind::Float).to_device(p.device()),
                    Some(src) => {
                        return Err(MllmError::Checkpoint {
                            path: at.into(),
                            msg: format!("adam.master.{n}: expected shape {:?}, found {:?}", p.size(), src.size()),
                        })
                    }
                    None => p.detach().to_kind(Kind::Float),
                };
                self.master[i] = Some(master);
            }
        }
        self.t = t;
        Ok(())
    }
}

/// Learning rate for optimizer step `step` (1-based) of `total`: linear warm-up over `warmup` steps, then
/// linear decay to 0. Same numbers as transformers' get_linear_schedule_with_warmup (whose first
/// step runs at lr · 0/warmup).
pub fn linear_warmup_decay(base_lr: f64, step: usize, total: usize, warmup: usize) -> f64 {
    let s = step.saturating_sub(1) as f64;
    if (s as usize) < warmup {
        return base_lr * s / warmup.max(1) as f64;
    }
    base_lr * ((total as f64 - s) / (total.saturating_sub(warmup)).max(1) as f64).max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_decays_to_zero() {
        assert_eq!(linear_warmup_decay(1.0, 1, 10, 1), 0.0);
        assert_eq!(linear_warmup_decay(1.0, 2, 10, 1), 1.0);
        assert!((linear_warmup_decay(1.0, 6, 10, 1) - 5.0 / 9.0).abs() < 1e-12);
        assert!((linear_warmup_decay(1.0, 10, 10, 1) - 1.0 / 9.0).abs() < 1e-12);
    }

    #[test]
    fn bf16_parameters_train_through_f32_master_weights() {
        // lr 1e-4 moves 1.0 by less than half a bf16 ulp (2^-8 / 2) per step: a plain bf16 update would
        // round to 1.0 every time; through the master the 100 steps add up to ~0.99.
        let p = Tensor::from_slice(&[1.0f32, -1.0]).to_kind(Kind::BFloat16).set_requires_grad(true);
        let mut opt = AdamW::new(vec![("p".into(), p.shallow_clone())], AdamWParams::default());
        for _ in 0..100 {
            opt.zero_grad();
            (&p * Tensor::from_slice(&[1.0f32, -1.0]).to_kind(Kind::BFloat16)).sum(Kind::Float).backward();
            opt.step(1e-4);
        }
        assert_eq!(p.kind(), Kind::BFloat16);
        let got = Vec::<f32>::try_from(&p.detach().to_kind(Kind::Float)).unwrap();
        assert!((got[0] - 0.99).abs() < 4e-3 && (got[1] + 0.99).abs() < 4e-3, "{got:?}");
        let state = opt.state();
        let master = state.iter().find(|(n, _)| n == "adam.master.p").expect("master in the checkpoint state").1.copy();
        assert!((master.double_value(&[0]) - 0.99).abs() < 1e-5, "{master}");
        // Resuming restores the master exactly, not its bf16 rounding.
        let q = p.detach().copy().set_requires_grad(true);
        let mut resumed = AdamW::new(vec![("p".into(), q)], AdamWParams::default());
        resumed.load_state(&state.into_iter().collect(), 100, "test").unwrap();
        assert_eq!(resumed.master[0].as_ref().unwrap().double_value(&[0]), master.double_value(&[0]));
    }

    #[test]
    fn adamw_first_step_matches_closed_form() {
        // After one step Adam moves each coordinate by lr·sign(g) (bias-corrected m/√v = g/|g|).
        let p = Tensor::from_slice(&[1.0f32, -2.0]).set_requires_grad(true);
        let mut opt = AdamW::new(vec![("p".into(), p.shallow_clone())], AdamWParams { weight_decay: 0.1, ..Default::default() });
        (&p * Tensor::from_slice(&[3.0f32, -0.5])).sum(Kind::Float).backward();
        opt.step(0.01);
        let got = Vec::<f32>::try_from(&p.detach()).unwrap();
        let want = [1.0 * (1.0 - 0.001) - 0.01, -2.0 * (1.0 - 0.001) + 0.01];
        assert!((got[0] - want[0]).abs() < 1e-6 && (got[1] - want[1] as f32).abs() < 1e-6, "{got:?}");
    }
}
