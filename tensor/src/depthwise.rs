//! Direct depthwise convolution (groups == channels): forward, input gradient, weight gradient.
//! Never routed through GEMM: a depthwise layer does only k² multiply-adds per output, so it is
//! bound by memory traffic and loop overhead, and im2col would multiply the traffic by k².
//!
//! All three take an NCHW geometry with `g.groups == g.cin == g.cout` and slices of exactly
//! the sizes that geometry implies; outputs are overwritten, not accumulated.
//!
//! Dispatch: AVX2+FMA kernels (`avx2`) for k ∈ {3, 5} and stride ∈ {1, 2}, chosen at run time via
//! [`crate::simd::avx2_fma`]; the portable kernels (`portable`) handle every other case and any
//! CPU. With AVX-512 the forward pass of those shapes runs `avx512` instead (16 lanes, the input
//! read in place with the padding as load masks, ReLU6 in registers: batch-1 layers 0.45-0.95×
//! the AVX2 time), except on planes narrower than 16 columns, where the AVX2 flat kernel fills
//! its lanes better. Each AVX2 kernel first copies a plane into a zero-padded scratch buffer (for
//! stride 2, split into even and odd columns), so padding never reaches the inner loops, which
//! are one fused pass per output row: k input rows at k shifts, k² broadcast weights in
//! registers, each output written once.
//! The input gradient is the same row kernel with the rotated kernel for stride 1, and a per-phase
//! gather (even/odd rows and columns, results interleaved) for stride 2. Small "same" stride-1
//! planes (fewer than 16 columns: 4×4, 7×7, 8×8, 14×14) are vectorised over the flattened plane
//! with per-column-tap masks instead of row by row.
//!
//! Parallelism is one rayon level: over contiguous runs of (image, channel) planes for the
//! forward pass and the input gradient, over channels (summing the images inside) for the weight
//! gradient.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use crate::conv::ConvGeom;

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod portable;

/// The geometry the plane kernels need.
#[derive(Clone, Copy, Debug)]
struct Dims {
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
    k: usize,
    s: usize,
    p: usize,
}

impl Dims {
    fn new(g: &ConvGeom) -> Dims {
        assert!(
            g.groups == g.cin && g.cin == g.cout,
            "depthwise: groups ({}) must equal cin ({}) and cout ({})",
            g.groups,
            g.cin,
            g.cout
        );
        Dims {
            h: g.h,
            w: g.w,
            oh: g.out_h(),
            ow: g.out_w(),
            k: g.k,
            s: g.stride,
            p: g.pad,
        }
    }
    fn in_plane(&self) -> usize {
        self.h * self.w
    }
    fn out_plane(&self) -> usize {
        self.oh * self.ow
    }
}

/// Which kernels to run; the public functions pick `Auto`, the tests force each one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(test), allow(dead_code))]
enum Path {
    Auto,
    /// The AVX2 kernels even where the AVX-512 forward would run.
    Avx2,
    Portable,
}

/// Small "same" stride-1 planes run the AVX2 flat kernels (vectorised over the flattened plane):
/// below 16 columns rows waste lanes or pay per-row overhead.
fn use_flat(d: &Dims) -> bool {
    d.s == 1 && 2 * d.p + 1 == d.k && d.w < 16
}

/// AVX2 kernels exist for these shapes only.
fn use_avx2(path: Path, d: &Dims) -> bool {
    cfg!(target_arch = "x86_64")
        && path != Path::Portable
        && crate::simd::avx2_fma()
        && (d.k == 3 || d.k == 5)
        && (d.s == 1 || d.s == 2)
}

/// The AVX-512 forward covers the AVX2 kernels' shapes but the flat ones, where its 16-lane
/// rows would run mostly empty (7×7 planes: 1.5-1.7× the flat kernel's time).
fn use_avx512(path: Path, d: &Dims) -> bool {
    use_avx2(path, d) && path == Path::Auto && crate::simd::avx512() && !use_flat(d)
}

/// Planes per rayon task: about 8 tasks per thread for balance, each a contiguous run of planes
/// so it streams memory in order and allocates its scratch once.
fn planes_per_task(planes: usize) -> usize {
    planes
        .div_ceil(rayon::current_num_threads().max(1) * 8)
        .max(1)
}

/// Runs a contiguous run of planes:
/// `(src, w, bias, relu6, dst, first plane, channels, dims, scratch)`. The input gradient uses
/// the same shape with `src = dy`, `dst = dx`, no bias and no clamp. `dst` may be uninitialised:
/// a kernel writes every element of it exactly once (clamped to [0, 6] if `relu6`) and never
/// reads it.
type PlanesFn = unsafe fn(
    &[f32],
    &[f32],
    Option<&[f32]>,
    bool,
    &mut [MaybeUninit<f32>],
    usize,
    usize,
    &Dims,
    &mut [f32],
);
/// Weight gradient of a block of channels:
/// `(x, dy, first channel, channels in block, channels, images, dims, dw of the block, scratch)`.
type WeightFn =
    unsafe fn(&[f32], &[f32], usize, usize, usize, usize, &Dims, &mut [f32], &mut [f32]);

/// Calls `f(src plane, dst plane, channel)` for each plane of a run starting at plane `first`;
/// `forward` says whether src holds input planes (forward) or output planes (input gradient).
/// Inlined into each kernel's entry point so the per-plane work is inlined too.
#[inline(always)]
fn each_plane(
    src: &[f32],
    dst: &mut [MaybeUninit<f32>],
    first: usize,
    chans: usize,
    d: &Dims,
    forward: bool,
    mut f: impl FnMut(&[f32], &mut [MaybeUninit<f32>], usize),
) {
    let (sp, dp) = if forward {
        (d.in_plane(), d.out_plane())
    } else {
        (d.out_plane(), d.in_plane())
    };
    let mut c = first % chans;
    for (src, dst) in src.chunks_exact(sp).zip(dst.chunks_exact_mut(dp)) {
        f(src, dst, c);
        c += 1;
        if c == chans {
            c = 0;
        }
    }
}

/// Runs `kernel` over every plane in parallel, in contiguous runs of planes, into a `dst` that
/// need not be initialised (every kernel writes each element of its planes exactly once, never
/// reading them).
#[allow(clippy::too_many_arguments)]
fn run_planes(
    src: &[f32],
    src_plane: usize,
    w: &[f32],
    bias: Option<&[f32]>,
    relu6: bool,
    dst: &mut [MaybeUninit<f32>],
    dst_plane: usize,
    chans: usize,
    d: &Dims,
    scratch: usize,
    kernel: PlanesFn,
) {
    if dst.is_empty() {
        return;
    }
    let per_task = planes_per_task(dst.len() / dst_plane);
    dst.par_chunks_mut(per_task * dst_plane)
        .enumerate()
        .for_each(|(t, run)| {
            let mut buf = vec![0f32; scratch];
            let first = t * per_task;
            let src = &src[first * src_plane..][..run.len() / dst_plane * src_plane];
            // SAFETY: `kernel` was chosen for this CPU and geometry (SIMD kernels only when
            // `use_avx2` / `use_avx512` hold); slices hold whole planes of the sizes `d` implies,
            // and `buf` is zeroed scratch of the length that kernel asked for, for this geometry.
            unsafe { kernel(src, w, bias, relu6, run, first, chans, d, &mut buf) };
        });
}

/// Clamps a plane a kernel has just written to [0, 6] (kernels that don't clamp in registers).
fn relu6_plane(plane: &mut [MaybeUninit<f32>]) {
    // SAFETY: called only after the kernel wrote every element of `plane`.
    let plane = unsafe { &mut *(plane as *mut [MaybeUninit<f32>] as *mut [f32]) };
    plane.iter_mut().for_each(|v| *v = v.clamp(0.0, 6.0));
}

fn check_lens(what: &str, got: usize, want: usize) {
    assert_eq!(
        got, want,
        "depthwise: {what} has {got} elements, geometry needs {want}"
    );
}

/// y[n,c] = x[n,c] ⋆ w[c] (+ bias[c]), the bias fused into the accumulator's initial value,
/// then clamped to [0, 6] if `relu6`. `y` need not be initialised: every element is written.
///
/// Panics if the slice lengths don't match `g` or `g` is not depthwise.
pub fn forward(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    relu6: bool,
    y: &mut [MaybeUninit<f32>],
    g: &ConvGeom,
) {
    forward_with(Path::Auto, x, w, bias, relu6, y, g);
}

fn forward_with(
    path: Path,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    relu6: bool,
    y: &mut [MaybeUninit<f32>],
    g: &ConvGeom,
) {
    let d = Dims::new(g);
    let c = g.cin;
    check_lens("x", x.len(), g.n * c * d.in_plane());
    check_lens("w", w.len(), c * d.k * d.k);
    check_lens("y", y.len(), g.n * c * d.out_plane());
    if let Some(b) = bias {
        check_lens("bias", b.len(), c);
    }
    let (scratch, kernel): (usize, PlanesFn) = if use_avx512(path, &d) {
        avx512_forward(&d)
    } else if use_avx2(path, &d) {
        avx2_forward(&d)
    } else {
        (portable::fwd_scratch(&d), portable::forward)
    };
    run_planes(
        x,
        d.in_plane(),
        w,
        bias,
        relu6,
        y,
        d.out_plane(),
        c,
        &d,
        scratch,
        kernel,
    );
}

#[cfg(target_arch = "x86_64")]
fn avx2_forward(d: &Dims) -> (usize, PlanesFn) {
    if use_flat(d) {
        return match d.k {
            3 => (avx2::flat_scratch(d), avx2::forward_flat_run::<3>),
            _ => (avx2::flat_scratch(d), avx2::forward_flat_run::<5>),
        };
    }
    match (d.k, d.s) {
        (3, 1) => (avx2::fwd_scratch::<1>(d), avx2::forward::<3, 1>),
        (3, 2) => (avx2::fwd_scratch::<2>(d), avx2::forward::<3, 2>),
        (5, 1) => (avx2::fwd_scratch::<1>(d), avx2::forward::<5, 1>),
        (5, 2) => (avx2::fwd_scratch::<2>(d), avx2::forward::<5, 2>),
        _ => unreachable!("use_avx2 admits k ∈ {{3,5}}, s ∈ {{1,2}}"),
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn avx2_forward(_: &Dims) -> (usize, PlanesFn) {
    unreachable!()
}

#[cfg(target_arch = "x86_64")]
fn avx512_forward(d: &Dims) -> (usize, PlanesFn) {
    match (d.k, d.s) {
        (3, 1) => (avx512::fwd_scratch(d), avx512::forward::<3, 1>),
        (3, 2) => (avx512::fwd_scratch(d), avx512::forward::<3, 2>),
        (5, 1) => (avx512::fwd_scratch(d), avx512::forward::<5, 1>),
        (5, 2) => (avx512::fwd_scratch(d), avx512::forward::<5, 2>),
        _ => unreachable!("use_avx512 admits k ∈ {{3,5}}, s ∈ {{1,2}}"),
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn avx512_forward(_: &Dims) -> (usize, PlanesFn) {
    unreachable!()
}

/// dx = dy ⋆ rot180(w): for stride 1 the forward row kernel on dy padded by k−1−p; for stride 2
/// (AVX2) a gather per output phase, each dx element written once; otherwise (portable) the
/// correlation of the stride-dilated dy. `dx` need not be initialised: every element is written.
///
/// Panics if the slice lengths don't match `g` or `g` is not depthwise.
pub fn backward_input(dy: &[f32], w: &[f32], dx: &mut [MaybeUninit<f32>], g: &ConvGeom) {
    backward_input_with(Path::Auto, dy, w, dx, g);
}

fn backward_input_with(
    path: Path,
    dy: &[f32],
    w: &[f32],
    dx: &mut [MaybeUninit<f32>],
    g: &ConvGeom,
) {
    let d = Dims::new(g);
    let c = g.cin;
    check_lens("dy", dy.len(), g.n * c * d.out_plane());
    check_lens("w", w.len(), c * d.k * d.k);
    check_lens("dx", dx.len(), g.n * c * d.in_plane());
    let (scratch, kernel): (usize, PlanesFn) = if use_avx2(path, &d) {
        avx2_backward_input(&d)
    } else {
        (portable::bwd_input_scratch(&d), portable::backward_input)
    };
    run_planes(
        dy,
        d.out_plane(),
        w,
        None,
        false,
        dx,
        d.in_plane(),
        c,
        &d,
        scratch,
        kernel,
    );
}

#[cfg(target_arch = "x86_64")]
fn avx2_backward_input(d: &Dims) -> (usize, PlanesFn) {
    if use_flat(d) {
        return match d.k {
            3 => (avx2::flat_scratch(d), avx2::backward_input_flat_run::<3>),
            _ => (avx2::flat_scratch(d), avx2::backward_input_flat_run::<5>),
        };
    }
    let odd = d.p % 2 == 1;
    match (d.k, d.s, odd) {
        (3, 1, _) => (avx2::bwd1_scratch(d), avx2::backward_input_s1_run::<3>),
        (5, 1, _) => (avx2::bwd1_scratch(d), avx2::backward_input_s1_run::<5>),
        (3, 2, false) => (
            avx2::bwd2_scratch(d),
            avx2::backward_input_s2_run::<3, 2, 1, 2, 1>,
        ),
        (3, 2, true) => (
            avx2::bwd2_scratch(d),
            avx2::backward_input_s2_run::<3, 2, 1, 1, 2>,
        ),
        (5, 2, false) => (
            avx2::bwd2_scratch(d),
            avx2::backward_input_s2_run::<5, 3, 2, 3, 2>,
        ),
        (5, 2, true) => (
            avx2::bwd2_scratch(d),
            avx2::backward_input_s2_run::<5, 3, 2, 2, 3>,
        ),
        _ => unreachable!("use_avx2 admits k ∈ {{3,5}}, s ∈ {{1,2}}"),
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn avx2_backward_input(_: &Dims) -> (usize, PlanesFn) {
    unreachable!()
}

/// dw[c,u,v] = Σ_{n,i,j} dy[n,c,i,j] · x[n,c,i·s+u−p, j·s+v−p], summed over the batch:
/// k² vector accumulators per channel, parallel over blocks of channels.
///
/// Panics if the slice lengths don't match `g` or `g` is not depthwise.
pub fn backward_weight(x: &[f32], dy: &[f32], dw: &mut [f32], g: &ConvGeom) {
    backward_weight_with(Path::Auto, x, dy, dw, g);
}

fn backward_weight_with(path: Path, x: &[f32], dy: &[f32], dw: &mut [f32], g: &ConvGeom) {
    let d = Dims::new(g);
    let c = g.cin;
    let k2 = d.k * d.k;
    check_lens("x", x.len(), g.n * c * d.in_plane());
    check_lens("dy", dy.len(), g.n * c * d.out_plane());
    check_lens("dw", dw.len(), c * k2);
    if dw.is_empty() {
        return;
    }
    let (scratch, kernel): (usize, WeightFn) = if use_avx2(path, &d) {
        avx2_backward_weight(&d)
    } else {
        (portable::fwd_scratch(&d), portable::backward_weight_block)
    };
    let per_task = c.div_ceil(rayon::current_num_threads().max(1) * 8).max(1);
    let n = g.n;
    dw.par_chunks_mut(per_task * k2)
        .enumerate()
        .for_each(|(t, chunk)| {
            let mut buf = vec![0f32; scratch];
            let nc = chunk.len() / k2;
            // SAFETY: as in `run_planes`; the kernel reads planes (img·c + ch) of x and dy for its
            // channels and writes their k² gradients.
            unsafe { kernel(x, dy, t * per_task, nc, c, n, &d, chunk, &mut buf) };
        });
}

#[cfg(target_arch = "x86_64")]
fn avx2_backward_weight(d: &Dims) -> (usize, WeightFn) {
    if use_flat(d) {
        return match d.k {
            3 => (avx2::flat_scratch(d), avx2::backward_weight_flat::<3>),
            _ => (avx2::flat_scratch(d), avx2::backward_weight_flat::<5>),
        };
    }
    match (d.k, d.s) {
        (3, 1) => (
            avx2::fwd_scratch::<1>(d),
            avx2::backward_weight_block::<3, 1>,
        ),
        (3, 2) => (
            avx2::fwd_scratch::<2>(d),
            avx2::backward_weight_block::<3, 2>,
        ),
        (5, 1) => (
            avx2::fwd_scratch::<1>(d),
            avx2::backward_weight_block::<5, 1>,
        ),
        (5, 2) => (
            avx2::fwd_scratch::<2>(d),
            avx2::backward_weight_block::<5, 2>,
        ),
        _ => unreachable!("use_avx2 admits k ∈ {{3,5}}, s ∈ {{1,2}}"),
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn avx2_backward_weight(_: &Dims) -> (usize, WeightFn) {
    unreachable!()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conv::ConvParams;
    use crate::elementwise::as_uninit;
    use crate::reference::depthwise as reference;
    use crate::testutil::{assert_close, rand_vec, rng};

    const TOL: f32 = 1e-5;
    const PATHS: [Path; 3] = [Path::Auto, Path::Avx2, Path::Portable];

    fn geom(
        n: usize,
        c: usize,
        h: usize,
        w: usize,
        k: usize,
        s: usize,
        p: usize,
    ) -> Option<ConvGeom> {
        ConvGeom::new(
            "test",
            [n, c, h, w],
            &[c, 1, k, k],
            ConvParams::new(s, p, c),
        )
        .ok()
    }

    /// Runs all three passes on every path against the reference. Outputs start as NaN, so an
    /// element a kernel forgets to write fails the comparison.
    fn check(g: &ConvGeom, seed: u64) {
        let mut r = rng(seed);
        let (xl, yl, wl) = (
            g.n * g.cin * g.h * g.w,
            g.n * g.cin * g.out_h() * g.out_w(),
            g.cin * g.k * g.k,
        );
        let x = rand_vec(&mut r, xl);
        let w = rand_vec(&mut r, wl);
        let b = rand_vec(&mut r, g.cin);
        let dy = rand_vec(&mut r, yl);
        let bias = seed.is_multiple_of(2).then_some(&b[..]);
        let mut y_ref = vec![0f32; yl];
        let mut dx_ref = vec![0f32; xl];
        let mut dw_ref = vec![0f32; wl];
        reference::forward(&x, &w, bias, &mut y_ref, g);
        reference::backward_input(&dy, &w, &mut dx_ref, g);
        reference::backward_weight(&x, &dy, &mut dw_ref, g);
        let relu6 = seed.is_multiple_of(3);
        if relu6 {
            y_ref.iter_mut().for_each(|v| *v = v.clamp(0.0, 6.0));
        }
        for path in PATHS {
            let what = |pass: &str| format!("{pass} {path:?} {g:?} relu6 {relu6}");
            let mut y = vec![f32::NAN; yl];
            forward_with(path, &x, &w, bias, relu6, as_uninit(&mut y), g);
            assert_close(&y, &y_ref, TOL, &what("forward"));
            let mut dx = vec![f32::NAN; xl];
            backward_input_with(path, &dy, &w, as_uninit(&mut dx), g);
            assert_close(&dx, &dx_ref, TOL, &what("backward_input"));
            let mut dw = vec![f32::NAN; wl];
            backward_weight_with(path, &x, &dy, &mut dw, g);
            assert_close(&dw, &dw_ref, TOL, &what("backward_weight"));
        }
    }

    /// Many 56×56 planes per task (with up to 24 threads), each clamped by ReLU6.
    #[test]
    fn relu6_over_many_planes_per_task() {
        let g = geom(8, 150, 56, 56, 3, 1, 1).expect("valid geometry");
        check(&g, 3);
    }

    /// Every map × k × padding × stride, with channels and batch rotating through their lists so
    /// each value meets many shapes without the full (slow) cross product.
    #[test]
    fn matches_reference_on_many_shapes() {
        const CHANNELS: [usize; 5] = [1, 3, 7, 13, 32];
        const MAPS: [(usize, usize); 9] = [
            (1, 1),
            (2, 2),
            (4, 4),
            (5, 5),
            (7, 7),
            (8, 8),
            (9, 9),
            (13, 17),
            (56, 56),
        ];
        let mut idx = 0u64;
        let mut ran = 0;
        for (h, w) in MAPS {
            for k in [1, 3, 5, 7] {
                for p in [0, k / 2, k / 2 + 1] {
                    for s in [1, 2] {
                        idx += 1;
                        let mut c = CHANNELS[idx as usize % CHANNELS.len()];
                        let n = [1, 3][(idx as usize / CHANNELS.len()) % 2];
                        if h * w > 1000 {
                            c = c.min(3);
                        }
                        if let Some(g) = geom(n, c, h, w, k, s, p) {
                            check(&g, idx);
                            ran += 1;
                        }
                    }
                }
            }
        }
        assert!(ran > 150, "only {ran} shapes were valid");
    }

    /// The network's shapes, both channel/batch extremes, and odd sizes with stride 2.
    #[test]
    fn matches_reference_on_network_shapes() {
        let mut seed = 1000;
        for (n, c, hw, k, s) in [
            (3, 32, 8, 3, 1),
            (1, 13, 8, 3, 2),
            (3, 7, 4, 3, 1),
            (3, 32, 4, 5, 2),
            (1, 32, 7, 3, 1),
            (3, 13, 14, 3, 2),
            (1, 3, 56, 3, 2),
            (3, 1, 56, 5, 1),
            (1, 7, 29, 5, 2),
            (3, 3, 31, 3, 2),
            (1, 13, 15, 5, 2),
        ] {
            for p in [0, k / 2, k / 2 + 1] {
                seed += 1;
                let shapes = [geom(n, c, hw, hw, k, s, p), geom(n, c, hw, hw + 3, k, s, p)];
                for g in shapes.into_iter().flatten() {
                    check(&g, seed);
                }
            }
        }
    }

    /// Padding far beyond k/2 (whole output rows and columns see only zeros) and strides the
    /// AVX2 kernels don't cover.
    #[test]
    fn matches_reference_on_odd_geometry() {
        let mut seed = 2000;
        for (h, w, k, s, p) in [
            (5, 6, 3, 1, 4),
            (5, 6, 3, 2, 5),
            (3, 3, 5, 1, 6),
            (9, 4, 5, 2, 7),
            (2, 1, 3, 1, 3),
            (11, 10, 3, 3, 1),
            (12, 13, 5, 4, 2),
            (10, 10, 2, 2, 0),
            (9, 9, 4, 1, 2),
        ] {
            seed += 1;
            check(&geom(2, 3, h, w, k, s, p).unwrap(), seed);
        }
    }

    /// The AVX2 kernels really are what `Path::Auto` runs on this machine, so the tests above
    /// compare both implementations.
    #[test]
    fn avx2_path_is_taken_when_available() {
        let g = geom(1, 1, 8, 8, 3, 1, 1).unwrap();
        let d = Dims::new(&g);
        assert_eq!(
            use_avx2(Path::Auto, &d),
            crate::simd::avx2_fma() && cfg!(target_arch = "x86_64")
        );
        assert!(!use_avx2(Path::Portable, &d));
        // The AVX-512 forward takes planes of 16 columns and more, and only on `Path::Auto`.
        let wide = Dims::new(&geom(1, 1, 8, 16, 3, 1, 1).unwrap());
        assert_eq!(
            use_avx512(Path::Auto, &wide),
            use_avx2(Path::Auto, &d) && crate::simd::avx512()
        );
        assert!(!use_avx512(Path::Avx2, &wide) && !use_avx512(Path::Auto, &d));
        if !crate::simd::avx2_fma() {
            eprintln!(
                "note: no AVX2+FMA here (or DEPTHSHRINK_NO_SIMD set): only the portable path ran"
            );
        }
    }
}
