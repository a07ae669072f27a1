//! The one GEMM entry point every kernel calls, plus the 2-D tensor products built on it.
//!
//! [`sgemm`] is a strided slice API (strides express transposes) over a single-threaded kernel:
//! dot products for a one-row or one-column C, else this crate's own AVX-512 kernel
//! (`avx512.rs`) at [`Level::Avx512`], else the `gemm` crate (which picks its own instructions),
//! or `matrixmultiply` under feature `matrixmultiply`; BENCHMARKS.md has the measurements behind
//! the choice. Parallelism follows the project's one-level rule ([`crate::parallel`]): called
//! from inside another kernel's task it runs on that thread alone; otherwise a large product is
//! split into blocks of C across the pool.
//!
//! Layout: `dispatch.rs` holds `Product` (one product on raw pointers: checks, parallel split,
//! kernel choice), `packing.rs` the prepacked operands and the epilogue, `kernels.rs` the dot
//! products and the backend calls, `avx512.rs` the AVX-512 kernel.

#[cfg(target_arch = "x86_64")]
mod avx512;
mod dispatch;
mod kernels;
mod packing;
#[cfg(test)]
mod tests;

pub(crate) use dispatch::{Product, RawMat, RawMatMut, SendPtr, extent};
pub use packing::PackedLhs;
pub(crate) use packing::{Epilogue, PackedRhs, RhsLayout};

use crate::simd::{self, Level};
use crate::{Result, Tensor, TensorError};

/// Rows and columns of C in the AVX-512 kernel's register tile. Parallel blocks of C start at
/// multiples of them, so every block keeps whole tiles (and a [`PackedLhs`]'s row strips line up).
pub(crate) const TILE_ROWS: usize = 12;
pub(crate) const TILE_COLS: usize = 32;

/// C = alpha·A·B + beta·C, with A `m×k`, B `k×n`, C `m×n` addressed as `x[i*rs + j*cs]`, at
/// the level [`simd::level`] gives on this thread.
///
/// Strides must be non-negative and C's must not make two elements alias. With `beta == 0`,
/// C is overwritten without being read (NaNs in it do not propagate).
///
/// # Panics
/// When a matrix does not fit in its slice or C aliases itself: callers are crate kernels, which
/// size their buffers from checked geometry, so this is a bug check, and it keeps the unsafe
/// backend call in bounds.
#[allow(clippy::too_many_arguments)]
pub fn sgemm(
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: &[f32],
    rsa: isize,
    csa: isize,
    b: &[f32],
    rsb: isize,
    csb: isize,
    beta: f32,
    c: &mut [f32],
    rsc: isize,
    csc: isize,
) {
    let (a, b) = (Mat::new(a, rsa, csa), Mat::new(b, rsb, csb));
    sgemm_at(
        simd::level(),
        [m, k, n],
        alpha,
        a,
        b,
        beta,
        MatMut::new(c, rsc, csc),
    );
}

/// A strided matrix in a slice: element (i, j) at `data[i·rs + j·cs]`.
#[derive(Clone, Copy)]
pub(crate) struct Mat<'a> {
    data: &'a [f32],
    rs: isize,
    cs: isize,
}

impl<'a> Mat<'a> {
    pub(crate) fn new(data: &'a [f32], rs: isize, cs: isize) -> Mat<'a> {
        Mat { data, rs, cs }
    }
}

/// The output of [`sgemm_at`]: a strided matrix in a mutable slice.
pub(crate) struct MatMut<'a> {
    data: &'a mut [f32],
    rs: isize,
    cs: isize,
}

impl<'a> MatMut<'a> {
    pub(crate) fn new(data: &'a mut [f32], rs: isize, cs: isize) -> MatMut<'a> {
        MatMut { data, rs, cs }
    }
}

/// [`sgemm`] at `level` (a level from [`simd::level`]), for kernels calling it from their tasks,
/// where the thread's own level need not be the caller's.
pub(crate) fn sgemm_at(
    level: Level,
    dims: [usize; 3],
    alpha: f32,
    a: Mat,
    b: Mat,
    beta: f32,
    c: MatMut,
) {
    let product = checked_product(level, dims, a, b, c).with_scalars(alpha, beta);
    // SAFETY: the matrices fit their slices, and C (a `&mut`) cannot alias A or B.
    unsafe { product.run() }
}

/// C = A·B on matrices checked against their slices, to run before the slices are used again.
///
/// # Panics
/// When a matrix does not fit in its slice or C aliases itself.
fn checked_product<'a>(
    level: Level,
    [m, k, n]: [usize; 3],
    a: Mat,
    b: Mat,
    c: MatMut,
) -> Product<'a> {
    assert!(
        extent(m, k, a.rs, a.cs) <= a.data.len(),
        "sgemm: A ({m}×{k}, strides {},{}) exceeds its slice of {}",
        a.rs,
        a.cs,
        a.data.len()
    );
    assert!(
        extent(k, n, b.rs, b.cs) <= b.data.len(),
        "sgemm: B ({k}×{n}, strides {},{}) exceeds its slice of {}",
        b.rs,
        b.cs,
        b.data.len()
    );
    assert!(
        extent(m, n, c.rs, c.cs) <= c.data.len(),
        "sgemm: C ({m}×{n}, strides {},{}) exceeds its slice of {}",
        c.rs,
        c.cs,
        c.data.len()
    );
    assert!(
        dispatch::no_self_overlap(m, n, c.rs, c.cs),
        "sgemm: C strides {},{} alias elements of a {m}×{n} matrix",
        c.rs,
        c.cs
    );
    Product::new(
        [m, k, n],
        RawMat::new(a.data.as_ptr(), a.rs, a.cs),
        RawMat::new(b.data.as_ptr(), b.rs, b.cs),
        RawMatMut::new(c.data.as_mut_ptr(), c.rs, c.cs),
        level,
    )
}

/// The single-threaded GEMM implementations [`sgemm`] chooses between, by name, for timing them
/// side by side (`depthshrink bench kernels --only gemm-ab`) with [`product_with`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Backend {
    /// [`sgemm`] itself at the current level: dot products or this crate's AVX-512 kernel
    /// where they apply, else the backend crate below.
    Sgemm,
    /// The `gemm` crate.
    GemmCrate,
    /// The `matrixmultiply` crate (built with feature `matrixmultiply`).
    #[cfg(feature = "matrixmultiply")]
    MatrixMultiply,
}

impl Backend {
    /// Every backend this build has, [`Backend::Sgemm`] last.
    pub const ALL: &'static [Backend] = &[
        #[cfg(feature = "matrixmultiply")]
        Backend::MatrixMultiply,
        Backend::GemmCrate,
        Backend::Sgemm,
    ];

    /// A short name for tables.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sgemm => "sgemm",
            Backend::GemmCrate => "gemm crate",
            #[cfg(feature = "matrixmultiply")]
            Backend::MatrixMultiply => "matrixmultiply",
        }
    }
}

/// C = A·B through `backend`, C row-major `m×n` and overwritten; A is `m×k` with (row, column)
/// strides `sa`, B `k×n` with `sb`. The backend crates run on the calling thread;
/// [`Backend::Sgemm`] splits across the pool as [`sgemm`] does (time it in a one-thread pool).
///
/// # Panics
/// When a matrix does not fit in its slice.
pub fn product_with(
    backend: Backend,
    dims: [usize; 3],
    (a, sa): (&[f32], [isize; 2]),
    (b, sb): (&[f32], [isize; 2]),
    c: &mut [f32],
) {
    let (a, b) = (Mat::new(a, sa[0], sa[1]), Mat::new(b, sb[0], sb[1]));
    let c = MatMut::new(c, dims[2] as isize, 1);
    if backend == Backend::Sgemm {
        return sgemm_at(simd::level(), dims, 1.0, a, b, 0.0, c);
    }
    let product = checked_product(Level::Portable, dims, a, b, c);
    // SAFETY: the matrices fit their slices (checked) and C is a `&mut` of its own.
    unsafe {
        match backend {
            #[cfg(feature = "matrixmultiply")]
            Backend::MatrixMultiply => kernels::matrixmultiply_product(&product),
            _ => kernels::gemm_crate_product(&product),
        }
    }
}

/// The dimensions of a 2-D tensor, or an error naming `op` and `what`.
fn dims2(op: &'static str, what: &str, t: &Tensor) -> Result<[usize; 2]> {
    match t.shape() {
        &[r, c] => Ok([r, c]),
        s => Err(TensorError::shape(
            op,
            format!("{what} must be 2-D, got {s:?}"),
        )),
    }
}

/// `[M,K]·[K,N] → [M,N]`.
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    const OP: &str = "matmul";
    let [m, k] = dims2(OP, "lhs", a)?;
    let [k2, n] = dims2(OP, "rhs", b)?;
    if k != k2 {
        return Err(TensorError::shape(
            OP,
            format!("{:?} · {:?}: inner dimensions differ", a.shape(), b.shape()),
        ));
    }
    let mut c = vec![0.0; m * n];
    let (ks, ns) = (k as isize, n as isize);
    sgemm(
        m,
        k,
        n,
        1.0,
        a.data(),
        ks,
        1,
        b.data(),
        ns,
        1,
        0.0,
        &mut c,
        ns,
        1,
    );
    Tensor::from_vec(&[m, n], c)
}

/// Linear layer forward: `y[N,O] = x[N,I]·wᵀ + bias[O]` (weight stored `[O,I]` as in PyTorch).
pub fn linear_forward(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    const OP: &str = "linear_forward";
    let [rows, i] = dims2(OP, "input", x)?;
    let [o, i2] = dims2(OP, "weight", w)?;
    if i != i2 {
        return Err(TensorError::shape(
            OP,
            format!("input {:?} vs weight {:?} (O×I)", x.shape(), w.shape()),
        ));
    }
    let mut y = match bias {
        Some(b) if b.shape() != [o] => {
            return Err(TensorError::shape(
                OP,
                format!("bias {:?} for {o} outputs", b.shape()),
            ));
        }
        Some(b) => b.data().repeat(rows),
        None => vec![0.0; rows * o],
    };
    let beta = if bias.is_some() { 1.0 } else { 0.0 };
    sgemm(
        rows,
        i,
        o,
        1.0,
        x.data(),
        i as isize,
        1,
        w.data(),
        1,
        i as isize,
        beta,
        &mut y,
        o as isize,
        1,
    );
    Tensor::from_vec(&[rows, o], y)
}

/// Input gradient of [`linear_forward`]: `dx[N,I] = dy[N,O]·w[O,I]`.
pub fn linear_backward_input(dy: &Tensor, w: &Tensor) -> Result<Tensor> {
    const OP: &str = "linear_backward_input";
    let [rows, o] = dims2(OP, "grad", dy)?;
    let [o2, i] = dims2(OP, "weight", w)?;
    if o != o2 {
        return Err(TensorError::shape(
            OP,
            format!("grad {:?} vs weight {:?} (O×I)", dy.shape(), w.shape()),
        ));
    }
    let mut dx = vec![0.0; rows * i];
    sgemm(
        rows,
        o,
        i,
        1.0,
        dy.data(),
        o as isize,
        1,
        w.data(),
        i as isize,
        1,
        0.0,
        &mut dx,
        i as isize,
        1,
    );
    Tensor::from_vec(&[rows, i], dx)
}

/// Weight gradient of [`linear_forward`]: `dw[O,I] = dyᵀ[O,N]·x[N,I]`.
pub fn linear_backward_weight(dy: &Tensor, x: &Tensor) -> Result<Tensor> {
    const OP: &str = "linear_backward_weight";
    let [rows, o] = dims2(OP, "grad", dy)?;
    let [rows2, i] = dims2(OP, "input", x)?;
    if rows != rows2 {
        return Err(TensorError::shape(
            OP,
            format!(
                "grad {:?} vs input {:?}: batch sizes differ",
                dy.shape(),
                x.shape()
            ),
        ));
    }
    let mut dw = vec![0.0; o * i];
    sgemm(
        o,
        rows,
        i,
        1.0,
        dy.data(),
        1,
        o as isize,
        x.data(),
        i as isize,
        1,
        0.0,
        &mut dw,
        i as isize,
        1,
    );
    Tensor::from_vec(&[o, i], dw)
}
