//! Reference twin of `crate::depthwise`.
//!
//! Straight from the definition of a depthwise (groups == channels) correlation with zero padding,
//! NCHW, weight `[C,1,k,k]`; every sum is accumulated in f64 so the fast kernels are compared
//! against something more exact than themselves.

use crate::conv::ConvGeom;

/// Input pixel `(ih, iw)` that output `(oh, ow)` reads through tap `(i, j)`, if inside the image.
fn src(g: &ConvGeom, oh: usize, ow: usize, i: usize, j: usize) -> Option<(usize, usize)> {
    let ih = (oh * g.stride + i).checked_sub(g.pad)?;
    let iw = (ow * g.stride + j).checked_sub(g.pad)?;
    (ih < g.h && iw < g.w).then_some((ih, iw))
}

/// y[n,c,oh,ow] = bias[c] + Σ_{i,j} w[c,i,j] · x[n,c,oh·s+i−p, ow·s+j−p].
pub(crate) fn forward(x: &[f32], w: &[f32], bias: Option<&[f32]>, y: &mut [f32], g: &ConvGeom) {
    let (c_, k, oh_, ow_) = (g.cin, g.k, g.out_h(), g.out_w());
    for n in 0..g.n {
        for c in 0..c_ {
            let xp = &x[(n * c_ + c) * g.h * g.w..];
            for oh in 0..oh_ {
                for ow in 0..ow_ {
                    let mut acc = bias.map_or(0.0, |b| b[c] as f64);
                    for i in 0..k {
                        for j in 0..k {
                            if let Some((ih, iw)) = src(g, oh, ow, i, j) {
                                acc += w[(c * k + i) * k + j] as f64 * xp[ih * g.w + iw] as f64;
                            }
                        }
                    }
                    y[((n * c_ + c) * oh_ + oh) * ow_ + ow] = acc as f32;
                }
            }
        }
    }
}

/// dx[n,c,ih,iw] = Σ over every (oh, ow, i, j) that read x[n,c,ih,iw] of w[c,i,j] · dy[n,c,oh,ow].
pub(crate) fn backward_input(dy: &[f32], w: &[f32], dx: &mut [f32], g: &ConvGeom) {
    let (c_, k, oh_, ow_) = (g.cin, g.k, g.out_h(), g.out_w());
    let mut acc = vec![0f64; dx.len()];
    for n in 0..g.n {
        for c in 0..c_ {
            let plane = (n * c_ + c) * g.h * g.w;
            for oh in 0..oh_ {
                for ow in 0..ow_ {
                    let d = dy[((n * c_ + c) * oh_ + oh) * ow_ + ow] as f64;
                    for i in 0..k {
                        for j in 0..k {
                            if let Some((ih, iw)) = src(g, oh, ow, i, j) {
                                acc[plane + ih * g.w + iw] += w[(c * k + i) * k + j] as f64 * d;
                            }
                        }
                    }
                }
            }
        }
    }
    for (d, a) in dx.iter_mut().zip(acc) {
        *d = a as f32;
    }
}

/// dw[c,i,j] = Σ_{n,oh,ow} dy[n,c,oh,ow] · x[n,c,oh·s+i−p, ow·s+j−p].
pub(crate) fn backward_weight(x: &[f32], dy: &[f32], dw: &mut [f32], g: &ConvGeom) {
    let (c_, k, oh_, ow_) = (g.cin, g.k, g.out_h(), g.out_w());
    for c in 0..c_ {
        for i in 0..k {
            for j in 0..k {
                let mut acc = 0f64;
                for n in 0..g.n {
                    let xp = &x[(n * c_ + c) * g.h * g.w..];
                    for oh in 0..oh_ {
                        for ow in 0..ow_ {
                            if let Some((ih, iw)) = src(g, oh, ow, i, j) {
                                acc += dy[((n * c_ + c) * oh_ + oh) * ow_ + ow] as f64
                                    * xp[ih * g.w + iw] as f64;
                            }
                        }
                    }
                }
                dw[(c * k + i) * k + j] = acc as f32;
            }
        }
    }
}
