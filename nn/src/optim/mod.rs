//! Optimisers (SGD with momentum / Nesterov, AdamW), global gradient-norm clipping, and the
//! optimiser state that checkpoints carry.
//!
//! Updates follow PyTorch's single-tensor CPU code operation by operation (hyper-parameters and
//! bias corrections in f64 like Python floats, element math in f32), so golden tests against
//! PyTorch agree to f32 rounding. PyTorch fuses some multiply-adds that we round twice, so the
//! agreement is to an ulp or so, not bitwise.
//!
//! Weight decay is per group: parameters with [`Param::decay`] use `weight_decay`, the others (BN
//! affine parameters, biases, and whatever a stage puts in that group) `no_decay_weight_decay`.
//! Parameters whose `grad` is `None` are skipped entirely, as in PyTorch. State is keyed by
//! parameter name, so a checkpoint restores it onto a freshly built model.

use std::collections::BTreeMap;

use depthshrink_tensor::Tensor;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::module::{Entry, Module, Param};

/// Errors from building an optimiser, stepping it, or restoring its state.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum OptimError {
    /// A hyper-parameter out of range; the text names it.
    #[error("invalid optimiser setting: {0}")]
    Config(String),
    /// The learning rate passed to [`Optimizer::step`] is negative or not finite.
    #[error("learning rate must be finite and non-negative, got {0}")]
    LearningRate(f32),
    /// A parameter's gradient has another shape than its value.
    #[error("parameter `{name}`: gradient shape {grad:?} differs from value shape {value:?}")]
    GradShape {
        /// The parameter's name.
        name: String,
        /// The value's shape.
        value: Vec<usize>,
        /// The gradient's shape.
        grad: Vec<usize>,
    },
    /// A state buffer does not have its parameter's shape.
    #[error("optimiser state `{entry}` has shape {got:?}, expected {expected:?}")]
    StateShape {
        /// The state entry's name (`<buffer>.<parameter name>`).
        entry: String,
        /// The parameter's shape.
        expected: Vec<usize>,
        /// The buffer's shape.
        got: Vec<usize>,
    },
    /// [`Optimizer::load_state`]: an entry the optimiser needs is absent.
    #[error("optimiser state entry `{0}` is missing")]
    MissingEntry(String),
    /// [`Optimizer::load_state`]: an entry this optimiser does not keep.
    #[error("optimiser state entry `{0}` is not used by this optimiser")]
    UnknownEntry(String),
    /// [`Optimizer::load_state`]: two entries with one name.
    #[error("optimiser state entry `{0}` appears twice")]
    DuplicateEntry(String),
    /// [`Optimizer::load_state`]: an entry with an unusable value (e.g. a step count that is
    /// not a non-negative integer).
    #[error("optimiser state entry `{entry}`: {detail}")]
    InvalidEntry {
        /// The entry's name.
        entry: String,
        /// What is wrong with it.
        detail: String,
    },
}

/// An optimiser driven by an external learning-rate schedule.
pub trait Optimizer: Send {
    /// Updates every parameter that has a gradient, using this step's learning rate.
    ///
    /// Gradients and state are checked against the parameters before anything is written, so
    /// an error leaves the model and the optimiser unchanged. Gradients are left in place.
    fn step(&mut self, model: &mut dyn Module, lr: f32) -> Result<(), OptimError>;

    /// Number of successful `step` calls, restored by [`Optimizer::load_state`].
    fn steps(&self) -> u64;

    /// The state as named tensors, sorted by name: `step` (the step count) and per-parameter
    /// buffers named `<buffer>.<parameter name>`. Counts are 1-element f32 tensors, exact up to
    /// 2^24 steps.
    fn state(&self) -> Vec<(String, Tensor)>;

    /// Replaces the state with one produced by [`Optimizer::state`]. Missing, unknown, duplicate
    /// or inconsistent entries are errors naming the entry, and leave the state unchanged. A
    /// buffer whose shape does not fit its parameter is reported by the next `step`.
    fn load_state(&mut self, state: Vec<(String, Tensor)>) -> Result<(), OptimError>;
}

/// Which optimiser, with its hyper-parameters, as written in training configs
/// (`optimizer = "sgd"` or `optimizer = "adamw"` plus that optimiser's fields).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "optimizer", rename_all = "snake_case")]
pub enum OptimizerConfig {
    /// [`Sgd`].
    Sgd(SgdConfig),
    /// [`AdamW`].
    #[serde(rename = "adamw")]
    AdamW(AdamWConfig),
}

impl OptimizerConfig {
    /// The optimiser, with empty state; errors on out-of-range hyper-parameters.
    pub fn build(&self) -> Result<Box<dyn Optimizer>, OptimError> {
        Ok(match self {
            OptimizerConfig::Sgd(c) => Box::new(Sgd::new(c.clone())?),
            OptimizerConfig::AdamW(c) => Box::new(AdamW::new(c.clone())?),
        })
    }
}

/// PyTorch `SGD` with dampening 0. Hyper-parameters are f64 like PyTorch's Python floats.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SgdConfig {
    /// Momentum factor in [0, 1); 0 disables the buffer.
    pub momentum: f64,
    /// Nesterov momentum (needs `momentum > 0`).
    #[serde(default)]
    pub nesterov: bool,
    /// L2 penalty added to the gradient of parameters with `decay == true`.
    pub weight_decay: f64,
    /// The same for the no-decay group (0 in the official recipe for BN and biases).
    #[serde(default)]
    pub no_decay_weight_decay: f64,
}

/// PyTorch `AdamW` (amsgrad off). Hyper-parameters are f64 like PyTorch's Python floats.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdamWConfig {
    /// Decay rates of the first and second moment averages, each in [0, 1); default
    /// `[0.9, 0.999]`.
    #[serde(default = "default_betas")]
    pub betas: [f64; 2],
    /// Added to the denominator's square root; default 1e-8.
    #[serde(default = "default_eps")]
    pub eps: f64,
    /// Decoupled decay (`p ← p·(1 − lr·wd)`) of parameters with `decay == true`.
    pub weight_decay: f64,
    /// The same for the no-decay group.
    #[serde(default)]
    pub no_decay_weight_decay: f64,
}

fn default_betas() -> [f64; 2] {
    [0.9, 0.999]
}

fn default_eps() -> f64 {
    1e-8
}

/// Global L2 norm of all gradients (accumulated in f64), and PyTorch `clip_grad_norm_`: when it
/// exceeds `max_norm`, every gradient is scaled by `max_norm / (norm + 1e-6)`.
///
/// Pass `f32::INFINITY` to only measure. As in PyTorch a non-finite norm is not an error (the
/// gradients are scaled by the resulting 0 or NaN factor); the caller checks the returned norm
/// and decides whether to skip the step.
pub fn clip_grad_norm(model: &mut dyn Module, max_norm: f32) -> f32 {
    let mut sum_sq = 0.0f64;
    model.visit("", &mut |_, entry| {
        if let Entry::Param(Param { grad: Some(g), .. }) = entry {
            sum_sq += g
                .data()
                .iter()
                .map(|&x| f64::from(x) * f64::from(x))
                .sum::<f64>();
        }
    });
    let total = sum_sq.sqrt();
    let coef = f64::from(max_norm) / (total + 1e-6);
    // PyTorch multiplies by min(coef, 1); a factor of exactly 1 changes nothing, so skip it.
    if coef < 1.0 || coef.is_nan() {
        let coef = coef as f32;
        model.visit("", &mut |_, entry| {
            if let Entry::Param(Param { grad: Some(g), .. }) = entry {
                g.data_mut().iter_mut().for_each(|x| *x *= coef);
            }
        });
    }
    total as f32
}

/// Drops every gradient (PyTorch `zero_grad(set_to_none=True)`): a parameter left out of the
/// next backward pass is then skipped by the optimiser instead of reusing a stale gradient.
pub fn zero_grad(model: &mut dyn Module) {
    model.visit("", &mut |_, entry| {
        if let Entry::Param(p) = entry {
            p.grad = None;
        }
    });
}

/// SGD with momentum (PyTorch buffer semantics), optional Nesterov, and per-group L2 decay.
#[derive(Debug)]
pub struct Sgd {
    config: SgdConfig,
    /// Momentum buffers by parameter name; empty when `momentum == 0`, as in PyTorch.
    momentum: BTreeMap<String, Tensor>,
    steps: u64,
}

impl Sgd {
    /// An optimiser with no state; errors on out-of-range hyper-parameters.
    pub fn new(config: SgdConfig) -> Result<Sgd, OptimError> {
        // As PyTorch's buffer update: a factor of 1 or more lets the buffer grow without bound.
        if !(0.0..1.0).contains(&config.momentum) {
            return Err(OptimError::Config(format!(
                "momentum must be in [0, 1), got {}",
                config.momentum
            )));
        }
        check_non_negative("weight_decay", config.weight_decay)?;
        check_non_negative("no_decay_weight_decay", config.no_decay_weight_decay)?;
        if config.nesterov && config.momentum == 0.0 {
            return Err(OptimError::Config(
                "nesterov momentum requires momentum > 0".into(),
            ));
        }
        Ok(Sgd {
            config,
            momentum: BTreeMap::new(),
            steps: 0,
        })
    }
}

impl Optimizer for Sgd {
    fn step(&mut self, model: &mut dyn Module, lr: f32) -> Result<(), OptimError> {
        check_lr(lr)?;
        check_grads(model, |name, shape| {
            check_buffer_shape(&self.momentum, "momentum", name, shape)
        })?;
        let SgdConfig {
            momentum,
            nesterov,
            weight_decay,
            no_decay_weight_decay,
        } = self.config;
        let m = momentum as f32;
        let bufs = &mut self.momentum;
        for_each_grad(model, |name, value, grad, decay| {
            let wd = (if decay {
                weight_decay
            } else {
                no_decay_weight_decay
            }) as f32;
            let g = grad.data();
            if momentum == 0.0 {
                for (p, &g) in value.data_mut().iter_mut().zip(g) {
                    *p -= lr * (g + wd * *p);
                }
                return;
            }
            // PyTorch's first step copies the (decayed) gradient into the buffer.
            let first = !bufs.contains_key(name);
            let buf = get_or_insert(bufs, name, || Tensor::zeros(value.shape())).data_mut();
            for ((p, &g), b) in value.data_mut().iter_mut().zip(g).zip(buf) {
                let g = g + wd * *p;
                *b = if first { g } else { *b * m + g };
                let update = if nesterov { g + m * *b } else { *b };
                *p -= lr * update;
            }
        });
        self.steps += 1;
        Ok(())
    }

    fn steps(&self) -> u64 {
        self.steps
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![("step".to_string(), count_tensor(self.steps))];
        out.extend(
            self.momentum
                .iter()
                .map(|(name, buf)| (format!("momentum.{name}"), buf.clone())),
        );
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    fn load_state(&mut self, state: Vec<(String, Tensor)>) -> Result<(), OptimError> {
        let (steps, entries) = split_state(state)?;
        let mut momentum = BTreeMap::new();
        for (entry, tensor) in entries {
            match entry.split_once('.') {
                Some(("momentum", name)) if self.config.momentum != 0.0 => {
                    momentum.insert(name.to_string(), tensor);
                }
                _ => return Err(OptimError::UnknownEntry(entry)),
            }
        }
        self.momentum = momentum;
        self.steps = steps;
        Ok(())
    }
}

/// AdamW with decoupled per-group decay and PyTorch's per-parameter step counts (a parameter
/// without a gradient does not advance its bias correction).
#[derive(Debug)]
pub struct AdamW {
    config: AdamWConfig,
    state: BTreeMap<String, AdamState>,
    steps: u64,
}

#[derive(Debug)]
struct AdamState {
    step: u64,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
}

impl AdamW {
    /// An optimiser with no state; errors on out-of-range hyper-parameters.
    pub fn new(config: AdamWConfig) -> Result<AdamW, OptimError> {
        for (i, &beta) in config.betas.iter().enumerate() {
            if !(0.0..1.0).contains(&beta) {
                return Err(OptimError::Config(format!(
                    "betas[{i}] must be in [0, 1), got {beta}"
                )));
            }
        }
        check_non_negative("eps", config.eps)?;
        check_non_negative("weight_decay", config.weight_decay)?;
        check_non_negative("no_decay_weight_decay", config.no_decay_weight_decay)?;
        Ok(AdamW {
            config,
            state: BTreeMap::new(),
            steps: 0,
        })
    }
}

impl Optimizer for AdamW {
    fn step(&mut self, model: &mut dyn Module, lr: f32) -> Result<(), OptimError> {
        check_lr(lr)?;
        check_grads(model, |name, shape| match self.state.get(name) {
            Some(s) => {
                check_shape(&format!("exp_avg.{name}"), s.exp_avg.shape(), shape)?;
                check_shape(&format!("exp_avg_sq.{name}"), s.exp_avg_sq.shape(), shape)
            }
            None => Ok(()),
        })?;
        let AdamWConfig {
            betas: [beta1, beta2],
            eps,
            weight_decay,
            no_decay_weight_decay,
        } = self.config;
        let lr64 = f64::from(lr);
        let (w1, b2, w2, eps) = (
            (1.0 - beta1) as f32,
            beta2 as f32,
            (1.0 - beta2) as f32,
            eps as f32,
        );
        let states = &mut self.state;
        for_each_grad(model, |name, value, grad, decay| {
            let st = get_or_insert(states, name, || AdamState {
                step: 0,
                exp_avg: Tensor::zeros(value.shape()),
                exp_avg_sq: Tensor::zeros(value.shape()),
            });
            st.step += 1;
            let wd = if decay {
                weight_decay
            } else {
                no_decay_weight_decay
            };
            let shrink = (1.0 - lr64 * wd) as f32;
            let t = st.step as f64;
            let step_size = (lr64 / (1.0 - beta1.powf(t))) as f32;
            let bc2_sqrt = (1.0 - beta2.powf(t)).sqrt() as f32;
            let (p, g) = (value.data_mut(), grad.data());
            let (m, v) = (st.exp_avg.data_mut(), st.exp_avg_sq.data_mut());
            for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m).zip(v) {
                *p *= shrink;
                *m += w1 * (g - *m);
                *v = *v * b2 + w2 * g * g;
                let denom = v.sqrt() / bc2_sqrt + eps;
                *p += -step_size * (*m / denom);
            }
        });
        self.steps += 1;
        Ok(())
    }

    fn steps(&self) -> u64 {
        self.steps
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![("step".to_string(), count_tensor(self.steps))];
        for (name, s) in &self.state {
            out.push((format!("exp_avg.{name}"), s.exp_avg.clone()));
            out.push((format!("exp_avg_sq.{name}"), s.exp_avg_sq.clone()));
            out.push((format!("step.{name}"), count_tensor(s.step)));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    fn load_state(&mut self, state: Vec<(String, Tensor)>) -> Result<(), OptimError> {
        let (steps, entries) = split_state(state)?;
        let (mut avg, mut avg_sq, mut counts) = (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
        for (entry, tensor) in entries {
            match entry.split_once('.') {
                Some(("exp_avg", name)) => {
                    avg.insert(name.to_string(), tensor);
                }
                Some(("exp_avg_sq", name)) => {
                    avg_sq.insert(name.to_string(), tensor);
                }
                Some(("step", name)) => {
                    counts.insert(name.to_string(), parse_count(&entry, &tensor)?);
                }
                _ => return Err(OptimError::UnknownEntry(entry)),
            }
        }
        // Every parameter named by any of the three buffers needs all three.
        let mut names: Vec<String> = avg
            .keys()
            .chain(avg_sq.keys())
            .chain(counts.keys())
            .cloned()
            .collect();
        names.sort();
        names.dedup();
        let mut state = BTreeMap::new();
        for name in names {
            let missing = |buf: &str| OptimError::MissingEntry(format!("{buf}.{name}"));
            let exp_avg = avg.remove(&name).ok_or_else(|| missing("exp_avg"))?;
            let exp_avg_sq = avg_sq.remove(&name).ok_or_else(|| missing("exp_avg_sq"))?;
            let step = counts.remove(&name).ok_or_else(|| missing("step"))?;
            check_shape(
                &format!("exp_avg_sq.{name}"),
                exp_avg_sq.shape(),
                exp_avg.shape(),
            )?;
            state.insert(
                name,
                AdamState {
                    step,
                    exp_avg,
                    exp_avg_sq,
                },
            );
        }
        self.state = state;
        self.steps = steps;
        Ok(())
    }
}

fn check_non_negative(what: &str, v: f64) -> Result<(), OptimError> {
    if v.is_finite() && v >= 0.0 {
        Ok(())
    } else {
        Err(OptimError::Config(format!(
            "{what} must be finite and non-negative, got {v}"
        )))
    }
}

fn check_lr(lr: f32) -> Result<(), OptimError> {
    if lr.is_finite() && lr >= 0.0 {
        Ok(())
    } else {
        Err(OptimError::LearningRate(lr))
    }
}

fn check_shape(entry: &str, got: &[usize], expected: &[usize]) -> Result<(), OptimError> {
    if got == expected {
        Ok(())
    } else {
        Err(OptimError::StateShape {
            entry: entry.to_string(),
            expected: expected.to_vec(),
            got: got.to_vec(),
        })
    }
}

fn check_buffer_shape(
    bufs: &BTreeMap<String, Tensor>,
    buffer: &str,
    name: &str,
    shape: &[usize],
) -> Result<(), OptimError> {
    match bufs.get(name) {
        Some(b) => check_shape(&format!("{buffer}.{name}"), b.shape(), shape),
        None => Ok(()),
    }
}

/// The state of `name`, created by `init` on first use; allocates the key only then.
fn get_or_insert<'a, T>(
    map: &'a mut BTreeMap<String, T>,
    name: &str,
    init: impl FnOnce() -> T,
) -> &'a mut T {
    if !map.contains_key(name) {
        map.insert(name.to_string(), init());
    }
    map.get_mut(name).expect("inserted above")
}

/// Calls `f(name, value, grad, decay)` for every parameter that has a gradient.
fn for_each_grad(model: &mut dyn Module, mut f: impl FnMut(&str, &mut Tensor, &Tensor, bool)) {
    model.visit("", &mut |name, entry| {
        if let Entry::Param(Param {
            value,
            grad: Some(grad),
            decay,
            ..
        }) = entry
        {
            f(name, value, grad, *decay);
        }
    });
}

/// Checks each gradient against its parameter and `state(name, shape)`, before any update.
fn check_grads(
    model: &mut dyn Module,
    mut state: impl FnMut(&str, &[usize]) -> Result<(), OptimError>,
) -> Result<(), OptimError> {
    let mut result = Ok(());
    for_each_grad(model, |name, value, grad, _| {
        if result.is_err() {
            return;
        }
        result = if grad.shape() != value.shape() {
            Err(OptimError::GradShape {
                name: name.to_string(),
                value: value.shape().to_vec(),
                grad: grad.shape().to_vec(),
            })
        } else {
            state(name, value.shape())
        };
    });
    result
}

fn count_tensor(n: u64) -> Tensor {
    Tensor::full(&[1], n as f32)
}

fn parse_count(entry: &str, t: &Tensor) -> Result<u64, OptimError> {
    let invalid = |detail: String| OptimError::InvalidEntry {
        entry: entry.to_string(),
        detail,
    };
    let v = t.item().map_err(|_| {
        invalid(format!(
            "a count needs 1 element, got shape {:?}",
            t.shape()
        ))
    })?;
    if v.is_finite() && v >= 0.0 && v.fract() == 0.0 {
        Ok(v as u64)
    } else {
        Err(invalid(format!("{v} is not a step count")))
    }
}

/// Splits off the global `step` count and returns the remaining entries by name, rejecting
/// duplicates.
fn split_state(
    state: Vec<(String, Tensor)>,
) -> Result<(u64, BTreeMap<String, Tensor>), OptimError> {
    let mut entries = BTreeMap::new();
    for (name, tensor) in state {
        if entries.contains_key(&name) {
            return Err(OptimError::DuplicateEntry(name));
        }
        entries.insert(name, tensor);
    }
    let steps = entries
        .remove("step")
        .ok_or_else(|| OptimError::MissingEntry("step".into()))?;
    Ok((parse_count("step", &steps)?, entries))
}

#[cfg(test)]
mod tests;
