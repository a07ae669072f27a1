//! Direct depthwise convolution (groups == channels): forward, input gradient, weight gradient.
//! Never routed through GEMM. AVX2+FMA fast paths for k = 3, 5 and stride 1, 2 with runtime
//! detection; a portable path for everything else. (Implementation: issue 2.)
//!
//! All three take an NCHW geometry with `g.groups == g.cin == g.cout` and slices of exactly
//! the sizes that geometry implies; outputs are overwritten, not accumulated.

use crate::conv::ConvGeom;

/// y[n,c] = x[n,c] ⋆ w[c] (+ bias[c]).
pub fn forward(x: &[f32], w: &[f32], bias: Option<&[f32]>, y: &mut [f32], g: &ConvGeom) {
    let _ = (x, w, bias, y, g);
    unimplemented!("depthwise::forward")
}

/// dx = dy ⋆ rot180(w), scattered for stride > 1.
pub fn backward_input(dy: &[f32], w: &[f32], dx: &mut [f32], g: &ConvGeom) {
    let _ = (dy, w, dx, g);
    unimplemented!("depthwise::backward_input")
}

/// dw[c,u,v] = Σ_{n,i,j} dy[n,c,i,j] · x[n,c,i·s+u−p, j·s+v−p].
pub fn backward_weight(x: &[f32], dy: &[f32], dw: &mut [f32], g: &ConvGeom) {
    let _ = (x, dy, dw, g);
    unimplemented!("depthwise::backward_weight")
}
