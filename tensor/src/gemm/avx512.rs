//! A single-threaded AVX-512 sgemm: BLIS-style blocking with packed panels and a 12×32
//! register-blocked micro-kernel (24 zmm accumulators).
//!
//! C is addressed row-major (column stride 1; a column-major C is handled by computing Cᵀ = BᵀAᵀ),
//! so each micro-tile row is two 16-float vectors of C and the kernel broadcasts one element of A
//! per row. Loop order, outermost first: NC columns of B → KC of the inner dimension (B block
//! packed into strips of NR columns, kept in L2) → MC rows of A (packed into strips of MR rows,
//! alpha applied) → MR strip (stays in L1) → NR strip (streams from L2) → micro-kernel. A is
//! not packed when it comes prepacked ([`PackedLhs`](super::PackedLhs)) or would be used only
//! once; B is not packed when its producer wrote it in the packed layout
//! ([`PackedRhs`](super::PackedRhs): im2col does, sparing a
//! pass over the whole column matrix). Edge tiles run the same kernel instantiated for fewer rows
//! (one per count, so no work is wasted on padding) and masked stores for fewer columns. The
//! epilogue (bias, ReLU6) is applied in the stores of the last inner block.

use std::arch::x86_64::*;
use std::cell::Cell;

use super::dispatch::{Product, RawMat};
use super::{Epilogue, TILE_COLS as NR, TILE_ROWS as MR};

// Micro-tiles are MR = 12 rows × NR = 32 columns (two zmm vectors) of C: 24 accumulators, two
// B vectors and a broadcast A element fill 27 of the 32 zmm registers.

/// Inner-dimension block: a packed B strip (KC×NR) is 32 KiB, inside L1 with an A strip beside.
const KC: usize = 256;
/// Rows of A packed per block (120 KiB at KC), kept in L2.
const MC: usize = 120;
/// Columns of B packed per block (1 MiB at KC): the block and A's stay in a 2 MiB L2 together,
/// so the B strips that stream past each A strip come from L2, not L3.
const NC: usize = 1024;

/// How far ahead (in inner steps, NR floats each) the micro-kernel prefetches B: 8 took 7-11%
/// off 2048³ and up to 5% off MobileNetV2's product shapes; 4 and 16 did about as well.
const PREFETCH_ROWS: usize = 8;

/// A cache line of floats: the pack buffers' unit, so every strip starts 64-byte aligned.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([f32; 16]);

thread_local! {
    static PACK_A: Cell<Vec<Line>> = const { Cell::new(Vec::new()) };
    static PACK_B: Cell<Vec<Line>> = const { Cell::new(Vec::new()) };
}

/// Runs `f` on this thread's reusable pack buffer of at least `floats` floats.
fn with_buffer<R>(
    key: &'static std::thread::LocalKey<Cell<Vec<Line>>>,
    floats: usize,
    f: impl FnOnce(*mut f32) -> R,
) -> R {
    let mut buf = key.take();
    let lines = floats.div_ceil(16);
    if buf.len() < lines {
        buf.resize(lines, Line([0.0; 16]));
    }
    let r = f(buf.as_mut_ptr().cast::<f32>());
    key.set(buf);
    r
}

/// Floats of a `k×n` B packed whole the way `row_major` packs its blocks: blocks of KC rows one
/// after another, each in strips of NR columns of `kc` rows × NR contiguous floats, zero past
/// column n.
pub(super) fn rhs_len(k: usize, n: usize) -> usize {
    k * n.next_multiple_of(NR)
}

/// Writes row `r` of B (`row`, n floats) into `dst` in that layout, each strip row as two masked
/// vector loads and two stores (zeros past column n): no call per strip.
///
/// # Safety
/// AVX-512 F present; `dst` holds [`rhs_len`] floats and `r < k`.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn put_rhs_row(k: usize, n: usize, r: usize, row: &[f32], dst: &mut [f32]) {
    for (s, chunk) in row.chunks(NR).enumerate() {
        let at = rhs_offset(k, n, r, s * NR);
        let strip = &mut dst[at..at + NR];
        let (lo, hi) = (mask(chunk.len()), mask(chunk.len().saturating_sub(16)));
        // SAFETY: the masked loads read only `chunk`'s floats; the stores write `strip`'s NR.
        unsafe {
            let src = chunk.as_ptr();
            let v0 = _mm512_maskz_loadu_ps(lo, src);
            let v1 = _mm512_maskz_loadu_ps(hi, src.wrapping_add(16));
            _mm512_storeu_ps(strip.as_mut_ptr(), v0);
            _mm512_storeu_ps(strip.as_mut_ptr().add(16), v1);
        }
    }
}

/// Offset of row `r`, column `j` (a multiple of NR) in that layout.
pub(super) fn rhs_offset(k: usize, n: usize, r: usize, j: usize) -> usize {
    let pc = r / KC * KC;
    pc * n.next_multiple_of(NR) + j / NR * KC.min(k - pc) * NR + (r - pc) * NR
}

/// Runs `p` (its contract: [`Product::run`], without the parallel split; `packed_a` holds A from
/// the given row on, `packed_b` B from the given column on). Returns false (and does nothing)
/// when C has unit stride in neither direction, or only by columns with an epilogue to apply or
/// a prepacked B.
///
/// # Safety
/// As [`Product::run`], and the CPU must have AVX-512 F (`p.level` says so).
pub(super) unsafe fn sgemm(p: &Product) -> bool {
    // SAFETY (both calls): the caller's contract; AVX-512 F is present.
    if p.c.cs == 1 {
        unsafe { row_major(p) };
    } else if p.c.rs == 1 && p.epilogue.is_noop() && p.packed_b.is_none() {
        // Cᵀ (n×m, row-major) = Bᵀ·Aᵀ.
        let t = Product {
            m: p.n,
            n: p.m,
            a: p.b.t(),
            packed_a: None,
            b: p.a.t(),
            c: super::RawMatMut::new(p.c.ptr, p.c.cs, 1),
            ..*p
        };
        unsafe { row_major(&t) };
    } else {
        return false;
    }
    true
}

/// The blocked product of a row-major C (`p.c.cs == 1`).
#[target_feature(enable = "avx512f")]
unsafe fn row_major(p: &Product) {
    let (m, k, n, alpha, a, ldc) = (p.m, p.k, p.n, p.alpha, p.a, p.c.rs);
    assert!(
        p.packed_b
            .is_none_or(|(b, _)| b.layout().k == k && b.layout().n >= n)
    );
    // A prepacked A (alpha 1) replaces packing when its row strips line up with this call's.
    let packed = p.packed_a.filter(|&(pa, r0)| {
        alpha == 1.0
            && pa.k == k
            && r0.is_multiple_of(MR)
            && (r0 + m == pa.m || m.is_multiple_of(MR) && r0 + m <= pa.m)
    });
    // With a single column strip every element of A is used once per inner block: packing A
    // would copy it for nothing, so a row-major A is read in place (weight gradients, C = dY·Xᵀ
    // with few columns).
    let direct_a = packed.is_none() && a.cs == 1 && alpha == 1.0 && n <= NR;
    let kc_max = k.min(KC);
    let a_floats = if direct_a || packed.is_some() {
        0
    } else {
        kc_max * m.min(MC).next_multiple_of(MR)
    };
    let b_floats = if p.packed_b.is_some() {
        0
    } else {
        kc_max * n.min(NC).next_multiple_of(NR)
    };
    with_buffer(&PACK_B, b_floats, |b_buf| {
        with_buffer(&PACK_A, a_floats, |ap| {
            for jc in (0..n).step_by(NC) {
                let nc = NC.min(n - jc);
                for pc in (0..k).step_by(KC) {
                    let kc = KC.min(k - pc);
                    // Later inner-dimension blocks accumulate onto the first one's result; the
                    // last one applies the epilogue.
                    let beta = if pc == 0 { p.beta } else { 1.0 };
                    let epilogue = (pc + kc == k).then_some(p.epilogue);
                    // SAFETY: (all below) the block lies inside B, A and C by the caller's
                    // contract; the buffers hold kc_max·(nc, mc rounded up to whole strips);
                    // a packed A holds `pa.m` rows in blocks of KC columns (see `pack_lhs`).
                    unsafe {
                        let bp = match p.packed_b {
                            Some((b, j0)) => b.block(pc, j0 + jc),
                            None => {
                                pack_b(kc, nc, p.b.at(pc, jc), b_buf);
                                b_buf.cast_const()
                            }
                        };
                        for ic in (0..m).step_by(MC) {
                            let mc = MC.min(m - ic);
                            let asrc = a.at(ic, pc);
                            let a_block = match packed {
                                Some((pa, r0)) => pa.data.as_ptr().add(pa.m * pc + (r0 + ic) * kc),
                                None if direct_a => asrc.ptr,
                                None => {
                                    pack_a(mc, kc, alpha, asrc, ap);
                                    ap.cast_const()
                                }
                            };
                            // Row strip by row strip: the A strip (12 KiB) stays in L1 while
                            // the B strips stream from L2, and C is written row by row. (Holding
                            // the 32 KiB B strip instead, with A strips passing through a 48 KiB
                            // L1, took 7-16% longer on 2048³ and no less on conv shapes.)
                            for ir in (0..mc).step_by(MR) {
                                let (a, lda) = if direct_a {
                                    (a_block.offset(ir as isize * a.rs), a.rs)
                                } else {
                                    (a_block.add(ir * kc), 0)
                                };
                                let c_row = p.c.ptr.offset((ic + ir) as isize * ldc + jc as isize);
                                let strip = Tile {
                                    rows: MR.min(mc - ir),
                                    cols: 0,
                                    kc,
                                    a,
                                    lda,
                                    b: bp,
                                    beta,
                                    c: c_row,
                                    ldc,
                                    epi: epilogue.map(|e| e.rows_from(ic + ir)),
                                };
                                for jr in (0..nc).step_by(NR) {
                                    tile(Tile {
                                        cols: NR.min(nc - jr),
                                        b: bp.add(jr * kc),
                                        c: c_row.add(jr),
                                        ..strip
                                    });
                                }
                            }
                        }
                    }
                }
            }
        })
    })
}

/// Packs all of the `m×k` matrix A the way `row_major` packs its blocks, into `m·k` floats at
/// `dst`: KC-column blocks one after another (block `pc` at `m·pc`), each in MR-row strips.
///
/// # Safety
/// A must lie inside its allocation; `dst` must be valid for `m·k` writes.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn pack_lhs(m: usize, k: usize, a: RawMat, dst: *mut f32) {
    for pc in (0..k).step_by(KC) {
        // SAFETY: block `pc` of A, into its `m·kc` floats of `dst`.
        unsafe { pack_a(m, KC.min(k - pc), 1.0, a.at(0, pc), dst.add(m * pc)) };
    }
}

/// Packs the `kc×nc` block of B into strips of NR columns, each `kc` rows of NR contiguous
/// floats, zero-padded past column `nc`.
#[target_feature(enable = "avx512f")]
#[inline(never)]
unsafe fn pack_b(kc: usize, nc: usize, b: RawMat, dst: *mut f32) {
    let RawMat { ptr: b, rs, cs } = b;
    for j0 in (0..nc).step_by(NR) {
        let cols = NR.min(nc - j0);
        // SAFETY: reads stay inside the kc×nc block; writes inside strip j0 of `dst`, whose
        // rows are 64-byte aligned.
        unsafe {
            let strip = dst.add(j0 * kc);
            let src = b.offset(j0 as isize * cs);
            if cs == 1 {
                let lo = mask(cols);
                let hi = mask(cols.saturating_sub(16));
                for p in 0..kc {
                    let row = src.offset(p as isize * rs);
                    let out = strip.add(p * NR);
                    _mm512_store_ps(out, _mm512_maskz_loadu_ps(lo, row));
                    _mm512_store_ps(out.add(16), _mm512_maskz_loadu_ps(hi, row.add(16)));
                }
            } else if rs == 1 {
                // Bᵀ is row-major: transpose 16×16 blocks (16 columns × 16 rows of B) in registers.
                for half in 0..NR / 16 {
                    let n = cols.saturating_sub(16 * half).min(16);
                    let col = src.offset((16 * half) as isize * cs);
                    for p0 in (0..kc).step_by(16) {
                        let q = 16.min(kc - p0);
                        let block = load_block(col.add(p0), cs, n, q);
                        for (t, v) in transpose16(block).iter().take(q).enumerate() {
                            _mm512_store_ps(strip.add((p0 + t) * NR + 16 * half), *v);
                        }
                    }
                }
            } else {
                for p in 0..kc {
                    for j in 0..NR {
                        *strip.add(p * NR + j) = if j < cols {
                            *src.offset(p as isize * rs + j as isize * cs)
                        } else {
                            0.0
                        };
                    }
                }
            }
        }
    }
}

/// Packs the `mc×kc` block of A, times alpha, into strips of MR rows, each `kc` columns of
/// `rows` contiguous floats (a last strip of fewer rows is packed just as narrow).
#[target_feature(enable = "avx512f")]
#[inline(never)]
unsafe fn pack_a(mc: usize, kc: usize, alpha: f32, a: RawMat, dst: *mut f32) {
    let RawMat { ptr: a, rs, cs } = a;
    let valpha = _mm512_set1_ps(alpha);
    for i0 in (0..mc).step_by(MR) {
        let rows = MR.min(mc - i0);
        let k = mask(rows);
        // SAFETY: reads inside the mc×kc block; writes the `rows·kc` floats of strip i0.
        unsafe {
            let strip = dst.add(i0 * kc);
            let src = a.offset(i0 as isize * rs);
            if rs == 1 {
                // Column-major A: each column of the strip is already contiguous.
                for p in 0..kc {
                    let v = _mm512_maskz_loadu_ps(k, src.offset(p as isize * cs));
                    _mm512_mask_storeu_ps(strip.add(p * rows), k, _mm512_mul_ps(valpha, v));
                }
            } else if cs == 1 {
                // Row-major A: transpose 16-column blocks of the strip's rows in registers.
                for p0 in (0..kc).step_by(16) {
                    let q = 16.min(kc - p0);
                    let block = load_block(src.add(p0), rs, rows, q);
                    for (t, v) in transpose16(block).iter().take(q).enumerate() {
                        let out = strip.add((p0 + t) * rows);
                        _mm512_mask_storeu_ps(out, k, _mm512_mul_ps(valpha, *v));
                    }
                }
            } else {
                for i in 0..rows {
                    for p in 0..kc {
                        *strip.add(p * rows + i) =
                            alpha * *src.offset(i as isize * rs + p as isize * cs);
                    }
                }
            }
        }
    }
}

/// Loads `lines` (≤ 16) lines of `len` (≤ 16) contiguous floats, `stride` apart, as the rows
/// of a 16×16 block; the rest of the block is zero.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn load_block(src: *const f32, stride: isize, lines: usize, len: usize) -> [__m512; 16] {
    let k = mask(len);
    let mut block = [_mm512_setzero_ps(); 16];
    for (i, v) in block.iter_mut().take(lines).enumerate() {
        // SAFETY: the caller's lines lie inside its matrix.
        *v = unsafe { _mm512_maskz_loadu_ps(k, src.offset(i as isize * stride)) };
    }
    block
}

/// Transposes a 16×16 block held as 16 row vectors: 2×2 float pairs, then 4×4 via 64-bit
/// pairs, then the 128-bit lanes in two rounds (64 shuffles for 256 floats).
#[inline]
#[target_feature(enable = "avx512f")]
fn transpose16(r: [__m512; 16]) -> [__m512; 16] {
    let mut t = [_mm512_setzero_ps(); 16];
    for i in (0..16).step_by(2) {
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    let (lo, hi) = (
        |a: __m512, b: __m512| {
            _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(a), _mm512_castps_pd(b)))
        },
        |a: __m512, b: __m512| {
            _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(a), _mm512_castps_pd(b)))
        },
    );
    let mut u = [_mm512_setzero_ps(); 16];
    for i in (0..16).step_by(4) {
        u[i] = lo(t[i], t[i + 2]);
        u[i + 1] = hi(t[i], t[i + 2]);
        u[i + 2] = lo(t[i + 1], t[i + 3]);
        u[i + 3] = hi(t[i + 1], t[i + 3]);
    }
    // u[4g + j] holds columns j, j+4, j+8 and j+12 of rows 4g..4g+4, one 128-bit lane each.
    for g in (0..16).step_by(8) {
        for j in 0..4 {
            t[g + j] = _mm512_shuffle_f32x4::<0x88>(u[g + j], u[g + j + 4]);
            t[g + j + 4] = _mm512_shuffle_f32x4::<0xdd>(u[g + j], u[g + j + 4]);
        }
    }
    let mut out = [_mm512_setzero_ps(); 16];
    for j in 0..8 {
        out[j] = _mm512_shuffle_f32x4::<0x88>(t[j], t[j + 8]);
        out[j + 8] = _mm512_shuffle_f32x4::<0xdd>(t[j], t[j + 8]);
    }
    out
}

/// Lane mask for the first `n` (≤ 16 counts as all) lanes.
fn mask(n: usize) -> __mmask16 {
    if n >= 16 { 0xffff } else { (1u16 << n) - 1 }
}

/// One micro-tile's operands: `rows×cols` of C (`rows` ≤ MR, `cols` ≤ NR) from `kc` inner
/// steps.
#[derive(Clone, Copy)]
struct Tile<'a> {
    rows: usize,
    cols: usize,
    kc: usize,
    /// `rows×kc` packed floats (`lda == 0`), or the unpacked block of a row-major A with row
    /// stride `lda`.
    a: *const f32,
    lda: isize,
    /// A packed `kc×NR` strip of B, 64-byte aligned.
    b: *const f32,
    beta: f32,
    /// The tile of C and its row stride.
    c: *mut f32,
    ldc: isize,
    /// The epilogue of the tile's rows, if this is the last inner block.
    epi: Option<Epilogue<'a>>,
}

/// One micro-tile: dispatches on the number of rows so each count has its own fully unrolled
/// kernel, and on the columns so a tile of ≤ 16 runs one vector per row.
///
/// # Safety
/// The tile's pointers address what its fields say, inside live allocations; AVX-512 F present.
#[target_feature(enable = "avx512f")]
unsafe fn tile(t: Tile) {
    let t = Tile {
        epi: t.epi.filter(|e| !e.is_noop()),
        ..t
    };
    macro_rules! dispatch {
        ($($r:literal)*) => {
            match (t.rows, t.cols > 16, t.lda != 0) {
                $(
                    ($r, true, false) => micro::<$r, 2, false>(t),
                    ($r, false, false) => micro::<$r, 1, false>(t),
                    ($r, true, true) => micro::<$r, 2, true>(t),
                    ($r, false, true) => micro::<$r, 1, true>(t),
                )*
                _ => unreachable!("micro-tile of {} rows", t.rows),
            }
        };
    }
    // SAFETY: forwarded.
    unsafe { dispatch!(1 2 3 4 5 6 7 8 9 10 11 12) }
}

/// The register-blocked kernel: `R` rows × `V` vectors of C accumulated over `kc` steps, then
/// C = epi(acc + beta·C) (C not read when beta == 0), columns past `cols` left untouched. A is
/// packed, or read in place with row stride `lda` when `DIRECT`.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn micro<const R: usize, const V: usize, const DIRECT: bool>(t: Tile) {
    let Tile {
        kc,
        a: ap,
        lda,
        b: bp,
        beta,
        c,
        ldc,
        cols,
        epi,
        ..
    } = t;
    // SAFETY: the caller's contract (see `tile`); the packed B strip is 64-byte aligned.
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); V]; R];
        let (mut ap, mut bp) = (ap, bp);
        for _ in 0..kc {
            // B strips stream from L2: hint the rows PREFETCH_ROWS steps ahead (past a strip's
            // end, the next strip's first rows). Only a hint, so the address may leave B.
            let ahead = bp.wrapping_add(PREFETCH_ROWS * NR);
            for v in 0..V {
                _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(16 * v).cast());
            }
            let mut bv = [_mm512_setzero_ps(); V];
            for (v, b) in bv.iter_mut().enumerate() {
                *b = _mm512_load_ps(bp.add(16 * v));
            }
            for (i, row) in acc.iter_mut().enumerate() {
                let a = _mm512_set1_ps(if DIRECT {
                    *ap.offset(i as isize * lda)
                } else {
                    *ap.add(i)
                });
                for (acc, b) in row.iter_mut().zip(&bv) {
                    *acc = _mm512_fmadd_ps(a, *b, *acc);
                }
            }
            ap = ap.add(if DIRECT { 1 } else { R });
            bp = bp.add(NR);
        }
        let masks = [mask(cols), mask(cols.saturating_sub(16))];
        let vbeta = _mm512_set1_ps(beta);
        for (i, row) in acc.iter().enumerate() {
            let crow = c.offset(i as isize * ldc);
            let clamp = epi.map(|e| {
                let (b, lo, hi) = e.row(i);
                (_mm512_set1_ps(b), _mm512_set1_ps(lo), _mm512_set1_ps(hi))
            });
            for (v, acc) in row.iter().enumerate() {
                let (p, k) = (crow.add(16 * v), masks[v]);
                let mut out = if beta == 0.0 {
                    *acc
                } else {
                    _mm512_fmadd_ps(vbeta, _mm512_maskz_loadu_ps(k, p), *acc)
                };
                if let Some((b, lo, hi)) = clamp {
                    // max/min return their second operand when one is NaN: v goes second so a
                    // NaN propagates, as `f32::clamp` does.
                    out = _mm512_min_ps(hi, _mm512_max_ps(lo, _mm512_add_ps(out, b)));
                }
                _mm512_mask_storeu_ps(p, k, out);
            }
        }
    }
}
