//! A task's output block: its GEMM product written in place, or computed in scratch and streamed
//! out with non-temporal stores when the whole output is too large to stay cached.

use super::workspace::STREAM_MIN;
use crate::gemm::{Epilogue, PackedLhs, PackedRhs, Product, RawMat, RawMatMut, extent};
use crate::simd::{self, Level};

/// The left operand of a block's product: `rows×k` with strides `rs`, `cs` in `data`, possibly
/// also prepacked.
#[derive(Clone, Copy)]
pub(super) struct Lhs<'a> {
    pub(super) data: &'a [f32],
    pub(super) rs: usize,
    pub(super) cs: usize,
    pub(super) packed: Option<&'a PackedLhs>,
}

/// The right operand of a block's product: `k×len` with the given row stride and contiguous
/// rows, or already in the GEMM kernel's packed layout.
pub(super) enum Rhs<'a> {
    Strided(&'a [f32], usize),
    Packed(PackedRhs<'a>),
}

/// Where a task's `rows×len` output block goes: row stride `ld` from `out`, computed in place, or
/// in `scratch` first and streamed out (see [`STREAM_MIN`]).
pub(super) struct Block<'a> {
    pub(super) out: *mut f32,
    pub(super) ld: usize,
    pub(super) scratch: Option<&'a mut [f32]>,
}

impl Block<'_> {
    /// Writes `a·b` and its [`Epilogue`] into the block, at `level`: `a` is `rows×k`, `b` is
    /// `k×len`.
    ///
    /// # Safety
    /// The block must lie inside the output and no other thread may touch it meanwhile.
    pub(super) unsafe fn product(
        self,
        [rows, k, len]: [usize; 3],
        a: Lhs,
        b: Rhs,
        epilogue: Epilogue,
        level: Level,
    ) {
        let (rsa, csa) = (a.rs as isize, a.cs as isize);
        assert!(extent(rows, k, rsa, csa) <= a.data.len());
        let (b, packed_b) = match b {
            Rhs::Strided(b, rsb) => {
                assert!(extent(k, len, rsb as isize, 1) <= b.len());
                (RawMat::new(b.as_ptr(), rsb as isize, 1), None)
            }
            // `Product::run` checks the packed operand's shape.
            Rhs::Packed(p) => (RawMat::new(std::ptr::null(), 0, 0), Some(p)),
        };
        let (c, ldc, epi) = match &self.scratch {
            Some(buf) => {
                assert!(buf.len() >= rows * len, "conv: scratch block too small");
                (buf.as_ptr().cast_mut(), len, Epilogue::default())
            }
            None => (self.out, self.ld, epilogue),
        };
        let a_mat = RawMat::new(a.data.as_ptr(), rsa, csa);
        let c = RawMatMut::new(c, ldc as isize, 1);
        let product = Product::new([rows, k, len], a_mat, b, c, level)
            .with_packed_a(a.packed)
            .with_packed_b(packed_b)
            .with_epilogue(epi);
        // SAFETY: A and B were checked against their slices; C is the caller's block or this
        // task's scratch (checked above).
        unsafe { product.run() };
        if let Some(buf) = self.scratch {
            for (r, row) in buf[..rows * len].chunks_exact(len).enumerate() {
                let dst = self.out.wrapping_add(r * self.ld);
                // SAFETY: row `r` of the block (the caller's contract).
                unsafe { stream_store(row, epilogue.row(r), dst, level) };
            }
            store_fence();
        }
    }
}

/// Whether an output of `len` floats is written with non-temporal stores at `level`.
pub(super) fn streams(len: usize, level: Level) -> bool {
    len >= STREAM_MIN && level >= Level::Avx2
}

/// `dst[i] = clamp(src[i] + bias, lo, hi)`, with non-temporal stores where `level` has them.
///
/// # Safety
/// `dst` must be valid for `src.len()` writes that no other thread accesses meanwhile.
unsafe fn stream_store(src: &[f32], (bias, lo, hi): (f32, f32, f32), dst: *mut f32, level: Level) {
    #[cfg(target_arch = "x86_64")]
    if level >= Level::Avx2 {
        // SAFETY: the level is at most the CPU's, so AVX is present; the caller's contract
        // covers `dst`.
        return unsafe { stream_store_avx(src, (bias, lo, hi), dst) };
    }
    let _ = level;
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
pub(super) fn prefetch(m: &[f32], rows: usize, len: usize, ld: usize) {
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
