//! Sums, scaling, clamping and reshaping.

use depthshrink_tensor::{Result, Tensor, elementwise};

use crate::{Backward, Var};

/// a + b for tensors of one shape (residual connections, loss terms).
pub fn add(a: &Var, b: &Var) -> Result<Var> {
    a.value().expect_same_shape("add", b.value())?;
    let y = elementwise::add(a.value(), b.value())?;
    Ok(Var::from_op(y, &[a, b], || AddBackward))
}

struct AddBackward;

impl Backward for AddBackward {
    fn backward(&self, dy: &Tensor, needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        Ok(needs.iter().map(|&n| n.then(|| dy.clone())).collect())
    }
}

/// s · x for a constant s.
pub fn scale(x: &Var, s: f32) -> Result<Var> {
    Ok(Var::from_op(elementwise::scale(x.value(), s), &[x], || {
        ScaleBackward { s }
    }))
}

struct ScaleBackward {
    s: f32,
}

impl Backward for ScaleBackward {
    fn backward(&self, dy: &Tensor, _needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(elementwise::scale(dy, self.s))])
    }
}

/// min(max(x, lo), hi); the gradient passes where lo < x < hi (PyTorch's convention, see
/// [`elementwise::clamp_backward`]).
pub fn clamp(x: &Var, lo: f32, hi: f32) -> Result<Var> {
    let y = elementwise::clamp(x.value(), lo, hi)?;
    Ok(Var::from_op(y, &[x], || ClampBackward {
        x: x.value().clone(),
        lo,
        hi,
    }))
}

struct ClampBackward {
    x: Tensor,
    lo: f32,
    hi: f32,
}

impl Backward for ClampBackward {
    fn backward(&self, dy: &Tensor, _needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(elementwise::clamp_backward(
            &self.x, dy, self.lo, self.hi,
        )?)])
    }
}

/// The same values under a new shape.
pub fn reshape(x: &Var, shape: &[usize]) -> Result<Var> {
    let y = x.value().reshape(shape)?;
    Ok(Var::from_op(y, &[x], || ReshapeBackward {
        shape: x.shape().to_vec(),
    }))
}

struct ReshapeBackward {
    shape: Vec<usize>,
}

impl Backward for ReshapeBackward {
    fn backward(&self, dy: &Tensor, _needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(dy.reshape(&self.shape)?)])
    }
}

/// Element `i` of a vector as a one-element tensor (the search's per-index gate).
pub fn pick(x: &Var, i: usize) -> Result<Var> {
    let n = x.value().numel();
    let &v = x.value().data().get(i).ok_or_else(|| {
        depthshrink_tensor::TensorError::argument(
            "pick",
            format!("index {i} is out of range for {n} elements"),
        )
    })?;
    Ok(Var::from_op(Tensor::scalar(v), &[x], || PickBackward {
        shape: x.shape().to_vec(),
        i,
    }))
}

struct PickBackward {
    shape: Vec<usize>,
    i: usize,
}

impl Backward for PickBackward {
    fn backward(&self, dy: &Tensor, _needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let mut dx = Tensor::zeros(&self.shape);
        dx.data_mut()[self.i] = dy.item()?;
        Ok(vec![Some(dx)])
    }
}
