//! Operands written once in the AVX-512 kernel's packed layouts ([`PackedLhs`] for a fixed left
//! operand, [`RhsLayout`] / [`PackedRhs`] for a right operand its producer writes packed), and
//! the [`Epilogue`] a product applies to C in its stores.

#[cfg(target_arch = "x86_64")]
use super::avx512;
use super::dispatch::extent;
use crate::simd::{self, Level};

/// What happens to C right after its product, while it is in cache: `bias[row]` is added, then
/// (if `relu6`) the result is clamped to [0, 6].
#[derive(Clone, Copy, Default)]
pub(crate) struct Epilogue<'a> {
    pub(crate) bias: Option<&'a [f32]>,
    pub(crate) relu6: bool,
}

impl<'a> Epilogue<'a> {
    pub(crate) fn is_noop(&self) -> bool {
        self.bias.is_none() && !self.relu6
    }

    /// Row `r`'s bias and the clamp bounds.
    pub(crate) fn row(&self, r: usize) -> (f32, f32, f32) {
        let b = self.bias.map_or(0.0, |b| b[r]);
        if self.relu6 {
            (b, 0.0, 6.0)
        } else {
            (b, f32::NEG_INFINITY, f32::INFINITY)
        }
    }

    /// The epilogue of the rows from `start` on.
    pub(crate) fn rows_from(self, start: usize) -> Epilogue<'a> {
        Epilogue {
            bias: self.bias.map(|b| &b[start..]),
            ..self
        }
    }

    /// Applies the epilogue to the row-major `rows×cols` matrix at `c` (row stride `ld`).
    ///
    /// # Safety
    /// The matrix must be valid for reads and writes that no other thread makes meanwhile.
    pub(crate) unsafe fn apply(&self, rows: usize, cols: usize, c: *mut f32, ld: isize) {
        if self.is_noop() {
            return;
        }
        for r in 0..rows {
            let (b, lo, hi) = self.row(r);
            // SAFETY: row `r` of the caller's matrix.
            let row = unsafe { std::slice::from_raw_parts_mut(c.offset(r as isize * ld), cols) };
            row.iter_mut().for_each(|v| *v = (*v + b).clamp(lo, hi));
        }
    }
}

/// A matrix packed once for use as the left operand (A) of many products, as a layer's fixed
/// weights are at inference: products then skip packing it, which is most of the GEMM overhead
/// of small batches.
#[derive(Clone)]
pub struct PackedLhs {
    pub(super) m: usize,
    pub(super) k: usize,
    /// The layout the AVX-512 kernel packs A into (see `avx512::pack_lhs`).
    pub(super) data: Vec<f32>,
}

impl PackedLhs {
    /// Packs the `m×k` matrix at `a` (strides `rs`, `cs`), or `None` where the GEMM kernel does
    /// not read packed operands (below [`Level::Avx512`]: see [`crate::simd::level`]).
    ///
    /// # Panics
    /// When the matrix does not fit in `a`.
    pub fn new(m: usize, k: usize, a: &[f32], rs: usize, cs: usize) -> Option<PackedLhs> {
        let (rs, cs) = (rs as isize, cs as isize);
        assert!(
            extent(m, k, rs, cs) <= a.len(),
            "PackedLhs: {m}×{k} (strides {rs},{cs}) exceeds its slice of {}",
            a.len()
        );
        #[cfg(target_arch = "x86_64")]
        if simd::level() >= Level::Avx512 {
            let mut data = vec![0.0; m * k];
            let a = super::dispatch::RawMat::new(a.as_ptr(), rs, cs);
            // SAFETY: A fits in `a` (asserted); `data` holds the m·k packed floats; the level
            // says AVX-512 is present.
            unsafe { avx512::pack_lhs(m, k, a, data.as_mut_ptr()) };
            return Some(PackedLhs { m, k, data });
        }
        None
    }
}

/// Where a `k×n` right operand B goes when its producer writes it straight into the layout the
/// AVX-512 kernel packs B into (im2col does), so the product skips packing it. Exists only where
/// that kernel runs.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RhsLayout {
    pub(super) k: usize,
    pub(super) n: usize,
}

impl RhsLayout {
    /// The layout of a `k×n` B, or `None` where products at `level` do not read packed operands.
    pub(crate) fn new(k: usize, n: usize, level: Level) -> Option<RhsLayout> {
        debug_assert!(level <= simd::host_level(), "{level} beyond this CPU");
        (cfg!(target_arch = "x86_64") && level >= Level::Avx512).then_some(RhsLayout { k, n })
    }

    /// Floats the packed B takes.
    pub(crate) fn len(&self) -> usize {
        #[cfg(target_arch = "x86_64")]
        return avx512::rhs_len(self.k, self.n);
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("RhsLayout exists only with the AVX-512 kernel")
    }

    /// Writes row `r` of B (`n` values) into `dst`, a buffer of [`RhsLayout::len`] floats; the
    /// padding after the last column is zeroed, so writing every row writes every float.
    pub(crate) fn put_row(&self, r: usize, row: &[f32], dst: &mut [f32]) {
        assert!(r < self.k && row.len() == self.n && dst.len() >= self.len());
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the layout exists only at the AVX-512 level, which this CPU has (`new`);
        // lengths checked above.
        unsafe {
            avx512::put_rhs_row(self.k, self.n, r, row, dst)
        };
    }
}

/// A right operand written in its [`RhsLayout`].
#[derive(Clone, Copy)]
pub(crate) struct PackedRhs<'a> {
    layout: RhsLayout,
    data: &'a [f32],
}

impl<'a> PackedRhs<'a> {
    /// `data` must hold every row of B put there by [`RhsLayout::put_row`], starting on a 64-byte
    /// boundary (the kernel reads its strips with aligned loads).
    pub(crate) fn new(layout: RhsLayout, data: &'a [f32]) -> PackedRhs<'a> {
        assert!(data.len() >= layout.len(), "packed B: buffer too short");
        assert!(
            data.as_ptr().align_offset(64) == 0,
            "packed B: not 64-byte aligned"
        );
        PackedRhs { layout, data }
    }

    /// The layout it was written in.
    pub(crate) fn layout(&self) -> RhsLayout {
        self.layout
    }

    /// The packed block of rows from `pc` (a multiple of the kernel's inner block) and columns
    /// from `j` (a multiple of its strip width).
    #[cfg(target_arch = "x86_64")]
    pub(super) fn block(&self, pc: usize, j: usize) -> *const f32 {
        let RhsLayout { k, n } = self.layout;
        self.data[avx512::rhs_offset(k, n, pc, j)..].as_ptr()
    }
}
