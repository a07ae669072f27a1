//! Finite-difference gradient checking for every differentiable op.
//!
//! The checked function's output is reduced with a fixed, non-uniform upstream gradient
//! `r` (L = Σ r ⊙ f(x)), so an op that mixes up output positions cannot pass by symmetry.

use depthshrink_tensor::Tensor;

use crate::{Tape, Var};

/// Settings of a gradient check. The defaults suit f32 ops on inputs of magnitude ~1.
#[derive(Clone, Copy, Debug)]
pub struct GradCheck {
    /// Central-difference step.
    pub eps: f32,
    /// Allowed |analytic − numeric| relative to max(|numeric|, largest |analytic| of that input).
    pub tol: f32,
    /// Elements probed per input (evenly spread); all of them when the input is smaller.
    pub max_probes: usize,
}

impl Default for GradCheck {
    fn default() -> Self {
        GradCheck {
            eps: 1e-3,
            tol: 1e-2,
            max_probes: 64,
        }
    }
}

impl GradCheck {
    /// Checks the gradient of `f` with respect to every input. `f` must be deterministic.
    /// Returns a description of the worst mismatch on failure.
    pub fn check(
        &self,
        f: impl Fn(&[Var]) -> depthshrink_tensor::Result<Var>,
        inputs: &[Tensor],
    ) -> Result<(), String> {
        let tape = Tape::new();
        let leaves: Vec<Var> = inputs.iter().map(|t| Var::leaf(&tape, t.clone())).collect();
        let y = f(&leaves).map_err(|e| format!("forward failed: {e}"))?;
        let upstream = upstream_gradient(y.shape());
        let grads = y
            .backward_with(upstream.clone())
            .map_err(|e| format!("backward failed: {e}"))?;

        let loss = |xs: &[Tensor]| -> Result<f64, String> {
            let vars: Vec<Var> = xs.iter().cloned().map(Var::constant).collect();
            let y = f(&vars).map_err(|e| format!("forward failed: {e}"))?;
            Ok(y.value()
                .data()
                .iter()
                .zip(upstream.data())
                .map(|(&a, &r)| a as f64 * r as f64)
                .sum())
        };

        for (j, leaf) in leaves.iter().enumerate() {
            let zeros = Tensor::zeros(leaf.shape());
            let analytic = grads.get(leaf).unwrap_or(&zeros);
            if analytic.shape() != leaf.shape() {
                return Err(format!(
                    "input {j}: gradient shape {:?} != input shape {:?}",
                    analytic.shape(),
                    leaf.shape()
                ));
            }
            let scale = analytic.data().iter().fold(0f32, |m, g| m.max(g.abs()));
            let n = leaf.value().numel();
            let stride = n.div_ceil(self.max_probes).max(1);
            for i in (0..n).step_by(stride) {
                let mut xs = inputs.to_vec();
                let x0 = xs[j].data()[i];
                xs[j].data_mut()[i] = x0 + self.eps;
                let plus = loss(&xs)?;
                xs[j].data_mut()[i] = x0 - self.eps;
                let minus = loss(&xs)?;
                let numeric = ((plus - minus) / (2.0 * self.eps as f64)) as f32;
                let a = analytic.data()[i];
                // Written so that a NaN on either side fails the check.
                let within = (a - numeric).abs() <= self.tol * numeric.abs().max(scale).max(1e-3);
                if !within {
                    return Err(format!(
                        "input {j}, element {i}: analytic {a} vs numeric {numeric} (scale {scale})"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// A fixed, non-uniform upstream gradient in [0.5, 1.5) with alternating signs.
fn upstream_gradient(shape: &[usize]) -> Tensor {
    let numel = shape.iter().product();
    let data = (0..numel)
        .map(|i| {
            let h = (i as u32).wrapping_mul(2_654_435_761) >> 8;
            let v = 0.5 + (h % 1000) as f32 / 1000.0;
            if i % 2 == 0 { v } else { -v }
        })
        .collect();
    Tensor::from_vec(shape, data).expect("numel matches shape")
}
