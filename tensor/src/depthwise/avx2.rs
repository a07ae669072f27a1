//! AVX2+FMA plane kernels for k ∈ {3, 5}, stride ∈ {1, 2}, any padding.
//!
//! Shape of every kernel: copy the plane once into a zero-padded scratch buffer (for stride 2,
//! deinterleaved into even and odd columns), then one fused pass per output row: the row's k
//! input rows are read at k column shifts, k² broadcast weights stay in registers, and each output
//! vector is written once. Padding therefore costs nothing in the hot loop; only the last partial
//! vector of a row uses masked stores. Reads past a row's end stay inside the buffer
//! (`SLACK` floats at its end) and only feed lanes that are never stored.
//!
//! Two variations: the stride-2 input gradient gathers per phase (dx rows and columns of each
//! parity see a fixed subset of taps; the even- and odd-column results are interleaved on store),
//! and small "same" stride-1 planes are vectorised over the flattened plane (submodule `flat`).
//!
//! Safety contract shared by every `unsafe fn` here: the CPU supports AVX2 and FMA, the slices
//! have the lengths their `PlaneGeom` implies, and `buf` has at least the matching `*_scratch` length and
//! is zero wherever the fill functions don't write (the caller zeroes it once per task).

// Tap loops index several arrays (weights, row pointers, accumulators) by the same (i, j);
// iterator chains would hide that structure without changing the code generated.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;
use std::mem::MaybeUninit;

use super::{Padded, PlaneGeom, PlaneJob, WeightJob, each_plane, relu6_plane};
use crate::simd::{LINE_FLOATS, prefetch_ahead, prefetch_line};

mod flat;
pub(super) use flat::{backward_weight_flat, flat_run, flat_scratch};

/// Floats after the last buffer row: room for a vector read starting at the row's last element.
const SLACK: usize = 16;

/// Mask with lanes `[0, n)` set (`n ≤ 8`).
#[target_feature(enable = "avx2,fma")]
#[inline]
fn tail_mask(n: usize) -> __m256i {
    _mm256_cmpgt_epi32(
        _mm256_set1_epi32(n as i32),
        _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
    )
}

/// Copies `n` floats; the tail is a masked load and store, so nothing past either end is touched.
///
/// # Safety
/// `src[..n]` readable, `dst[..n]` writable, AVX2 available.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn copy_row(src: *const f32, dst: *mut f32, n: usize) {
    let mut c = 0;
    // SAFETY: every access is below `n` on both sides (full vectors while c + 8 ≤ n, then masked).
    unsafe {
        while c + 8 <= n {
            _mm256_storeu_ps(dst.add(c), _mm256_loadu_ps(src.add(c)));
            c += 8;
        }
        if c < n {
            let m = tail_mask(n - c);
            _mm256_maskstore_ps(dst.add(c), m, _mm256_maskload_ps(src.add(c), m));
        }
    }
}

/// Hints every line of `row` as far ahead as [`prefetch_ahead`] looks: the rows that follow, and
/// past the plane's end the next plane of a run. A plane spans several pages, where the hardware
/// prefetchers stop.
#[inline(always)]
fn prefetch_row(row: &[f32]) {
    for line in row.chunks(LINE_FLOATS) {
        prefetch_ahead(&[line]);
    }
}

/// `buf[r + off][c + off] = src[r][c]` for the `sh×sw` plane `src` (`at`'s rows and pitch),
/// clipped to the buffer.
#[target_feature(enable = "avx2,fma")]
fn fill(src: &[f32], (sh, sw): (usize, usize), buf: &mut [f32], at: Padded) {
    let Padded { rows, pitch, off } = at;
    let c0 = (-off).max(0) as usize;
    let c1 = (pitch as isize - off).min(sw as isize);
    let r0 = (-off).max(0) as usize;
    let r1 = (rows as isize - off).min(sh as isize);
    if c1 <= c0 as isize || r1 <= r0 as isize {
        return;
    }
    let (c1, r1) = (c1 as usize, r1 as usize);
    assert!(src.len() >= sh * sw && buf.len() >= rows * pitch);
    for r in r0..r1 {
        prefetch_row(&src[r * sw + c0..r * sw + c1]);
        let d = (r as isize + off) as usize * pitch + (c0 as isize + off) as usize;
        // SAFETY: source columns [c0, c1) of row r < sh lie in `src`; destination row r + off < rows
        // and columns [c0 + off, c1 + off) ⊂ [0, pitch), so the copy stays inside `buf`.
        unsafe {
            copy_row(
                src.as_ptr().add(r * sw + c0),
                buf.as_mut_ptr().add(d),
                c1 - c0,
            )
        };
    }
}

/// Stride-2 layout: buffer row r is `[E | O]`, each `half` long, with `E[m] = xp[r][2m]`,
/// `O[m] = xp[r][2m+1]` and `xp[r][c] = src[r−p][c−p]` (zero outside). Splitting the columns once
/// lets the row kernel read every tap with unit stride.
fn s2_half(d: &PlaneGeom) -> usize {
    (d.ow + d.k / 2).max(d.w.div_ceil(2) + d.p.div_ceil(2))
}

#[target_feature(enable = "avx2,fma")]
fn fill_s2(src: &[f32], d: &PlaneGeom, buf: &mut [f32], rows: usize) {
    let (sw, p, half) = (d.w, d.p, s2_half(d));
    assert!(src.len() >= d.h * sw && buf.len() >= rows * 2 * half);
    // Source column 2t goes to `ev[t]`, 2t+1 to `od[t]`; which half and shift depends on p's parity.
    let (ev_off, od_off) = if p.is_multiple_of(2) {
        (p / 2, half + p / 2)
    } else {
        (half + (p - 1) / 2, p.div_ceil(2))
    };
    let r1 = rows.min(d.h + p);
    // The tail (fewer than 16 columns) has the same length on every row: masks built once.
    let full = sw / 16 * 8;
    let rem = sw - 2 * full;
    let m = |base: i32| {
        _mm_cmpgt_epi32(
            _mm_set1_epi32(rem as i32),
            _mm_setr_epi32(base, base + 1, base + 2, base + 3),
        )
    };
    let (m0, m4, m8, m12) = (m(0), m(4), m(8), m(12));
    let (me, mo) = (tail_mask(rem.div_ceil(2)), tail_mask(rem / 2));
    for r in p..r1 {
        prefetch_row(&src[(r - p) * sw..][..sw]);
        // Columns 0-3 and 8-11 in one register, 4-7 and 12-15 in the other: then an in-lane
        // shuffle yields the 8 even (odd) columns in order, with no lane-crossing permute
        // (those run on a single port and made this fill slower than the convolution).
        // SAFETY: row r − p < h of `src` and row r < rows of `buf` exist (asserted above). Full
        // iterations read s[2t..2t+16] with 2t + 16 ≤ sw; the tail's masked loads touch only
        // columns below sw (`wrapping_add`: for a short tail those addresses lie past the row, but
        // their lanes are off). Writes go to row[ev_off + t..][..8] and row[od_off + t..][..8]
        // (masked to the valid count in the tail), inside the row as half ≥ ⌈sw/2⌉ + ⌈p/2⌉.
        unsafe {
            let sp = src.as_ptr().add((r - p) * sw);
            let rp = buf.as_mut_ptr().add(r * 2 * half);
            let mut t = 0;
            while t < full {
                let q = sp.add(2 * t);
                let a = _mm256_loadu2_m128(q.add(8), q);
                let b = _mm256_loadu2_m128(q.add(12), q.add(4));
                _mm256_storeu_ps(rp.add(ev_off + t), _mm256_shuffle_ps::<0x88>(a, b));
                _mm256_storeu_ps(rp.add(od_off + t), _mm256_shuffle_ps::<0xDD>(a, b));
                t += 8;
            }
            if rem > 0 {
                let q = sp.add(2 * t);
                let a = _mm256_set_m128(
                    _mm_maskload_ps(q.wrapping_add(8), m8),
                    _mm_maskload_ps(q, m0),
                );
                let b = _mm256_set_m128(
                    _mm_maskload_ps(q.wrapping_add(12), m12),
                    _mm_maskload_ps(q.wrapping_add(4), m4),
                );
                _mm256_maskstore_ps(rp.add(ev_off + t), me, _mm256_shuffle_ps::<0x88>(a, b));
                _mm256_maskstore_ps(rp.add(od_off + t), mo, _mm256_shuffle_ps::<0xDD>(a, b));
            }
        }
    }
}

/// Broadcast weights, `[i][j]` → `w[i·K + j]`, optionally rotated by 180°.
#[target_feature(enable = "avx2,fma")]
#[inline]
fn weights<const K: usize>(w: &[f32], rotate: bool) -> [[__m256; K]; K] {
    let w = &w[..K * K];
    let mut v = [[_mm256_setzero_ps(); K]; K];
    for i in 0..K {
        for j in 0..K {
            let t = i * K + j;
            v[i][j] = _mm256_set1_ps(w[if rotate { K * K - 1 - t } else { t }]);
        }
    }
    v
}

/// One output row: `out[q] = bias + Σ_{i,j} w[i][j] · tap(i,j)[q]` for `q < n`, where for S = 1
/// `tap(i,j) = a[i] + j`, and for S = 2 (a = even columns, b = odd) `tap(i,j) = a[i] + j/2` for
/// even j and `b[i] + j/2` for odd j. Two vectors per step for independent FMA chains.
///
/// # Safety
/// Every `tap(i,j)[..n.next_multiple_of(8)]` readable; `out[..n]` writable; AVX2+FMA.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn conv_row<const K: usize, const S: usize>(
    a: &[*const f32; K],
    b: &[*const f32; K],
    wv: &[[__m256; K]; K],
    bias: __m256,
    out: *mut f32,
    n: usize,
) {
    let tap = |i: usize, j: usize| {
        if S == 1 {
            a[i].wrapping_add(j)
        } else if j.is_multiple_of(2) {
            a[i].wrapping_add(j / 2)
        } else {
            b[i].wrapping_add(j / 2)
        }
    };
    let mut q = 0;
    // SAFETY: loads are tap(i,j) + q + [0, 16) with q + 16 ≤ n (main loop) or q < n rounded up to
    // a vector (tail), covered by the caller's contract; stores are full below n or masked.
    unsafe {
        while q + 16 <= n {
            let (mut s0, mut s1) = (bias, bias);
            for i in 0..K {
                for j in 0..K {
                    let p = tap(i, j).add(q);
                    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(p), wv[i][j], s0);
                    s1 = _mm256_fmadd_ps(_mm256_loadu_ps(p.add(8)), wv[i][j], s1);
                }
            }
            _mm256_storeu_ps(out.add(q), s0);
            _mm256_storeu_ps(out.add(q + 8), s1);
            q += 16;
        }
        while q < n {
            let mut s0 = bias;
            for i in 0..K {
                for j in 0..K {
                    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(tap(i, j).add(q)), wv[i][j], s0);
                }
            }
            if q + 8 <= n {
                _mm256_storeu_ps(out.add(q), s0);
            } else {
                _mm256_maskstore_ps(out.add(q), tail_mask(n - q), s0);
            }
            q += 8;
        }
    }
}

/// (rows, pitch) of the padded forward buffer; for S = 2 the pitch holds `[E | O]`.
fn fwd_buf<const S: usize>(d: &PlaneGeom) -> (usize, usize) {
    let rows = (d.oh - 1) * S + d.k;
    if S == 1 {
        (rows, d.ow + d.k - 1)
    } else {
        (rows, 2 * s2_half(d))
    }
}

pub(super) fn fwd_scratch<const S: usize>(d: &PlaneGeom) -> usize {
    let (rows, pitch) = fwd_buf::<S>(d);
    rows * pitch + SLACK
}

/// Fills the forward buffer from one input plane (shared with the weight gradient).
#[target_feature(enable = "avx2,fma")]
fn fill_fwd<const S: usize>(x: &[f32], d: &PlaneGeom, buf: &mut [f32]) {
    let (rows, pitch) = fwd_buf::<S>(d);
    if S == 1 {
        let off = d.p as isize;
        fill(x, (d.h, d.w), buf, Padded { rows, pitch, off });
    } else {
        fill_s2(x, d, buf, rows);
    }
}

/// Row pointers of output row `oh` into a filled forward buffer.
fn fwd_rows<const K: usize, const S: usize>(
    buf: &[f32],
    d: &PlaneGeom,
    oh: usize,
) -> ([*const f32; K], [*const f32; K]) {
    let (_, pitch) = fwd_buf::<S>(d);
    let half = if S == 1 { 0 } else { pitch / 2 };
    let a: [*const f32; K] = std::array::from_fn(|i| buf[(oh * S + i) * pitch..].as_ptr());
    let b = a.map(|p| p.wrapping_add(half));
    (a, b)
}

/// One (image, channel) plane of the forward pass.
///
/// # Safety
/// See the module contract.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn forward_plane<const K: usize, const S: usize>(
    x: &[f32],
    w: &[f32],
    bias: f32,
    y: &mut [MaybeUninit<f32>],
    d: &PlaneGeom,
    buf: &mut [f32],
) {
    assert!(y.len() >= d.oh * d.ow && buf.len() >= fwd_scratch::<S>(d));
    fill_fwd::<S>(x, d, buf);
    let wv = weights::<K>(w, false);
    let (bv, y) = (_mm256_set1_ps(bias), y.as_mut_ptr().cast::<f32>());
    for oh in 0..d.oh {
        let (a, b) = fwd_rows::<K, S>(buf, d, oh);
        // SAFETY: for S = 1 the taps read row oh+i columns [j, j + ⌈ow⌉₈) and the row has
        // ow + K − 1 columns, so over-reads run into the next row or the SLACK; for S = 2 the taps
        // read E/O columns below ow + K/2 + 8 ≤ half + 8, likewise inside the buffer.
        unsafe { conv_row::<K, S>(&a, &b, &wv, bv, y.add(oh * d.ow), d.ow) };
    }
}

/// Stride-1 input gradient: dy padded by k−1−p (cropped when negative) so dx is its stride-1
/// correlation with the rotated kernel, i.e. exactly the forward row kernel.
fn bwd1_buf(d: &PlaneGeom) -> (usize, usize, isize) {
    (
        d.h + d.k - 1,
        d.w + d.k - 1,
        d.k as isize - 1 - d.p as isize,
    )
}

pub(super) fn bwd1_scratch(d: &PlaneGeom) -> usize {
    let (rows, pitch, _) = bwd1_buf(d);
    rows * pitch + SLACK
}

/// # Safety
/// See the module contract (here `S = 1`).
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn backward_input_s1<const K: usize>(
    dy: &[f32],
    w: &[f32],
    dx: &mut [MaybeUninit<f32>],
    d: &PlaneGeom,
    buf: &mut [f32],
) {
    let (rows, pitch, off) = bwd1_buf(d);
    assert!(dx.len() >= d.h * d.w && buf.len() >= bwd1_scratch(d));
    fill(dy, (d.oh, d.ow), buf, Padded { rows, pitch, off });
    let wv = weights::<K>(w, true);
    let (zero, dx) = (_mm256_setzero_ps(), dx.as_mut_ptr().cast::<f32>());
    for r in 0..d.h {
        let a: [*const f32; K] = std::array::from_fn(|i| buf[(r + i) * pitch..].as_ptr());
        // SAFETY: as in `forward_plane` with S = 1: rows r + i < rows, over-reads inside the buffer.
        unsafe { conv_row::<K, 1>(&a, &a, &wv, zero, dx.add(r * d.w), d.w) };
    }
}

/// Stride-2 input gradient, gathered per phase. dy is copied with a margin of `K/2` zeros on the
/// top and left. Input row `a` only receives taps `i ≡ a+p (mod 2)` (LI of them), and within the
/// row, even columns `2q` only taps `j ≡ p` and odd columns `2q+1` only `j ≡ p+1` (L0 and L1 of
/// them); each phase is a unit-stride correlation over dy, and the two results are interleaved.
fn bwd2_buf(d: &PlaneGeom) -> (usize, usize, usize) {
    let m = d.k / 2;
    let rows = (d.oh + m).max((d.h - 1 + d.p) / 2 + m + 1);
    let pitch = (d.ow + m).max(d.w.div_ceil(2) + d.p.div_ceil(2) + m);
    (rows, pitch, m)
}

pub(super) fn bwd2_scratch(d: &PlaneGeom) -> usize {
    let (rows, pitch, _) = bwd2_buf(d);
    rows * pitch + SLACK
}

/// Phase weights for one row parity: `[l][m]` for dy row `base − (LI−1−l)` and column offset `m`.
#[target_feature(enable = "avx2,fma")]
#[inline]
fn phase_weights<const K: usize, const LI: usize, const LC: usize>(
    w: &[f32],
    tr: usize,
    tc: usize,
) -> [[__m256; LC]; LI] {
    std::array::from_fn(|l| {
        let i = tr + 2 * (LI - 1 - l);
        std::array::from_fn(|m| _mm256_set1_ps(w[i * K + tc + 2 * (LC - 1 - m)]))
    })
}

/// One dx row from LI dy rows: phase 0 (even columns) reads `rows[l] + o0 + q + m` for m < L0,
/// phase 1 (odd) `rows[l] + o1 + q + m` for m < L1.
///
/// # Safety
/// `rows[l] + o + [0, ⌈n/2⌉ + 8)` readable for both offsets; `out[..n]` writable; AVX2+FMA.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn bwd2_row<const LI: usize, const L0: usize, const L1: usize>(
    rows: &[*const f32; LI],
    w0: &[[__m256; L0]; LI],
    w1: &[[__m256; L1]; LI],
    o0: usize,
    o1: usize,
    out: *mut f32,
    n: usize,
) {
    let mut q = 0;
    // SAFETY: loads at rows[l] + o + q + m + [0, 8) with 2q < n, covered by the contract; stores
    // are full while 2q + 16 ≤ n and masked to n otherwise.
    unsafe {
        while 2 * q < n {
            let mut p0 = _mm256_setzero_ps();
            let mut p1 = _mm256_setzero_ps();
            for l in 0..LI {
                for m in 0..L0 {
                    p0 = _mm256_fmadd_ps(_mm256_loadu_ps(rows[l].add(o0 + q + m)), w0[l][m], p0);
                }
                for m in 0..L1 {
                    p1 = _mm256_fmadd_ps(_mm256_loadu_ps(rows[l].add(o1 + q + m)), w1[l][m], p1);
                }
            }
            let lo = _mm256_unpacklo_ps(p0, p1);
            let hi = _mm256_unpackhi_ps(p0, p1);
            let r0 = _mm256_permute2f128_ps::<0x20>(lo, hi);
            let r1 = _mm256_permute2f128_ps::<0x31>(lo, hi);
            let o = out.add(2 * q);
            let rem = n - 2 * q;
            if rem >= 16 {
                _mm256_storeu_ps(o, r0);
                _mm256_storeu_ps(o.add(8), r1);
            } else if rem > 8 {
                _mm256_storeu_ps(o, r0);
                _mm256_maskstore_ps(o.add(8), tail_mask(rem - 8), r1);
            } else {
                _mm256_maskstore_ps(o, tail_mask(rem), r0);
            }
            q += 8;
        }
    }
}

/// # Safety
/// See the module contract (here `S = 2`). `LE`/`LO` are the row tap counts for even/odd
/// `a + p` (⌈K/2⌉, ⌊K/2⌋), `L0`/`L1` the column tap counts of the two phases (they depend on p).
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn backward_input_s2<
    const K: usize,
    const LE: usize,
    const LO: usize,
    const L0: usize,
    const L1: usize,
>(
    dy: &[f32],
    w: &[f32],
    dx: &mut [MaybeUninit<f32>],
    d: &PlaneGeom,
    buf: &mut [f32],
) {
    let (rows, pitch, m) = bwd2_buf(d);
    assert!(dx.len() >= d.h * d.w && buf.len() >= bwd2_scratch(d));
    assert!(L0 == (K - d.p % 2).div_ceil(2) && L1 == (K - (d.p + 1) % 2).div_ceil(2));
    let off = m as isize;
    fill(dy, (d.oh, d.ow), buf, Padded { rows, pitch, off });
    let p = d.p;
    // Column phase t: first tap j ≡ t + p, dy column q + c_t − l, so buffer offset c_t + m − (L_t − 1).
    let (tc0, tc1) = (p % 2, (p + 1) % 2);
    let o0 = p / 2 + m + 1 - L0;
    let o1 = (1 + p - tc1) / 2 + m + 1 - L1;
    let we0 = phase_weights::<K, LE, L0>(w, 0, tc0);
    let we1 = phase_weights::<K, LE, L1>(w, 0, tc1);
    let wo0 = phase_weights::<K, LO, L0>(w, 1, tc0);
    let wo1 = phase_weights::<K, LO, L1>(w, 1, tc1);
    for a in 0..d.h {
        let tr = (a + p) % 2;
        let base = (a + p - tr) / 2 + m;
        let out = dx[a * d.w..].as_mut_ptr().cast::<f32>();
        // SAFETY: rows base − (LI−1) ≥ 0 (m ≥ LI − 1) and base < rows by `bwd2_buf`; columns up to
        // ⌈w/2⌉ + ⌈p/2⌉ + m + 8 fit the pitch plus the next row or SLACK.
        unsafe {
            if tr == 0 {
                let r: [*const f32; LE] =
                    std::array::from_fn(|l| buf[(base + l + 1 - LE) * pitch..].as_ptr());
                bwd2_row::<LE, L0, L1>(&r, &we0, &we1, o0, o1, out, d.w);
            } else {
                let r: [*const f32; LO] =
                    std::array::from_fn(|l| buf[(base + l + 1 - LO) * pitch..].as_ptr());
                bwd2_row::<LO, L0, L1>(&r, &wo0, &wo1, o0, o1, out, d.w);
            }
        }
    }
}

/// Accumulates `acc[g][j] += dy[oh][q] · tap(i0+g, j)[q]` over one plane for G tap rows. The
/// accumulators stay in registers for the whole plane; the tail lanes are masked on both operands
/// so a non-finite value past the row end can't leak in as 0·inf. `next` (the input plane to be
/// processed next, or empty) is only prefetched.
///
/// # Safety
/// Buffer filled for this plane; `dy[..oh·ow]` readable; AVX2+FMA.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn bw_pass<const K: usize, const S: usize, const G: usize>(
    acc: &mut [[__m256; K]],
    buf: &[f32],
    dy: &[f32],
    d: &PlaneGeom,
    i0: usize,
    next: &[f32],
) {
    let mut r: [[__m256; K]; G] = std::array::from_fn(|g| acc[i0 + g]);
    // The next plane's input goes towards L2 while this one computes, a slice per output row.
    let ahead = next
        .len()
        .div_ceil(d.oh)
        .next_multiple_of(LINE_FLOATS)
        .max(1);
    let tail = tail_mask(d.ow % 8);
    let full = d.ow - d.ow % 8;
    for oh in 0..d.oh {
        let (a, b) = fwd_rows::<K, S>(buf, d, oh);
        let tap = |i: usize, j: usize| {
            if S == 1 {
                a[i].wrapping_add(j)
            } else if j.is_multiple_of(2) {
                a[i].wrapping_add(j / 2)
            } else {
                b[i].wrapping_add(j / 2)
            }
        };
        prefetch_row(&dy[oh * d.ow..][..d.ow]);
        for line in next
            .chunks(ahead)
            .nth(oh)
            .unwrap_or(&[])
            .chunks(LINE_FLOATS)
        {
            prefetch_line::<false>(line.as_ptr());
        }
        let dr = dy[oh * d.ow..][..d.ow].as_ptr();
        // SAFETY: dy loads are below ow (full vectors, then masked); buffer loads at
        // tap + q + [0, 8) with q < ow stay inside the buffer as in `forward_plane`.
        unsafe {
            let mut q = 0;
            while q < full {
                let dv = _mm256_loadu_ps(dr.add(q));
                for g in 0..G {
                    for j in 0..K {
                        let xv = _mm256_loadu_ps(tap(i0 + g, j).add(q));
                        r[g][j] = _mm256_fmadd_ps(dv, xv, r[g][j]);
                    }
                }
                q += 8;
            }
            if q < d.ow {
                let dv = _mm256_maskload_ps(dr.add(q), tail);
                for g in 0..G {
                    for j in 0..K {
                        let xv = _mm256_maskload_ps(tap(i0 + g, j).add(q), tail);
                        r[g][j] = _mm256_fmadd_ps(dv, xv, r[g][j]);
                    }
                }
            }
        }
    }
    acc[i0..i0 + G].copy_from_slice(&r);
}

/// Horizontal sum of a vector, in f64.
#[target_feature(enable = "avx2,fma")]
#[inline]
fn hsum(v: __m256) -> f64 {
    let mut a = [0f32; 8];
    // SAFETY: `a` holds 8 floats.
    unsafe { _mm256_storeu_ps(a.as_mut_ptr(), v) };
    a.iter().map(|&x| x as f64).sum()
}

/// Terms per lane the f32 weight-gradient accumulators take before they are flushed to f64.
const FLUSH: usize = 1 << 14;

/// Counts `terms` more products per lane and, once they reach [`FLUSH`] or at the `last` plane,
/// flushes every channel's accumulators into its f64 sums.
#[target_feature(enable = "avx2,fma")]
fn flush_every<const K: usize>(
    pending: &mut usize,
    terms: usize,
    last: bool,
    acc: &mut [[[__m256; K]; K]],
    sums: &mut [[[f64; K]; K]],
) {
    *pending += terms;
    if *pending >= FLUSH || last {
        for (a, s) in acc.iter_mut().zip(sums.iter_mut()) {
            flush(a, s);
        }
        *pending = 0;
    }
}

/// Adds the accumulators into the f64 sums and clears them.
#[target_feature(enable = "avx2,fma")]
fn flush<const K: usize>(acc: &mut [[__m256; K]; K], sums: &mut [[f64; K]; K]) {
    for i in 0..K {
        for j in 0..K {
            sums[i][j] += hsum(acc[i][j]);
            acc[i][j] = _mm256_setzero_ps();
        }
    }
}

/// Weight gradient of the channels `c0..c0+nc` whose gradients `dw` holds, summed over the
/// job's images. Images are the outer loop so each image's planes of the block are read as one
/// contiguous run (channel-outer order would jump `nch` planes at every step, which defeats the
/// prefetchers on small planes); each channel keeps its own vector accumulators. Those are f32
/// and flushed into f64 every few thousand terms per lane.
///
/// # Safety
/// See the module contract.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn backward_weight_block<const K: usize, const S: usize>(
    job: &WeightJob,
    x: &[f32],
    dy: &[f32],
    c0: usize,
    dw: &mut [f32],
    buf: &mut [f32],
) {
    let (nch, n, d) = (job.chans, job.images, &job.d);
    let nc = dw.len() / (K * K);
    assert!(buf.len() >= fwd_scratch::<S>(d));
    let (ip, op) = (d.h * d.w, d.oh * d.ow);
    let mut acc = vec![[[_mm256_setzero_ps(); K]; K]; nc];
    let mut sums = vec![[[0f64; K]; K]; nc];
    let mut pending = 0;
    for img in 0..n {
        for (cc, acc) in acc.iter_mut().enumerate() {
            let plane = img * nch + c0 + cc;
            fill_fwd::<S>(&x[plane * ip..][..ip], d, buf);
            let dyp = &dy[plane * op..][..op];
            // The plane after this one: the next channel of the block, or the next image's first.
            let after = if cc + 1 < nc {
                plane + 1
            } else {
                plane + 1 + nch - nc
            };
            let next = x
                .get(after * ip..)
                .map_or(&[][..], |s| &s[..ip.min(s.len())]);
            // SAFETY: buffer just filled for this plane, dy plane of the right size.
            unsafe {
                if K == 3 {
                    bw_pass::<K, S, 3>(acc, buf, dyp, d, 0, next);
                } else {
                    // 2 rows × K = 10 accumulators keep the FMA pipes busy without spilling.
                    let mut i0 = 0;
                    while i0 + 2 <= K {
                        bw_pass::<K, S, 2>(acc, buf, dyp, d, i0, next);
                        i0 += 2;
                    }
                    if i0 < K {
                        bw_pass::<K, S, 1>(acc, buf, dyp, d, i0, next);
                    }
                }
            }
        }
        flush_every(&mut pending, op, img + 1 == n, &mut acc, &mut sums);
    }
    store_sums(&sums, dw);
}

/// Writes the per-channel f64 sums into `dw` (`[c][i][j]`).
fn store_sums<const K: usize>(sums: &[[[f64; K]; K]], dw: &mut [f32]) {
    for (s, out) in sums.iter().zip(dw.chunks_exact_mut(K * K)) {
        for i in 0..K {
            for j in 0..K {
                out[i * K + j] = s[i][j] as f32;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Entry points: each runs a contiguous run of planes (one rayon task), so the per-plane kernel
// is inlined and per-plane overhead is a few instructions, which matters for 4×4 planes.
// ---------------------------------------------------------------------------------------------

/// Forward over a run of planes (see [`super::PlanesFn`]).
///
/// # Safety
/// Module contract; `x` and `y` hold whole planes.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn forward<const K: usize, const S: usize>(
    job: &PlaneJob,
    x: &[f32],
    y: &mut [MaybeUninit<f32>],
    first: usize,
    buf: &mut [f32],
) {
    let d = &job.d;
    each_plane(job, (x, y, first), true, |xp, yp, c| {
        let b = job.bias.map_or(0.0, |b| b[c]);
        let w = &job.w[c * K * K..][..K * K];
        // SAFETY: forwarded contract.
        unsafe { forward_plane::<K, S>(xp, w, b, yp, d, buf) };
        if job.relu6 {
            relu6_plane(yp);
        }
    });
}

/// Stride-1 input gradient over a run of planes (`dy` planes in, `dx` planes out).
///
/// # Safety
/// As [`forward`].
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn backward_input_s1_run<const K: usize>(
    job: &PlaneJob,
    dy: &[f32],
    dx: &mut [MaybeUninit<f32>],
    first: usize,
    buf: &mut [f32],
) {
    let d = &job.d;
    each_plane(job, (dy, dx, first), false, |gp, xp, c| {
        let w = &job.w[c * K * K..][..K * K];
        // SAFETY: forwarded contract.
        unsafe { backward_input_s1::<K>(gp, w, xp, d, buf) }
    });
}

/// Stride-2 input gradient over a run of planes.
///
/// # Safety
/// As [`forward`].
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn backward_input_s2_run<
    const K: usize,
    const LE: usize,
    const LO: usize,
    const L0: usize,
    const L1: usize,
>(
    job: &PlaneJob,
    dy: &[f32],
    dx: &mut [MaybeUninit<f32>],
    first: usize,
    buf: &mut [f32],
) {
    let d = &job.d;
    each_plane(job, (dy, dx, first), false, |gp, xp, c| {
        let w = &job.w[c * K * K..][..K * K];
        // SAFETY: forwarded contract.
        unsafe { backward_input_s2::<K, LE, LO, L0, L1>(gp, w, xp, d, buf) }
    });
}
