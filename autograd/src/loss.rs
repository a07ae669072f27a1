//! Losses: cross-entropy with label smoothing, soft-target cross-entropy and the KL divergence
//! (distillation). Each computes its gradient in the forward pass (it falls out of the
//! softmax) and scales it by the upstream gradient in backward.

use depthshrink_tensor::{Result, Tensor, elementwise, softmax};

use crate::{Backward, Var};

/// Mean cross-entropy of `logits` `[N, K]` against integer labels, with label smoothing ε
/// (PyTorch: (1−ε)·NLL + ε·mean_k(−log p_k)). Returns a scalar.
pub fn cross_entropy(logits: &Var, labels: &[usize], smoothing: f32) -> Result<Var> {
    let (loss, grad) = softmax::cross_entropy(logits.value(), labels, smoothing)?;
    Ok(Var::from_op(Tensor::scalar(loss), &[logits], || {
        PrecomputedGrad { grad }
    }))
}

/// Mean over the batch of −Σ_k targets_k · log softmax(logits)_k, for target distributions
/// `[N, K]` (a teacher's softened probabilities). Returns a scalar.
pub fn soft_cross_entropy(logits: &Var, targets: &Tensor) -> Result<Var> {
    let (loss, grad) = softmax::soft_cross_entropy(logits.value(), targets)?;
    Ok(Var::from_op(Tensor::scalar(loss), &[logits], || {
        PrecomputedGrad { grad }
    }))
}

/// Mean over the batch of KL(targets ‖ softmax(logits)): the soft cross-entropy less the
/// targets' entropy. The entropy is constant in the logits, so the gradient is the soft
/// cross-entropy's; the value, unlike it, is 0 when the distributions agree (a distillation
/// loss that reads the same at every temperature).
pub fn kl_divergence(logits: &Var, targets: &Tensor) -> Result<Var> {
    let (cross, grad) = softmax::soft_cross_entropy(logits.value(), targets)?;
    let loss = cross - softmax::mean_entropy(targets)?;
    Ok(Var::from_op(Tensor::scalar(loss), &[logits], || {
        PrecomputedGrad { grad }
    }))
}

struct PrecomputedGrad {
    grad: Tensor,
}

impl Backward for PrecomputedGrad {
    fn backward(&self, dy: &Tensor, _needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(elementwise::scale(&self.grad, dy.item()?))])
    }
}
