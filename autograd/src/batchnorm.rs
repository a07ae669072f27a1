//! Batch normalisation: training mode (batch statistics, running-stat update) and eval mode.

use depthshrink_tensor::batchnorm::{self, BatchStats, BnOptions};
use depthshrink_tensor::{Result, Tensor, elementwise, reduce};

use crate::{Backward, Var};

/// Normalises with the batch statistics and updates the running statistics in place. With
/// `opts.relu6` the output is clamped to [0, 6] in the same pass (BN followed by ReLU6, fused):
/// the backward recomputes the clamp's mask from x, so the BN's own output is never stored.
pub fn batch_norm_train(
    x: &Var,
    gamma: &Var,
    beta: &Var,
    running_mean: &mut Tensor,
    running_var: &mut Tensor,
    opts: BnOptions,
) -> Result<Var> {
    let (y, stats) = batchnorm::forward_train(
        x.value(),
        gamma.value(),
        beta.value(),
        running_mean,
        running_var,
        opts,
    )?;
    Ok(Var::from_op(y, &[x, gamma, beta], || {
        BatchNormTrainBackward {
            x: x.value().clone(),
            gamma: gamma.value().clone(),
            stats,
        }
    }))
}

struct BatchNormTrainBackward {
    x: Tensor,
    gamma: Tensor,
    stats: BatchStats,
}

impl Backward for BatchNormTrainBackward {
    fn backward(&self, dy: &Tensor, _needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let g = batchnorm::backward_train(dy, &self.x, &self.gamma, &self.stats)?;
        Ok(vec![Some(g.dx), Some(g.dgamma), Some(g.dbeta)])
    }
}

/// Normalises with the running statistics: a per-channel affine map.
pub fn batch_norm_eval(
    x: &Var,
    gamma: &Var,
    beta: &Var,
    running_mean: &Tensor,
    running_var: &Tensor,
    eps: f32,
) -> Result<Var> {
    let y = batchnorm::forward_eval(
        x.value(),
        gamma.value(),
        beta.value(),
        running_mean,
        running_var,
        eps,
    )?;
    Ok(Var::from_op(y, &[x, gamma, beta], || {
        BatchNormEvalBackward {
            x: x.value().clone(),
            gamma: gamma.value().clone(),
            running_mean: running_mean.clone(),
            running_var: running_var.clone(),
            eps,
        }
    }))
}

struct BatchNormEvalBackward {
    x: Tensor,
    gamma: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    eps: f32,
}

impl Backward for BatchNormEvalBackward {
    fn backward(&self, dy: &Tensor, needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let dx = needs[0]
            .then(|| batchnorm::backward_eval(dy, &self.gamma, &self.running_var, self.eps))
            .transpose()?;
        let dgamma = if needs[1] {
            // dγ = Σ dy · x̂ with x̂ = (x − μ)/σ: the normalised input is BN with γ = 1, β = 0.
            let ones = Tensor::full(self.gamma.shape(), 1.0);
            let zeros = Tensor::zeros(self.gamma.shape());
            let x_hat = batchnorm::forward_eval(
                &self.x,
                &ones,
                &zeros,
                &self.running_mean,
                &self.running_var,
                self.eps,
            )?;
            Some(reduce::channel_sum(&elementwise::mul(dy, &x_hat)?)?)
        } else {
            None
        };
        let dbeta = needs[2].then(|| reduce::channel_sum(dy)).transpose()?;
        Ok(vec![dx, dgamma, dbeta])
    }
}
