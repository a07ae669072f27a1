//! Small "same" stride-1 planes (2p = k − 1, narrow rows): vectorise over the flattened plane.
//!
//! With OW = W every tap is a constant shift of the flat index, `x[q + (i−p)·W + (j−p)]`, so 8
//! outputs cost k² loads and FMAs whatever the row width: a 4×4 plane is 2 vectors instead of 4
//! half-empty rows. The plane is copied once into a buffer with (p·W + p) zeros on either side,
//! which handles rows above and below; a column mask per (vector, j) zeroes taps that would wrap
//! into the neighbouring row. Masks depend only on the geometry, so they are built once per task.
//!
//! Safety contract: as the parent module's.

use std::arch::x86_64::*;
use std::mem::MaybeUninit;

use super::super::{PlaneGeom, PlaneJob, WeightJob, relu6_plane};
use super::{SLACK, copy_row, flush_every, store_sums, tail_mask, weights};

/// (margin, vectors per plane) of the flat layout.
fn flat_geom(d: &PlaneGeom) -> (usize, usize) {
    (d.p * d.w + d.p, (d.h * d.w).div_ceil(8))
}

/// Floats of one plane slot: `[margin | plane (8V) | margin | SLACK]`.
fn flat_slot(d: &PlaneGeom) -> usize {
    let (m, v) = flat_geom(d);
    2 * m + 8 * v + SLACK
}

/// Scratch: `[masks: V·K·8 | flag: 8 | slot 0 | slot 1]`. Two slots so the next plane is copied
/// while the current one is computed: reading a just-copied tiny plane at shifted offsets would
/// stall on store-to-load forwarding.
pub(in crate::depthwise) fn flat_scratch(d: &PlaneGeom) -> usize {
    let (_, v) = flat_geom(d);
    v * d.k * 8 + 8 + 2 * flat_slot(d)
}

/// Builds the column masks on first use in this scratch (flag slot still zero) and copies the
/// plane `src` into slot `slot`.
#[target_feature(enable = "avx2,fma")]
fn flat_prepare(src: &[f32], d: &PlaneGeom, buf: &mut [f32], slot: usize) {
    let (m, nv) = flat_geom(d);
    let (k, p, w, n) = (d.k, d.p as isize, d.w, d.h * d.w);
    assert!(buf.len() >= flat_scratch(d) && src.len() >= n && slot < 2);
    let (masks, rest) = buf.split_at_mut(nv * k * 8);
    if rest[0] == 0.0 {
        let mut col = 0;
        for q in 0..8 * nv {
            let (v, l) = (q / 8, q % 8);
            for j in 0..k {
                let c = col as isize + j as isize - p;
                let ok = q < n && c >= 0 && c < w as isize;
                masks[(v * k + j) * 8 + l] = f32::from_bits(if ok { u32::MAX } else { 0 });
            }
            col += 1;
            if col == w {
                col = 0;
            }
        }
        rest[0] = 1.0;
    }
    let plane = &mut rest[8 + slot * flat_slot(d) + m..];
    // SAFETY: n floats from `src`, into plane[..n] (the plane region holds 8V ≥ n).
    unsafe { copy_row(src.as_ptr(), plane.as_mut_ptr(), n) };
}

/// (masks, plane start of `slot`) in a flat scratch.
fn flat_ptrs(d: &PlaneGeom, buf: &[f32], slot: usize) -> (*const f32, *const f32) {
    let (m, nv) = flat_geom(d);
    let masks = buf.as_ptr();
    (
        masks,
        buf[nv * d.k * 8 + 8 + slot * flat_slot(d) + m..].as_ptr(),
    )
}

/// Runs `compute(plane index, slot)` over `n` planes with `prepare(plane index, slot)` one plane
/// ahead, alternating two slots (see `flat_scratch`).
#[inline(always)]
fn pipelined(
    n: usize,
    mut prepare: impl FnMut(usize, usize),
    mut compute: impl FnMut(usize, usize),
) {
    if n == 0 {
        return;
    }
    prepare(0, 0);
    for i in 0..n {
        if i + 1 < n {
            prepare(i + 1, (i + 1) & 1);
        }
        compute(i, i & 1);
    }
}

/// Forward (or, with rotated weights and no bias, the stride-1 input gradient: for "same"
/// padding k−1−p = p) of one small plane already copied into a slot.
///
/// # Safety
/// `masks`/`plane` from `flat_ptrs` on a prepared slot of a `flat_scratch`-sized buffer; a
/// "same" stride-1 geometry; AVX2+FMA.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn flat_conv<const K: usize>(
    masks: *const f32,
    plane: *const f32,
    w: &[f32],
    rotate: bool,
    bias: f32,
    out: &mut [MaybeUninit<f32>],
    d: &PlaneGeom,
) {
    let n = d.h * d.w;
    assert!(out.len() >= n && 2 * d.p + 1 == K && d.s == 1);
    let wv = weights::<K>(w, rotate);
    let bv = _mm256_set1_ps(bias);
    let (p, wd) = (d.p as isize, d.w as isize);
    let nv = n.div_ceil(8);
    // SAFETY: tap loads read plane + 8v + (i−p)·W + (j−p) + [0, 8): at least plane − margin (the
    // buffer start after the flag) and at most plane + 8V + margin + 7, inside the scratch. Masks
    // are V·K vectors. Stores are full below n or masked.
    unsafe {
        for v in 0..nv {
            let base = plane.add(8 * v);
            let mut acc = bv;
            for j in 0..K {
                let mut part = _mm256_setzero_ps();
                for i in 0..K {
                    let off = (i as isize - p) * wd + j as isize - p;
                    part = _mm256_fmadd_ps(_mm256_loadu_ps(base.offset(off)), wv[i][j], part);
                }
                let mask = _mm256_loadu_ps(masks.add((v * K + j) * 8));
                acc = _mm256_add_ps(acc, _mm256_and_ps(part, mask));
            }
            let o = out.as_mut_ptr().cast::<f32>().add(8 * v);
            if 8 * v + 8 <= n {
                _mm256_storeu_ps(o, acc);
            } else {
                _mm256_maskstore_ps(o, tail_mask(n - 8 * v), acc);
            }
        }
    }
}

/// Weight-gradient accumulation over one small plane for tap rows `i0..i0+G`: dy is masked per
/// column tap j (K ANDs per vector rather than K²), then `acc[i][j] += dy_j · x(i,j)`.
///
/// # Safety
/// `flat_prepare` just ran on this plane; `dy[..h·w]` readable; AVX2+FMA.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn bw_flat_pass<const K: usize, const G: usize>(
    acc: &mut [[__m256; K]],
    masks: *const f32,
    plane: *const f32,
    dy: &[f32],
    d: &PlaneGeom,
    i0: usize,
) {
    let n = d.h * d.w;
    let (p, wd) = (d.p as isize, d.w as isize);
    let mut r: [[__m256; K]; G] = std::array::from_fn(|g| acc[i0 + g]);
    // SAFETY: as in `flat_conv`; dy loads are full below n, else masked.
    unsafe {
        for v in 0..n.div_ceil(8) {
            let dv = if 8 * v + 8 <= n {
                _mm256_loadu_ps(dy.as_ptr().add(8 * v))
            } else {
                _mm256_maskload_ps(dy.as_ptr().add(8 * v), tail_mask(n - 8 * v))
            };
            let base = plane.add(8 * v);
            for j in 0..K {
                let dj = _mm256_and_ps(dv, _mm256_loadu_ps(masks.add((v * K + j) * 8)));
                for g in 0..G {
                    let off = ((i0 + g) as isize - p) * wd + j as isize - p;
                    r[g][j] = _mm256_fmadd_ps(dj, _mm256_loadu_ps(base.offset(off)), r[g][j]);
                }
            }
        }
    }
    acc[i0..i0 + G].copy_from_slice(&r);
}

/// Weight gradient of the channels from `c0` (as [`super::backward_weight_block`]) for small "same"
/// stride-1 planes; image-outer like it, and pipelined: plane t+1 is copied while plane t is
/// accumulated.
///
/// # Safety
/// See `flat_conv`.
#[target_feature(enable = "avx2,fma")]
pub(in crate::depthwise) unsafe fn backward_weight_flat<const K: usize>(
    job: &WeightJob,
    x: &[f32],
    dy: &[f32],
    c0: usize,
    dw: &mut [f32],
    buf: &mut [f32],
) {
    let (nch, n, d) = (job.chans, job.images, &job.d);
    let (ip, nc) = (d.h * d.w, dw.len() / (K * K));
    assert!(2 * d.p + 1 == K && d.s == 1);
    let mut acc = vec![[[_mm256_setzero_ps(); K]; K]; nc];
    let mut sums = vec![[[0f64; K]; K]; nc];
    let mut pending = 0;
    // Plane t of the run is image t / nc, channel c0 + t % nc; each closure steps its own cursor.
    let (mut p_img, mut p_cc) = (0, 0);
    let (mut c_img, mut c_cc) = (0, 0);
    let buf_ptr: *mut [f32] = buf;
    pipelined(
        n * nc,
        |_, slot| {
            let plane = p_img * nch + c0 + p_cc;
            (p_cc, p_img) = if p_cc + 1 == nc {
                (0, p_img + 1)
            } else {
                (p_cc + 1, p_img)
            };
            // SAFETY: `buf_ptr` is `buf`, which nothing else borrows while `pipelined` runs, and
            // the two closures never run at the same time, so this is the only live reference.
            let buf = unsafe { &mut *buf_ptr };
            flat_prepare(&x[plane * ip..][..ip], d, buf, slot)
        },
        |_, slot| {
            let (img, cc) = (c_img, c_cc);
            (c_cc, c_img) = if c_cc + 1 == nc {
                (0, c_img + 1)
            } else {
                (c_cc + 1, c_img)
            };
            let plane = img * nch + c0 + cc;
            // SAFETY: as above; the reference ends before `prepare` runs again (which writes the
            // other slot anyway).
            let (masks, xp) = flat_ptrs(d, unsafe { &*buf_ptr }, slot);
            let dyp = &dy[plane * ip..][..ip];
            let acc_c = &mut acc[cc];
            // SAFETY: slot prepared for this plane, dy plane of the right size.
            unsafe {
                if K == 3 {
                    bw_flat_pass::<K, 3>(acc_c, masks, xp, dyp, d, 0);
                } else {
                    let mut i0 = 0;
                    while i0 + 2 <= K {
                        bw_flat_pass::<K, 2>(acc_c, masks, xp, dyp, d, i0);
                        i0 += 2;
                    }
                    if i0 < K {
                        bw_flat_pass::<K, 1>(acc_c, masks, xp, dyp, d, i0);
                    }
                }
            }
            if cc + 1 == nc {
                flush_every(&mut pending, ip, img + 1 == n, &mut acc, &mut sums);
            }
        },
    );
    store_sums(&sums, dw);
}

/// Forward (`ROTATE` false) or input gradient (`ROTATE`: the forward with the kernel rotated by
/// 180°; the job has no bias and no clamp) over a run of small "same" stride-1 planes, same plane
/// size in and out, pipelined over two slots.
///
/// # Safety
/// As [`super::forward`], with a geometry `flat_scratch` was sized for.
#[target_feature(enable = "avx2,fma")]
pub(in crate::depthwise) unsafe fn flat_run<const K: usize, const ROTATE: bool>(
    job: &PlaneJob,
    src: &[f32],
    dst: &mut [MaybeUninit<f32>],
    first: usize,
    buf: &mut [f32],
) {
    let (w, bias, relu6, chans, d) = (job.w, job.bias, job.relu6, job.chans, &job.d);
    let np = d.h * d.w;
    let n = dst.len() / np;
    assert!(src.len() >= n * np);
    let buf_ptr: *mut [f32] = buf;
    let mut ch = first % chans;
    pipelined(
        n,
        |i, slot| {
            // SAFETY: as in `backward_weight_flat`: the only live reference to `buf`.
            let buf = unsafe { &mut *buf_ptr };
            flat_prepare(&src[i * np..][..np], d, buf, slot)
        },
        |i, slot| {
            let c = ch;
            ch = if ch + 1 == chans { 0 } else { ch + 1 };
            // SAFETY: as in `backward_weight_flat`.
            let (masks, plane) = flat_ptrs(d, unsafe { &*buf_ptr }, slot);
            let b = bias.map_or(0.0, |b| b[c]);
            let out = &mut dst[i * np..][..np];
            // SAFETY: slot prepared for plane i; output plane of np floats.
            unsafe { flat_conv::<K>(masks, plane, &w[c * K * K..][..K * K], ROTATE, b, out, d) };
            if relu6 {
                relu6_plane(out);
            }
        },
    );
}
