//! Pooling and dropout.

use depthshrink_tensor::{Result, Tensor, TensorError, pool};

use crate::{Backward, Var};

/// Mean over each H×W plane: `[N, C, H, W]` → `[N, C]`.
pub fn global_avg_pool(x: &Var) -> Result<Var> {
    let y = pool::global_avg_pool(x.value())?;
    Ok(Var::from_op(y, &[x], || GlobalAvgPoolBackward {
        input_shape: x.shape().to_vec(),
    }))
}

struct GlobalAvgPoolBackward {
    input_shape: Vec<usize>,
}

impl Backward for GlobalAvgPoolBackward {
    fn backward(&self, dy: &Tensor, _needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(pool::global_avg_pool_backward(
            dy,
            &self.input_shape,
        )?)])
    }
}

/// Inverted dropout: zeroes each value with probability `p` and scales the rest by 1/(1−p).
/// The mask is a pure function of `seed` and the element index, so a resumed run repeats it.
pub fn dropout(x: &Var, p: f32, seed: u64) -> Result<Var> {
    if !(0.0..1.0).contains(&p) {
        return Err(TensorError::argument(
            "dropout",
            format!("p must be in [0, 1), got {p}"),
        ));
    }
    let keep_scale = 1.0 / (1.0 - p);
    let threshold = (p as f64 * u64::MAX as f64) as u64;
    let mask: Vec<f32> = (0..x.value().numel() as u64)
        .map(|i| {
            if splitmix64(seed ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15)) >= threshold {
                keep_scale
            } else {
                0.0
            }
        })
        .collect();
    let mask = Tensor::from_vec(x.shape(), mask)?;
    let y = depthshrink_tensor::elementwise::mul(x.value(), &mask)?;
    Ok(Var::from_op(y, &[x], || DropoutBackward { mask }))
}

struct DropoutBackward {
    mask: Tensor,
}

impl Backward for DropoutBackward {
    fn backward(&self, dy: &Tensor, _needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(depthshrink_tensor::elementwise::mul(
            dy, &self.mask,
        )?)])
    }
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
