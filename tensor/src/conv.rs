//! Dense and grouped 2-D convolution over NCHW tensors, forward and both backward passes.
//!
//! Dispatch: 1×1 with stride 1 and no padding → GEMM straight on the image (`[Cout,Cin]·[Cin,HW]`,
//! no copy); groups == channels → the direct kernels in [`crate::depthwise`]; everything else →
//! im2col + GEMM, tiled over output rows so the column buffer stays within one core's L2.
//!
//! Parallelism (one level, [`crate::parallel`]): forward and input gradient split into
//! independent tasks over (image, group, output tile or input-channel block), each calling a
//! single-threaded GEMM; the weight gradient folds (image, tile) items into one partial sum per
//! rayon split. Batch 1 splits output tiles, so it uses every core too. Called from inside
//! another kernel's task, everything runs on that task's thread.

use std::cell::Cell;
use std::mem::MaybeUninit;

use rayon::prelude::*;

use crate::elementwise::as_uninit;
use crate::gemm::{
    Epilogue, PackedLhs, PackedRhs, RhsLayout, SendPtr, TILE_COLS, extent, sgemm, sgemm_raw,
};
use crate::{Result, Tensor, TensorError};
use crate::{depthwise, parallel, simd};

/// Stride, zero padding (same on all four sides) and groups of a square-kernel convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvParams {
    pub stride: usize,
    pub pad: usize,
    pub groups: usize,
}

impl ConvParams {
    pub fn new(stride: usize, pad: usize, groups: usize) -> Self {
        ConvParams {
            stride,
            pad,
            groups,
        }
    }
}

/// The full geometry of one convolution call: what every kernel needs, checked once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeom {
    pub n: usize,
    pub cin: usize,
    pub h: usize,
    pub w: usize,
    pub cout: usize,
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
    pub groups: usize,
}

impl ConvGeom {
    /// Checks the input shape `[n, cin, h, w]` against the weight shape `[cout, cin/groups, k, k]`.
    pub fn new(
        op: &'static str,
        x: [usize; 4],
        weight: &[usize],
        p: ConvParams,
    ) -> Result<ConvGeom> {
        let [n, cin, h, w] = x;
        let &[cout, cin_g, kh, kw] = weight else {
            return Err(TensorError::shape(
                op,
                format!("weight must be Cout×Cin/g×k×k, got {weight:?}"),
            ));
        };
        if kh != kw {
            return Err(TensorError::shape(
                op,
                format!("only square kernels are supported, got {kh}×{kw}"),
            ));
        }
        if p.stride == 0 || p.groups == 0 || kh == 0 {
            return Err(TensorError::argument(
                op,
                format!("stride, groups and kernel size must be ≥ 1 ({p:?}, k={kh})"),
            ));
        }
        if cin % p.groups != 0 || cout % p.groups != 0 || cin / p.groups != cin_g {
            return Err(TensorError::shape(
                op,
                format!(
                    "input has {cin} channels, weight {weight:?} with groups={} needs {}",
                    p.groups,
                    cin_g * p.groups
                ),
            ));
        }
        if h + 2 * p.pad < kh || w + 2 * p.pad < kw {
            return Err(TensorError::shape(
                op,
                format!(
                    "{h}×{w} input with padding {} is smaller than the {kh}×{kw} kernel",
                    p.pad
                ),
            ));
        }
        Ok(ConvGeom {
            n,
            cin,
            h,
            w,
            cout,
            k: kh,
            stride: p.stride,
            pad: p.pad,
            groups: p.groups,
        })
    }

    pub fn out_h(&self) -> usize {
        (self.h + 2 * self.pad - self.k) / self.stride + 1
    }

    pub fn out_w(&self) -> usize {
        (self.w + 2 * self.pad - self.k) / self.stride + 1
    }

    pub fn is_depthwise(&self) -> bool {
        self.groups == self.cin && self.groups == self.cout && self.groups > 1
    }

    pub fn weight_shape(&self) -> [usize; 4] {
        [self.cout, self.cin / self.groups, self.k, self.k]
    }

    pub fn output_shape(&self) -> [usize; 4] {
        [self.n, self.cout, self.out_h(), self.out_w()]
    }

    /// Multiply-adds of the forward pass (the backward passes cost the same each).
    pub fn macs(&self) -> u64 {
        let per_out = (self.cin / self.groups * self.k * self.k) as u64;
        (self.n * self.cout * self.out_h() * self.out_w()) as u64 * per_out
    }
}

/// Largest per-task working set (column buffer plus output block), in floats: 512 KiB, within
/// one core's L2. An untiled im2col streams the whole column matrix through memory twice and was
/// measured 6× slower elsewhere.
const TILE_BUDGET: usize = 1 << 17;

/// Outputs of at least this many floats (16 MiB) are written with non-temporal stores: they
/// cannot stay cached for the next layer anyway, and streaming skips the read-for-ownership
/// that doubles a normal store's memory traffic (measured 1.6× faster writes on this machine).
const STREAM_MIN: usize = 1 << 22;

/// Tasks per pool thread that a split aims for: with spare tasks a core slowed by other load
/// does not hold up the whole call.
const TASKS_PER_THREAD: usize = 4;

/// Output positions below which a tile is not narrowed, for parallelism or the budget: each
/// tile's GEMM packs the weight again, and narrower ones lose more to that than they gain.
const MIN_TILE: usize = 256;

/// Columns a small-map product aims at ([`forward_small_maps`]): four micro-tiles wide.
const WIDE_PRODUCT: usize = 128;

/// y = conv(x, w) + bias, NCHW. Bias, when given, has shape `[cout]`.
pub fn conv2d(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, p: ConvParams) -> Result<Tensor> {
    conv2d_act(x, w, bias, p, false)
}

/// [`conv2d`], then ReLU6 when `relu6`: the clamp runs on each output block while it is still in
/// cache (inference with folded batch norms), not as a second pass over memory.
pub fn conv2d_act(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    p: ConvParams,
    relu6: bool,
) -> Result<Tensor> {
    forward_tensor("conv2d", x, (w, None), bias, p, relu6)
}

/// The shape checks and output allocation of [`conv2d_act`] and [`conv2d_act_packed`].
fn forward_tensor(
    op: &'static str,
    x: &Tensor,
    (w, packs): (&Tensor, Option<&[PackedLhs]>),
    bias: Option<&Tensor>,
    p: ConvParams,
    relu6: bool,
) -> Result<Tensor> {
    let g = ConvGeom::new(op, x.nchw(op)?, w.shape(), p)?;
    if let Some(b) = bias
        && b.shape() != [g.cout]
    {
        return Err(TensorError::shape(
            op,
            format!("bias {:?} for {} output channels", b.shape(), g.cout),
        ));
    }
    let out = g.output_shape();
    let wp = (w.data(), packs);
    let y = output_vec(out.iter().product(), |y| {
        forward_uninit(x.data(), wp, bias.map(Tensor::data), relu6, y, &g)
    });
    Tensor::from_vec(&out, y)
}

/// A conv weight with its GEMM operand packed once per group, for inference with fixed weights
/// ([`conv2d_act_packed`]): at batch 1, packing the weight was ~11% of a MobileNetV2 forward.
#[derive(Clone)]
pub struct PackedWeight {
    weight: Tensor,
    groups: usize,
    packs: Vec<PackedLhs>,
}

impl PackedWeight {
    /// Packs `w` (`[cout, cin/groups, k, k]`), or `None` when no GEMM would read the packing:
    /// depthwise weights, CPUs without the AVX-512 kernel, or a malformed shape.
    pub fn new(w: &Tensor, groups: usize) -> Option<PackedWeight> {
        let &[cout, cin_g, k, _] = w.shape() else {
            return None;
        };
        if groups == 0 || cout % groups != 0 || cin_g == 1 && cout == groups && groups > 1 {
            return None;
        }
        let (rows, cols) = (cout / groups, cin_g * k * k);
        let packs = w
            .data()
            .chunks_exact(rows * cols)
            .map(|wg| PackedLhs::new(rows, cols, wg, cols, 1))
            .collect::<Option<Vec<_>>>()?;
        Some(PackedWeight {
            weight: w.clone(),
            groups,
            packs,
        })
    }

    /// True when this is a packing of `w` with `groups`: same storage, so `w` cannot have been
    /// written since (a write would have copied it).
    pub fn packs(&self, w: &Tensor, groups: usize) -> bool {
        self.weight.shares_storage(w) && self.weight.shape() == w.shape() && self.groups == groups
    }
}

/// [`conv2d_act`] with a prepacked weight (`p.groups` must be the packing's).
pub fn conv2d_act_packed(
    x: &Tensor,
    w: &PackedWeight,
    bias: Option<&Tensor>,
    p: ConvParams,
    relu6: bool,
) -> Result<Tensor> {
    const OP: &str = "conv2d_packed";
    if p.groups != w.groups {
        return Err(TensorError::argument(
            OP,
            format!(
                "weight packed for {} groups, called with {}",
                w.groups, p.groups
            ),
        ));
    }
    let packs = Some(w.packs.as_slice());
    forward_tensor(OP, x, (&w.weight, packs), bias, p, relu6)
}

/// Gradient of [`conv2d`] with respect to its input of shape `x_shape`.
pub fn conv2d_backward_input(
    dy: &Tensor,
    w: &Tensor,
    x_shape: [usize; 4],
    p: ConvParams,
) -> Result<Tensor> {
    const OP: &str = "conv2d_backward_input";
    let g = ConvGeom::new(OP, x_shape, w.shape(), p)?;
    expect_output_shape(OP, dy, &g)?;
    let dx = output_vec(x_shape.iter().product(), |dx| {
        backward_input_uninit(dy.data(), w.data(), dx, &g)
    });
    Tensor::from_vec(&x_shape, dx)
}

/// Gradient of [`conv2d`] with respect to its `k×k` weight: shape `[cout, cin/groups, k, k]`,
/// with `cout` taken from `dy`.
pub fn conv2d_backward_weight(x: &Tensor, dy: &Tensor, k: usize, p: ConvParams) -> Result<Tensor> {
    const OP: &str = "conv2d_backward_weight";
    let x_shape = x.nchw(OP)?;
    let cout = dy.nchw(OP)?[1];
    let w_shape = [cout, x_shape[1] / p.groups.max(1), k, k];
    let g = ConvGeom::new(OP, x_shape, &w_shape, p)?;
    expect_output_shape(OP, dy, &g)?;
    let mut dw = vec![0.0; w_shape.iter().product()];
    backward_weight(x.data(), dy.data(), &mut dw, &g);
    Tensor::from_vec(&w_shape, dw)
}

/// Gradient of [`conv2d`] with respect to its bias: `dy` summed over batch and space, `[cout]`.
pub fn conv2d_backward_bias(dy: &Tensor) -> Result<Tensor> {
    let [_, c, h, w] = dy.nchw("conv2d_backward_bias")?;
    let mut db = vec![0.0; c];
    backward_bias(dy.data(), &mut db, h * w);
    Tensor::from_vec(&[c], db)
}

/// An output buffer of `len` floats, filled by `fill`, which must write every element (the conv
/// kernels do; their tests start outputs as NaN to prove it). Not zeroed first: zeroing a
/// buffer the kernel then overwrites was 6% of a training step and 14% of batch-32 inference.
/// A fresh multi-megabyte buffer costs one page fault per 4 KiB on first
/// write (~5 µs each on this VM: ~35 ms for a 57 MB batch output, more than the 1×1 convolution
/// writing it), so large ones ask Linux for transparent huge pages first (measured 2× faster
/// allocate-and-fill). Belongs in `Tensor`'s allocator once that has one.
fn output_vec(len: usize, fill: impl FnOnce(&mut [MaybeUninit<f32>])) -> Vec<f32> {
    let mut v = Vec::with_capacity(len);
    #[cfg(target_os = "linux")]
    if len >= STREAM_MIN {
        const HUGE: usize = 2 << 20;
        const MADV_HUGEPAGE: i32 = 14;
        unsafe extern "C" {
            fn madvise(addr: *mut std::ffi::c_void, len: usize, advice: i32) -> i32;
        }
        let start = (v.as_ptr() as usize).next_multiple_of(HUGE);
        let end = (v.as_ptr() as usize + len * 4) / HUGE * HUGE;
        if end > start {
            // SAFETY: a hint on whole pages inside `v`'s allocation; it changes no contents
            // (nothing has been written yet) and a failure is harmless, so it is ignored.
            let _ = unsafe { madvise(start as *mut std::ffi::c_void, end - start, MADV_HUGEPAGE) };
        }
    }
    fill(&mut v.spare_capacity_mut()[..len]);
    // SAFETY: `fill` wrote all `len` elements (the contract above).
    unsafe { v.set_len(len) };
    v
}

fn expect_output_shape(op: &'static str, dy: &Tensor, g: &ConvGeom) -> Result<()> {
    if dy.shape() != g.output_shape() {
        return Err(TensorError::shape(
            op,
            format!(
                "output gradient {:?}, but the convolution produces {:?}",
                dy.shape(),
                g.output_shape()
            ),
        ));
    }
    Ok(())
}

/// Sizes derived from a geometry, shared by the three passes.
struct Dims {
    cin_g: usize,
    cout_g: usize,
    /// k·k: column rows per input channel.
    kk: usize,
    /// cin_g·k·k: the GEMM inner dimension of the forward pass.
    kc: usize,
    ow: usize,
    ohw: usize,
    hw: usize,
    /// 1×1, stride 1, no padding: the image already is its column matrix.
    pointwise: bool,
}

impl Dims {
    fn new(g: &ConvGeom) -> Dims {
        let kk = g.k * g.k;
        Dims {
            cin_g: g.cin / g.groups,
            cout_g: g.cout / g.groups,
            kk,
            kc: g.cin / g.groups * kk,
            ow: g.out_w(),
            ohw: g.out_h() * g.out_w(),
            hw: g.h * g.w,
            pointwise: g.k == 1 && g.stride == 1 && g.pad == 0,
        }
    }

    /// Positions per output tile: whole output rows (or any 16 positions when pointwise), at
    /// most `TILE_BUDGET` floats of per-task buffers holding `rows` values per position, and
    /// small enough that a plane yields `splits` tiles; but never below `MIN_TILE` positions,
    /// where every tile's GEMM would re-pack the whole weight for too little work.
    fn tile(&self, rows: usize, splits: usize) -> usize {
        let unit = if self.pointwise { 16 } else { self.ow };
        let budget = TILE_BUDGET / rows.max(1);
        let split = self.ohw.div_ceil(splits);
        let len = budget.min(split).max(MIN_TILE);
        (len / unit).max(1).saturating_mul(unit).min(self.ohw)
    }
}

/// How many tasks a split should aim for: none inside another kernel's task (one level only)
/// or with a one-thread pool.
fn wanted_tasks() -> usize {
    if parallel::may_split() {
        TASKS_PER_THREAD * rayon::current_num_threads()
    } else {
        1
    }
}

/// Runs `f(0..count)` across the rayon pool, or inline inside another kernel's task or for one
/// task (a lone task's GEMM can then split itself across the pool).
fn run_tasks(count: usize, f: impl Fn(usize) + Sync + Send) {
    if count > 1 && wanted_tasks() > 1 {
        (0..count)
            .into_par_iter()
            .for_each(|i| parallel::task(|| f(i)));
    } else {
        (0..count).for_each(f);
    }
}

thread_local! {
    static SCRATCH: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

/// Floats per cache line.
const LINE: usize = simd::LINE_FLOATS;

/// Runs `f` on this thread's reusable scratch buffer of `len` floats (contents unspecified).
/// Taken out of its cell for the call, so even a re-entrant use could not alias it.
fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    let mut buf = SCRATCH.take();
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    let r = f(&mut buf[..len]);
    SCRATCH.set(buf);
    r
}

/// [`with_scratch`] split in two: `col` floats starting on a cache line (a packed GEMM operand,
/// which the kernel reads with aligned loads), then `rest` floats.
fn with_col_scratch<R>(col: usize, rest: usize, f: impl FnOnce(&mut [f32], &mut [f32]) -> R) -> R {
    with_scratch(LINE + col + rest, |buf| {
        let skip = buf.as_ptr().align_offset(4 * LINE).min(LINE);
        let (col, tail) = buf[skip..].split_at_mut(col);
        f(col, &mut tail[..rest])
    })
}

fn check_lens(g: &ConvGeom, x: usize, w: usize, y: usize) {
    let [n, c, oh, ow] = g.output_shape();
    assert_eq!(x, g.n * g.cin * g.h * g.w, "conv: input slice length");
    assert_eq!(
        w,
        g.weight_shape().iter().product(),
        "conv: weight slice length"
    );
    assert_eq!(y, n * c * oh * ow, "conv: output slice length");
}

/// Forward pass on slices sized by `g` (then ReLU6 if `relu6`); `y` is overwritten.
pub fn forward(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    relu6: bool,
    y: &mut [f32],
    g: &ConvGeom,
) {
    forward_uninit(x, (w, None), bias, relu6, as_uninit(y), g)
}

/// [`forward`] into a buffer that need not be initialised: every element is written. The weight
/// may come with its groups' GEMM operands prepacked.
fn forward_uninit(
    x: &[f32],
    (w, packed): (&[f32], Option<&[PackedLhs]>),
    bias: Option<&[f32]>,
    relu6: bool,
    y: &mut [MaybeUninit<f32>],
    g: &ConvGeom,
) {
    check_lens(g, x.len(), w.len(), y.len());
    if let Some(b) = bias {
        assert_eq!(b.len(), g.cout, "conv: bias slice length");
    }
    if g.is_depthwise() {
        return depthwise::forward(x, w, bias, relu6, y, g);
    }
    let d = Dims::new(g);
    if let Some(imgs) = images_per_product(g, &d) {
        return forward_small_maps(x, (w, packed), bias, relu6, y, g, &d, imgs);
    }
    let col_rows = if d.pointwise { 0 } else { d.kc };
    let stream = streams(y.len());
    let tile = d.tile(
        col_rows + d.cout_g,
        wanted_tasks().div_ceil((g.n * g.groups).max(1)),
    );
    // im2col writes its columns straight into the GEMM kernel's packed layout where there is
    // one, so the product skips packing them (a pass over the whole column matrix).
    let tiles = d.ohw.div_ceil(tile);
    let y = SendPtr::new(y.as_mut_ptr().cast::<f32>());
    run_tasks(g.n * g.groups * tiles, |t| {
        let (plane, p0) = (t / tiles, t % tiles * tile);
        let (img, grp) = (plane / g.groups, plane % g.groups);
        let len = tile.min(d.ohw - p0);
        let xg = &x[(img * g.cin + grp * d.cin_g) * d.hw..][..d.cin_g * d.hw];
        let wg = &w[grp * d.cout_g * d.kc..][..d.cout_g * d.kc];
        let epilogue = Epilogue {
            bias: bias.map(|b| &b[grp * d.cout_g..][..d.cout_g]),
            relu6,
        };
        let y0 = (img * g.cout + grp * d.cout_g) * d.ohw + p0;
        let out_rows = if stream { d.cout_g } else { 0 };
        let layout = RhsLayout::new(d.kc, len).filter(|_| !d.pointwise);
        let col_len = layout.map_or(col_rows * len, |l| l.len());
        with_col_scratch(col_len, len + out_rows * len, |col, rest| {
            let (row, out) = rest.split_at_mut(len);
            let (r0, nr) = (p0 / d.ow, len / d.ow);
            let b = if d.pointwise {
                prefetch(&xg[p0..], d.cin_g, len, d.hw);
                Rhs::Strided(&xg[p0..], d.hw)
            } else if let Some(l) = layout {
                im2col_packed([xg].into_iter(), g, &d, (r0, nr), (l, col), row);
                Rhs::Packed(PackedRhs::new(l, col))
            } else {
                im2col(xg, g, &d, r0, nr, col);
                Rhs::Strided(col, len)
            };
            let block = Block {
                out: y.get().wrapping_add(y0),
                ld: d.ohw,
                scratch: stream.then_some(out),
            };
            // SAFETY: the block is rows [grp·cout_g, +cout_g) × positions [p0, p0+len) of image
            // `img`: inside `y` (length checked) and disjoint from every other task's block.
            let a = (wg, d.kc, 1, packed.map(|p| &p[grp]));
            unsafe { block.product(d.cout_g, d.kc, len, a, b, epilogue) };
        });
    });
}

/// The right operand of a block's product: `k×len` with the given row stride and contiguous
/// rows, or already in the GEMM kernel's packed layout.
enum Rhs<'a> {
    Strided(&'a [f32], usize),
    Packed(PackedRhs<'a>),
}

/// How many images share one product's columns in [`forward_small_maps`], for maps narrower
/// than the GEMM's micro-tile (`None`: one product per image, the usual path).
fn images_per_product(g: &ConvGeom, d: &Dims) -> Option<usize> {
    if g.groups != 1 || d.ohw >= TILE_COLS || g.n < 2 || RhsLayout::new(d.kc, d.ohw).is_none() {
        return None;
    }
    let per_thread = g.n.div_ceil(rayon::current_num_threads().max(1));
    let imgs = (WIDE_PRODUCT / d.ohw).min(per_thread);
    (imgs > 1).then_some(imgs)
}

/// Forward pass for maps smaller than the GEMM's micro-tile (32 columns): one image's product
/// would fill only `ohw` of them (a 1×1 map: one), which wastes most of every tile and, for
/// a merged block's dense conv with its 9× deeper inner dimension, made merging a loss on small
/// maps. Each task puts `imgs` images side by side in the columns of one product, written
/// straight into the kernel's packed layout, computes it (epilogue included) into scratch and
/// copies each row's per-image segments to their NCHW planes. The sums are those of the
/// one-image path, term for term.
#[allow(clippy::too_many_arguments)]
fn forward_small_maps(
    x: &[f32],
    (w, packed): (&[f32], Option<&[PackedLhs]>),
    bias: Option<&[f32]>,
    relu6: bool,
    y: &mut [MaybeUninit<f32>],
    g: &ConvGeom,
    d: &Dims,
    imgs: usize,
) {
    let y = SendPtr::new(y.as_mut_ptr().cast::<f32>());
    let epilogue = Epilogue { bias, relu6 };
    run_tasks(g.n.div_ceil(imgs), |t| {
        let images = t * imgs..((t + 1) * imgs).min(g.n);
        let cols = images.len() * d.ohw;
        let layout = RhsLayout::new(d.kc, cols).expect("images_per_product checked the layout");
        with_col_scratch(layout.len(), cols + g.cout * cols, |col, rest| {
            let (row, out) = rest.split_at_mut(cols);
            let inputs = images
                .clone()
                .map(|img| &x[img * g.cin * d.hw..][..g.cin * d.hw]);
            im2col_packed(inputs, g, d, (0, d.ohw / d.ow), (layout, col), row);
            let b = PackedRhs::new(layout, col);
            let (kc, n) = (d.kc as isize, cols as isize);
            let a = packed.map(|p| &p[0]);
            // SAFETY: W is cout×kc row-major (its length was checked), B is the packed operand
            // and C this task's scratch of cout×cols floats.
            unsafe {
                sgemm_raw(
                    g.cout,
                    d.kc,
                    cols,
                    1.0,
                    w.as_ptr(),
                    kc,
                    1,
                    a,
                    std::ptr::null(),
                    0,
                    0,
                    Some(&b),
                    0.0,
                    out.as_mut_ptr(),
                    n,
                    1,
                    epilogue,
                )
            };
            for (co, out_row) in out.chunks_exact(cols).enumerate() {
                for (seg, img) in out_row.chunks_exact(d.ohw).zip(images.clone()) {
                    // SAFETY: plane (img, co) lies inside `y` (its length was checked) and only
                    // this task, which owns image `img`, writes it.
                    unsafe {
                        let dst = y.get().add((img * g.cout + co) * d.ohw);
                        std::ptr::copy_nonoverlapping(seg.as_ptr(), dst, d.ohw)
                    };
                }
            }
        });
    });
}

/// Where a task's `rows×len` output block goes: row stride `ld` from `out`, computed in place, or
/// in `scratch` first and streamed out (see [`STREAM_MIN`]).
struct Block<'a> {
    out: *mut f32,
    ld: usize,
    scratch: Option<&'a mut [f32]>,
}

impl Block<'_> {
    /// Writes `a·b` and its [`Epilogue`] into the block: `a` is `rows×k` with strides `rsa`, `csa`
    /// (and possibly prepacked); `b` is `k×len`.
    ///
    /// # Safety
    /// The block must lie inside the output and no other thread may touch it meanwhile.
    #[allow(clippy::too_many_arguments)]
    unsafe fn product(
        self,
        rows: usize,
        k: usize,
        len: usize,
        (a, rsa, csa, packed): (&[f32], usize, usize, Option<&PackedLhs>),
        b: Rhs,
        epilogue: Epilogue,
    ) {
        let (rsa, csa) = (rsa as isize, csa as isize);
        assert!(extent(rows, k, rsa, csa) <= a.len());
        let (b, rsb, packed_b) = match b {
            Rhs::Strided(b, rsb) => {
                assert!(extent(k, len, rsb as isize, 1) <= b.len());
                (b.as_ptr(), rsb as isize, None)
            }
            // `sgemm_raw` checks the packed operand's shape.
            Rhs::Packed(p) => (std::ptr::null(), 0, Some(p)),
        };
        let (c, ldc, epi) = match &self.scratch {
            Some(buf) => {
                assert!(buf.len() >= rows * len, "conv: scratch block too small");
                (buf.as_ptr().cast_mut(), len, Epilogue::default())
            }
            None => (self.out, self.ld, epilogue),
        };
        // SAFETY: A and B were checked against their slices; C is the caller's block or this
        // task's scratch (checked above).
        unsafe {
            sgemm_raw(
                rows,
                k,
                len,
                1.0,
                a.as_ptr(),
                rsa,
                csa,
                packed,
                b,
                rsb,
                1,
                packed_b.as_ref(),
                0.0,
                c,
                ldc as isize,
                1,
                epi,
            )
        };
        if let Some(buf) = self.scratch {
            for (r, row) in buf[..rows * len].chunks_exact(len).enumerate() {
                // SAFETY: row `r` of the block (the caller's contract).
                unsafe { stream_store(row, epilogue.row(r), self.out.add(r * self.ld)) };
            }
            store_fence();
        }
    }
}

/// Whether an output of `len` floats is written with non-temporal stores.
fn streams(len: usize) -> bool {
    len >= STREAM_MIN && simd::avx2_fma()
}

/// `dst[i] = clamp(src[i] + bias, lo, hi)`, with non-temporal stores where available.
///
/// # Safety
/// `dst` must be valid for `src.len()` writes that no other thread accesses meanwhile.
unsafe fn stream_store(src: &[f32], (bias, lo, hi): (f32, f32, f32), dst: *mut f32) {
    #[cfg(target_arch = "x86_64")]
    if simd::avx2_fma() {
        // SAFETY: AVX is present; the caller's contract covers `dst`.
        return unsafe { stream_store_avx(src, (bias, lo, hi), dst) };
    }
    for (i, v) in src.iter().enumerate() {
        // SAFETY: the caller's contract.
        unsafe { *dst.add(i) = (v + bias).clamp(lo, hi) };
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn stream_store_avx(src: &[f32], (bias, lo, hi): (f32, f32, f32), dst: *mut f32) {
    use std::arch::x86_64::{
        _mm256_add_ps, _mm256_loadu_ps, _mm256_max_ps, _mm256_min_ps, _mm256_set1_ps,
        _mm256_stream_ps,
    };
    let n = src.len();
    // Streaming stores need 32-byte alignment: plain stores up to the first aligned element.
    let head = ((32 - dst as usize % 32) % 32 / 4).min(n);
    let body = head + (n - head) / 8 * 8;
    let (vb, vlo, vhi) = (_mm256_set1_ps(bias), _mm256_set1_ps(lo), _mm256_set1_ps(hi));
    // SAFETY: every index is below `n`, within `src` and (the caller's contract) `dst`;
    // `dst + i` is 32-byte aligned for i in head.., stepping by 8 floats.
    unsafe {
        for i in (0..head).chain(body..n) {
            *dst.add(i) = (src[i] + bias).clamp(lo, hi);
        }
        for i in (head..body).step_by(8) {
            let v = _mm256_add_ps(_mm256_loadu_ps(src.as_ptr().add(i)), vb);
            // max/min return their second operand for a NaN first one: put v second so a NaN
            // propagates, as `f32::clamp` does.
            let v = _mm256_min_ps(vhi, _mm256_max_ps(vlo, v));
            _mm256_stream_ps(dst.add(i), v);
        }
    }
}

/// Pulls `rows` rows of `len` floats (row stride `ld`) of `m` towards the cache, one sequential
/// sweep per row. GEMM packing reads a tile one narrow panel at a time across all of its rows:
/// straight from DRAM that pattern defeats the hardware prefetchers when rows are many.
fn prefetch(m: &[f32], rows: usize, len: usize, ld: usize) {
    for r in 0..rows {
        for line in m[r * ld..][..len].chunks(simd::LINE_FLOATS) {
            simd::prefetch_line::<false>(line.as_ptr());
        }
    }
}

/// Orders this thread's streaming stores before whatever signals the task's completion.
fn store_fence() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SSE is part of the x86_64 baseline.
    unsafe {
        std::arch::x86_64::_mm_sfence()
    };
}

/// Input gradient on slices sized by `g`; `dx` is overwritten.
pub fn backward_input(dy: &[f32], w: &[f32], dx: &mut [f32], g: &ConvGeom) {
    backward_input_uninit(dy, w, as_uninit(dx), g)
}

/// [`backward_input`] into a buffer that need not be initialised: every element is written.
fn backward_input_uninit(dy: &[f32], w: &[f32], dx: &mut [MaybeUninit<f32>], g: &ConvGeom) {
    check_lens(g, dx.len(), w.len(), dy.len());
    if g.is_depthwise() {
        return depthwise::backward_input(dy, w, dx, g);
    }
    let d = Dims::new(g);
    let dx_len = dx.len();
    let dx = SendPtr::new(dx.as_mut_ptr().cast::<f32>());
    let planes = g.n * g.groups;
    if d.pointwise {
        // dx tile = Wᵀ·dy tile: tiles write disjoint blocks, as in the forward pass.
        let stream = streams(dx_len);
        let tile = d.tile(d.cin_g + d.cout_g, wanted_tasks().div_ceil(planes.max(1)));
        let tiles = d.ohw.div_ceil(tile);
        run_tasks(planes * tiles, |t| {
            let (plane, p0) = (t / tiles, t % tiles * tile);
            let (img, grp) = (plane / g.groups, plane % g.groups);
            let len = tile.min(d.ohw - p0);
            let wg = &w[grp * d.cout_g * d.kc..][..d.cout_g * d.kc];
            let dyg = &dy[(img * g.cout + grp * d.cout_g) * d.ohw + p0..];
            let dx0 = (img * g.cin + grp * d.cin_g) * d.hw + p0;
            prefetch(dyg, d.cout_g, len, d.ohw);
            with_scratch(if stream { d.cin_g * len } else { 0 }, |buf| {
                let block = Block {
                    out: dx.get().wrapping_add(dx0),
                    ld: d.hw,
                    scratch: stream.then_some(buf),
                };
                // SAFETY: this task's block of `dx` (length checked), disjoint from the others.
                unsafe {
                    block.product(
                        d.cin_g,
                        d.cout_g,
                        len,
                        (wg, 1, d.cin_g, None),
                        Rhs::Strided(dyg, d.ohw),
                        Epilogue::default(),
                    )
                };
            });
        });
        return;
    }
    // Column gradients of neighbouring output rows overlap in dx, so a task owns a block of input
    // channels of one plane (whose column rows touch only those channels) and walks all tiles.
    let blocks = wanted_tasks().div_ceil(planes.max(1)).min(d.cin_g);
    let cb = d.cin_g.div_ceil(blocks);
    let blocks = d.cin_g.div_ceil(cb);
    let tile = d.tile(cb * d.kk, 1);
    run_tasks(planes * blocks, |t| {
        let (plane, c0) = (t / blocks, t % blocks * cb);
        let (img, grp) = (plane / g.groups, plane % g.groups);
        let nc = cb.min(d.cin_g - c0);
        let wg = &w[grp * d.cout_g * d.kc..][..d.cout_g * d.kc];
        let dyg = &dy[(img * g.cout + grp * d.cout_g) * d.ohw..][..d.cout_g * d.ohw];
        let dx0 = (img * g.cin + grp * d.cin_g + c0) * d.hw;
        // SAFETY: input channels [c0, c0+nc) of this plane: inside `dx` (length checked) and
        // owned by this task alone; zeroed before the slice is formed (`dx` may be uninitialised).
        let dxb = unsafe {
            std::ptr::write_bytes(dx.get().add(dx0), 0, nc * d.hw);
            std::slice::from_raw_parts_mut(dx.get().add(dx0), nc * d.hw)
        };
        let rows = nc * d.kk;
        with_scratch(rows * tile, |dcol| {
            for p0 in (0..d.ohw).step_by(tile) {
                let len = tile.min(d.ohw - p0);
                let dcol = &mut dcol[..rows * len];
                // dcol = W[:, c0·kk..]ᵀ · dy[:, p0..p0+len]
                sgemm(
                    rows,
                    d.cout_g,
                    len,
                    1.0,
                    &wg[c0 * d.kk..],
                    1,
                    d.kc as isize,
                    &dyg[p0..],
                    d.ohw as isize,
                    1,
                    0.0,
                    dcol,
                    len as isize,
                    1,
                );
                col2im(dcol, g, &d, p0 / d.ow, len / d.ow, dxb);
            }
        });
    });
}

/// Weight gradient on slices sized by `g`; `dw` is overwritten.
pub fn backward_weight(x: &[f32], dy: &[f32], dw: &mut [f32], g: &ConvGeom) {
    check_lens(g, x.len(), dw.len(), dy.len());
    if g.is_depthwise() {
        return depthwise::backward_weight(x, dy, dw, g);
    }
    let d = Dims::new(g);
    let col_rows = if d.pointwise { 0 } else { d.kc };
    let rows = d.cout_g + if d.pointwise { d.cin_g } else { d.kc };
    let tile = d.tile(rows, wanted_tasks().div_ceil(g.n.max(1)));
    let tiles = d.ohw.div_ceil(tile);
    // dw_g += dy tile · (column tile)ᵀ, for every group, over one (image, tile) item.
    let add_item = |item: usize, acc: &mut [f32]| {
        let (img, p0) = (item / tiles, item % tiles * tile);
        let len = tile.min(d.ohw - p0);
        with_scratch(col_rows * len, |col| {
            for grp in 0..g.groups {
                let xg = &x[(img * g.cin + grp * d.cin_g) * d.hw..][..d.cin_g * d.hw];
                let dyg = &dy[(img * g.cout + grp * d.cout_g) * d.ohw..][..d.cout_g * d.ohw];
                let accg = &mut acc[grp * d.cout_g * d.kc..][..d.cout_g * d.kc];
                prefetch(&dyg[p0..], d.cout_g, len, d.ohw);
                let (b, csb) = if d.pointwise {
                    prefetch(&xg[p0..], d.cin_g, len, d.hw);
                    (&xg[p0..], d.hw)
                } else {
                    im2col(xg, g, &d, p0 / d.ow, len / d.ow, col);
                    (&*col, len)
                };
                sgemm(
                    d.cout_g,
                    len,
                    d.kc,
                    1.0,
                    &dyg[p0..],
                    d.ohw as isize,
                    1,
                    b,
                    1,
                    csb as isize,
                    1.0,
                    accg,
                    d.kc as isize,
                    1,
                );
            }
        })
    };
    let items = g.n * tiles;
    if items > 1 && wanted_tasks() > 1 {
        // One partial sum per fixed run of items, added in order: the result does not depend on
        // scheduling (a rayon fold's splits follow work stealing, so its float sums would vary
        // from run to run and training would not be reproducible).
        let parts = wanted_tasks().min(items);
        let partials: Vec<Vec<f32>> = (0..parts)
            .into_par_iter()
            .map(|p| {
                parallel::task(|| {
                    let mut acc = vec![0.0; dw.len()];
                    (p * items / parts..(p + 1) * items / parts)
                        .for_each(|i| add_item(i, &mut acc));
                    acc
                })
            })
            .collect();
        dw.copy_from_slice(&partials[0]);
        for part in &partials[1..] {
            dw.iter_mut().zip(part).for_each(|(a, b)| *a += b);
        }
    } else {
        dw.fill(0.0);
        (0..items).for_each(|item| add_item(item, dw));
    }
}

/// Bias gradient: `db[c] = Σ dy[n, c, ·]` over `plane`-sized planes; `db` is overwritten.
pub fn backward_bias(dy: &[f32], db: &mut [f32], plane: usize) {
    let c = db.len();
    assert!(
        c * plane == 0 && dy.is_empty() || c * plane > 0 && dy.len().is_multiple_of(c * plane),
        "conv: bias gradient of {} values over {c} channels of {plane}",
        dy.len()
    );
    let mut acc = vec![0f64; c];
    if plane > 0 {
        for (i, p) in dy.chunks_exact(plane).enumerate() {
            acc[i % c] += plane_sum(p);
        }
    }
    db.iter_mut().zip(acc).for_each(|(d, a)| *d = a as f32);
}

/// Sum with 16 independent lanes: vectorises, and keeps f32 rounding error small.
fn plane_sum(p: &[f32]) -> f64 {
    let mut lanes = [0f32; 16];
    let chunks = p.chunks_exact(16);
    let tail: f32 = chunks.remainder().iter().sum();
    for ch in chunks {
        lanes.iter_mut().zip(ch).for_each(|(l, v)| *l += v);
    }
    lanes.iter().map(|&v| f64::from(v)).sum::<f64>() + f64::from(tail)
}

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
fn im2col(x: &[f32], g: &ConvGeom, d: &Dims, r0: usize, nr: usize, col: &mut [f32]) {
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
fn im2col_packed<'x>(
    images: impl Iterator<Item = &'x [f32]> + Clone,
    g: &ConvGeom,
    d: &Dims,
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
    d: &Dims,
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
fn col2im(dcol: &[f32], g: &ConvGeom, d: &Dims, r0: usize, nr: usize, dx: &mut [f32]) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::conv as reference;
    use crate::testutil::{assert_close, rand_vec, rng};
    use rand::Rng;

    /// [n, cin, cout, h, w, k, stride, pad, groups]
    type Case = [usize; 9];

    fn tensor(r: &mut rand::rngs::StdRng, shape: &[usize]) -> Tensor {
        Tensor::from_vec(shape, rand_vec(r, shape.iter().product())).unwrap()
    }

    /// Runs all four passes of one case through the Tensor API and compares with the reference.
    fn check(case: Case, seed: u64) {
        let [n, cin, cout, h, w, k, stride, pad, groups] = case;
        let p = ConvParams::new(stride, pad, groups);
        let w_shape = [cout, cin / groups, k, k];
        let g = ConvGeom::new("test", [n, cin, h, w], &w_shape, p).unwrap();
        let mut r = rng(seed);
        let x = tensor(&mut r, &[n, cin, h, w]);
        let wt = tensor(&mut r, &w_shape);
        let b = tensor(&mut r, &[cout]);
        let dy = tensor(&mut r, &g.output_shape());
        let what = |pass: &str| format!("{pass} of {case:?}");

        let y = conv2d(&x, &wt, Some(&b), p).unwrap();
        assert_eq!(y.shape(), g.output_shape());
        let expected = reference::forward(x.data(), wt.data(), Some(b.data()), &g);
        assert_close(y.data(), &expected, 1e-5, &what("forward"));
        // Weights ×4 so that outputs pass 6 as well as 0.
        let w4 = crate::elementwise::scale(&wt, 4.0);
        let y = conv2d_act(&x, &w4, Some(&b), p, true).unwrap();
        let expected = reference::forward(x.data(), w4.data(), Some(b.data()), &g);
        let expected: Vec<f32> = expected.iter().map(|v| v.clamp(0.0, 6.0)).collect();
        assert_close(y.data(), &expected, 1e-5, &what("forward + relu6"));
        let y = conv2d(&x, &wt, None, p).unwrap();
        let expected = reference::forward(x.data(), wt.data(), None, &g);
        assert_close(y.data(), &expected, 1e-5, &what("forward without bias"));

        let dx = conv2d_backward_input(&dy, &wt, [n, cin, h, w], p).unwrap();
        let expected = reference::backward_input(dy.data(), wt.data(), &g);
        assert_close(dx.data(), &expected, 1e-5, &what("backward_input"));

        let dw = conv2d_backward_weight(&x, &dy, k, p).unwrap();
        assert_eq!(dw.shape(), w_shape);
        let expected = reference::backward_weight(x.data(), dy.data(), &g);
        assert_close(dw.data(), &expected, 1e-5, &what("backward_weight"));

        let db = conv2d_backward_bias(&dy).unwrap();
        let expected = reference::backward_bias(dy.data(), &g);
        assert_close(db.data(), &expected, 1e-5, &what("backward_bias"));
    }

    #[test]
    fn random_shapes_match_reference() {
        let mut r = rng(2024);
        let pick = |r: &mut rand::rngs::StdRng, v: &[usize]| v[r.random_range(0..v.len())];
        let mut done = 0;
        for seed in 0.. {
            if done == 160 {
                break;
            }
            let groups = pick(&mut r, &[1, 2]);
            let cin = pick(&mut r, &[1, 3, 7, 13]) * groups;
            let cout = pick(&mut r, &[1, 3, 7, 13]) * groups;
            let stride = pick(&mut r, &[1, 2]);
            let maps: &[usize] = if stride == 2 {
                &[1, 5, 7, 9, 11, 13]
            } else {
                &[1, 5, 7, 9]
            };
            let (h, w) = (pick(&mut r, maps), pick(&mut r, maps));
            let k = pick(&mut r, &[1, 3, 5, 7]);
            let pad = r.random_range(0..=k / 2 + 1);
            let n = pick(&mut r, &[1, 3]);
            let case = [n, cin, cout, h, w, k, stride, pad, groups];
            let is_dw = groups > 1 && cin == groups && cout == groups;
            if h + 2 * pad < k || w + 2 * pad < k || is_dw {
                continue;
            }
            check(case, seed);
            done += 1;
        }
    }

    #[test]
    fn pointwise_tiles_and_groups() {
        check([1, 13, 7, 40, 40, 1, 1, 0, 1], 1);
        check([3, 14, 6, 9, 9, 1, 1, 0, 2], 2);
        check([2, 24, 36, 17, 17, 1, 1, 0, 1], 3);
        // Strided and padded 1×1 convolutions go through im2col.
        check([3, 7, 13, 9, 9, 1, 2, 0, 1], 4);
        check([1, 3, 7, 5, 5, 1, 1, 1, 1], 5);
    }

    #[test]
    fn streamed_blocks_match_in_place_ones() {
        // Block sizes and offsets that put row starts at every alignment.
        let mut r = rng(15);
        let cases = [(3, 5, 37, 41, 1), (7, 2, 8, 8, 3), (2, 3, 1, 5, 0)];
        for ((rows, k, len, ld, off), relu6) in cases.into_iter().zip([false, true, true]) {
            let (a, b) = (rand_vec(&mut r, rows * k), rand_vec(&mut r, k * len));
            let bias = rand_vec(&mut r, rows);
            let epilogue = Epilogue {
                bias: Some(&bias),
                relu6,
            };
            let mut expected = vec![0.0; off + rows * ld];
            let mut streamed = expected.clone();
            let mut scratch = vec![0.0; rows * len];
            for (out, scratch) in [
                (&mut expected, None),
                (&mut streamed, Some(&mut scratch[..])),
            ] {
                let out = out[off..].as_mut_ptr();
                let block = Block { out, ld, scratch };
                // SAFETY: the block's rows×len at stride ld lie inside `out`.
                unsafe {
                    block.product(
                        rows,
                        k,
                        len,
                        (&a, k, 1, None),
                        Rhs::Strided(&b, len),
                        epilogue,
                    )
                };
            }
            assert_close(&streamed, &expected, 1e-6, "streamed block");
            if relu6 {
                assert!(expected.iter().all(|v| (0.0..=6.0).contains(v)), "clamped");
            }
        }
    }

    #[test]
    fn large_outputs_stream_past_the_cache() {
        // An output and an input gradient of ≥ STREAM_MIN floats, against the reference.
        let mut r = rng(16);
        for [cin, cout] in [[1, 64], [64, 1]] {
            let p = ConvParams::new(1, 0, 1);
            let g = ConvGeom::new("test", [1, cin, 256, 257], &[cout, cin, 1, 1], p).unwrap();
            let x = tensor(&mut r, &[1, cin, 256, 257]);
            let w = tensor(&mut r, &[cout, cin, 1, 1]);
            let y = conv2d(&x, &w, None, p).unwrap();
            let expected = reference::forward(x.data(), w.data(), None, &g);
            assert_close(y.data(), &expected, 1e-5, "large forward");
            let dx = conv2d_backward_input(&y, &w, [1, cin, 256, 257], p).unwrap();
            let expected = reference::backward_input(y.data(), w.data(), &g);
            assert_close(dx.data(), &expected, 1e-5, "large backward_input");
        }
    }

    #[test]
    fn im2col_tiles_split_and_bounded() {
        // kc = 637: the column budget forces several row tiles; N = 1 splits them across tasks
        // and splits the input gradient into channel blocks.
        check([1, 13, 7, 33, 33, 7, 1, 3, 1], 6);
        check([1, 13, 13, 31, 29, 3, 2, 1, 1], 7);
        check([3, 6, 4, 23, 23, 5, 2, 2, 2], 8);
        // Channel multiplier 2 with groups == cin is grouped im2col, not depthwise.
        check([2, 3, 6, 9, 9, 3, 1, 1, 3], 9);
    }

    #[test]
    fn splits_from_inside_a_worker() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        pool.install(|| {
            check([3, 13, 7, 17, 17, 3, 1, 1, 1], 10);
            check([3, 13, 7, 17, 17, 1, 1, 0, 1], 11);
        });
    }

    /// The weight gradient's per-task partial sums are added in a fixed order, so repeated runs
    /// give the same bits however rayon schedules them. Two callers share the pool to vary the
    /// scheduling; on an idle pool it may not vary, so this guards rather than proves (repeated
    /// training runs, identical tensor for tensor, are the evidence: commit 2e68d68).
    #[test]
    fn backward_weight_is_reproducible_bit_for_bit() {
        let mut r = rng(21);
        let (x, dy) = (
            tensor(&mut r, &[8, 24, 16, 16]),
            tensor(&mut r, &[8, 40, 16, 16]),
        );
        let dw = || conv2d_backward_weight(&x, &dy, 1, ConvParams::new(1, 0, 1)).unwrap();
        let first = dw();
        std::thread::scope(|s| {
            let callers = [(); 2].map(|_| s.spawn(|| (0..20).map(|_| dw()).collect::<Vec<_>>()));
            for caller in callers {
                for run in caller.join().unwrap() {
                    assert_eq!(run.data(), first.data());
                }
            }
        });
    }

    #[test]
    fn depthwise_dispatch_matches_reference() {
        check([3, 7, 7, 9, 9, 3, 1, 1, 7], 12);
        check([1, 13, 13, 11, 11, 5, 2, 2, 13], 13);
        check([3, 3, 3, 7, 7, 3, 2, 1, 3], 14);
    }

    #[test]
    fn small_maps_share_one_product() {
        // Outputs narrower than the GEMM's micro-tile put several images side by side in one
        // product: pointwise and k×k, stride 1 and 2, 1×1 to 5×5 outputs, image counts that
        // leave a short last group, weights taller than one row strip.
        for (i, case) in [
            [5, 8, 20, 1, 1, 1, 1, 0, 1],
            [33, 7, 13, 2, 2, 3, 1, 1, 1],
            [9, 16, 24, 4, 4, 1, 1, 0, 1],
            [6, 5, 30, 9, 9, 3, 2, 1, 1],
            [3, 4, 6, 5, 5, 3, 1, 1, 1],
        ]
        .into_iter()
        .enumerate()
        {
            check(case, 80 + i as u64);
        }
    }

    #[test]
    fn prepacked_weights_match_plain_ones() {
        let mut r = rng(77);
        // (n, cin, h, w, cout, k, stride, pad, groups): 1×1, im2col, grouped, odd sizes.
        for (n, cin, h, w, cout, k, stride, pad, groups) in [
            (1, 160, 7, 7, 960, 1, 1, 0, 1),
            (2, 13, 9, 11, 30, 3, 2, 1, 1),
            (1, 12, 5, 5, 18, 3, 1, 1, 3),
            (3, 7, 13, 13, 25, 1, 1, 0, 1),
            // Small maps: several images per product.
            (4, 160, 1, 1, 96, 1, 1, 0, 1),
            (5, 24, 4, 4, 30, 3, 1, 1, 1),
        ] {
            let p = ConvParams::new(stride, pad, groups);
            let x = tensor(&mut r, &[n, cin, h, w]);
            let wt = tensor(&mut r, &[cout, cin / groups, k, k]);
            let bias = tensor(&mut r, &[cout]);
            let Some(packed) = PackedWeight::new(&wt, groups) else {
                eprintln!("note: no AVX-512 here: weights are never prepacked");
                return;
            };
            assert!(packed.packs(&wt, groups) && !packed.packs(&wt, groups + 1));
            for relu6 in [false, true] {
                let plain = conv2d_act(&x, &wt, Some(&bias), p, relu6).unwrap();
                let fast = conv2d_act_packed(&x, &packed, Some(&bias), p, relu6).unwrap();
                let what = format!("packed conv {:?} k{k} g{groups} relu6 {relu6}", x.shape());
                assert_close(fast.data(), plain.data(), 1e-5, &what);
            }
            let wrong = ConvParams::new(stride, pad, groups + 1);
            assert!(conv2d_act_packed(&x, &packed, None, wrong, false).is_err());
            // A write to the weight copies it, so the packing no longer claims it.
            let mut written = wt.clone();
            written.data_mut()[0] += 1.0;
            assert!(!packed.packs(&written, groups));
        }
        let depthwise = Tensor::zeros(&[8, 1, 3, 3]);
        assert!(PackedWeight::new(&depthwise, 8).is_none());
    }

    #[test]
    fn bad_shapes_are_errors_not_panics() {
        let z = Tensor::zeros;
        let p = ConvParams::new(1, 0, 1);
        // Mismatched channel counts.
        assert!(conv2d(&z(&[1, 4, 5, 5]), &z(&[2, 3, 3, 3]), None, p).is_err());
        // Kernel larger than the padded input.
        assert!(conv2d(&z(&[1, 3, 3, 3]), &z(&[2, 3, 5, 5]), None, p).is_err());
        assert!(
            conv2d(
                &z(&[1, 3, 3, 3]),
                &z(&[2, 3, 5, 5]),
                None,
                ConvParams::new(1, 1, 1)
            )
            .is_ok()
        );
        // Wrong ranks, bad bias, bad parameters.
        assert!(conv2d(&z(&[1, 3, 5, 5]), &z(&[2, 3, 3]), None, p).is_err());
        assert!(conv2d(&z(&[3, 5, 5]), &z(&[2, 3, 3, 3]), None, p).is_err());
        assert!(conv2d(&z(&[1, 3, 5, 5]), &z(&[2, 3, 3, 3]), Some(&z(&[3])), p).is_err());
        assert!(
            conv2d(
                &z(&[1, 3, 5, 5]),
                &z(&[2, 3, 3, 3]),
                None,
                ConvParams::new(0, 0, 1)
            )
            .is_err()
        );
        assert!(
            conv2d(
                &z(&[1, 4, 5, 5]),
                &z(&[2, 2, 3, 3]),
                None,
                ConvParams::new(1, 0, 0)
            )
            .is_err()
        );
        assert!(conv2d(&z(&[1, 3, 5, 5]), &z(&[2, 3, 3, 2]), None, p).is_err());
        // Backward passes check the output gradient against the geometry.
        let (x, w) = (z(&[2, 3, 5, 5]), z(&[4, 3, 3, 3]));
        assert!(conv2d_backward_input(&z(&[2, 4, 3, 3]), &w, [2, 3, 5, 5], p).is_ok());
        assert!(conv2d_backward_input(&z(&[2, 4, 4, 3]), &w, [2, 3, 5, 5], p).is_err());
        assert!(conv2d_backward_input(&z(&[2, 4, 3, 3]), &w, [2, 2, 5, 5], p).is_err());
        assert!(conv2d_backward_weight(&x, &z(&[2, 4, 3, 3]), 3, p).is_ok());
        assert!(conv2d_backward_weight(&x, &z(&[1, 4, 3, 3]), 3, p).is_err());
        assert!(conv2d_backward_weight(&x, &z(&[2, 4, 3]), 3, p).is_err());
        assert!(conv2d_backward_weight(&x, &z(&[2, 4, 3, 3]), 7, p).is_err());
        let g2 = ConvParams::new(1, 0, 2);
        assert!(conv2d_backward_weight(&x, &z(&[2, 4, 3, 3]), 3, g2).is_err());
        assert!(
            conv2d_backward_weight(&x, &z(&[2, 4, 3, 3]), 3, ConvParams::new(1, 0, 0)).is_err()
        );
        assert!(conv2d_backward_bias(&z(&[2, 4, 3])).is_err());
    }

    #[test]
    fn empty_batch_is_fine() {
        let p = ConvParams::new(1, 1, 1);
        let (x, w) = (
            Tensor::zeros(&[0, 3, 5, 5]),
            Tensor::full(&[2, 3, 3, 3], 1.0),
        );
        let y = conv2d(&x, &w, None, p).unwrap();
        assert_eq!(y.shape(), [0, 2, 5, 5]);
        let dx = conv2d_backward_input(&y, &w, [0, 3, 5, 5], p).unwrap();
        assert_eq!(dx.shape(), [0, 3, 5, 5]);
        let dw = conv2d_backward_weight(&x, &y, 3, p).unwrap();
        assert_eq!(dw.data(), &[0.0; 54]);
        assert_eq!(conv2d_backward_bias(&y).unwrap().data(), &[0.0; 2]);
    }
}
