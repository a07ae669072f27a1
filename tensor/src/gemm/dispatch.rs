//! One product on raw pointers ([`Product`]): its checks, its split into blocks of C across the
//! pool, and the choice of single-threaded kernel for each block.

use rayon::prelude::*;

use super::kernels::{backend, dots};
use super::packing::{Epilogue, PackedLhs, PackedRhs};
use super::{TILE_COLS, TILE_ROWS};
use crate::simd::Level;

/// Below this many multiply-adds a product stays on one thread: a rayon fork costs microseconds
/// and each block re-packs the shared operand.
const PAR_MIN_MACS: usize = 1 << 22;

/// A read-only strided matrix on a raw pointer: element (i, j) at `ptr + i·rs + j·cs`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RawMat {
    pub(crate) ptr: *const f32,
    pub(crate) rs: isize,
    pub(crate) cs: isize,
}

impl RawMat {
    pub(crate) fn new(ptr: *const f32, rs: isize, cs: isize) -> RawMat {
        RawMat { ptr, rs, cs }
    }

    /// The matrix from row `r`, column `c` on (the pointer moves; nothing is read).
    pub(crate) fn at(self, r: usize, c: usize) -> RawMat {
        let off = r as isize * self.rs + c as isize * self.cs;
        RawMat {
            ptr: self.ptr.wrapping_offset(off),
            ..self
        }
    }

    /// The transpose: rows and columns swap strides.
    pub(crate) fn t(self) -> RawMat {
        RawMat {
            ptr: self.ptr,
            rs: self.cs,
            cs: self.rs,
        }
    }
}

/// The output matrix of a product on a raw pointer: element (i, j) at `ptr + i·rs + j·cs`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RawMatMut {
    pub(crate) ptr: *mut f32,
    pub(crate) rs: isize,
    pub(crate) cs: isize,
}

impl RawMatMut {
    pub(crate) fn new(ptr: *mut f32, rs: isize, cs: isize) -> RawMatMut {
        RawMatMut { ptr, rs, cs }
    }

    /// The matrix from row `r`, column `c` on.
    fn at(self, r: usize, c: usize) -> RawMatMut {
        let off = r as isize * self.rs + c as isize * self.cs;
        RawMatMut {
            ptr: self.ptr.wrapping_offset(off),
            ..self
        }
    }
}

/// C = alpha·A·B + beta·C with A `m×k`, B `k×n`, C `m×n`, then the epilogue, at one SIMD level:
/// the unit every GEMM call in the crate is made of. Built with [`Product::new`] and the `with_*`
/// methods, run with [`Product::run`].
#[derive(Clone, Copy)]
pub(crate) struct Product<'a> {
    pub(crate) m: usize,
    pub(crate) k: usize,
    pub(crate) n: usize,
    pub(crate) alpha: f32,
    pub(crate) a: RawMat,
    /// A packed once, and the row of that packing where this product's A starts.
    pub(crate) packed_a: Option<(&'a PackedLhs, usize)>,
    pub(crate) b: RawMat,
    /// B written in the kernel's layout (`b` is then not read), and the column where this
    /// product's B starts in it.
    pub(crate) packed_b: Option<(PackedRhs<'a>, usize)>,
    pub(crate) beta: f32,
    pub(crate) c: RawMatMut,
    pub(crate) epilogue: Epilogue<'a>,
    /// The level the product runs at: at most what the CPU supports (it comes from
    /// [`crate::simd::level`]), as the kernels rely on.
    pub(crate) level: Level,
}

// SAFETY: a product only carries its matrices' addresses between threads; `run`'s contract makes
// the blocks of C that different threads write disjoint, and A and B are only read.
unsafe impl Send for Product<'_> {}
unsafe impl Sync for Product<'_> {}

impl<'a> Product<'a> {
    /// C = A·B (alpha 1, beta 0, nothing prepacked, no epilogue) for `[m, k, n]`.
    pub(crate) fn new(
        [m, k, n]: [usize; 3],
        a: RawMat,
        b: RawMat,
        c: RawMatMut,
        level: Level,
    ) -> Product<'a> {
        debug_assert!(
            level <= crate::simd::host_level(),
            "{level} beyond this CPU"
        );
        Product {
            m,
            k,
            n,
            alpha: 1.0,
            a,
            packed_a: None,
            b,
            packed_b: None,
            beta: 0.0,
            c,
            epilogue: Epilogue::default(),
            level,
        }
    }

    /// The same product scaled: C = alpha·A·B + beta·C.
    pub(crate) fn with_scalars(self, alpha: f32, beta: f32) -> Product<'a> {
        Product {
            alpha,
            beta,
            ..self
        }
    }

    /// The same product reading A from `packed` where the kernel can (it must hold the same A).
    pub(crate) fn with_packed_a(self, packed: Option<&'a PackedLhs>) -> Product<'a> {
        Product {
            packed_a: packed.map(|p| (p, 0)),
            ..self
        }
    }

    /// The same product reading B from `packed` instead of `b`.
    pub(crate) fn with_packed_b(self, packed: Option<PackedRhs<'a>>) -> Product<'a> {
        Product {
            packed_b: packed.map(|p| (p, 0)),
            ..self
        }
    }

    /// The same product followed by `epilogue`.
    pub(crate) fn with_epilogue(self, epilogue: Epilogue<'a>) -> Product<'a> {
        Product { epilogue, ..self }
    }

    /// Columns `[start, start + len)` of C: the product with B's columns from `start`.
    fn columns(&self, start: usize, len: usize) -> Product<'a> {
        Product {
            n: len,
            b: self.b.at(0, start),
            packed_b: self.packed_b.map(|(p, j)| (p, j + start)),
            c: self.c.at(0, start),
            ..*self
        }
    }

    /// Rows `[start, start + len)` of C: the product with A's rows (and the epilogue's) from
    /// `start`. With a packed A, `start` must be a multiple of `TILE_ROWS`.
    pub(crate) fn rows(&self, start: usize, len: usize) -> Product<'a> {
        Product {
            m: len,
            a: self.a.at(start, 0),
            packed_a: self.packed_a.map(|(p, r)| (p, r + start)),
            c: self.c.at(start, 0),
            epilogue: self.epilogue.rows_from(start),
            ..*self
        }
    }

    /// Runs the product, split into blocks of C across the pool when it is large and may split
    /// ([`crate::parallel`]), then the epilogue (its bias, if any, has one value per row of C).
    ///
    /// # Safety
    /// A, B and C must lie within live allocations for the given dimensions and (non-negative)
    /// strides; C must not alias A, B or itself, and no other thread may access C's elements
    /// during the call. An epilogue needs a row-major C (`c.cs == 1`). `packed_a`, if given,
    /// must hold the same A (the kernels that can read it do, the others read `a`). A
    /// `packed_b`, if given, replaces B (`b` is then not read) and needs a row-major C.
    pub(crate) unsafe fn run(&self) {
        let (m, k, n) = (self.m, self.k, self.n);
        if m == 0 || n == 0 {
            return;
        }
        assert!(
            self.packed_b
                .is_none_or(|(p, _)| self.c.cs == 1 && p.layout().k == k && p.layout().n == n),
            "sgemm: a packed B must be k×n, with a row-major C"
        );
        assert!(
            self.epilogue.is_noop()
                || self.c.cs == 1 && self.epilogue.bias.is_none_or(|b| b.len() >= m),
            "sgemm: an epilogue needs a row-major C and a bias per row"
        );
        if k == 0 {
            // SAFETY: the caller's contract.
            return unsafe { self.scale_c() };
        }
        let threads = rayon::current_num_threads();
        // Dot products pack nothing, so they pay for a fork from far smaller sizes.
        let min_macs = if self.dots_apply() {
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
            return unsafe { self.kernel() };
        }
        (0..len.div_ceil(block)).into_par_iter().for_each(|i| {
            crate::parallel::task(|| {
                let (start, size) = (i * block, block.min(len - i * block));
                let part = if split_n {
                    self.columns(start, size)
                } else {
                    self.rows(start, size)
                };
                // SAFETY: each block is a sub-rectangle of the caller's matrices; blocks of C are
                // disjoint because C does not alias itself, so no two threads write the same
                // element.
                unsafe { part.kernel() };
            })
        });
    }

    /// A and B are empty: C = beta·C (C = 0 for beta == 0, whatever it held), then the epilogue.
    ///
    /// # Safety
    /// As [`Product::run`].
    unsafe fn scale_c(&self) {
        let c = self.c;
        for i in 0..self.m as isize {
            for j in 0..self.n as isize {
                // SAFETY: (i, j) is inside C.
                unsafe {
                    let v = c.ptr.offset(i * c.rs + j * c.cs);
                    *v = if self.beta == 0.0 {
                        0.0
                    } else {
                        self.beta * *v
                    };
                }
            }
        }
        // SAFETY: C is the caller's row-major matrix (checked in `run` when there is an epilogue).
        unsafe { self.epilogue.apply(self.m, self.n, c.ptr, c.rs) };
    }

    /// Whether C has one row or one column and A's rows and B's columns are contiguous: then the
    /// product is a set of dot products, each line of the matrix read once, where the GEMM
    /// kernels would pack it or fill 1 of their 16 lanes (the classifier at batch 1: a
    /// 1280×1000 weight, 0.8-0.9 ms packed on 2 threads, 0.13 ms as dot products).
    fn dots_apply(&self) -> bool {
        (self.m == 1 || self.n == 1) && self.a.cs == 1 && self.b.rs == 1 && self.packed_b.is_none()
    }

    /// The single-threaded product and epilogue: dot products where they apply, else the
    /// AVX-512 kernel (epilogue fused into its stores; A read from `packed_a` where it fits) when
    /// the level has it and it takes this C, else the backend crate and a pass over C.
    ///
    /// # Safety
    /// As [`Product::run`].
    unsafe fn kernel(&self) {
        let c = self.c;
        if self.dots_apply() {
            // SAFETY: the caller's contract (A's rows and B's columns are contiguous, k long);
            // an epilogue comes with a row-major C.
            return unsafe {
                dots(self);
                self.epilogue.apply(self.m, self.n, c.ptr, c.rs)
            };
        }
        // SAFETY: the caller's contract; the level is at most the CPU's, so AVX-512 is present.
        #[cfg(target_arch = "x86_64")]
        if self.level >= Level::Avx512 && unsafe { super::avx512::sgemm(self) } {
            return;
        }
        // A packed B exists only where the AVX-512 kernel runs, and it takes every row-major C.
        assert!(
            self.packed_b.is_none(),
            "sgemm: a packed B without its kernel"
        );
        // SAFETY: the caller's contract.
        unsafe {
            backend(self);
            self.epilogue.apply(self.m, self.n, c.ptr, c.rs);
        }
    }
}

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
pub(crate) fn no_self_overlap(rows: usize, cols: usize, rs: isize, cs: isize) -> bool {
    let (mut lo, mut hi) = ((rs as usize, rows), (cs as usize, cols));
    if lo.0 > hi.0 {
        std::mem::swap(&mut lo, &mut hi);
    }
    let lo_span = if lo.1 > 1 { lo.0 * (lo.1 - 1) + 1 } else { 1 };
    (lo.1 <= 1 || lo.0 >= 1) && (hi.1 <= 1 || hi.0 >= lo_span)
}
