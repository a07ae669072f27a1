//! One training step and what it optimises.

use depthshrink_autograd::{Gradients, Var};
use depthshrink_data::Batch;
use depthshrink_nn::module::{self, Ctx};
use depthshrink_nn::network::Network;
use depthshrink_nn::optim::{self, Optimizer};
use depthshrink_tensor::Tensor;
use depthshrink_tensor::reduce::argmax_rows;
use serde_json::Value;

use super::TrainError;

/// What a training step optimises. The baseline uses [`CrossEntropy`]; finetuning plugs in
/// distillation and the search its gated forward pass and latency term. Any closure
/// `FnMut(&mut Network, &mut Ctx, &Batch) -> Result<(Var, Tensor)>` is an objective.
pub trait Objective {
    /// The forward pass and the scalar loss; returns (loss, logits `[N, classes]`).
    /// `ctx` is a fresh training context (set `ctx.gates` here if needed).
    fn loss(
        &mut self,
        model: &mut Network,
        ctx: &mut Ctx,
        batch: &Batch,
    ) -> depthshrink_tensor::Result<(Var, Tensor)>;

    /// Called after the model's gradients were collected, before clipping and the update:
    /// take the gradients of anything else the loss depended on.
    fn after_backward(&mut self, _model: &mut Network, _grads: &mut Gradients) {}

    /// Called after global step `step` (1-based) was applied: a JSON object to record in
    /// `metrics.jsonl` as `{"step": step, "epoch": e, ...}` (the search logs its gates here).
    fn step_log(&mut self, _model: &Network, _step: usize) -> Option<Value> {
        None
    }
}

impl<F> Objective for F
where
    F: FnMut(&mut Network, &mut Ctx, &Batch) -> depthshrink_tensor::Result<(Var, Tensor)>,
{
    fn loss(
        &mut self,
        model: &mut Network,
        ctx: &mut Ctx,
        batch: &Batch,
    ) -> depthshrink_tensor::Result<(Var, Tensor)> {
        self(model, ctx, batch)
    }
}

/// Cross-entropy with label smoothing.
pub struct CrossEntropy {
    /// Label smoothing ε, in [0, 1).
    pub smoothing: f32,
}

impl Objective for CrossEntropy {
    fn loss(
        &mut self,
        model: &mut Network,
        ctx: &mut Ctx,
        batch: &Batch,
    ) -> depthshrink_tensor::Result<(Var, Tensor)> {
        let logits = model.forward(&Var::constant(batch.images.clone()), ctx)?;
        let loss =
            depthshrink_autograd::ops::cross_entropy(&logits, &batch.labels, self.smoothing)?;
        Ok((loss, logits.value().clone()))
    }
}

/// What one step measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepStats {
    /// The step's loss.
    pub loss: f32,
    /// Top-1 hits of the training forward pass.
    pub correct: usize,
    /// Images in the batch.
    pub images: usize,
    /// Global gradient norm before clipping.
    pub grad_norm: f32,
}

/// The dropout seed of global step `step`: a mix of both, so resume reproduces the masks.
pub fn dropout_seed(seed: u64, step: u64) -> u64 {
    let mut z = seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// One training step: forward + loss, backward, gradient collection, optional clipping, update.
/// A non-finite loss or gradient norm returns [`TrainError::NonFinite`] without touching the
/// weights or the optimiser state.
pub fn train_step(
    model: &mut Network,
    optimizer: &mut dyn Optimizer,
    objective: &mut dyn Objective,
    batch: &Batch,
    lr: f32,
    dropout_seed: u64,
    grad_clip: Option<f32>,
) -> Result<StepStats, TrainError> {
    let (loss, correct) = {
        let mut ctx = Ctx::train(dropout_seed);
        let (loss_var, logits) = objective.loss(model, &mut ctx, batch)?;
        let loss = loss_var.value().item()?;
        if !loss.is_finite() {
            return Err(TrainError::NonFinite {
                what: "loss",
                value: loss,
            });
        }
        let mut grads = loss_var.backward()?;
        // Everything referring to the tape goes before the update, so the optimiser writes
        // the parameters in place instead of copying shared storage.
        drop(loss_var);
        drop(ctx);
        module::collect_grads(model, &mut grads);
        objective.after_backward(model, &mut grads);
        (loss, count_correct(&logits, &batch.labels))
    };
    let grad_norm = optim::clip_grad_norm(model, grad_clip.unwrap_or(f32::INFINITY));
    if !grad_norm.is_finite() {
        optim::zero_grad(model);
        return Err(TrainError::NonFinite {
            what: "gradient norm",
            value: grad_norm,
        });
    }
    optimizer.step(model, lr)?;
    optim::zero_grad(model);
    Ok(StepStats {
        loss,
        correct,
        images: batch.labels.len(),
        grad_norm,
    })
}

/// Top-1 hits of `logits` `[N, C]` against `labels`.
pub fn count_correct(logits: &Tensor, labels: &[usize]) -> usize {
    let preds = argmax_rows(logits).expect("a training step's logits are N×C with C ≥ 1");
    preds.iter().zip(labels).filter(|(p, l)| p == l).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropout_seeds_differ_per_step_and_seed() {
        assert_ne!(dropout_seed(0, 0), dropout_seed(0, 1));
        assert_ne!(dropout_seed(0, 1), dropout_seed(1, 0));
        assert_eq!(dropout_seed(3, 7), dropout_seed(3, 7));
    }

    #[test]
    fn correct_counts_and_top5() {
        let logits = Tensor::from_vec(&[2, 3], vec![0.1, 0.9, 0.0, 2.0, 1.0, 0.0]).unwrap();
        assert_eq!(count_correct(&logits, &[1, 1]), 1);
    }
}
