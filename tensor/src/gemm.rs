//! The one GEMM entry point every kernel calls, plus the 2-D tensor products built on it.
//!
//! [`sgemm`] is a strided slice API (strides express transposes) over a single-threaded kernel:
//! dot products for a one-row or one-column C, else this crate's own AVX-512 kernel
//! (`gemm/avx512.rs`) where the CPU has AVX-512, else the `gemm` crate (AVX2/FMA or portable),
//! or `matrixmultiply` under feature `matrixmultiply`; BENCHMARKS.md has the measurements behind
//! the choice. Parallelism follows the project's one-level rule ([`crate::parallel`]): called
//! from inside another kernel's task it runs on that thread alone; otherwise a large product is
//! split into blocks of C across the pool.

use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
mod avx512;

use crate::{Result, Tensor, TensorError};

/// Below this many multiply-adds a product stays on one thread: a rayon fork costs microseconds
/// and each block re-packs the shared operand.
const PAR_MIN_MACS: usize = 1 << 22;

/// Rows and columns of C in the AVX-512 kernel's register tile. Parallel blocks of C start at
/// multiples of them, so every block keeps whole tiles (and a [`PackedLhs`]'s row strips line up).
const TILE_ROWS: usize = 12;
pub(crate) const TILE_COLS: usize = 32;

/// C = alpha·A·B + beta·C, with A `m×k`, B `k×n`, C `m×n` addressed as `x[i*rs + j*cs]`.
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
    assert!(
        extent(m, k, rsa, csa) <= a.len(),
        "sgemm: A ({m}×{k}, strides {rsa},{csa}) exceeds its slice of {}",
        a.len()
    );
    assert!(
        extent(k, n, rsb, csb) <= b.len(),
        "sgemm: B ({k}×{n}, strides {rsb},{csb}) exceeds its slice of {}",
        b.len()
    );
    assert!(
        extent(m, n, rsc, csc) <= c.len(),
        "sgemm: C ({m}×{n}, strides {rsc},{csc}) exceeds its slice of {}",
        c.len()
    );
    assert!(
        no_self_overlap(m, n, rsc, csc),
        "sgemm: C strides {rsc},{csc} alias elements of a {m}×{n} matrix"
    );
    // SAFETY: all three extents were checked against their slices above, and C (a `&mut`)
    // cannot alias A or B.
    unsafe {
        sgemm_raw(
            m,
            k,
            n,
            alpha,
            a.as_ptr(),
            rsa,
            csa,
            None,
            b.as_ptr(),
            rsb,
            csb,
            None,
            beta,
            c.as_mut_ptr(),
            rsc,
            csc,
            Epilogue::default(),
        )
    }
}

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
    fn rows_from(self, start: usize) -> Epilogue<'a> {
        Epilogue {
            bias: self.bias.map(|b| &b[start..]),
            ..self
        }
    }

    /// Applies the epilogue to the row-major `rows×cols` matrix at `c` (row stride `ld`).
    ///
    /// # Safety
    /// The matrix must be valid for reads and writes that no other thread makes meanwhile.
    unsafe fn apply(&self, rows: usize, cols: usize, c: *mut f32, ld: isize) {
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
    m: usize,
    k: usize,
    /// The layout the AVX-512 kernel packs A into (see `avx512::pack_lhs`).
    data: Vec<f32>,
}

impl PackedLhs {
    /// Packs the `m×k` matrix at `a` (strides `rs`, `cs`), or `None` where the GEMM kernel does
    /// not read packed operands (no AVX-512).
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
        if avx512::available() {
            let mut data = vec![0.0; m * k];
            // SAFETY: A fits in `a` (asserted); `data` holds the m·k packed floats.
            unsafe { avx512::pack_lhs(m, k, (a.as_ptr(), rs, cs), data.as_mut_ptr()) };
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
    k: usize,
    n: usize,
}

impl RhsLayout {
    /// The layout of a `k×n` B, or `None` where the GEMM kernel does not read packed operands.
    pub(crate) fn new(k: usize, n: usize) -> Option<RhsLayout> {
        #[cfg(target_arch = "x86_64")]
        if avx512::available() {
            return Some(RhsLayout { k, n });
        }
        let _ = (k, n);
        None
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
        // SAFETY: the layout exists only where AVX-512 does (`new`); lengths checked above.
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

    /// The packed block of rows from `pc` (a multiple of the kernel's inner block) and columns
    /// from `j` (a multiple of its strip width).
    #[cfg(target_arch = "x86_64")]
    fn block(&self, pc: usize, j: usize) -> *const f32 {
        let RhsLayout { k, n } = self.layout;
        self.data[avx512::rhs_offset(k, n, pc, j)..].as_ptr()
    }
}

/// [`sgemm`] on raw pointers, for kernels whose parallel tasks write disjoint but interleaved
/// parts of one output (which no set of non-overlapping `&mut` slices can express), then the
/// epilogue (its bias, if any, has one value per row of C).
///
/// # Safety
/// A, B and C must lie within live allocations for the given dimensions and (non-negative)
/// strides; C must not alias A, B or itself, and no other thread may access C's elements
/// during the call. An epilogue needs a row-major C (`csc == 1`). `packed_a`, if given, must
/// hold the same A (the kernels that can read it do, the others read `a`). A `packed_b`, if
/// given, replaces B (`b` is then not read) and needs a row-major C.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn sgemm_raw(
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: *const f32,
    rsa: isize,
    csa: isize,
    packed_a: Option<&PackedLhs>,
    b: *const f32,
    rsb: isize,
    csb: isize,
    packed_b: Option<&PackedRhs>,
    beta: f32,
    c: *mut f32,
    rsc: isize,
    csc: isize,
    epilogue: Epilogue,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        packed_b.is_none_or(|p| csc == 1 && p.layout.k == k && p.layout.n == n),
        "sgemm: a packed B must be k×n, with a row-major C"
    );
    assert!(
        epilogue.is_noop() || csc == 1 && epilogue.bias.is_none_or(|b| b.len() >= m),
        "sgemm: an epilogue needs a row-major C and a bias per row"
    );
    if k == 0 {
        // A and B are empty: C = beta·C (C = 0 for beta == 0, whatever it held).
        for i in 0..m as isize {
            for j in 0..n as isize {
                // SAFETY: (i, j) is inside C.
                unsafe {
                    let v = c.offset(i * rsc + j * csc);
                    *v = if beta == 0.0 { 0.0 } else { beta * *v };
                }
            }
        }
        // SAFETY: C is the caller's row-major matrix (asserted above when there is an epilogue).
        unsafe { epilogue.apply(m, n, c, rsc) };
        return;
    }
    let (a, b, c) = (SendConst(a), SendConst(b), SendPtr::new(c));
    let threads = rayon::current_num_threads();
    // Dot products pack nothing, so they pay for a fork from far smaller sizes.
    let min_macs = if dots_apply(m, n, csa, rsb, packed_b.is_some()) {
        PAR_MIN_MACS / 8
    } else {
        PAR_MIN_MACS
    };
    let parallel =
        crate::parallel::may_split() && m.saturating_mul(n).saturating_mul(k) >= min_macs;
    // Split the longer side of C; the other operand is shared (and packed once per block).
    let split_n = n >= m;
    let len = if split_n { n } else { m };
    let align = if split_n { TILE_COLS } else { TILE_ROWS };
    let block = len.div_ceil(threads).next_multiple_of(align);
    if !parallel || block >= len {
        // SAFETY: the caller's contract.
        unsafe {
            kernel(
                m,
                k,
                n,
                alpha,
                (a.get(), rsa, csa),
                packed_a.map(|p| (p, 0)),
                (b.get(), rsb, csb),
                packed_b.map(|p| (p, 0)),
                beta,
                c.get(),
                rsc,
                csc,
                epilogue,
            )
        };
        return;
    }
    (0..len.div_ceil(block)).into_par_iter().for_each(|i| {
        crate::parallel::task(|| {
            let (start, size) = (i * block, block.min(len - i * block));
            // SAFETY: each block is a sub-rectangle of the caller's matrices; blocks of C are
            // disjoint because C does not alias itself, so no two threads write the same element.
            unsafe {
                if split_n {
                    let (bo, co) = (start as isize * csb, start as isize * csc);
                    kernel(
                        m,
                        k,
                        size,
                        alpha,
                        (a.get(), rsa, csa),
                        packed_a.map(|p| (p, 0)),
                        (b.get().wrapping_offset(bo), rsb, csb),
                        packed_b.map(|p| (p, start)),
                        beta,
                        c.get().offset(co),
                        rsc,
                        csc,
                        epilogue,
                    );
                } else {
                    let (ao, co) = (start as isize * rsa, start as isize * rsc);
                    kernel(
                        size,
                        k,
                        n,
                        alpha,
                        (a.get().offset(ao), rsa, csa),
                        packed_a.map(|p| (p, start)),
                        (b.get(), rsb, csb),
                        packed_b.map(|p| (p, 0)),
                        beta,
                        c.get().offset(co),
                        rsc,
                        csc,
                        epilogue.rows_from(start),
                    );
                }
            }
        })
    });
}

/// A strided read-only matrix: pointer, row stride, column stride.
type Strided = (*const f32, isize, isize);

/// A raw output pointer handed to parallel tasks that write disjoint elements through it.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr(*mut f32);
// SAFETY: users guarantee that concurrent tasks never touch the same element.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    pub(crate) fn new(p: *mut f32) -> Self {
        SendPtr(p)
    }

    /// The pointer (a method, so closures capture the whole `Sync` wrapper, not the field).
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}

/// A raw read-only pointer shared by the blocks of one product.
#[derive(Clone, Copy)]
struct SendConst(*const f32);
// SAFETY: nothing writes through it while the blocks read.
unsafe impl Send for SendConst {}
unsafe impl Sync for SendConst {}

impl SendConst {
    fn get(self) -> *const f32 {
        self.0
    }
}

/// Number of slice elements a `rows×cols` matrix with these strides spans (0 when empty).
pub(crate) fn extent(rows: usize, cols: usize, rs: isize, cs: isize) -> usize {
    assert!(rs >= 0 && cs >= 0, "sgemm: negative strides {rs},{cs}");
    if rows == 0 || cols == 0 {
        return 0;
    }
    let last = (rows - 1)
        .checked_mul(rs as usize)
        .and_then(|r| (cols - 1).checked_mul(cs as usize)?.checked_add(r))
        .expect("sgemm: matrix extent overflows usize");
    last + 1
}

/// True when no two elements of the matrix share an address (a sufficient, layout-agnostic check:
/// the larger stride must step past everything the smaller one spans).
fn no_self_overlap(rows: usize, cols: usize, rs: isize, cs: isize) -> bool {
    let (mut lo, mut hi) = ((rs as usize, rows), (cs as usize, cols));
    if lo.0 > hi.0 {
        std::mem::swap(&mut lo, &mut hi);
    }
    let lo_span = if lo.1 > 1 { lo.0 * (lo.1 - 1) + 1 } else { 1 };
    (lo.1 <= 1 || lo.0 >= 1) && (hi.1 <= 1 || hi.0 >= lo_span)
}

/// The single-threaded product and epilogue on raw pointers: the AVX-512 kernel (epilogue fused
/// into its stores; A read from `packed_a`, starting at the given row, where it fits) when it
/// applies, else the backend crate and a pass over C.
///
/// # Safety
/// As [`sgemm_raw`].
#[allow(clippy::too_many_arguments)]
unsafe fn kernel(
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: Strided,
    packed_a: Option<(&PackedLhs, usize)>,
    b: Strided,
    packed_b: Option<(&PackedRhs, usize)>,
    beta: f32,
    c: *mut f32,
    rsc: isize,
    csc: isize,
    epilogue: Epilogue,
) {
    if dots_apply(m, n, a.2, b.1, packed_b.is_some()) {
        // SAFETY: the caller's contract (A's rows and B's columns are contiguous, k long).
        unsafe { dots(m, k, n, alpha, a, b, beta, c, rsc, csc) };
        // SAFETY: as above; an epilogue comes with a row-major C.
        return unsafe { epilogue.apply(m, n, c, rsc) };
    }
    // SAFETY (all three): the caller's contract; the AVX-512 kernel only runs where it is
    // available.
    #[cfg(target_arch = "x86_64")]
    if avx512::available()
        && unsafe {
            avx512::sgemm(
                m, k, n, alpha, a, packed_a, b, packed_b, beta, c, rsc, csc, epilogue,
            )
        }
    {
        return;
    }
    // A packed B exists only where the AVX-512 kernel runs, and it takes every row-major C.
    assert!(packed_b.is_none(), "sgemm: a packed B without its kernel");
    let _ = packed_a;
    let ((a, rsa, csa), (b, rsb, csb)) = (a, b);
    unsafe {
        backend(m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc);
        epilogue.apply(m, n, c, rsc);
    }
}

/// Whether C has one row or one column and A's rows and B's columns are contiguous: then the
/// product is a set of dot products, each line of the matrix read once, where the GEMM kernels
/// would pack it or fill 1 of their 16 lanes (the classifier at batch 1: a 1280×1000 weight,
/// 0.8-0.9 ms packed on 2 threads, 0.13 ms as dot products).
fn dots_apply(m: usize, n: usize, csa: isize, rsb: isize, packed_b: bool) -> bool {
    (m == 1 || n == 1) && csa == 1 && rsb == 1 && !packed_b
}

/// C = alpha·A·B + beta·C element by element, as the dot product of A's row and B's column
/// (each contiguous, `k` long): for a C of one row or one column.
///
/// # Safety
/// As [`kernel`], with `a.2 == 1` and `b.1 == 1`.
#[allow(clippy::too_many_arguments)]
unsafe fn dots(
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    (a, rsa, _): Strided,
    (b, _, csb): Strided,
    beta: f32,
    c: *mut f32,
    rsc: isize,
    csc: isize,
) {
    // SAFETY (both blocks): row i of A and column j of B are k contiguous floats inside their
    // matrices, and (i, j) is an element of C, by the caller's contract.
    for i in 0..m as isize {
        let row = unsafe { std::slice::from_raw_parts(a.offset(i * rsa), k) };
        for j in 0..n as isize {
            unsafe {
                let col = std::slice::from_raw_parts(b.offset(j * csb), k);
                let out = c.offset(i * rsc + j * csc);
                let ab = alpha * dot(row, col);
                *out = if beta == 0.0 { ab } else { ab + beta * *out };
            }
        }
    }
}

/// `Σ a[i]·b[i]`, in 32 lanes (4 independent AVX2 FMA chains) summed in a fixed order.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if crate::simd::avx2_fma() {
        // SAFETY: AVX2 and FMA are present.
        return unsafe { dot_fma(a, b) };
    }
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

/// The backend crate's single-threaded product on raw pointers: `matrixmultiply` under the
/// feature of that name, else the `gemm` crate.
///
/// # Safety
/// As [`kernel`].
#[allow(clippy::too_many_arguments)]
unsafe fn backend(
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: *const f32,
    rsa: isize,
    csa: isize,
    b: *const f32,
    rsb: isize,
    csb: isize,
    beta: f32,
    c: *mut f32,
    rsc: isize,
    csc: isize,
) {
    // SAFETY: forwarded from the caller's contract; built without the `threading` feature, so
    // this never spawns threads of its own.
    #[cfg(feature = "matrixmultiply")]
    unsafe {
        matrixmultiply::sgemm(m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc)
    }
    // SAFETY: forwarded from the caller's contract. The `gemm` crate computes
    // dst = alpha·dst + beta·lhs·rhs, so the two scalars swap roles; `read_dst = false` keeps
    // beta == 0 from reading C.
    #[cfg(not(feature = "matrixmultiply"))]
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c,
            csc,
            rsc,
            beta != 0.0,
            a,
            csa,
            rsa,
            b,
            csb,
            rsb,
            beta,
            alpha,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::gemm as reference;
    use crate::testutil::{assert_close, rand_vec, rng};

    /// A `rows×cols` matrix stored row-major, or column-major when `trans`, with `pad` unused
    /// elements after each line: (buffer length, row stride, column stride).
    fn layout(rows: usize, cols: usize, trans: bool, pad: usize) -> (usize, usize, usize) {
        if trans {
            (cols * (rows + pad), 1, rows + pad)
        } else {
            (rows * (cols + pad), cols + pad, 1)
        }
    }

    /// Compares `sgemm` with the reference for one shape, transposes given as `[A, B, C]`.
    fn check(dims: [usize; 3], trans: [bool; 3], alpha: f32, beta: f32, seed: u64) {
        let [m, k, n] = dims;
        let mut r = rng(seed);
        let (la, rsa, csa) = layout(m, k, trans[0], 1);
        let (lb, rsb, csb) = layout(k, n, trans[1], 2);
        let (lc, rsc, csc) = layout(m, n, trans[2], 3);
        let (a, b) = (rand_vec(&mut r, la), rand_vec(&mut r, lb));
        let mut c = rand_vec(&mut r, lc);
        if beta == 0.0 {
            // beta == 0 must not read C.
            c.iter_mut().step_by(2).for_each(|v| *v = f32::NAN);
        }
        let original = c.clone();
        let mut expected = c.clone();
        reference::sgemm(
            m,
            k,
            n,
            alpha,
            &a,
            rsa,
            csa,
            &b,
            rsb,
            csb,
            beta,
            &mut expected,
            rsc,
            csc,
        );
        let s = |v: usize| v as isize;
        sgemm(
            m,
            k,
            n,
            alpha,
            &a,
            s(rsa),
            s(csa),
            &b,
            s(rsb),
            s(csb),
            beta,
            &mut c,
            s(rsc),
            s(csc),
        );
        let index = |e: usize| e / n * rsc + e % n * csc;
        let pick = |v: &[f32]| -> Vec<f32> { (0..m * n).map(|e| v[index(e)]).collect() };
        let what = format!("sgemm {dims:?} trans {trans:?} alpha {alpha} beta {beta}");
        assert_close(&pick(&c), &pick(&expected), 1e-5, &what);
        // The padding between C's lines is never written.
        let mut in_c = vec![false; lc];
        (0..m * n).for_each(|e| in_c[index(e)] = true);
        for ((v, o), inside) in c.iter().zip(&original).zip(in_c) {
            assert!(
                inside || v.to_bits() == o.to_bits(),
                "{what}: padding written"
            );
        }
    }

    #[test]
    fn all_transposes_scalars_and_tile_edges() {
        let sizes = [1, 7, 17, 65, 257];
        let mut seed = 0;
        for i in 0..sizes.len() {
            for shift in [1, 2] {
                let dims = [sizes[i], sizes[(i + shift) % 5], sizes[(i + 2 * shift) % 5]];
                for t in 0..8 {
                    let trans = [t & 1 != 0, t & 2 != 0, t & 4 != 0];
                    for (alpha, beta) in [(1.0, 0.0), (0.75, -1.5), (-2.0, 1.0)] {
                        seed += 1;
                        check(dims, trans, alpha, beta, seed);
                    }
                }
            }
        }
    }

    #[test]
    fn matrix_vector_products() {
        // One row or one column of C with contiguous lines (dot products: k below, at and past
        // the 32 lanes, with a tail) and with strided ones (the GEMM kernels), all scalars, and
        // sizes past the threaded split.
        let mut seed = 200;
        for k in [1, 31, 32, 77, 1280] {
            for dims in [[1, k, 1], [1, k, 1000], [300, k, 1], [5000, k, 1]] {
                for t in 0..8 {
                    let trans = [t & 1 != 0, t & 2 != 0, t & 4 != 0];
                    for (alpha, beta) in [(1.0, 0.0), (0.75, -1.5)] {
                        seed += 1;
                        check(dims, trans, alpha, beta, seed);
                    }
                }
            }
        }
    }

    #[test]
    fn threaded_split_over_columns_and_rows() {
        // Both exceed PAR_MIN_MACS, so with a multi-thread global pool they take the split path.
        check([257, 65, 257], [false, true, false], 0.5, 2.0, 1);
        check([300, 65, 257], [true, false, true], 1.0, 0.0, 2);
        check([65, 1100, 65], [false, false, false], 1.0, 0.5, 3);
    }

    #[test]
    fn splits_from_inside_a_worker() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        pool.install(|| check([257, 65, 257], [false, false, false], 1.0, 0.0, 4));
    }

    #[test]
    fn epilogue_matches_a_separate_pass() {
        // Two inner blocks (the epilogue runs once, after the last), row blocks past the packing
        // block, a column edge, sizes that take the threaded split over rows and columns, and
        // short inner dimensions.
        let shapes = [
            [13, 257, 70],
            [130, 300, 45],
            [300, 65, 257],
            [40, 65, 900],
            [13, 24, 70],
            [40, 32, 900],
            [1000, 1280, 1],
            [1, 77, 300],
        ];
        for (i, &[m, k, n]) in shapes.iter().enumerate() {
            let mut r = rng(20 + i as u64);
            let (a, b) = (rand_vec(&mut r, m * k), rand_vec(&mut r, k * n));
            let bias: Vec<f32> = rand_vec(&mut r, m).iter().map(|v| 4.0 * v).collect();
            for relu6 in [false, true] {
                let mut expected = vec![0.0; m * n];
                reference::sgemm(m, k, n, 1.5, &a, k, 1, &b, n, 1, 0.0, &mut expected, n, 1);
                for (e, v) in expected.iter_mut().enumerate() {
                    *v += bias[e / n];
                    if relu6 {
                        *v = v.clamp(0.0, 6.0);
                    }
                }
                let mut c = vec![f32::NAN; m * n];
                let epilogue = Epilogue {
                    bias: Some(&bias),
                    relu6,
                };
                let (ks, ns) = (k as isize, n as isize);
                let (ap, bp, cp) = (a.as_ptr(), b.as_ptr(), c.as_mut_ptr());
                // SAFETY: every matrix is exactly its buffer.
                unsafe {
                    sgemm_raw(
                        m, k, n, 1.5, ap, ks, 1, None, bp, ns, 1, None, 0.0, cp, ns, 1, epilogue,
                    )
                };
                let what = format!("epilogue {m}×{k}×{n} relu6 {relu6}");
                assert_close(&c, &expected, 1e-5, &what);
                if relu6 {
                    assert!(
                        c.contains(&0.0) && c.contains(&6.0),
                        "{what}: clamp never hit"
                    );
                }
            }
        }
    }

    #[test]
    fn prepacked_lhs_is_read_in_place_of_a() {
        // Row blocks past MC, two inner blocks, and the threaded split over rows (m > n), whose
        // second block starts mid-packing.
        for (i, &[m, k, n]) in [[13, 7, 70], [130, 300, 45], [300, 65, 257]]
            .iter()
            .enumerate()
        {
            let mut r = rng(40 + i as u64);
            let (a, other, b) = (
                rand_vec(&mut r, m * k),
                rand_vec(&mut r, m * k),
                rand_vec(&mut r, k * n),
            );
            let Some(packed) = PackedLhs::new(m, k, &other, k, 1) else {
                eprintln!("note: no AVX-512 here: matrices are never prepacked");
                return;
            };
            // The kernel must read the packing (here of another matrix), not `a`.
            let mut expected = vec![0.0; m * n];
            reference::sgemm(
                m,
                k,
                n,
                1.0,
                &other,
                k,
                1,
                &b,
                n,
                1,
                0.0,
                &mut expected,
                n,
                1,
            );
            let mut c = vec![f32::NAN; m * n];
            let (ks, ns) = (k as isize, n as isize);
            let (ap, bp, cp) = (a.as_ptr(), b.as_ptr(), c.as_mut_ptr());
            let p = Some(&packed);
            let e = Epilogue::default();
            // SAFETY: every matrix is exactly its buffer.
            unsafe {
                sgemm_raw(
                    m, k, n, 1.0, ap, ks, 1, p, bp, ns, 1, None, 0.0, cp, ns, 1, e,
                )
            };
            assert_close(&c, &expected, 1e-5, &format!("prepacked {m}×{k}×{n}"));
        }
    }

    #[test]
    fn prepacked_rhs_is_read_in_place_of_b() {
        // Two inner blocks (k = 300 > KC), a last strip of 13 or 1 columns, and the threaded
        // splits over columns (strip offsets into the packing) and over rows.
        for (i, &[m, k, n]) in [[13, 7, 45], [130, 300, 45], [40, 300, 897], [300, 65, 257]]
            .iter()
            .enumerate()
        {
            let Some(layout) = RhsLayout::new(k, n) else {
                eprintln!("note: no AVX-512 here: B is never prepacked");
                return;
            };
            let mut r = rng(60 + i as u64);
            let (a, b) = (rand_vec(&mut r, m * k), rand_vec(&mut r, k * n));
            let mut buf = vec![f32::NAN; layout.len() + 16];
            let skip = buf.as_ptr().align_offset(64);
            let packed = &mut buf[skip..skip + layout.len()];
            for (row, values) in b.chunks_exact(n).enumerate() {
                layout.put_row(row, values, packed);
            }
            assert!(packed.iter().all(|v| v.is_finite()), "put_row left a gap");
            let mut expected = vec![0.0; m * n];
            reference::sgemm(m, k, n, 1.0, &a, k, 1, &b, n, 1, 0.0, &mut expected, n, 1);
            let mut c = vec![f32::NAN; m * n];
            let pb = Some(PackedRhs::new(layout, packed));
            let (ks, ns, e) = (k as isize, n as isize, Epilogue::default());
            let (ap, cp, bp) = (a.as_ptr(), c.as_mut_ptr(), std::ptr::null());
            // SAFETY: A and C are exactly their buffers; B is only read through its packing.
            unsafe {
                sgemm_raw(
                    m,
                    k,
                    n,
                    1.0,
                    ap,
                    ks,
                    1,
                    None,
                    bp,
                    0,
                    0,
                    pb.as_ref(),
                    0.0,
                    cp,
                    ns,
                    1,
                    e,
                )
            };
            assert_close(&c, &expected, 1e-5, &format!("packed B {m}×{k}×{n}"));
        }
    }

    #[test]
    fn empty_inner_dimension_scales_c() {
        let mut c = vec![1.0, 2.0, 3.0, 4.0];
        sgemm(2, 0, 2, 1.0, &[], 0, 0, &[], 0, 0, 0.5, &mut c, 2, 1);
        assert_eq!(c, [0.5, 1.0, 1.5, 2.0]);
        let mut c = vec![f32::NAN; 4];
        sgemm(2, 0, 2, 1.0, &[], 0, 0, &[], 0, 0, 0.0, &mut c, 2, 1);
        assert_eq!(c, [0.0; 4]);
    }

    #[test]
    #[should_panic(expected = "exceeds its slice")]
    fn short_slice_is_caught_before_the_kernel() {
        let mut c = vec![0.0; 4];
        sgemm(
            2, 3, 2, 1.0, &[0.0; 5], 3, 1, &[0.0; 6], 2, 1, 0.0, &mut c, 2, 1,
        );
    }

    #[test]
    #[should_panic(expected = "alias")]
    fn aliasing_output_is_rejected() {
        let mut c = vec![0.0; 4];
        sgemm(
            2, 1, 2, 1.0, &[0.0; 2], 1, 1, &[0.0; 2], 1, 1, 0.0, &mut c, 1, 1,
        );
    }

    fn tensor(r: &mut rand::rngs::StdRng, shape: &[usize]) -> Tensor {
        Tensor::from_vec(shape, rand_vec(r, shape.iter().product())).unwrap()
    }

    /// Reference product of row-major matrices with optional transposes.
    fn product(
        a: &Tensor,
        ta: bool,
        b: &Tensor,
        tb: bool,
        m: usize,
        k: usize,
        n: usize,
    ) -> Vec<f32> {
        let mut c = vec![0.0; m * n];
        let (rsa, csa) = if ta { (1, m) } else { (k, 1) };
        let (rsb, csb) = if tb { (1, k) } else { (n, 1) };
        reference::sgemm(
            m,
            k,
            n,
            1.0,
            a.data(),
            rsa,
            csa,
            b.data(),
            rsb,
            csb,
            0.0,
            &mut c,
            n,
            1,
        );
        c
    }

    #[test]
    fn matmul_and_linear_match_reference() {
        let mut r = rng(9);
        let (rows, i, o) = (13, 17, 7);
        let x = tensor(&mut r, &[rows, i]);
        let w = tensor(&mut r, &[o, i]);
        let bias = tensor(&mut r, &[o]);
        let dy = tensor(&mut r, &[rows, o]);

        let wt = tensor(&mut r, &[i, o]);
        let c = matmul(&x, &wt).unwrap();
        assert_eq!(c.shape(), [rows, o]);
        assert_close(
            c.data(),
            &product(&x, false, &wt, false, rows, i, o),
            1e-5,
            "matmul",
        );

        let y = linear_forward(&x, &w, Some(&bias)).unwrap();
        let mut expected = product(&x, false, &w, true, rows, i, o);
        expected
            .iter_mut()
            .enumerate()
            .for_each(|(e, v)| *v += bias.data()[e % o]);
        assert_close(y.data(), &expected, 1e-5, "linear_forward");
        let y = linear_forward(&x, &w, None).unwrap();
        assert_close(
            y.data(),
            &product(&x, false, &w, true, rows, i, o),
            1e-5,
            "no bias",
        );

        let dx = linear_backward_input(&dy, &w).unwrap();
        assert_eq!(dx.shape(), [rows, i]);
        assert_close(
            dx.data(),
            &product(&dy, false, &w, false, rows, o, i),
            1e-5,
            "dx",
        );
        let dw = linear_backward_weight(&dy, &x).unwrap();
        assert_eq!(dw.shape(), [o, i]);
        assert_close(
            dw.data(),
            &product(&dy, true, &x, false, o, rows, i),
            1e-5,
            "dw",
        );
    }

    #[test]
    fn tensor_products_reject_bad_shapes() {
        let z = Tensor::zeros;
        assert!(matmul(&z(&[2, 3]), &z(&[4, 2])).is_err());
        assert!(matmul(&z(&[2, 3, 1]), &z(&[3, 2])).is_err());
        assert!(linear_forward(&z(&[2, 3]), &z(&[4, 2]), None).is_err());
        assert!(linear_forward(&z(&[2, 3]), &z(&[4, 3]), Some(&z(&[3]))).is_err());
        assert!(linear_forward(&z(&[3]), &z(&[4, 3]), None).is_err());
        assert!(linear_backward_input(&z(&[2, 4]), &z(&[3, 4])).is_err());
        assert!(linear_backward_weight(&z(&[2, 4]), &z(&[3, 5])).is_err());
    }
}
