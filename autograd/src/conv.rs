//! Convolution and zero padding.

use depthshrink_tensor::conv::{self, ConvParams};
use depthshrink_tensor::{Result, Tensor, elementwise, pad};

use crate::{Backward, Var};

/// 2-D convolution (any stride, padding, groups) with an optional bias.
pub fn conv2d(x: &Var, w: &Var, bias: Option<&Var>, p: ConvParams) -> Result<Var> {
    conv2d_act(x, w, bias, p, false)
}

/// [`conv2d`], then ReLU6 when `relu6`, fused into the conv's output pass (inference runs its
/// folded layers this way); the backward reads the ReLU6 mask from the output.
pub fn conv2d_act(x: &Var, w: &Var, bias: Option<&Var>, p: ConvParams, relu6: bool) -> Result<Var> {
    let y = conv::conv2d_act(x.value(), w.value(), bias.map(Var::value), p, relu6)?;
    let mut inputs = vec![x, w];
    inputs.extend(bias);
    let relu6_output = relu6.then(|| y.clone());
    Ok(Var::from_op(y, &inputs, || Conv2dBackward {
        x: x.value().clone(),
        w: w.value().clone(),
        p,
        relu6_output,
    }))
}

struct Conv2dBackward {
    x: Tensor,
    w: Tensor,
    p: ConvParams,
    relu6_output: Option<Tensor>,
}

impl Backward for Conv2dBackward {
    fn backward(&self, dy: &Tensor, needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let masked;
        let dy = match &self.relu6_output {
            Some(y) => {
                masked = elementwise::relu6_backward(y, dy)?;
                &masked
            }
            None => dy,
        };
        let x_shape = self.x.nchw("conv2d backward")?;
        let k = self.w.shape()[2];
        let dx = needs[0]
            .then(|| conv::conv2d_backward_input(dy, &self.w, x_shape, self.p))
            .transpose()?;
        let dw = needs[1]
            .then(|| conv::conv2d_backward_weight(&self.x, dy, k, self.p))
            .transpose()?;
        let mut grads = vec![dx, dw];
        if needs.len() == 3 {
            grads.push(
                needs[2]
                    .then(|| conv::conv2d_backward_bias(dy))
                    .transpose()?,
            );
        }
        Ok(grads)
    }
}

/// Zero-pads every plane by `p` on all sides.
pub fn pad2d(x: &Var, p: usize) -> Result<Var> {
    Ok(Var::from_op(pad::pad2d(x.value(), p)?, &[x], || {
        Pad2dBackward { p }
    }))
}

struct Pad2dBackward {
    p: usize,
}

impl Backward for Pad2dBackward {
    fn backward(&self, dy: &Tensor, _needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(pad::crop2d(dy, self.p)?)])
    }
}
