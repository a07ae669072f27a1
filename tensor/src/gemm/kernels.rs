//! The single-threaded kernels a [`Product`] block runs besides the AVX-512 one: dot products for
//! a C of one row or column, and the backend crate's GEMM.

use super::dispatch::Product;
use crate::simd::Level;

/// C = alpha·A·B + beta·C element by element, as the dot product of A's row and B's column
/// (each contiguous, `k` long): for a C of one row or one column.
///
/// # Safety
/// As [`Product::run`], with `a.cs == 1` and `b.rs == 1`.
pub(super) unsafe fn dots(p: &Product) {
    let (a, b, c) = (p.a, p.b, p.c);
    // SAFETY (both blocks): row i of A and column j of B are k contiguous floats inside their
    // matrices, and (i, j) is an element of C, by the caller's contract.
    for i in 0..p.m as isize {
        let row = unsafe { std::slice::from_raw_parts(a.ptr.offset(i * a.rs), p.k) };
        for j in 0..p.n as isize {
            unsafe {
                let col = std::slice::from_raw_parts(b.ptr.offset(j * b.cs), p.k);
                let out = c.ptr.offset(i * c.rs + j * c.cs);
                let ab = p.alpha * dot(p.level, row, col);
                *out = if p.beta == 0.0 {
                    ab
                } else {
                    ab + p.beta * *out
                };
            }
        }
    }
}

/// `Σ a[i]·b[i]`, in 32 lanes (4 independent AVX2 FMA chains at `level` ≥ AVX2) summed in a
/// fixed order.
fn dot(level: Level, a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if level >= Level::Avx2 {
        // SAFETY: the level is at most the CPU's, so AVX2 and FMA are present.
        return unsafe { dot_fma(a, b) };
    }
    let _ = level;
    dot_lanes(a, b, |x, y, acc| acc + x * y)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn dot_fma(a: &[f32], b: &[f32]) -> f32 {
    dot_lanes(a, b, f32::mul_add)
}

/// The lanes of [`dot`], with `fma(x, y, acc)` the multiply-add (inlined into each caller, so
/// it vectorises with the caller's target features).
#[inline(always)]
fn dot_lanes(a: &[f32], b: &[f32], fma: impl Fn(f32, f32, f32) -> f32) -> f32 {
    const LANES: usize = 32;
    let mut acc = [0.0f32; LANES];
    let (ac, bc) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let mut tail = 0.0;
    for (x, y) in ac.remainder().iter().zip(bc.remainder()) {
        tail = fma(*x, *y, tail);
    }
    for (x, y) in ac.zip(bc) {
        for l in 0..LANES {
            acc[l] = fma(x[l], y[l], acc[l]);
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// The backend crate's single-threaded product (no epilogue): `matrixmultiply` under the
/// feature of that name, else the `gemm` crate.
///
/// # Safety
/// As [`Product::run`], without a packed B.
pub(super) unsafe fn backend(p: &Product) {
    #[cfg(feature = "matrixmultiply")]
    // SAFETY: forwarded.
    unsafe {
        matrixmultiply_product(p)
    }
    #[cfg(not(feature = "matrixmultiply"))]
    // SAFETY: forwarded.
    unsafe {
        gemm_crate_product(p)
    }
}

/// The `gemm` crate's single-threaded product.
///
/// # Safety
/// As [`backend`].
pub(super) unsafe fn gemm_crate_product(p: &Product) {
    let (a, b, c) = (p.a, p.b, p.c);
    // SAFETY: forwarded from the caller's contract. The `gemm` crate computes
    // dst = alpha·dst + beta·lhs·rhs, so the two scalars swap roles; `read_dst = false` keeps
    // beta == 0 from reading C.
    unsafe {
        gemm::gemm(
            p.m,
            p.n,
            p.k,
            c.ptr,
            c.cs,
            c.rs,
            p.beta != 0.0,
            a.ptr,
            a.cs,
            a.rs,
            b.ptr,
            b.cs,
            b.rs,
            p.beta,
            p.alpha,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// The `matrixmultiply` crate's single-threaded product.
///
/// # Safety
/// As [`backend`].
#[cfg(feature = "matrixmultiply")]
pub(super) unsafe fn matrixmultiply_product(p: &Product) {
    let (a, b, c) = (p.a, p.b, p.c);
    // SAFETY: forwarded from the caller's contract; built without the `threading` feature, so
    // this never spawns threads of its own.
    unsafe {
        matrixmultiply::sgemm(
            p.m, p.k, p.n, p.alpha, a.ptr, a.rs, a.cs, b.ptr, b.rs, b.cs, p.beta, c.ptr, c.rs, c.cs,
        )
    }
}
