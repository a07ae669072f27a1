//! im2col and its adjoint col2im: the column matrix of one group's input for a tile of output
//! rows (row `(c·k + ky)·k + kx`, one column per output position), plainly or straight into the
//! GEMM kernel's packed layout.

use super::workspace::GroupGemm;
use crate::conv::ConvGeom;
use crate::gemm::RhsLayout;

/// Output columns `[lo, hi)` whose kernel column `kx` lands inside the input row (the rest read
/// padding), and the input column of `lo`.
fn col_span(g: &ConvGeom, ow: usize, kx: usize) -> (usize, usize, usize) {
    let lo = g.pad.saturating_sub(kx).div_ceil(g.stride);
    let hi = if g.w + g.pad > kx {
        ((g.w - 1 + g.pad - kx) / g.stride + 1).min(ow)
    } else {
        0
    };
    if lo >= hi {
        return (hi, hi, 0);
    }
    (lo, hi, lo * g.stride + kx - g.pad)
}

/// The input row that output row `r` reads with kernel row `ky`, if not padding.
fn in_row(g: &ConvGeom, r: usize, ky: usize) -> Option<usize> {
    (r * g.stride + ky)
        .checked_sub(g.pad)
        .filter(|&iy| iy < g.h)
}

/// Column matrix of output rows `[r0, r0+nr)` of one group: row `(c·k+ky)·k+kx`, column `pos`
/// holds `x[c, r·s+ky−p, j·s+kx−p]` (0 in the padding). `x` holds the group's `cin_g` planes.
pub(super) fn im2col(
    x: &[f32],
    g: &ConvGeom,
    d: &GroupGemm,
    r0: usize,
    nr: usize,
    col: &mut [f32],
) {
    let len = nr * d.ow;
    for (c, plane) in x.chunks_exact(d.hw).enumerate() {
        for (t, row) in col[c * g.k * g.k * len..][..g.k * g.k * len]
            .chunks_exact_mut(len)
            .enumerate()
        {
            col_row(plane, g, d, r0, (t / g.k, t % g.k), row);
        }
    }
}

/// [`im2col`] of output rows `[r0, r0 + nr)` for one or more images side by side (each image's
/// `nr·ow` columns after the previous one's), written through `layout` (the GEMM kernel's
/// packing) into `dst`; a pointwise conv's rows are the input planes themselves. Each item of
/// `images` holds one image's `cin_g` input planes; `row` is scratch for one matrix row.
pub(super) fn im2col_packed<'x>(
    images: impl Iterator<Item = &'x [f32]> + Clone,
    g: &ConvGeom,
    d: &GroupGemm,
    (r0, nr): (usize, usize),
    (layout, dst): (RhsLayout, &mut [f32]),
    row: &mut [f32],
) {
    for k in 0..d.kc {
        let (c, tap) = (k / d.kk, k % d.kk);
        for (seg, planes) in row.chunks_exact_mut(nr * d.ow).zip(images.clone()) {
            let plane = &planes[c * d.hw..][..d.hw];
            if d.pointwise {
                // Element by element: on 1×1 maps a segment is one float, not worth a memcpy call.
                seg.iter_mut()
                    .zip(&plane[r0 * d.ow..])
                    .for_each(|(o, v)| *o = *v);
            } else {
                col_row(plane, g, d, r0, (tap / g.k, tap % g.k), seg);
            }
        }
        layout.put_row(k, row, dst);
    }
}

/// Row `(ky, kx)` of one input channel's `plane` in the column matrix of output rows
/// `[r0, r0 + out.len()/ow)`.
fn col_row(
    plane: &[f32],
    g: &ConvGeom,
    d: &GroupGemm,
    r0: usize,
    (ky, kx): (usize, usize),
    out: &mut [f32],
) {
    let (lo, hi, x0) = col_span(g, d.ow, kx);
    for (r, out) in (r0..).zip(out.chunks_exact_mut(d.ow)) {
        let Some(iy) = in_row(g, r, ky) else {
            out.fill(0.0);
            continue;
        };
        let src = &plane[iy * g.w + x0..(iy + 1) * g.w];
        out[..lo].fill(0.0);
        out[hi..].fill(0.0);
        let out = &mut out[lo..hi];
        if g.stride == 1 {
            out.copy_from_slice(&src[..out.len()]);
        } else {
            out.iter_mut()
                .zip(src.iter().step_by(g.stride))
                .for_each(|(o, v)| *o = *v);
        }
    }
}

/// Adjoint of [`im2col`]: adds column gradients of output rows `[r0, r0+nr)` into `dx`, which
/// holds the input planes of the channels whose column rows `dcol` has.
pub(super) fn col2im(
    dcol: &[f32],
    g: &ConvGeom,
    d: &GroupGemm,
    r0: usize,
    nr: usize,
    dx: &mut [f32],
) {
    let len = nr * d.ow;
    for (c, plane) in dx.chunks_exact_mut(d.hw).enumerate() {
        for ky in 0..g.k {
            for kx in 0..g.k {
                let (lo, hi, x0) = col_span(g, d.ow, kx);
                let row = &dcol[((c * g.k + ky) * g.k + kx) * len..][..len];
                for (r, src) in (r0..r0 + nr).zip(row.chunks_exact(d.ow)) {
                    let Some(iy) = in_row(g, r, ky) else {
                        continue;
                    };
                    let dst = &mut plane[iy * g.w + x0..(iy + 1) * g.w];
                    let src = &src[lo..hi];
                    if g.stride == 1 {
                        dst.iter_mut().zip(src).for_each(|(o, v)| *o += v);
                    } else {
                        dst.iter_mut()
                            .step_by(g.stride)
                            .zip(src)
                            .for_each(|(o, v)| *o += v);
                    }
                }
            }
        }
    }
}
