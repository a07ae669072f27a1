//! Fully connected layer: y = x·Wᵀ + b with W `[out, in]`.

use depthshrink_tensor::{Result, Tensor, gemm, reduce};

use crate::{Backward, Var};

/// Fully connected layer: `x` `[N, in]`, `w` `[out, in]` (PyTorch layout), `bias` `[out]`;
/// returns `[N, out]`.
pub fn linear(x: &Var, w: &Var, bias: Option<&Var>) -> Result<Var> {
    let y = gemm::linear_forward(x.value(), w.value(), bias.map(Var::value))?;
    let mut inputs = vec![x, w];
    inputs.extend(bias);
    Ok(Var::from_op(y, &inputs, || LinearBackward {
        x: x.value().clone(),
        w: w.value().clone(),
    }))
}

struct LinearBackward {
    x: Tensor,
    w: Tensor,
}

impl Backward for LinearBackward {
    fn backward(&self, dy: &Tensor, needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let dx = needs[0]
            .then(|| gemm::linear_backward_input(dy, &self.w))
            .transpose()?;
        let dw = needs[1]
            .then(|| gemm::linear_backward_weight(dy, &self.x))
            .transpose()?;
        let mut grads = vec![dx, dw];
        if needs.len() == 3 {
            grads.push(needs[2].then(|| reduce::sum_rows(dy)).transpose()?);
        }
        Ok(grads)
    }
}
