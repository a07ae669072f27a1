//! AVX2 twins of the batch-norm plane passes, equal bit for bit to the portable ones in
//! `batchnorm.rs`: sums keep `reduce::lane_sum3`'s order (its 16 f32 lanes are two 8-float
//! registers here, flushed into f64 every 512 elements and added pairwise), maps do the same f32
//! operations in the same order (never an FMA), and every tail runs the portable scalar code.
//!
//! Why they exist: LLVM vectorises the portable closures into 8-byte loads and accumulators on
//! the stack, 2-4 ns per element, which made batch norm the largest cost of a training step.
//!
//! Every function here needs AVX2; the caller checks it once (`Path::detect`).

use std::arch::x86_64::*;
use std::mem::MaybeUninit;

use super::{PlaneMap, centred_grad, dx_value, normalized, sq_dev, through_clamp};
use crate::reduce::{FLUSH, LANES};
use crate::simd::{LINE_FLOATS, prefetch_ahead};

/// Eight floats from `s[i..i + 8]`.
#[target_feature(enable = "avx2")]
#[inline]
fn load(s: &[f32], i: usize) -> __m256 {
    let s = &s[i..i + 8];
    // SAFETY: `s` holds exactly the eight floats read.
    unsafe { _mm256_loadu_ps(s.as_ptr()) }
}

/// Hints the lines [`prefetch_ahead`] would for the streams' element `i`.
#[inline(always)]
fn prefetch_at<const K: usize>(streams: &[&[f32]; K], i: usize) {
    prefetch_ahead(&streams.map(|s| &s[i..]));
}

/// Σ f over `len` elements in `reduce::lane_sum3`'s order: `v(i)` is f at elements `i..i + 8`,
/// `s(i)` at element `i` alone (each block's tail).
#[target_feature(enable = "avx2")]
#[inline]
fn lane_sum<const K: usize>(
    streams: [&[f32]; K],
    v: impl Fn(usize) -> __m256,
    s: impl Fn(usize) -> f32,
) -> f64 {
    const { assert!(LANES == 16) };
    let len = streams[0].len();
    let mut total = 0f64;
    for start in (0..len).step_by(FLUSH) {
        let end = (start + FLUSH).min(len);
        let exact = start + (end - start) / LANES * LANES;
        let (mut lo, mut hi) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        for i in (start..exact).step_by(LANES) {
            prefetch_at(&streams, i);
            lo = _mm256_add_ps(lo, v(i));
            hi = _mm256_add_ps(hi, v(i + 8));
        }
        let tail: f32 = (exact..end).map(&s).sum();
        total += lanes_to_f64(lo, hi) + tail as f64;
    }
    total
}

/// `reduce::lanes_to_f64` of the 16 lanes `lo ++ hi`: h = a[j] + a[j + 8], q = h[j] + h[j + 4],
/// then (q0 + q2) + (q1 + q3).
#[target_feature(enable = "avx2")]
#[inline]
fn lanes_to_f64(lo: __m256, hi: __m256) -> f64 {
    let wide = |v: __m128| _mm256_cvtps_pd(v);
    let h0 = _mm256_add_pd(
        wide(_mm256_castps256_ps128(lo)),
        wide(_mm256_castps256_ps128(hi)),
    );
    let h1 = _mm256_add_pd(
        wide(_mm256_extractf128_ps::<1>(lo)),
        wide(_mm256_extractf128_ps::<1>(hi)),
    );
    let q = _mm256_add_pd(h0, h1);
    let s = _mm_add_pd(_mm256_castpd256_pd128(q), _mm256_extractf128_pd::<1>(q));
    _mm_cvtsd_f64(s) + _mm_cvtsd_f64(_mm_unpackhi_pd(s, s))
}

/// `out[i] = f(i)`: `v(i)` is f at `i..i + 8`, `s(i)` at `i` alone (the tail).
#[target_feature(enable = "avx2")]
#[inline]
fn write<const K: usize>(
    out: &mut [MaybeUninit<f32>],
    streams: [&[f32]; K],
    v: impl Fn(usize) -> __m256,
    s: impl Fn(usize) -> f32,
) {
    assert!(streams.iter().all(|s| s.len() == out.len()));
    let store = |out: &mut [MaybeUninit<f32>], i: usize, val: __m256| {
        let o = &mut out[i..i + 8];
        // SAFETY: `o` holds exactly the eight floats written.
        unsafe { _mm256_storeu_ps(o.as_mut_ptr().cast(), val) }
    };
    let (len, mut i) = (out.len(), 0);
    while i + LINE_FLOATS <= len {
        prefetch_at(&streams, i);
        store(out, i, v(i));
        store(out, i + 8, v(i + 8));
        i += LINE_FLOATS;
    }
    if i + 8 <= len {
        store(out, i, v(i));
        i += 8;
    }
    for (j, o) in out.iter_mut().enumerate().skip(i) {
        o.write(s(j));
    }
}

/// Σx.
#[target_feature(enable = "avx2")]
pub(super) fn sum(x: &[f32]) -> f64 {
    lane_sum([x], |i| load(x, i), |i| x[i])
}

/// Σ(x − m)².
#[target_feature(enable = "avx2")]
pub(super) fn sum_sq_dev(x: &[f32], m: f32) -> f64 {
    let mv = _mm256_set1_ps(m);
    let v = |i| {
        let d = _mm256_sub_ps(load(x, i), mv);
        _mm256_mul_ps(d, d)
    };
    lane_sum([x], v, |i| sq_dev(x[i], m))
}

/// `super::affine`, in the same order of operations.
#[target_feature(enable = "avx2")]
#[inline]
fn affine(x: __m256, [m, s, b]: [__m256; 3]) -> __m256 {
    _mm256_add_ps(_mm256_mul_ps(_mm256_sub_ps(x, m), s), b)
}

#[target_feature(enable = "avx2")]
#[inline]
fn splat<const N: usize>(v: [f32; N]) -> [__m256; N] {
    v.map(|v| _mm256_set1_ps(v))
}

/// [`through_clamp`]: `dy`, zeroed where the clamp's input is not inside (0, 6) when `RELU6`.
#[target_feature(enable = "avx2")]
#[inline]
fn through_clamp_v<const RELU6: bool>(dy: __m256, x: __m256, map: [__m256; 3]) -> __m256 {
    if !RELU6 {
        return dy;
    }
    let pre = affine(x, map);
    let zero = _mm256_setzero_ps();
    let inside = _mm256_and_ps(
        _mm256_cmp_ps::<_CMP_GT_OQ>(pre, zero),
        _mm256_cmp_ps::<_CMP_LT_OQ>(pre, _mm256_set1_ps(6.0)),
    );
    _mm256_and_ps(dy, inside)
}

/// [`normalized`] over a plane: `clamp((x − m)·s + b, lo, hi)`.
#[target_feature(enable = "avx2")]
pub(super) fn normalize(
    out: &mut [MaybeUninit<f32>],
    x: &[f32],
    map: PlaneMap,
    (lo, hi): (f32, f32),
) {
    let (mv, lov, hiv) = (splat(map), _mm256_set1_ps(lo), _mm256_set1_ps(hi));
    // max(lo, y) is y when y is NaN, as f32::clamp; likewise min(hi, ·).
    let v = |i| _mm256_min_ps(hiv, _mm256_max_ps(lov, affine(load(x, i), mv)));
    write(out, [x], v, |i| normalized(x[i], map, (lo, hi)));
}

/// `(Σ g, Σ g·(x − m))` with g = dy through the clamp: two passes, as the portable path.
#[target_feature(enable = "avx2")]
pub(super) fn grad_sums<const RELU6: bool>(
    dy: &[f32],
    x: &[f32],
    m: f32,
    map: PlaneMap,
) -> (f64, f64) {
    let (mv, map_v) = (_mm256_set1_ps(m), splat(map));
    let g = |i| through_clamp_v::<RELU6>(load(dy, i), load(x, i), map_v);
    let first = lane_sum([dy, x], g, |i| through_clamp::<RELU6>(dy[i], x[i], map));
    let centred = |i| _mm256_mul_ps(g(i), _mm256_sub_ps(load(x, i), mv));
    let second = lane_sum([dy, x], centred, |i| {
        centred_grad::<RELU6>(dy[i], x[i], m, map)
    });
    (first, second)
}

/// [`dx_value`] over a plane.
#[target_feature(enable = "avx2")]
pub(super) fn dx<const RELU6: bool>(
    out: &mut [MaybeUninit<f32>],
    dy: &[f32],
    x: &[f32],
    k: [f32; 3],
    m: f32,
    map: PlaneMap,
) {
    let (mv, map_v, kv) = (_mm256_set1_ps(m), splat(map), splat(k));
    let v = |i| {
        let xv = load(x, i);
        let g = through_clamp_v::<RELU6>(load(dy, i), xv, map_v);
        let a = _mm256_add_ps(
            _mm256_mul_ps(g, kv[0]),
            _mm256_mul_ps(_mm256_sub_ps(xv, mv), kv[1]),
        );
        _mm256_add_ps(a, kv[2])
    };
    write(out, [dy, x], v, |i| {
        dx_value::<RELU6>(dy[i], x[i], k, m, map)
    });
}
