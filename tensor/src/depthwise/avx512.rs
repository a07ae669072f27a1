//! AVX-512 forward kernel for k ∈ {3, 5}, stride ∈ {1, 2}, any padding and width.
//!
//! Reads each input plane where it lies: padding columns are a load mask (lanes outside the row
//! read as zero and touch no memory) and padding rows read a row of zeros, so nothing is copied
//! into a padded buffer. For stride 2 a
//! pair of loads covers 32 consecutive columns and one `vpermt2ps` picks the 16 even (or odd)
//! ones a tap needs. The bias starts the accumulators and ReLU6 clamps before the store, so each
//! output is written once. The masks depend only on the column, so each run of planes builds
//! them once for every row of every plane.
//!
//! Safety contract of every `unsafe fn` here: the CPU supports AVX-512 F and the slices have the
//! lengths their `PlaneGeom` implies.

// Tap loops index weights, row pointers, masks and accumulators by the same (i, j, u).
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;
use std::mem::MaybeUninit;

use super::{PlaneGeom, PlaneJob, each_plane};

const LANES: usize = 16;

/// Output vectors per step: independent accumulators to cover the FMA latency.
const UNROLL: usize = 4;

/// Loads per output vector and input row: K shifted loads for stride 1; for stride 2, ⌈K/2⌉
/// pairs (32 columns from an even shift), each feeding an even and an odd tap.
const fn loads(k: usize, s: usize) -> usize {
    if s == 1 { k } else { 2 * k.div_ceil(2) }
}

fn vectors(d: &PlaneGeom) -> usize {
    d.ow.div_ceil(LANES)
}

/// First input column of load `t` for output vector `v`, relative to the row's start.
fn load_col(d: &PlaneGeom, v: usize, t: usize) -> isize {
    let c = if d.s == 1 {
        v * LANES + t
    } else {
        2 * LANES * v + 2 * (t / 2) + LANES * (t % 2)
    };
    c as isize - d.p as isize
}

/// Lanes of a 16-float load at column `col` that fall inside a row of `w` columns.
fn row_mask(col: isize, w: usize) -> u16 {
    let lo = (-col).clamp(0, LANES as isize) as u32;
    let hi = (w as isize - col).clamp(0, LANES as isize) as u32;
    if hi <= lo {
        0
    } else {
        (((1u32 << hi) - 1) & !((1u32 << lo) - 1)) as u16
    }
}

/// Most loads per output vector and input row ([`loads`] for k = 5).
const MAX_LOADS: usize = 6;

/// Column masks of one output vector's loads, and whether all of them are full.
#[derive(Clone, Copy)]
struct VectorMasks {
    load: [u16; MAX_LOADS],
    full: bool,
}

/// Scratch floats: one zero row that stands in for the rows above and below the plane.
pub(super) fn fwd_scratch(d: &PlaneGeom) -> usize {
    d.w
}

/// Forward over a run of planes; output planes are written once each, clamped to [0, 6] when the
/// job says `relu6`.
///
/// # Safety
/// Module contract; `x` and `y` hold whole planes; `buf` holds [`fwd_scratch`] zeros.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn forward<const K: usize, const S: usize>(
    job: &PlaneJob,
    x: &[f32],
    y: &mut [MaybeUninit<f32>],
    first: usize,
    buf: &mut [f32],
) {
    let (w, bias, relu6, d) = (job.w, job.bias, job.relu6, &job.d);
    let masks: Vec<VectorMasks> = (0..vectors(d))
        .map(|v| {
            let mut load = [0; MAX_LOADS];
            for (t, m) in load[..loads(K, S)].iter_mut().enumerate() {
                *m = row_mask(load_col(d, v, t), d.w);
            }
            let full = load[..loads(K, S)].iter().all(|&m| m == u16::MAX);
            VectorMasks { load, full }
        })
        .collect();
    assert!(buf.len() >= d.w && buf[..d.w].iter().all(|&z| z == 0.0));
    let zero_row = buf.as_ptr();
    each_plane(job, (x, y, first), true, |xp, yp, c| {
        let b = bias.map_or(0.0, |b| b[c]);
        assert!(xp.len() >= d.h * d.w && yp.len() >= d.oh * d.ow);
        let (x, y, w) = (
            xp.as_ptr(),
            yp.as_mut_ptr().cast(),
            &w[c * K * K..][..K * K],
        );
        // SAFETY: forwarded contract; the plane lengths are asserted above.
        unsafe {
            if relu6 {
                forward_plane::<K, S, true>(x, w, b, y, d, &masks, zero_row)
            } else {
                forward_plane::<K, S, false>(x, w, b, y, d, &masks, zero_row)
            }
        }
    });
}

/// One plane: `y[oh][q] = bias + Σ_{i,j} w[i][j] · x[oh·S + i − p][q·S + j − p]` (zero outside).
///
/// # Safety
/// `x` points at an `h × w` plane, `y` at an `oh × ow` one and `zero_row` at `w` zeros; `masks`
/// is the run's table.
#[target_feature(enable = "avx512f")]
unsafe fn forward_plane<const K: usize, const S: usize, const RELU6: bool>(
    x: *const f32,
    w: &[f32],
    bias: f32,
    y: *mut f32,
    d: &PlaneGeom,
    masks: &[VectorMasks],
    zero_row: *const f32,
) {
    let mut wv = [[_mm512_setzero_ps(); K]; K];
    for i in 0..K {
        for j in 0..K {
            wv[i][j] = _mm512_set1_ps(w[i * K + j]);
        }
    }
    let nv = masks.len();
    for oh in 0..d.oh {
        // Rows above or below the plane read the zero row.
        let mut rows = [zero_row; K];
        for i in 0..K {
            let r = (oh * S + i) as isize - d.p as isize;
            if (0..d.h as isize).contains(&r) {
                rows[i] = x.wrapping_add(r as usize * d.w);
            }
        }
        let out = y.wrapping_add(oh * d.ow);
        let mut v = 0;
        while v < nv {
            let u = (nv - v).min(UNROLL);
            let group = &masks[v..v + u];
            // SAFETY: masked loads read only columns inside their row; unmasked groups are
            // those whose loads all lie inside it; stores stop at the row's `ow` outputs.
            unsafe {
                if group.iter().all(|m| m.full) {
                    group_at::<K, S, false, RELU6>(&rows, &wv, bias, group, v, out, d)
                } else {
                    group_at::<K, S, true, RELU6>(&rows, &wv, bias, group, v, out, d)
                }
            }
            v += u;
        }
    }
}

/// [`vectors_at`] for a group of 1 to [`UNROLL`] vectors (`masks.len()` of them).
///
/// # Safety
/// As [`vectors_at`].
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn group_at<const K: usize, const S: usize, const MASKED: bool, const RELU6: bool>(
    rows: &[*const f32; K],
    wv: &[[__m512; K]; K],
    bias: f32,
    masks: &[VectorMasks],
    v: usize,
    out: *mut f32,
    d: &PlaneGeom,
) {
    // SAFETY: forwarded contract.
    unsafe {
        match masks.len() {
            4 => vectors_at::<K, S, 4, MASKED, RELU6>(rows, wv, bias, masks, v, out, d),
            3 => vectors_at::<K, S, 3, MASKED, RELU6>(rows, wv, bias, masks, v, out, d),
            2 => vectors_at::<K, S, 2, MASKED, RELU6>(rows, wv, bias, masks, v, out, d),
            _ => vectors_at::<K, S, 1, MASKED, RELU6>(rows, wv, bias, masks, v, out, d),
        }
    }
}

/// Output vectors `v..v + U` of one row (`masks` are theirs); loads are masked when `MASKED`.
///
/// # Safety
/// As [`forward_plane`]; without `MASKED`, every load of these vectors lies inside its row.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn vectors_at<
    const K: usize,
    const S: usize,
    const U: usize,
    const MASKED: bool,
    const RELU6: bool,
>(
    rows: &[*const f32; K],
    wv: &[[__m512; K]; K],
    bias: f32,
    masks: &[VectorMasks],
    v: usize,
    out: *mut f32,
    d: &PlaneGeom,
) {
    let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    let odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    let masks: &[VectorMasks; U] = masks.try_into().expect("one mask set per vector");
    // Two chains per vector (even and odd input rows) halve the FMA dependency chain.
    let mut acc = [[_mm512_set1_ps(bias), _mm512_setzero_ps()]; U];
    for i in 0..K {
        for u in 0..U {
            // Load t starts t (stride 1) or 2·(t/2) + 16·(t%2) (stride 2) columns after load 0.
            let base = rows[i].wrapping_offset(load_col(d, v + u, 0));
            let m = &masks[u].load;
            // SAFETY: the caller's contract (masks admit only columns inside the row).
            let load = |t: usize, off: usize| unsafe {
                if MASKED {
                    _mm512_maskz_loadu_ps(m[t], base.wrapping_add(off))
                } else {
                    _mm512_loadu_ps(base.wrapping_add(off))
                }
            };
            let a = &mut acc[u][i % 2];
            if S == 1 {
                for j in 0..K {
                    *a = _mm512_fmadd_ps(load(j, j), wv[i][j], *a);
                }
            } else {
                for t in 0..K.div_ceil(2) {
                    let (lo, hi) = (load(2 * t, 2 * t), load(2 * t + 1, 2 * t + LANES));
                    let e = _mm512_permutex2var_ps(lo, even, hi);
                    *a = _mm512_fmadd_ps(e, wv[i][2 * t], *a);
                    if 2 * t + 1 < K {
                        let o = _mm512_permutex2var_ps(lo, odd, hi);
                        *a = _mm512_fmadd_ps(o, wv[i][2 * t + 1], *a);
                    }
                }
            }
        }
    }
    for u in 0..U {
        let mut s = _mm512_add_ps(acc[u][0], acc[u][1]);
        if RELU6 {
            s = _mm512_min_ps(_mm512_max_ps(s, _mm512_setzero_ps()), _mm512_set1_ps(6.0));
        }
        let q = (v + u) * LANES;
        // SAFETY: the mask admits only outputs q.. below ow of this row.
        unsafe {
            if q + LANES <= d.ow {
                _mm512_storeu_ps(out.wrapping_add(q), s)
            } else {
                _mm512_mask_storeu_ps(out.wrapping_add(q), row_mask(q as isize, d.ow), s)
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_cover_exactly_the_row() {
        assert_eq!(row_mask(0, 16), u16::MAX);
        assert_eq!(row_mask(0, 100), u16::MAX);
        assert_eq!(row_mask(-1, 100), u16::MAX << 1);
        assert_eq!(row_mask(-2, 3), 0b1_1100);
        assert_eq!(row_mask(10, 14), 0b1111);
        assert_eq!(row_mask(-16, 100), 0);
        assert_eq!(row_mask(14, 14), 0);
        assert_eq!(row_mask(-3, 5), 0b1111_1000);
    }
}
