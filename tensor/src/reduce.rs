//! Reductions: totals (sum, mean, max |x|, Σx² for global gradient-norm clipping), the sum over
//! the batch rows of N×F (linear-layer bias gradients), the per-channel sum over N, H, W of
//! N×C×H×W (conv bias gradients), and the row argmax (accuracy).
//!
//! Sums run in 16 independent f32 lanes (a single accumulator is a serial add chain that cannot
//! vectorise) flushed into f64 every 512 elements, per chunk of `CHUNK` elements in parallel;
//! chunk sums are then added in a fixed order, so results do not depend on how rayon scheduled
//! the chunks.

use std::ops::Range;

use rayon::prelude::*;

use crate::elementwise::{CHUNK, PAR_MIN};
use crate::simd::prefetch_ahead;
use crate::{Result, Tensor, TensorError};

/// f32 lanes per partial sum: 16 (four SSE registers) hide the add latency; fewer leave the
/// loop latency-bound.
pub(crate) const LANES: usize = 16;

/// Elements summed in f32 before the lanes are flushed into f64: 32 terms per lane keep the f32
/// rounding within ~2e-6 of the block's magnitude, while the loop runs at full f32 SIMD width
/// (f32→f64 conversion inside the loop vectorises poorly).
pub(crate) const FLUSH: usize = 32 * LANES;

/// Σ f(a[i]) over [`LANES`] f32 lanes, flushed into f64 every [`FLUSH`] elements.
#[inline]
pub(crate) fn lane_sum(a: &[f32], f: impl Fn(f32) -> f32) -> f64 {
    lane_sum2(a, a, |x, _| f(x))
}

/// Σ f(a[i], b[i]) as in [`lane_sum`].
#[inline]
pub(crate) fn lane_sum2(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> f64 {
    lane_sum3(a, b, b, |x, y, _| f(x, y))
}

/// Σ f(a[i], b[i], c[i]) as in [`lane_sum`]; panics (a kernel bug) if the lengths differ. One
/// sum per call on purpose: LLVM's SLP vectoriser interleaves two accumulators in one loop into
/// a shuffle-bound mess, so callers needing two sums over a cache-resident block make two calls.
#[inline]
pub(crate) fn lane_sum3(a: &[f32], b: &[f32], c: &[f32], f: impl Fn(f32, f32, f32) -> f32) -> f64 {
    assert!(a.len() == b.len() && a.len() == c.len());
    let mut total = 0f64;
    for ((a, b), c) in a.chunks(FLUSH).zip(b.chunks(FLUSH)).zip(c.chunks(FLUSH)) {
        let mut acc = [0f32; LANES];
        let (ba, bb, bc) = (
            a.chunks_exact(LANES),
            b.chunks_exact(LANES),
            c.chunks_exact(LANES),
        );
        let tail: f32 = (ba.remainder().iter().zip(bb.remainder()))
            .zip(bc.remainder())
            .map(|((&x, &y), &z)| f(x, y, z))
            .sum();
        for ((x, y), z) in ba.zip(bb).zip(bc) {
            prefetch_ahead(&[x, y, z]);
            let (x, y, z): (&[f32; LANES], &[f32; LANES], &[f32; LANES]) = (
                x.try_into().expect("exact chunk"),
                y.try_into().expect("exact chunk"),
                z.try_into().expect("exact chunk"),
            );
            acc = std::array::from_fn(|j| acc[j] + f(x[j], y[j], z[j]));
        }
        total += lanes_to_f64(acc) + tail as f64;
    }
    total
}

/// Σ of the lanes in f64, pairwise: independent adds that vectorise, instead of a 16-add
/// dependency chain that costs more than the whole loop on a small plane (4×4, 8×8 maps).
#[inline]
fn lanes_to_f64(acc: [f32; LANES]) -> f64 {
    let a = acc.map(f64::from);
    let h: [f64; 8] = std::array::from_fn(|j| a[j] + a[j + 8]);
    let q: [f64; 4] = std::array::from_fn(|j| h[j] + h[j + 4]);
    (q[0] + q[2]) + (q[1] + q[3])
}

/// Σ over `0..len` split into [`CHUNK`]-sized ranges, `chunk_sum(range)` each, in parallel when
/// `len` is large; the chunk sums are added in order (deterministic).
pub(crate) fn par_sum(len: usize, chunk_sum: impl Fn(Range<usize>) -> f64 + Sync + Send) -> f64 {
    if len < PAR_MIN {
        return chunk_sum(0..len);
    }
    let parts: Vec<f64> = (0..len.div_ceil(CHUNK))
        .into_par_iter()
        .map(|i| chunk_sum(i * CHUNK..((i + 1) * CHUNK).min(len)))
        .collect();
    parts.iter().sum()
}

/// `f(p)` for every plane `p` in `0..planes` (planes of `plane_len` elements), in order, in
/// parallel (≥ [`CHUNK`] elements per task) when the planes hold enough elements to pay.
pub(crate) fn per_plane<T: Send>(
    planes: usize,
    plane_len: usize,
    f: impl Fn(usize) -> T + Sync + Send,
) -> Vec<T> {
    if planes * plane_len < PAR_MIN {
        return (0..planes).map(f).collect();
    }
    (0..planes)
        .into_par_iter()
        .with_min_len(CHUNK.div_ceil(plane_len.max(1)))
        .map(f)
        .collect()
}

/// `[n, c, h·w]` of an N×C×H×W tensor, or `[n, c, 1]` of an N×C one: the layouts that carry
/// per-channel statistics (batch norm, bias gradients).
pub(crate) fn channel_dims(op: &'static str, x: &Tensor) -> Result<[usize; 3]> {
    match *x.shape() {
        [n, c] => Ok([n, c, 1]),
        [n, c, h, w] => Ok([n, c, h * w]),
        _ => Err(TensorError::shape(
            op,
            format!("expected N×C×H×W or N×C, got {:?}", x.shape()),
        )),
    }
}

/// Adds per-plane values (plane index `n·C + c`) into per-channel totals.
pub(crate) fn fold_channels<T: Copy>(
    parts: &[T],
    c: usize,
    init: T,
    add: impl Fn(T, T) -> T,
) -> Vec<T> {
    let mut out = vec![init; c];
    for row in parts.chunks(c.max(1)) {
        for (o, &p) in out.iter_mut().zip(row) {
            *o = add(*o, p);
        }
    }
    out
}

/// Σ of all elements (0 for an empty tensor).
pub fn sum(x: &Tensor) -> f32 {
    let d = x.data();
    par_sum(d.len(), |r| lane_sum(&d[r], |v| v)) as f32
}

/// Mean of all elements; an empty tensor is an error (the mean would be NaN).
pub fn mean(x: &Tensor) -> Result<f32> {
    if x.numel() == 0 {
        return Err(TensorError::shape("mean", "mean of an empty tensor"));
    }
    let d = x.data();
    Ok((par_sum(d.len(), |r| lane_sum(&d[r], |v| v)) / d.len() as f64) as f32)
}

/// Σ x² (global gradient-norm clipping sums this over all parameters). NaN and ∞ propagate.
pub fn l2_norm_sq(x: &Tensor) -> f32 {
    let d = x.data();
    par_sum(d.len(), |r| lane_sum(&d[r], |v| v * v)) as f32
}

/// max |x| (0 for an empty tensor). A NaN anywhere makes the result NaN, so a non-finite
/// gradient cannot hide.
pub fn max_abs(x: &Tensor) -> f32 {
    fn run(a: &[f32]) -> f32 {
        let mut acc = [0f32; 8];
        let mut chunks = a.chunks_exact(8);
        // `!(m >= v)` is true when v is NaN or larger, and once m is NaN nothing replaces it.
        let step = |m: f32, v: f32| if m >= v || m.is_nan() { m } else { v };
        for c in &mut chunks {
            for (m, &v) in acc.iter_mut().zip(c) {
                *m = step(*m, v.abs());
            }
        }
        let tail = chunks
            .remainder()
            .iter()
            .fold(0f32, |m, &v| step(m, v.abs()));
        acc.iter().fold(tail, |m, &v| step(m, v))
    }
    let d = x.data();
    if d.len() < PAR_MIN {
        return run(d);
    }
    let parts: Vec<f32> = d.par_chunks(CHUNK).map(run).collect();
    run(&parts)
}

/// Σ over the batch rows of an N×F tensor → `[F]` (the bias gradient of a linear layer).
pub fn sum_rows(x: &Tensor) -> Result<Tensor> {
    let &[n, f] = x.shape() else {
        return Err(TensorError::shape(
            "sum_rows",
            format!("expected N×F, got {:?}", x.shape()),
        ));
    };
    let d = x.data();
    let mut acc = vec![0f64; f];
    // A task owns a block of columns and walks all rows: contiguous reads, nothing to merge.
    let columns = |c0: usize, cols: &mut [f64]| {
        let width = cols.len();
        for row in d.chunks_exact(f).take(n) {
            for (s, &v) in cols.iter_mut().zip(&row[c0..c0 + width]) {
                *s += v as f64;
            }
        }
    };
    let block = (CHUNK / n.max(1)).max(64);
    if n * f >= PAR_MIN && f > block {
        acc.par_chunks_mut(block)
            .enumerate()
            .for_each(|(b, cols)| columns(b * block, cols));
    } else if f > 0 {
        columns(0, &mut acc);
    }
    Tensor::from_vec(&[f], acc.into_iter().map(|v| v as f32).collect())
}

/// Σ over N, H, W of an N×C×H×W (or N×C) tensor → `[C]` (the bias gradient of a convolution).
pub fn channel_sum(x: &Tensor) -> Result<Tensor> {
    let [n, c, hw] = channel_dims("channel_sum", x)?;
    let d = x.data();
    let parts = per_plane(n * c, hw, |p| lane_sum(&d[p * hw..(p + 1) * hw], |v| v));
    let sums = fold_channels(&parts, c, 0.0, |a, b| a + b);
    Tensor::from_vec(&[c], sums.into_iter().map(|v| v as f32).collect())
}

/// Index of the largest value in each row of an N×K tensor (the first on ties; a NaN counts as
/// largest, as in PyTorch).
pub fn argmax_rows(x: &Tensor) -> Result<Vec<usize>> {
    let &[_, k] = x.shape() else {
        return Err(TensorError::shape(
            "argmax_rows",
            format!("expected N×K, got {:?}", x.shape()),
        ));
    };
    if k == 0 {
        return Err(TensorError::shape("argmax_rows", "rows are empty (K = 0)"));
    }
    Ok(x.data()
        .chunks_exact(k)
        .map(|row| {
            let mut best = 0;
            for (i, &v) in row.iter().enumerate().skip(1) {
                let b = row[best];
                if v > b || (v.is_nan() && !b.is_nan()) {
                    best = i;
                }
            }
            best
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_cases_by_hand() {
        let x = Tensor::from_vec(&[2, 3], vec![1.0, -4.0, 2.0, 3.0, 0.5, -1.0]).unwrap();
        assert_eq!(sum(&x), 1.5);
        assert_eq!(mean(&x).unwrap(), 0.25);
        assert_eq!(l2_norm_sq(&x), 1.0 + 16.0 + 4.0 + 9.0 + 0.25 + 1.0);
        assert_eq!(max_abs(&x), 4.0);
        assert_eq!(sum_rows(&x).unwrap().data(), &[4.0, -3.5, 1.0]);
        assert_eq!(argmax_rows(&x).unwrap(), vec![2, 0]);
        let y = Tensor::from_vec(&[2, 2, 1, 2], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]);
        assert_eq!(channel_sum(&y.unwrap()).unwrap().data(), &[14.0, 22.0]);
        assert_eq!(sum(&Tensor::zeros(&[0])), 0.0);
        assert_eq!(max_abs(&Tensor::zeros(&[0])), 0.0);
    }

    #[test]
    fn non_finite_values_propagate() {
        let mut v = vec![1.0f32; 100_000];
        v[77_777] = f32::NAN;
        let x = Tensor::from_vec(&[v.len()], v).unwrap();
        assert!(max_abs(&x).is_nan());
        assert!(l2_norm_sq(&x).is_nan());
        let r = Tensor::from_vec(&[1, 3], vec![1.0, f32::NAN, 2.0]).unwrap();
        assert_eq!(argmax_rows(&r).unwrap(), vec![1]);
    }

    #[test]
    fn errors() {
        assert!(mean(&Tensor::zeros(&[0, 3])).is_err());
        assert!(sum_rows(&Tensor::zeros(&[2, 3, 4])).is_err());
        assert!(channel_sum(&Tensor::zeros(&[2, 3, 4])).is_err());
        assert!(argmax_rows(&Tensor::zeros(&[6])).is_err());
        assert!(argmax_rows(&Tensor::zeros(&[2, 0])).is_err());
    }
}
