//! Direct depthwise convolution (groups == channels): forward, input gradient, weight gradient.
//! Never routed through GEMM: a depthwise layer does only k² multiply-adds per output, so it is
//! bound by memory traffic and loop overhead, and im2col would multiply the traffic by k².
//!
//! All three take an NCHW geometry with `g.groups == g.cin == g.cout` and slices of exactly
//! the sizes that geometry implies; outputs are overwritten, not accumulated.
//!
//! Dispatch: AVX2+FMA kernels (`avx2`) for k ∈ {3, 5} and stride ∈ {1, 2}, chosen at run time by
//! the SIMD level ([`crate::simd::level`], read once per call); the portable kernels
//! (`portable`) handle every other case and any CPU. At the AVX-512 level the forward pass of
//! those shapes runs `avx512` instead (16 lanes, the input
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

use crate::geometry::ConvGeom;
use crate::simd::{self, Level};

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod portable;
#[cfg(test)]
mod tests;

/// The geometry of one plane's convolution: an `h×w` input, an `oh×ow` output, a `k×k` kernel,
/// stride `s` and padding `p`.
#[derive(Clone, Copy, Debug)]
struct PlaneGeom {
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
    k: usize,
    s: usize,
    p: usize,
}

impl PlaneGeom {
    fn new(g: &ConvGeom) -> PlaneGeom {
        assert!(
            g.groups == g.cin && g.cin == g.cout,
            "depthwise: groups ({}) must equal cin ({}) and cout ({})",
            g.groups,
            g.cin,
            g.cout
        );
        PlaneGeom {
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

/// Where a plane is copied in a kernel's scratch buffer: `rows` rows of `pitch` floats, with the
/// plane's element (r, c) at (r·dil + off, c·dil + off), `dil` being the kernel's to choose
/// (portable input gradient: the stride) or 1; whatever lands outside is dropped (a negative
/// `off` crops).
#[derive(Clone, Copy, Debug)]
struct Padded {
    rows: usize,
    pitch: usize,
    off: isize,
}

/// What every plane of a forward or input-gradient call shares: the per-channel `k×k` weights
/// (and bias), the ReLU6 clamp, the channel count and the plane geometry. The input gradient
/// has no bias and no clamp.
#[derive(Clone, Copy)]
struct PlaneJob<'a> {
    w: &'a [f32],
    bias: Option<&'a [f32]>,
    relu6: bool,
    chans: usize,
    d: PlaneGeom,
}

/// A kernel over a task's contiguous run of planes: `(job, src, dst, first, scratch)`, `src`
/// planes in (input planes for the forward pass, output gradients for the input gradient), `dst`
/// planes out, the first being plane `first` of the tensor, and zeroed scratch of the length the
/// kernel asked for. `dst` may be uninitialised: a kernel writes every element of it exactly once
/// (clamped to [0, 6] if the job says `relu6`) and never reads it. The slices are parameters of
/// their own, not fields of a struct, because only then does the compiler know that `dst`
/// aliases nothing the kernel reads: with them in a struct, the AVX-512 forward spilled its
/// weights and ran ~10% slower.
type PlanesFn = unsafe fn(&PlaneJob, &[f32], &mut [MaybeUninit<f32>], usize, &mut [f32]);

/// What every block of channels of a weight-gradient call shares: `images` images of `chans`
/// channels (channel c's planes are `img·chans + c` of `x` and `dy`), and the plane geometry.
#[derive(Clone, Copy)]
struct WeightJob {
    chans: usize,
    images: usize,
    d: PlaneGeom,
}

/// A weight-gradient kernel: `(job, x, dy, c0, dw, scratch)`, over the whole `x` and `dy`
/// tensors for the block of channels from `c0` whose `k²` gradients each `dw` holds, with zeroed
/// scratch as [`PlanesFn`] (and its slices as parameters of their own for the same reason).
type WeightFn = unsafe fn(&WeightJob, &[f32], &[f32], usize, &mut [f32], &mut [f32]);

/// Small "same" stride-1 planes run the AVX2 flat kernels (vectorised over the flattened plane):
/// below 16 columns rows waste lanes or pay per-row overhead.
fn use_flat(d: &PlaneGeom) -> bool {
    d.s == 1 && 2 * d.p + 1 == d.k && d.w < 16
}

/// AVX2 kernels exist for these shapes only, and run at the AVX2 level and above.
fn use_avx2(level: Level, d: &PlaneGeom) -> bool {
    debug_assert!(level <= simd::host_level(), "{level} beyond this CPU");
    cfg!(target_arch = "x86_64")
        && level >= Level::Avx2
        && (d.k == 3 || d.k == 5)
        && (d.s == 1 || d.s == 2)
}

/// The AVX-512 forward covers the AVX2 kernels' shapes but the flat ones, where its 16-lane
/// rows would run mostly empty (7×7 planes: 1.5-1.7× the flat kernel's time).
fn use_avx512(level: Level, d: &PlaneGeom) -> bool {
    use_avx2(level, d) && level >= Level::Avx512 && !use_flat(d)
}

/// Planes per rayon task: about 8 tasks per thread for balance, each a contiguous run of planes
/// so it streams memory in order and allocates its scratch once.
fn planes_per_task(planes: usize) -> usize {
    planes
        .div_ceil(rayon::current_num_threads().max(1) * 8)
        .max(1)
}

/// Calls `f(src plane, dst plane, channel)` for each plane of a kernel's run ([`PlanesFn`]);
/// `forward` says whether src holds input planes (forward) or output planes (input gradient).
/// Inlined into each kernel's entry point so the per-plane work is inlined too.
#[inline(always)]
fn each_plane(
    job: &PlaneJob,
    (src, dst, first): (&[f32], &mut [MaybeUninit<f32>], usize),
    forward: bool,
    mut f: impl FnMut(&[f32], &mut [MaybeUninit<f32>], usize),
) {
    let d = &job.d;
    let (sp, dp) = if forward {
        (d.in_plane(), d.out_plane())
    } else {
        (d.out_plane(), d.in_plane())
    };
    let mut c = first % job.chans;
    for (src, dst) in src.chunks_exact(sp).zip(dst.chunks_exact_mut(dp)) {
        f(src, dst, c);
        c += 1;
        if c == job.chans {
            c = 0;
        }
    }
}

/// Runs `kernel` (with `scratch` floats of zeroed scratch per task) over every plane in
/// parallel, in contiguous runs of planes, from `src` into a `dst` that need not be initialised
/// (every kernel writes each element of its planes exactly once, never reading them); `forward`
/// as in [`each_plane`].
fn run_planes(
    job: &PlaneJob,
    src: &[f32],
    dst: &mut [MaybeUninit<f32>],
    forward: bool,
    (scratch, kernel): (usize, PlanesFn),
) {
    if dst.is_empty() {
        return;
    }
    let (src_plane, dst_plane) = if forward {
        (job.d.in_plane(), job.d.out_plane())
    } else {
        (job.d.out_plane(), job.d.in_plane())
    };
    let per_task = planes_per_task(dst.len() / dst_plane);
    dst.par_chunks_mut(per_task * dst_plane)
        .enumerate()
        .for_each(|(t, run)| {
            let mut buf = vec![0f32; scratch];
            let first = t * per_task;
            let src = &src[first * src_plane..][..run.len() / dst_plane * src_plane];
            // SAFETY: `kernel` was chosen for this level and geometry (SIMD kernels only when
            // `use_avx2` / `use_avx512` hold, at a level this CPU has); slices hold whole planes
            // of the sizes `job.d` implies, and `buf` is zeroed scratch of the length that kernel
            // asked for, for this geometry.
            unsafe { kernel(job, src, run, first, &mut buf) };
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

/// `y[n,c] = x[n,c] ⋆ w[c] (+ bias[c])`, the bias fused into the accumulator's initial value,
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
    forward_at(simd::level(), x, w, bias, relu6, y, g);
}

/// [`forward`] at `level` (a level from [`simd::level`]).
pub(crate) fn forward_at(
    level: Level,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    relu6: bool,
    y: &mut [MaybeUninit<f32>],
    g: &ConvGeom,
) {
    let d = PlaneGeom::new(g);
    let c = g.cin;
    check_lens("x", x.len(), g.n * c * d.in_plane());
    check_lens("w", w.len(), c * d.k * d.k);
    check_lens("y", y.len(), g.n * c * d.out_plane());
    if let Some(b) = bias {
        check_lens("bias", b.len(), c);
    }
    let kernel: (usize, PlanesFn) = if use_avx512(level, &d) {
        avx512_forward(&d)
    } else if use_avx2(level, &d) {
        avx2_forward(&d)
    } else {
        (portable::fwd_scratch(&d), portable::forward)
    };
    let job = PlaneJob {
        w,
        bias,
        relu6,
        chans: c,
        d,
    };
    run_planes(&job, x, y, true, kernel);
}

#[cfg(target_arch = "x86_64")]
fn avx2_forward(d: &PlaneGeom) -> (usize, PlanesFn) {
    if use_flat(d) {
        return match d.k {
            3 => (avx2::flat_scratch(d), avx2::flat_run::<3, false>),
            _ => (avx2::flat_scratch(d), avx2::flat_run::<5, false>),
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
fn avx2_forward(_: &PlaneGeom) -> (usize, PlanesFn) {
    unreachable!()
}

#[cfg(target_arch = "x86_64")]
fn avx512_forward(d: &PlaneGeom) -> (usize, PlanesFn) {
    match (d.k, d.s) {
        (3, 1) => (avx512::fwd_scratch(d), avx512::forward::<3, 1>),
        (3, 2) => (avx512::fwd_scratch(d), avx512::forward::<3, 2>),
        (5, 1) => (avx512::fwd_scratch(d), avx512::forward::<5, 1>),
        (5, 2) => (avx512::fwd_scratch(d), avx512::forward::<5, 2>),
        _ => unreachable!("use_avx512 admits k ∈ {{3,5}}, s ∈ {{1,2}}"),
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn avx512_forward(_: &PlaneGeom) -> (usize, PlanesFn) {
    unreachable!()
}

/// dx = dy ⋆ rot180(w): for stride 1 the forward row kernel on dy padded by k−1−p; for stride 2
/// (AVX2) a gather per output phase, each dx element written once; otherwise (portable) the
/// correlation of the stride-dilated dy. `dx` need not be initialised: every element is written.
///
/// Panics if the slice lengths don't match `g` or `g` is not depthwise.
pub fn backward_input(dy: &[f32], w: &[f32], dx: &mut [MaybeUninit<f32>], g: &ConvGeom) {
    backward_input_at(simd::level(), dy, w, dx, g);
}

/// [`backward_input`] at `level` (a level from [`simd::level`]).
pub(crate) fn backward_input_at(
    level: Level,
    dy: &[f32],
    w: &[f32],
    dx: &mut [MaybeUninit<f32>],
    g: &ConvGeom,
) {
    let d = PlaneGeom::new(g);
    let c = g.cin;
    check_lens("dy", dy.len(), g.n * c * d.out_plane());
    check_lens("w", w.len(), c * d.k * d.k);
    check_lens("dx", dx.len(), g.n * c * d.in_plane());
    let kernel: (usize, PlanesFn) = if use_avx2(level, &d) {
        avx2_backward_input(&d)
    } else {
        (portable::bwd_input_scratch(&d), portable::backward_input)
    };
    let job = PlaneJob {
        w,
        bias: None,
        relu6: false,
        chans: c,
        d,
    };
    run_planes(&job, dy, dx, false, kernel);
}

#[cfg(target_arch = "x86_64")]
fn avx2_backward_input(d: &PlaneGeom) -> (usize, PlanesFn) {
    if use_flat(d) {
        return match d.k {
            3 => (avx2::flat_scratch(d), avx2::flat_run::<3, true>),
            _ => (avx2::flat_scratch(d), avx2::flat_run::<5, true>),
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
fn avx2_backward_input(_: &PlaneGeom) -> (usize, PlanesFn) {
    unreachable!()
}

/// `dw[c,u,v] = Σ_{n,i,j} dy[n,c,i,j] · x[n,c,i·s+u−p, j·s+v−p]`, summed over the batch:
/// k² vector accumulators per channel, parallel over blocks of channels.
///
/// Panics if the slice lengths don't match `g` or `g` is not depthwise.
pub fn backward_weight(x: &[f32], dy: &[f32], dw: &mut [f32], g: &ConvGeom) {
    backward_weight_at(simd::level(), x, dy, dw, g);
}

/// [`backward_weight`] at `level` (a level from [`simd::level`]).
pub(crate) fn backward_weight_at(
    level: Level,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    g: &ConvGeom,
) {
    let d = PlaneGeom::new(g);
    let c = g.cin;
    let k2 = d.k * d.k;
    check_lens("x", x.len(), g.n * c * d.in_plane());
    check_lens("dy", dy.len(), g.n * c * d.out_plane());
    check_lens("dw", dw.len(), c * k2);
    if dw.is_empty() {
        return;
    }
    let (scratch, kernel): (usize, WeightFn) = if use_avx2(level, &d) {
        avx2_backward_weight(&d)
    } else {
        (portable::fwd_scratch(&d), portable::backward_weight_block)
    };
    let job = WeightJob {
        chans: c,
        images: g.n,
        d,
    };
    let per_task = c.div_ceil(rayon::current_num_threads().max(1) * 8).max(1);
    dw.par_chunks_mut(per_task * k2)
        .enumerate()
        .for_each(|(t, chunk)| {
            let mut buf = vec![0f32; scratch];
            // SAFETY: as in `run_planes`; the kernel reads planes (img·c + ch) of x and dy for its
            // channels and writes their k² gradients.
            unsafe { kernel(&job, x, dy, t * per_task, chunk, &mut buf) };
        });
}

#[cfg(target_arch = "x86_64")]
fn avx2_backward_weight(d: &PlaneGeom) -> (usize, WeightFn) {
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
fn avx2_backward_weight(_: &PlaneGeom) -> (usize, WeightFn) {
    unreachable!()
}
