//! ReLU6 and DepthShrinker's gated activation with its straight-through estimator.

use depthshrink_tensor::{Result, Tensor, TensorError, elementwise};
use rayon::prelude::*;

use crate::{Backward, Var};

/// min(max(x, 0), 6).
pub fn relu6(x: &Var) -> Result<Var> {
    let y = elementwise::relu6(x.value());
    Ok(Var::from_op(y, &[x], || Relu6Backward {
        x: x.value().clone(),
    }))
}

struct Relu6Backward {
    x: Tensor,
}

impl Backward for Relu6Backward {
    fn backward(&self, dy: &Tensor, _needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(elementwise::relu6_backward(&self.x, dy)?)])
    }
}

/// The search stage's activation (depthshrinker.md §3). With m = 1 when this iteration removes
/// the site and `gate` = c (the site's score, or the score clipped to [0, 1] as the paper
/// writes it, see [`crate::ops::clamp`]): y = ReLU6(x) + (x − ReLU6(x))·(m − stopgrad(c) + c).
/// The forward value and dy/dx follow the hard choice; dy/dc = x − ReLU6(x).
/// `gate` is a one-element tensor; sites sharing a gate sum their gate gradients on the tape.
pub fn gated_relu6(x: &Var, gate: &Var, removed: bool) -> Result<Var> {
    gate.value().item().map_err(|_| {
        TensorError::shape(
            "gated_relu6",
            format!("the gate must hold one value, got shape {:?}", gate.shape()),
        )
    })?;
    let y = if removed {
        x.value().clone()
    } else {
        elementwise::relu6(x.value())
    };
    Ok(Var::from_op(y, &[x, gate], || GatedRelu6Backward {
        x: x.value().clone(),
        gate_shape: gate.shape().to_vec(),
        removed,
    }))
}

struct GatedRelu6Backward {
    x: Tensor,
    gate_shape: Vec<usize>,
    removed: bool,
}

impl Backward for GatedRelu6Backward {
    fn backward(&self, dy: &Tensor, needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let dx = match (needs[0], self.removed) {
            (false, _) => None,
            (true, true) => Some(dy.clone()),
            (true, false) => Some(elementwise::relu6_backward(&self.x, dy)?),
        };
        // Σ (x − ReLU6(x))·dy: only values outside [0, 6] contribute.
        let x = self.x.data();
        const CHUNK: usize = 1 << 14;
        // Chunk sums collected, then added in order: a parallel `sum` would associate them as
        // work stealing falls, and the result would vary from run to run.
        let parts: Vec<f64> = x
            .par_chunks(CHUNK)
            .zip(dy.data().par_chunks(CHUNK))
            .map(|(xs, ds)| {
                xs.iter()
                    .zip(ds)
                    .map(|(&x, &d)| ((x - x.clamp(0.0, 6.0)) * d) as f64)
                    .sum::<f64>()
            })
            .collect();
        let ds = parts.iter().sum::<f64>() as f32;
        Ok(vec![dx, Some(Tensor::full(&self.gate_shape, ds))])
    }
}
