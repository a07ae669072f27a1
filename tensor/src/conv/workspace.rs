//! What the conv passes share besides the GEMM: each group's product sizes and output tiling
//! ([`GroupGemm`]), the split of a pass into tasks, per-thread scratch buffers and the
//! allocation of outputs.

use std::cell::Cell;
use std::mem::MaybeUninit;

use rayon::prelude::*;

use crate::conv::ConvGeom;
use crate::{parallel, simd};

/// Largest per-task working set (column buffer plus output block), in floats: 512 KiB, within
/// one core's L2. An untiled im2col streams the whole column matrix through memory twice and was
/// measured 6× slower elsewhere.
const TILE_BUDGET: usize = 1 << 17;

/// Outputs of at least this many floats (16 MiB) are written with non-temporal stores: they
/// cannot stay cached for the next layer anyway, and streaming skips the read-for-ownership
/// that doubles a normal store's memory traffic (measured 1.6× faster writes on this machine).
pub(super) const STREAM_MIN: usize = 1 << 22;

/// Tasks per pool thread that a split aims for: with spare tasks a core slowed by other load
/// does not hold up the whole call.
const TASKS_PER_THREAD: usize = 4;

/// Output positions below which a tile is not narrowed, for parallelism or the budget: each
/// tile's GEMM packs the weight again, and narrower ones lose more to that than they gain.
const MIN_TILE: usize = 256;

/// One group's GEMM sizes and plane sizes, derived from a geometry and shared by the three
/// passes.
pub(super) struct GroupGemm {
    pub(super) cin_g: usize,
    pub(super) cout_g: usize,
    /// k·k: column rows per input channel.
    pub(super) kk: usize,
    /// cin_g·k·k: the GEMM inner dimension of the forward pass.
    pub(super) kc: usize,
    pub(super) ow: usize,
    pub(super) ohw: usize,
    pub(super) hw: usize,
    /// 1×1, stride 1, no padding: the image already is its column matrix.
    pub(super) pointwise: bool,
}

impl GroupGemm {
    pub(super) fn new(g: &ConvGeom) -> GroupGemm {
        let kk = g.k * g.k;
        GroupGemm {
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
    pub(super) fn tile(&self, rows: usize, splits: usize) -> usize {
        let unit = if self.pointwise { 16 } else { self.ow };
        let budget = TILE_BUDGET / rows.max(1);
        let split = self.ohw.div_ceil(splits);
        let len = budget.min(split).max(MIN_TILE);
        (len / unit).max(1).saturating_mul(unit).min(self.ohw)
    }
}

/// How many tasks a split should aim for: none inside another kernel's task (one level only)
/// or with a one-thread pool.
pub(super) fn wanted_tasks() -> usize {
    if parallel::may_split() {
        TASKS_PER_THREAD * rayon::current_num_threads()
    } else {
        1
    }
}

/// Runs `f(0..count)` across the rayon pool, or inline inside another kernel's task or for one
/// task (a lone task's GEMM can then split itself across the pool).
pub(super) fn run_tasks(count: usize, f: impl Fn(usize) + Sync + Send) {
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
pub(super) fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
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
pub(super) fn with_col_scratch<R>(
    col: usize,
    rest: usize,
    f: impl FnOnce(&mut [f32], &mut [f32]) -> R,
) -> R {
    with_scratch(LINE + col + rest, |buf| {
        let skip = buf.as_ptr().align_offset(4 * LINE).min(LINE);
        let (col, tail) = buf[skip..].split_at_mut(col);
        f(col, &mut tail[..rest])
    })
}

/// An output buffer of `len` floats, filled by `fill`, which must write every element (the conv
/// kernels do; their tests start outputs as NaN to prove it). Not zeroed first: zeroing a
/// buffer the kernel then overwrites was 6% of a training step and 14% of batch-32 inference.
/// A fresh multi-megabyte buffer costs one page fault per 4 KiB on first
/// write (~5 µs each on this VM: ~35 ms for a 57 MB batch output, more than the 1×1 convolution
/// writing it), so large ones ask Linux for transparent huge pages first (measured 2× faster
/// allocate-and-fill). Belongs in `Tensor`'s allocator once that has one.
pub(super) fn output_vec(len: usize, fill: impl FnOnce(&mut [MaybeUninit<f32>])) -> Vec<f32> {
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
