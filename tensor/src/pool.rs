//! Pooling over N×C×H×W, forward and backward: global average pool (MobileNetV2's head),
//! `avg_pool2d` (count_include_pad = true, PyTorch's default) and `max_pool2d` with argmax
//! indices. Square windows, floor-mode output sizes, zero padding on all four sides. Every pass
//! is parallel over H×W planes, which are independent.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use crate::elementwise::{CHUNK, build, for_units};
use crate::reduce::{lane_sum, per_plane};
use crate::{Result, Tensor, TensorError};

/// Window size `k`×`k`, `stride` and zero `pad` of a 2-D pooling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolParams {
    /// Window side.
    pub k: usize,
    /// Step between windows.
    pub stride: usize,
    /// Zero padding on each side (it never wins a max and counts in an average's divisor).
    pub pad: usize,
}

impl PoolParams {
    /// `k`×`k` windows every `stride`, `pad` on each side.
    pub fn new(k: usize, stride: usize, pad: usize) -> Self {
        PoolParams { k, stride, pad }
    }
}

/// One pooling call's geometry, checked once.
#[derive(Clone, Copy, Debug)]
struct Geom {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
    p: PoolParams,
}

impl Geom {
    /// Checks `[n, c, h, w]` against `p` with PyTorch's rules (k, stride ≥ 1; pad ≤ k/2, which
    /// also guarantees every window overlaps the input).
    fn new(op: &'static str, shape: &[usize], p: PoolParams) -> Result<Geom> {
        let &[n, c, h, w] = shape else {
            return Err(TensorError::shape(
                op,
                format!("expected N×C×H×W, got {shape:?}"),
            ));
        };
        if p.k == 0 || p.stride == 0 || p.pad > p.k / 2 {
            return Err(TensorError::argument(
                op,
                format!("need k ≥ 1, stride ≥ 1 and pad ≤ k/2, got {p:?}"),
            ));
        }
        if h == 0 || w == 0 || h + 2 * p.pad < p.k || w + 2 * p.pad < p.k {
            return Err(TensorError::shape(
                op,
                format!(
                    "{h}×{w} input with padding {} is smaller than the {k}×{k} window",
                    p.pad,
                    k = p.k
                ),
            ));
        }
        let oh = (h + 2 * p.pad - p.k) / p.stride + 1;
        let ow = (w + 2 * p.pad - p.k) / p.stride + 1;
        Ok(Geom {
            n,
            c,
            h,
            w,
            oh,
            ow,
            p,
        })
    }

    fn output_shape(&self) -> [usize; 4] {
        [self.n, self.c, self.oh, self.ow]
    }

    /// The input rows (or columns, with `len = w`) window `o` covers, clipped to the input.
    fn span(&self, o: usize, len: usize) -> std::ops::Range<usize> {
        let start = (o * self.p.stride) as isize - self.p.pad as isize;
        let end = (start + self.p.k as isize).min(len as isize);
        start.max(0) as usize..end as usize
    }

    /// Errors unless `dy` has this pooling's output shape.
    fn check_dy(&self, op: &'static str, dy: &Tensor) -> Result<()> {
        if dy.shape() == self.output_shape() {
            Ok(())
        } else {
            Err(TensorError::shape(
                op,
                format!("dy must be {:?}, got {:?}", self.output_shape(), dy.shape()),
            ))
        }
    }
}

/// Mean over H×W of each plane: N×C×H×W → N×C.
pub fn global_avg_pool(x: &Tensor) -> Result<Tensor> {
    let [n, c, h, w] = x.nchw("global_avg_pool")?;
    let hw = h * w;
    if hw == 0 {
        return Err(TensorError::shape("global_avg_pool", "empty H×W planes"));
    }
    let d = x.data();
    let means = per_plane(n * c, hw, |p| {
        (lane_sum(&d[p * hw..(p + 1) * hw], |v| v) / hw as f64) as f32
    });
    Tensor::from_vec(&[n, c], means)
}

/// Backward of [`global_avg_pool`]: each plane of `input_shape` gets `dy[n,c] / (H·W)`.
pub fn global_avg_pool_backward(dy: &Tensor, input_shape: &[usize]) -> Result<Tensor> {
    const OP: &str = "global_avg_pool_backward";
    let &[n, c, h, w] = input_shape else {
        return Err(TensorError::shape(
            OP,
            format!("input shape must be N×C×H×W, got {input_shape:?}"),
        ));
    };
    if dy.shape() != [n, c] || h * w == 0 {
        return Err(TensorError::shape(
            OP,
            format!("dy {:?} does not pool {input_shape:?}", dy.shape()),
        ));
    }
    let hw = h * w;
    let (g, inv) = (dy.data(), 1.0 / hw as f32);
    let dx = build(n * c * hw, hw, |p0, out| {
        for (i, plane) in out.chunks_mut(hw).enumerate() {
            plane.fill(MaybeUninit::new(g[p0 + i] * inv));
        }
    });
    Tensor::from_vec(input_shape, dx)
}

/// Runs `f(plane_out, plane_in)` over matching output/input planes in parallel.
fn per_plane_pair<T: Send>(
    out: &mut [T],
    out_len: usize,
    input: &[f32],
    in_len: usize,
    f: impl Fn(&mut [T], &[f32]) + Sync + Send,
) {
    out.par_chunks_mut(out_len)
        .zip(input.par_chunks(in_len))
        .with_min_len(CHUNK.div_ceil(out_len.max(in_len)))
        .for_each(|(o, i)| f(o, i));
}

/// Average over each window, dividing by k² (count_include_pad = true: padding counts as zeros).
pub fn avg_pool2d(x: &Tensor, p: PoolParams) -> Result<Tensor> {
    let g = Geom::new("avg_pool2d", x.shape(), p)?;
    let inv = 1.0 / (p.k * p.k) as f32;
    let mut y = vec![0.0; g.n * g.c * g.oh * g.ow];
    per_plane_pair(&mut y, g.oh * g.ow, x.data(), g.h * g.w, |out, plane| {
        for (oy, out_row) in out.chunks_mut(g.ow).enumerate() {
            let rows = g.span(oy, g.h);
            for (ox, o) in out_row.iter_mut().enumerate() {
                let cols = g.span(ox, g.w);
                let s: f32 = rows
                    .clone()
                    .map(|r| {
                        plane[r * g.w + cols.start..r * g.w + cols.end]
                            .iter()
                            .sum::<f32>()
                    })
                    .sum();
                *o = s * inv;
            }
        }
    });
    Tensor::from_vec(&g.output_shape(), y)
}

/// Backward of [`avg_pool2d`]: each window's `dy / k²` spread over the input it covers.
pub fn avg_pool2d_backward(dy: &Tensor, input_shape: &[usize], p: PoolParams) -> Result<Tensor> {
    let g = Geom::new("avg_pool2d_backward", input_shape, p)?;
    g.check_dy("avg_pool2d_backward", dy)?;
    let inv = 1.0 / (p.k * p.k) as f32;
    let (hw, ohw) = (g.h * g.w, g.oh * g.ow);
    let dyd = dy.data();
    let mut dx = vec![0.0; g.n * g.c * hw];
    for_units(&mut dx, hw, |p0, run| {
        for (i, plane) in run.chunks_mut(hw).enumerate() {
            let gp = &dyd[(p0 + i) * ohw..(p0 + i + 1) * ohw];
            for (oy, g_row) in gp.chunks(g.ow).enumerate() {
                let rows = g.span(oy, g.h);
                for (ox, &gv) in g_row.iter().enumerate() {
                    let cols = g.span(ox, g.w);
                    for r in rows.clone() {
                        for v in &mut plane[r * g.w + cols.start..r * g.w + cols.end] {
                            *v += gv * inv;
                        }
                    }
                }
            }
        }
    });
    Tensor::from_vec(input_shape, dx)
}

/// Maximum over each window, plus its position `h·W + w` within the input plane (the first
/// maximum on ties; a NaN wins and propagates, as in PyTorch). Padding never wins.
pub fn max_pool2d(x: &Tensor, p: PoolParams) -> Result<(Tensor, Vec<u32>)> {
    let g = Geom::new("max_pool2d", x.shape(), p)?;
    if g.h * g.w > u32::MAX as usize {
        return Err(TensorError::shape(
            "max_pool2d",
            "plane too large for u32 indices",
        ));
    }
    let ohw = g.oh * g.ow;
    let mut pairs = vec![(0.0f32, 0u32); g.n * g.c * ohw];
    per_plane_pair(&mut pairs, ohw, x.data(), g.h * g.w, |out, plane| {
        for (oy, out_row) in out.chunks_mut(g.ow).enumerate() {
            let rows = g.span(oy, g.h);
            for (ox, o) in out_row.iter_mut().enumerate() {
                let cols = g.span(ox, g.w);
                let first = rows.start * g.w + cols.start;
                let mut best = (plane[first], first);
                for r in rows.clone() {
                    let row0 = r * g.w + cols.start;
                    for (i, &v) in plane[row0..r * g.w + cols.end].iter().enumerate() {
                        if v > best.0 || (v.is_nan() && !best.0.is_nan()) {
                            best = (v, row0 + i);
                        }
                    }
                }
                *o = (best.0, best.1 as u32);
            }
        }
    });
    let (y, idx) = pairs.into_iter().unzip();
    Ok((Tensor::from_vec(&g.output_shape(), y)?, idx))
}

/// Backward of [`max_pool2d`]: each `dy` goes to the input position its window's maximum came
/// from (`indices` as returned by the forward), accumulating where windows overlap.
pub fn max_pool2d_backward(
    dy: &Tensor,
    indices: &[u32],
    input_shape: &[usize],
    p: PoolParams,
) -> Result<Tensor> {
    const OP: &str = "max_pool2d_backward";
    let g = Geom::new(OP, input_shape, p)?;
    g.check_dy(OP, dy)?;
    let (hw, ohw) = (g.h * g.w, g.oh * g.ow);
    if indices.len() != dy.numel() || indices.iter().any(|&i| i as usize >= hw) {
        return Err(TensorError::argument(
            OP,
            format!(
                "need {} indices below {hw} (one per output), got {}",
                dy.numel(),
                indices.len()
            ),
        ));
    }
    let dyd = dy.data();
    let mut dx = vec![0.0; g.n * g.c * hw];
    for_units(&mut dx, hw, |p0, run| {
        for (i, plane) in run.chunks_mut(hw).enumerate() {
            let r = (p0 + i) * ohw..(p0 + i + 1) * ohw;
            for (&gv, &at) in dyd[r.clone()].iter().zip(&indices[r]) {
                plane[at as usize] += gv;
            }
        }
    });
    Tensor::from_vec(input_shape, dx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_cases_by_hand() {
        // One 3×3 plane 1..9; 2×2 windows, stride 1, no padding.
        let x = Tensor::from_vec(&[1, 1, 3, 3], (1..=9).map(|v| v as f32).collect()).unwrap();
        let p = PoolParams::new(2, 1, 0);
        assert_eq!(avg_pool2d(&x, p).unwrap().data(), &[3.0, 4.0, 6.0, 7.0]);
        let (y, idx) = max_pool2d(&x, p).unwrap();
        assert_eq!(y.data(), &[5.0, 6.0, 8.0, 9.0]);
        assert_eq!(idx, vec![4, 5, 7, 8]);
        let dx =
            max_pool2d_backward(&Tensor::full(&[1, 1, 2, 2], 1.0), &idx, x.shape(), p).unwrap();
        assert_eq!(dx.data(), &[0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0]);
        let dx = avg_pool2d_backward(&Tensor::full(&[1, 1, 2, 2], 4.0), x.shape(), p).unwrap();
        assert_eq!(dx.data(), &[1.0, 2.0, 1.0, 2.0, 4.0, 2.0, 1.0, 2.0, 1.0]);
        // 3×3, stride 2, pad 1: the corner window sees 4 real values, the divisor stays 9.
        // (torch 2.15's F.avg_pool2d(x, 3, 2, 1) and max_pool2d indices agree with these values.)
        let p = PoolParams::new(3, 2, 1);
        assert_eq!(
            avg_pool2d(&x, p).unwrap().data(),
            &[12.0 / 9.0, 16.0 / 9.0, 24.0 / 9.0, 28.0 / 9.0]
        );
        let gap = global_avg_pool(&x).unwrap();
        assert_eq!((gap.shape(), gap.data()), (&[1usize, 1][..], &[5.0f32][..]));
        let dx = global_avg_pool_backward(&Tensor::full(&[1, 1], 9.0), x.shape()).unwrap();
        assert_eq!(dx.data(), &[1.0; 9]);
    }

    #[test]
    fn errors() {
        let x = Tensor::zeros(&[1, 2, 4, 4]);
        assert!(
            avg_pool2d(&x, PoolParams::new(3, 1, 2)).is_err(),
            "pad > k/2"
        );
        assert!(avg_pool2d(&x, PoolParams::new(0, 1, 0)).is_err());
        assert!(max_pool2d(&x, PoolParams::new(2, 0, 0)).is_err());
        assert!(
            max_pool2d(&x, PoolParams::new(5, 1, 0)).is_err(),
            "window larger than input"
        );
        assert!(max_pool2d(&Tensor::zeros(&[2, 4, 4]), PoolParams::new(2, 2, 0)).is_err());
        let p = PoolParams::new(2, 2, 0);
        let (y, idx) = max_pool2d(&x, p).unwrap();
        assert!(max_pool2d_backward(&y, &idx[1..], x.shape(), p).is_err());
        assert!(max_pool2d_backward(&y, &vec![16; idx.len()], x.shape(), p).is_err());
        assert!(max_pool2d_backward(&x, &idx, x.shape(), p).is_err());
        assert!(avg_pool2d_backward(&x, x.shape(), p).is_err());
        assert!(global_avg_pool(&Tensor::zeros(&[2, 3])).is_err());
        assert!(global_avg_pool_backward(&Tensor::zeros(&[2, 3]), &[2, 2, 1, 1]).is_err());
        assert!(global_avg_pool_backward(&Tensor::zeros(&[2, 3]), &[2, 3]).is_err());
    }
}
