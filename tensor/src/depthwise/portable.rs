//! Portable plane kernels: any k, stride and padding, plain loops written so LLVM vectorises them
//! for whatever the target baseline is (SSE2 on x86-64).
//!
//! Every kernel first copies its plane into a zero-padded scratch buffer, so the inner loops have
//! no border cases at all; the buffer is zeroed once per task and only its valid region is ever
//! rewritten (the same region for every plane of a call), so the padding stays zero.

// Tap loops index several arrays (weights, row pointers, accumulators) by the same (i, j);
// iterator chains would hide that structure without changing the code generated.
#![allow(clippy::needless_range_loop)]

use std::mem::MaybeUninit;

use super::{Padded, PlaneGeom, PlaneJob, WeightJob, each_plane, relu6_plane};

/// Lanes of the fused accumulation: 8 independent sums per row chunk.
const L: usize = 8;

/// Scratch floats the portable kernels need: the padded plane plus room for the last chunk's
/// over-read (`L` lanes at stride `s`).
pub(super) fn scratch_len(rows: usize, pitch: usize, s: usize) -> usize {
    rows * pitch + L * s + L
}

/// Copies the `sh×sw` plane `src` into `buf` as `at` says, dilated by `dil`:
/// `buf[r·dil + off][c·dil + off] = src[r][c]`; parts that land outside the buffer are dropped
/// (negative `off` crops). Everything else in `buf` is left as is (zero).
fn fill(src: &[f32], (sh, sw): (usize, usize), buf: &mut [f32], at: Padded, dil: usize) {
    let Padded { rows, pitch, off } = at;
    for r in 0..sh {
        let u = (r * dil) as isize + off;
        if u < 0 || u >= rows as isize {
            continue;
        }
        let srow = &src[r * sw..][..sw];
        let drow = &mut buf[u as usize * pitch..][..pitch];
        if dil == 1 {
            let c0 = (-off).max(0) as usize;
            let c1 = (pitch as isize - off).min(sw as isize);
            if c1 > c0 as isize {
                let c1 = c1 as usize;
                let d0 = (c0 as isize + off) as usize;
                drow[d0..d0 + (c1 - c0)].copy_from_slice(&srow[c0..c1]);
            }
        } else {
            for (c, &v) in srow.iter().enumerate() {
                let t = (c * dil) as isize + off;
                if t >= 0 && t < pitch as isize {
                    drow[t as usize] = v;
                }
            }
        }
    }
}

/// out[q] = bias + Σ_{i,j} w[i,j] · rows[i·pitch + q·s + j]: one fused pass per output row,
/// `L` outputs at a time so the tap loop stays outside the vectorised lane loop.
fn corr_row(
    rows: &[f32],
    pitch: usize,
    w: &[f32],
    k: usize,
    s: usize,
    bias: f32,
    out: &mut [MaybeUninit<f32>],
) {
    match (k, s) {
        (3, 1) => return corr_row_fixed::<3>(rows, pitch, w, bias, out),
        (5, 1) => return corr_row_fixed::<5>(rows, pitch, w, bias, out),
        _ => {}
    }
    for (qc, chunk) in out.chunks_mut(L).enumerate() {
        let q = qc * L;
        let mut acc = [bias; L];
        for i in 0..k {
            for j in 0..k {
                let wt = w[i * k + j];
                let base = i * pitch + q * s + j;
                if s == 1 {
                    let src = &rows[base..base + L];
                    for l in 0..L {
                        acc[l] += wt * src[l];
                    }
                } else {
                    let src = &rows[base..base + (L - 1) * s + 1];
                    for l in 0..L {
                        acc[l] += wt * src[l * s];
                    }
                }
            }
        }
        chunk.iter_mut().zip(acc).for_each(|(o, a)| {
            o.write(a);
        });
    }
}

/// `corr_row` for a compile-time k and stride 1: the tap loops unroll, the row slices have
/// provable lengths, and LLVM vectorises the loop over outputs with no per-tap overhead.
fn corr_row_fixed<const K: usize>(
    rows: &[f32],
    pitch: usize,
    w: &[f32],
    bias: f32,
    out: &mut [MaybeUninit<f32>],
) {
    let n = out.len();
    let w: [[f32; K]; K] = std::array::from_fn(|i| std::array::from_fn(|j| w[i * K + j]));
    let r: [&[f32]; K] = std::array::from_fn(|i| &rows[i * pitch..i * pitch + n + K - 1]);
    for (q, o) in out.iter_mut().enumerate() {
        let mut acc = bias;
        for i in 0..K {
            for j in 0..K {
                acc += w[i][j] * r[i][q + j];
            }
        }
        o.write(acc);
    }
}

/// Padded-buffer geometry of the forward pass (also the input side of the weight gradient).
pub(super) fn fwd_buf(d: &PlaneGeom) -> (usize, usize) {
    ((d.oh - 1) * d.s + d.k, (d.ow - 1) * d.s + d.k)
}

pub(super) fn fwd_scratch(d: &PlaneGeom) -> usize {
    let (rows, pitch) = fwd_buf(d);
    scratch_len(rows, pitch, d.s)
}

/// One (image, channel) plane of the forward pass.
fn forward_plane(
    x: &[f32],
    w: &[f32],
    bias: f32,
    y: &mut [MaybeUninit<f32>],
    d: &PlaneGeom,
    buf: &mut [f32],
) {
    let (rows, pitch) = fwd_buf(d);
    let at = Padded {
        rows,
        pitch,
        off: d.p as isize,
    };
    fill(x, (d.h, d.w), buf, at, 1);
    for (oh, yr) in y.chunks_exact_mut(d.ow).enumerate() {
        corr_row(&buf[oh * d.s * pitch..], pitch, w, d.k, d.s, bias, yr);
    }
}

/// Buffer of the input gradient: dy dilated by the stride and padded by k−1−p (negative: cropped),
/// so dx is its stride-1 correlation with the 180°-rotated kernel.
fn bwd_buf(d: &PlaneGeom) -> (usize, usize, isize) {
    (
        d.h + d.k - 1,
        d.w + d.k - 1,
        d.k as isize - 1 - d.p as isize,
    )
}

pub(super) fn bwd_input_scratch(d: &PlaneGeom) -> usize {
    let (rows, pitch, _) = bwd_buf(d);
    scratch_len(rows, pitch, 1)
}

/// One plane of the input gradient. For stride > 1 the zeros of the dilation are multiplied too:
/// simple and general; the AVX2 path gathers per phase instead.
fn backward_input_plane(
    dy: &[f32],
    w: &[f32],
    dx: &mut [MaybeUninit<f32>],
    d: &PlaneGeom,
    buf: &mut [f32],
) {
    let (rows, pitch, off) = bwd_buf(d);
    fill(dy, (d.oh, d.ow), buf, Padded { rows, pitch, off }, d.s);
    let k = d.k;
    let mut wr = [0f32; 49];
    let wr: &mut [f32] = if k * k <= wr.len() {
        &mut wr[..k * k]
    } else {
        &mut vec![0f32; k * k]
    };
    for (t, v) in wr.iter_mut().enumerate() {
        *v = w[k * k - 1 - t];
    }
    for (a, xr) in dx.chunks_exact_mut(d.w).enumerate() {
        corr_row(&buf[a * pitch..], pitch, wr, k, 1, 0.0, xr);
    }
}

/// Weight gradient of the channels from `c0` (into `dw`, `k²` floats each), one channel at a time.
pub(super) fn backward_weight_block(
    job: &WeightJob,
    x: &[f32],
    dy: &[f32],
    c0: usize,
    dw: &mut [f32],
    buf: &mut [f32],
) {
    let k2 = job.d.k * job.d.k;
    for (cc, dwc) in dw.chunks_exact_mut(k2).enumerate() {
        backward_weight_channel(job, (x, dy), c0 + cc, dwc, buf);
    }
}

/// Weight gradient of channel `c`, summed over the images.
fn backward_weight_channel(
    job: &WeightJob,
    (x, dy): (&[f32], &[f32]),
    c: usize,
    dw: &mut [f32],
    buf: &mut [f32],
) {
    let d = &job.d;
    let (rows, pitch) = fwd_buf(d);
    let (k, s) = (d.k, d.s);
    let (ip, op) = (d.h * d.w, d.oh * d.ow);
    // f64 lanes: f32 products are exact in f64, so the only rounding is the final sum's. The
    // portable path is the fallback, and cancellation in a few-term weight gradient would
    // otherwise show up as a large relative error.
    let mut sums = vec![[0f64; L]; k * k];
    let at = Padded {
        rows,
        pitch,
        off: d.p as isize,
    };
    for img in 0..job.images {
        let plane = img * job.chans + c;
        fill(&x[plane * ip..][..ip], (d.h, d.w), buf, at, 1);
        let dyp = &dy[plane * op..][..op];
        for i in 0..k {
            for j in 0..k {
                let acc = &mut sums[i * k + j];
                for (oh, dr) in dyp.chunks_exact(d.ow).enumerate() {
                    let xr = &buf[(oh * s + i) * pitch + j..];
                    if s == 1 {
                        let xr = &xr[..d.ow];
                        let mut dc = dr.chunks_exact(L);
                        let mut xc = xr.chunks_exact(L);
                        for (dv, xv) in (&mut dc).zip(&mut xc) {
                            for l in 0..L {
                                acc[l] += dv[l] as f64 * xv[l] as f64;
                            }
                        }
                        for (l, (dv, xv)) in dc.remainder().iter().zip(xc.remainder()).enumerate() {
                            acc[l] += *dv as f64 * *xv as f64;
                        }
                    } else {
                        for (q, dv) in dr.iter().enumerate() {
                            acc[q % L] += *dv as f64 * xr[q * s] as f64;
                        }
                    }
                }
            }
        }
    }
    let sums = sums.iter().map(|a| a.iter().sum::<f64>());
    for (o, v) in dw.iter_mut().zip(sums) {
        *o = v as f32;
    }
}

/// Forward over a run of planes (see [`super::PlanesFn`]).
pub(super) fn forward(
    job: &PlaneJob,
    x: &[f32],
    y: &mut [MaybeUninit<f32>],
    first: usize,
    buf: &mut [f32],
) {
    let (d, k2) = (&job.d, job.d.k * job.d.k);
    each_plane(job, (x, y, first), true, |xp, yp, c| {
        let b = job.bias.map_or(0.0, |b| b[c]);
        forward_plane(xp, &job.w[c * k2..][..k2], b, yp, d, buf);
        if job.relu6 {
            relu6_plane(yp);
        }
    });
}

/// Input gradient over a run of planes (`dy` planes in, `dx` planes out).
pub(super) fn backward_input(
    job: &PlaneJob,
    dy: &[f32],
    dx: &mut [MaybeUninit<f32>],
    first: usize,
    buf: &mut [f32],
) {
    let (d, k2) = (&job.d, job.d.k * job.d.k);
    each_plane(job, (dy, dx, first), false, |gp, xp, c| {
        backward_input_plane(gp, &job.w[c * k2..][..k2], xp, d, buf);
    });
}
