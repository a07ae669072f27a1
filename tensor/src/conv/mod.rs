//! Dense and grouped 2-D convolution over NCHW tensors, forward and both backward passes.
//!
//! Dispatch: 1×1 with stride 1 and no padding → GEMM straight on the image (`[Cout,Cin]·[Cin,HW]`,
//! no copy); groups == channels → the direct kernels in [`crate::depthwise`]; a dense 3×3 at
//! stride 1 with prepared weights ([`PackedWeight`]), where it pays → Winograd F(2×2, 3×3)
//! (`winograd.rs`); everything else → im2col + GEMM, tiled over output rows so the column
//! buffer stays within one core's L2.
//!
//! Parallelism (one level, [`crate::parallel`]): forward and input gradient split into
//! independent tasks over (image, group, output tile or input-channel block), each calling a
//! single-threaded GEMM; the weight gradient folds (image, tile) items into one partial sum per
//! rayon split. Batch 1 splits output tiles, so it uses every core too. Called from inside
//! another kernel's task, everything runs on that task's thread. Each public function reads the
//! SIMD level once ([`crate::simd::level`]) and runs every task at it.
//!
//! Layout: this file holds the public API; `forward.rs` and `backward.rs` the passes,
//! `im2col.rs` the column matrices, `block.rs` a task's output block (GEMM product, streamed
//! stores), `workspace.rs` the tiling, task split, scratch buffers and output allocation.

mod backward;
mod block;
mod forward;
mod im2col;
#[cfg(test)]
mod tests;
mod winograd;
mod workspace;

pub use crate::geometry::{ConvGeom, ConvParams};
pub use backward::backward_bias;
use backward::{backward_input_at, backward_weight_at};
use forward::Forward;
use winograd::WinogradWeight;
use workspace::output_vec;

use crate::elementwise::as_uninit;
use crate::gemm::PackedLhs;
use crate::simd;
use crate::{Result, Tensor, TensorError};

/// y = conv(x, w) + bias, NCHW. Bias, when given, has shape `[cout]`.
pub fn conv2d(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, p: ConvParams) -> Result<Tensor> {
    conv2d_act(x, w, bias, p, false)
}

/// [`conv2d`], then ReLU6 when `relu6`: the clamp runs on each output block while it is still in
/// cache (inference with folded batch norms), not as a second pass over memory.
pub fn conv2d_act(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    p: ConvParams,
    relu6: bool,
) -> Result<Tensor> {
    forward_tensor("conv2d", x, w, None, bias, p, relu6)
}

/// The shape checks and output allocation of [`conv2d_act`] and [`conv2d_act_packed`].
fn forward_tensor(
    op: &'static str,
    x: &Tensor,
    w: &Tensor,
    packed: Option<&PackedWeight>,
    bias: Option<&Tensor>,
    p: ConvParams,
    relu6: bool,
) -> Result<Tensor> {
    let g = ConvGeom::new(op, x.nchw(op)?, w.shape(), p)?;
    if let Some(b) = bias
        && b.shape() != [g.cout]
    {
        return Err(TensorError::shape(
            op,
            format!("bias {:?} for {} output channels", b.shape(), g.cout),
        ));
    }
    let out = g.output_shape();
    let call = Forward {
        x: x.data(),
        w: w.data(),
        packed: packed.and_then(|p| p.packs.as_deref()),
        winograd: packed.and_then(|p| p.winograd.as_ref()),
        bias: bias.map(Tensor::data),
        relu6,
        g: &g,
        level: simd::level(),
    };
    let y = output_vec(out.iter().product(), |y| call.run(y));
    Tensor::from_vec(&out, y)
}

/// A conv weight prepared once for inference with fixed weights ([`conv2d_act_packed`]): its
/// GEMM operand packed per group (at batch 1, packing the weight was ~11% of a MobileNetV2
/// forward) and, for a dense 3×3, its Winograd transform, which stride-1 calls use where it is
/// faster.
#[derive(Clone)]
pub struct PackedWeight {
    weight: Tensor,
    groups: usize,
    /// One packing per group, where the GEMM kernel reads packings (AVX-512).
    packs: Option<Vec<PackedLhs>>,
    winograd: Option<WinogradWeight>,
}

impl PackedWeight {
    /// Prepares `w` (`[cout, cin/groups, k, k]`), or `None` when there is nothing to prepare:
    /// depthwise weights, a malformed shape, or a level below AVX-512 ([`crate::simd::level`])
    /// for anything but a dense 3×3 with enough input channels for Winograd to pay.
    pub fn new(w: &Tensor, groups: usize) -> Option<PackedWeight> {
        let &[cout, cin_g, k, _] = w.shape() else {
            return None;
        };
        if groups == 0 || cout % groups != 0 || cin_g == 1 && cout == groups && groups > 1 {
            return None;
        }
        let (rows, cols) = (cout / groups, cin_g * k * k);
        let packs = w
            .data()
            .chunks_exact(rows * cols)
            .map(|wg| PackedLhs::new(rows, cols, wg, cols, 1))
            .collect::<Option<Vec<_>>>();
        let winograd = (k == 3 && groups == 1 && cin_g >= winograd::MIN_CIN)
            .then(|| WinogradWeight::new(w.data(), cout, cin_g));
        if packs.is_none() && winograd.is_none() {
            return None;
        }
        Some(PackedWeight {
            weight: w.clone(),
            groups,
            packs,
            winograd,
        })
    }

    /// True when this is a packing of `w` with `groups`: same storage, so `w` cannot have been
    /// written since (a write would have copied it).
    pub fn packs(&self, w: &Tensor, groups: usize) -> bool {
        self.weight.shares_storage(w) && self.weight.shape() == w.shape() && self.groups == groups
    }
}

/// [`conv2d_act`] with a prepacked weight (`p.groups` must be the packing's).
pub fn conv2d_act_packed(
    x: &Tensor,
    w: &PackedWeight,
    bias: Option<&Tensor>,
    p: ConvParams,
    relu6: bool,
) -> Result<Tensor> {
    const OP: &str = "conv2d_packed";
    if p.groups != w.groups {
        return Err(TensorError::argument(
            OP,
            format!(
                "weight packed for {} groups, called with {}",
                w.groups, p.groups
            ),
        ));
    }
    forward_tensor(OP, x, &w.weight, Some(w), bias, p, relu6)
}

/// Gradient of [`conv2d`] with respect to its input of shape `x_shape`.
pub fn conv2d_backward_input(
    dy: &Tensor,
    w: &Tensor,
    x_shape: [usize; 4],
    p: ConvParams,
) -> Result<Tensor> {
    const OP: &str = "conv2d_backward_input";
    let g = ConvGeom::new(OP, x_shape, w.shape(), p)?;
    expect_output_shape(OP, dy, &g)?;
    let level = simd::level();
    let dx = output_vec(x_shape.iter().product(), |dx| {
        backward_input_at(level, dy.data(), w.data(), dx, &g)
    });
    Tensor::from_vec(&x_shape, dx)
}

/// Gradient of [`conv2d`] with respect to its `k×k` weight: shape `[cout, cin/groups, k, k]`,
/// with `cout` taken from `dy`.
pub fn conv2d_backward_weight(x: &Tensor, dy: &Tensor, k: usize, p: ConvParams) -> Result<Tensor> {
    const OP: &str = "conv2d_backward_weight";
    let x_shape = x.nchw(OP)?;
    let cout = dy.nchw(OP)?[1];
    let w_shape = [cout, x_shape[1] / p.groups.max(1), k, k];
    let g = ConvGeom::new(OP, x_shape, &w_shape, p)?;
    expect_output_shape(OP, dy, &g)?;
    let mut dw = vec![0.0; w_shape.iter().product()];
    backward_weight_at(simd::level(), x.data(), dy.data(), &mut dw, &g);
    Tensor::from_vec(&w_shape, dw)
}

/// Gradient of [`conv2d`] with respect to its bias: `dy` summed over batch and space, `[cout]`.
pub fn conv2d_backward_bias(dy: &Tensor) -> Result<Tensor> {
    let [_, c, h, w] = dy.nchw("conv2d_backward_bias")?;
    let mut db = vec![0.0; c];
    backward_bias(dy.data(), &mut db, h * w);
    Tensor::from_vec(&[c], db)
}

/// Errors unless `dy` has the output shape of `g`.
fn expect_output_shape(op: &'static str, dy: &Tensor, g: &ConvGeom) -> Result<()> {
    if dy.shape() != g.output_shape() {
        return Err(TensorError::shape(
            op,
            format!(
                "output gradient {:?}, but the convolution produces {:?}",
                dy.shape(),
                g.output_shape()
            ),
        ));
    }
    Ok(())
}

/// Panics unless the input, weight and output lengths are those `g` implies.
fn check_lens(g: &ConvGeom, x: usize, w: usize, y: usize) {
    let [n, c, oh, ow] = g.output_shape();
    assert_eq!(x, g.n * g.cin * g.h * g.w, "conv: input slice length");
    assert_eq!(
        w,
        g.weight_shape().iter().product(),
        "conv: weight slice length"
    );
    assert_eq!(y, n * c * oh * ow, "conv: output slice length");
}

/// Forward pass on slices sized by `g` (then ReLU6 if `relu6`); `y` is overwritten.
pub fn forward(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    relu6: bool,
    y: &mut [f32],
    g: &ConvGeom,
) {
    let call = Forward {
        x,
        w,
        packed: None,
        winograd: None,
        bias,
        relu6,
        g,
        level: simd::level(),
    };
    call.run(as_uninit(y))
}

/// Input gradient on slices sized by `g`; `dx` is overwritten.
pub fn backward_input(dy: &[f32], w: &[f32], dx: &mut [f32], g: &ConvGeom) {
    backward_input_at(simd::level(), dy, w, as_uninit(dx), g)
}

/// Weight gradient on slices sized by `g`; `dw` is overwritten.
pub fn backward_weight(x: &[f32], dy: &[f32], dw: &mut [f32], g: &ConvGeom) {
    backward_weight_at(simd::level(), x, dy, dw, g)
}
