//! Winograd F(2×2, 3×3) (Lavin & Gray, 2016) for dense 3×3 convs at stride 1 with fixed
//! weights: the convs merged DepthShrinker blocks are made of, which the unmerged network (1×1
//! and depthwise convs only) has none of.
//!
//! Each 2×2 output tile is Aᵀ[(G g Gᵀ) ⊙ (Bᵀ d B)]A over its 4×4 input patch d, so a tile's
//! 36 multiplies per channel pair become 16: one GEMM per position ξ of the 4×4 transform,
//! `M[ξ] (cout×tiles) = U[ξ] (cout×cin) · V[ξ] (cin×tiles)`. The transforms' coefficients are
//! 0, ±1 and ±½, so the rounding stays close to the direct sum's (unlike F(4×4, 3×3), whose
//! larger points cost accuracy).
//!
//! A task takes whole rows of tiles (of any images), transforms their input into scratch, runs
//! the 16 products on its thread and writes its outputs (bias and ReLU6 included): tasks own
//! disjoint output tiles. The transforms run over a row of tiles at a time as plain slice
//! arithmetic, which the compiler vectorises: the row's even and odd columns are split first,
//! so a tile's four columns are `e[j], o[j], e[j+1], o[j+1]`.

use std::mem::MaybeUninit;

use super::ConvGeom;
use super::workspace::{run_tasks, wanted_tasks, with_scratch};
use crate::gemm::{Epilogue, PackedLhs, Product, RawMat, RawMatMut, SendPtr, TILE_ROWS};
use crate::simd::Level;

/// Positions of the 4×4 transform: one GEMM each.
const XI: usize = 16;

/// Per-task scratch budget in floats (the transformed input and the products): 512 KiB, one
/// core's L2, as the im2col path's tiles.
const BUDGET: usize = 1 << 17;

/// Fewest tiles a task's products aim for: one GEMM micro-tile wide.
const MIN_TILES: usize = 32;

/// Fewest input channels for which the transform pays ([`pays`]).
pub(super) const MIN_CIN: usize = 48;

/// Fewest output channels a task takes when channels are split.
const MIN_BLOCK: usize = 24;

/// A 3×3 weight in the Winograd domain: `U[ξ] = (G g Gᵀ)[ξ]` as 16 row-major `cout×cin`
/// matrices, each packed for the GEMM where the kernel reads packings.
#[derive(Clone)]
pub(super) struct WinogradWeight {
    cout: usize,
    cin: usize,
    u: Vec<f32>,
    packs: Option<Vec<PackedLhs>>,
}

impl WinogradWeight {
    /// Transforms `w` (`[cout, cin, 3, 3]`, row-major).
    pub(super) fn new(w: &[f32], cout: usize, cin: usize) -> WinogradWeight {
        assert_eq!(w.len(), cout * cin * 9, "winograd: weight slice length");
        let mut u = vec![0.0; XI * cout * cin];
        for (pair, g) in w.chunks_exact(9).enumerate() {
            // G g (4×3), then (G g) Gᵀ (4×4); G = [1 0 0; ½ ½ ½; ½ -½ ½; 0 0 1].
            let col = |c: usize| weight_points([g[c], g[3 + c], g[6 + c]]);
            let gg = [col(0), col(1), col(2)];
            for a in 0..4 {
                let row = weight_points([gg[0][a], gg[1][a], gg[2][a]]);
                for (b, v) in row.into_iter().enumerate() {
                    u[(a * 4 + b) * cout * cin + pair] = v;
                }
            }
        }
        let packs = (0..XI)
            .map(|xi| PackedLhs::new(cout, cin, &u[xi * cout * cin..], cin, 1))
            .collect();
        WinogradWeight {
            cout,
            cin,
            u,
            packs,
        }
    }
}

/// G·(g0, g1, g2).
fn weight_points([g0, g1, g2]: [f32; 3]) -> [f32; 4] {
    [g0, 0.5 * (g0 + g1 + g2), 0.5 * (g0 - g1 + g2), g2]
}

/// True when [`forward`] computes the conv of `g`: dense 3×3 at stride 1, padding 0 or 1.
pub(super) fn applies(g: &ConvGeom) -> bool {
    g.k == 3 && g.stride == 1 && g.groups == 1 && g.pad <= 1
}

/// True when [`forward`] is also faster than im2col + GEMM for `g` (measured with `depthshrink
/// latency` on MobileNetV2's merged blocks at batch 1, BENCHMARKS.md): at least 48 input
/// channels (with fewer, each of the 16 products is too shallow to run near the GEMM's peak and
/// the transforms dominate), 16 output channels, and an output map of at least 8×8 (smaller
/// ones make too few tiles per product, and a 7×7 map wastes 30% of its 8×8 of tiles).
pub(super) fn pays(g: &ConvGeom) -> bool {
    applies(g) && g.cin >= MIN_CIN && g.cout >= 16 && g.out_h() >= 8 && g.out_w() >= 8
}

/// The conv of `g` (which [`applies`]) on `x` with the transformed weight `u`, then bias and
/// ReLU6; writes every element of `y`.
pub(super) fn forward(
    x: &[f32],
    u: &WinogradWeight,
    epilogue: Epilogue,
    y: &mut [MaybeUninit<f32>],
    g: &ConvGeom,
    level: Level,
) {
    assert!(applies(g) && u.cout == g.cout && u.cin == g.cin);
    let (oh, ow) = (g.out_h(), g.out_w());
    let (th, tw) = (oh.div_ceil(2), ow.div_ceil(2));
    let rows = g.n * th;
    let per_row = (XI * (g.cin + g.cout) * tw).max(1);
    let wanted = wanted_tasks();
    let chunk = rows
        .div_ceil(wanted)
        .max(MIN_TILES.div_ceil(tw))
        .min(BUDGET / per_row)
        .clamp(1, rows.max(1));
    let row_tasks = rows.div_ceil(chunk);
    // One task's worth of tiles (a small map at batch 1): split the output channels instead,
    // each task transforming the input again (cin·16 per tile, small next to the products'
    // cout·cin·16), rather than letting each of the 16 small products fork on its own.
    let blocks = if row_tasks == 1 {
        wanted.clamp(1, (g.cout / MIN_BLOCK).max(1))
    } else {
        1
    };
    let block = g
        .cout
        .div_ceil(blocks)
        .next_multiple_of(TILE_ROWS)
        .min(g.cout);
    let blocks = g.cout.div_ceil(block);
    let y = SendPtr::new(y.as_mut_ptr().cast::<f32>());
    run_tasks(row_tasks * blocks, |t| {
        let (t, co0) = (t / blocks, t % blocks * block);
        let couts = co0..(co0 + block).min(g.cout);
        let tile_rows = t * chunk..((t + 1) * chunk).min(rows);
        let tiles = tile_rows.len() * tw;
        let (v_len, m_len) = (XI * g.cin * tiles, XI * couts.len() * tiles);
        with_scratch(v_len + m_len + 32 * (tw + 1), |buf| {
            let (v, rest) = buf.split_at_mut(v_len);
            let (m, rows_buf) = rest.split_at_mut(m_len);
            transform_input(x, g, tile_rows.clone(), v, rows_buf);
            for xi in 0..XI {
                let a = RawMat::new(u.u[xi * g.cout * g.cin..].as_ptr(), g.cin as isize, 1);
                let b = RawMat::new(v[xi * g.cin * tiles..].as_ptr(), tiles as isize, 1);
                let c = m[xi * couts.len() * tiles..].as_mut_ptr();
                // C's rows are numbered from the block's first channel: offset it back.
                let c = RawMatMut::new(c.wrapping_sub(co0 * tiles), tiles as isize, 1);
                let product = Product::new([g.cout, g.cin, tiles], a, b, c, level)
                    .with_packed_a(u.packs.as_ref().map(|p| &p[xi]))
                    .rows(co0, couts.len());
                // SAFETY: U[ξ] is cout×cin, V[ξ] cin×tiles and the block's rows of M[ξ]
                // couts×tiles, row-major, inside `u.u`, `v` and `m` (sized above); `m` is this
                // task's own scratch; `co0` is a multiple of the kernel's row tile.
                unsafe { product.run() };
            }
            // SAFETY: this task writes only its channels of its rows' output tiles, in `y`.
            unsafe { transform_output(m, g, tile_rows, couts, epilogue, y, rows_buf) };
        });
    });
}

/// V[ξ][ci][tile] = (Bᵀ d B)[ξ] for the 4×4 input patch d of every tile in `tile_rows` (rows of
/// tiles numbered image by image), Bᵀ = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]. `buf` holds
/// at least 20·(tw + 1) floats.
fn transform_input(
    x: &[f32],
    g: &ConvGeom,
    tile_rows: std::ops::Range<usize>,
    v: &mut [f32],
    buf: &mut [f32],
) {
    let (th, tw) = (g.out_h().div_ceil(2), g.out_w().div_ceil(2));
    let tiles = tile_rows.len() * tw;
    let (xp, rest) = buf.split_at_mut(2 * (tw + 1));
    let (eo, rt) = rest.split_at_mut(2 * (tw + 1));
    let (e, o) = eo.split_at_mut(tw + 1);
    // rt[i·4 + b]: input row i of the patch, transformed along the row (point b).
    let rt = &mut rt[..16 * tw];
    for ci in 0..g.cin {
        for (k, r) in tile_rows.clone().enumerate() {
            let (img, ty) = (r / th, r % th);
            let plane = &x[(img * g.cin + ci) * g.h * g.w..][..g.h * g.w];
            for i in 0..4 {
                let iy = (2 * ty + i) as isize - g.pad as isize;
                let row = (0..g.h as isize)
                    .contains(&iy)
                    .then(|| &plane[iy as usize * g.w..][..g.w]);
                split_row(row, g.pad, xp, e, o);
                // Exact-length slices, so that the loop has no bounds checks and vectorises.
                let (e0, e1, o0, o1) = (&e[..tw], &e[1..], &o[..tw], &o[1..]);
                let (p0, rest) = rt[i * 4 * tw..][..4 * tw].split_at_mut(tw);
                let (p1, rest) = rest.split_at_mut(tw);
                let (p2, p3) = rest.split_at_mut(tw);
                for j in 0..tw {
                    p0[j] = e0[j] - e1[j];
                    p1[j] = o0[j] + e1[j];
                    p2[j] = e1[j] - o0[j];
                    p3[j] = o0[j] - o1[j];
                }
            }
            // Along the column: V[a·4 + b] = row p ± row q of the patch, Bᵀ's two entries in
            // row a (±1, so the sum is exact either way).
            for b in 0..4 {
                let row = |i: usize| &rt[(i * 4 + b) * tw..][..tw];
                for (a, (p, q, minus)) in COLUMN.into_iter().enumerate() {
                    let dst = &mut v[((a * 4 + b) * g.cin + ci) * tiles + k * tw..][..tw];
                    let (x, y) = (row(p), row(q));
                    if minus {
                        for ((d, x), y) in dst.iter_mut().zip(x).zip(y) {
                            *d = x - y;
                        }
                    } else {
                        for ((d, x), y) in dst.iter_mut().zip(x).zip(y) {
                            *d = x + y;
                        }
                    }
                }
            }
        }
    }
}

/// Row a of Bᵀ as (p, q, minus): its nonzero entries are +1 at p and ±1 at q.
const COLUMN: [(usize, usize, bool); 4] = [(0, 2, true), (1, 2, false), (2, 1, true), (1, 3, true)];

/// Splits an input row, zero-padded by `pad` on the left (and as needed on the right), into its
/// even and odd columns: `e[j] = row[2j - pad]`, `o[j] = row[2j + 1 - pad]`, 0 outside the row
/// (a missing row is all padding). `xp` (as long as `e` and `o` together) holds the padded row.
fn split_row(row: Option<&[f32]>, pad: usize, xp: &mut [f32], e: &mut [f32], o: &mut [f32]) {
    let Some(row) = row else {
        e.fill(0.0);
        o.fill(0.0);
        return;
    };
    let w = row.len().min(xp.len() - pad);
    xp[..pad].fill(0.0);
    xp[pad..pad + w].copy_from_slice(&row[..w]);
    xp[pad + w..].fill(0.0);
    for ((e, o), pair) in e.iter_mut().zip(o.iter_mut()).zip(xp.chunks_exact(2)) {
        *e = pair[0];
        *o = pair[1];
    }
}

/// Y = Aᵀ M A for every tile of `tile_rows` and channel of `couts` (M holds those channels'
/// rows only), Aᵀ = [1 1 1 0; 0 1 -1 -1], then the epilogue,
/// written to the tiles' places in the NCHW output at `y` (the bottom row and right column of
/// an odd-sized output are dropped). `buf` holds at least 32·tw floats.
///
/// # Safety
/// `y` must hold the output of `g`, and no other thread may write these tiles meanwhile.
unsafe fn transform_output(
    m: &[f32],
    g: &ConvGeom,
    tile_rows: std::ops::Range<usize>,
    couts: std::ops::Range<usize>,
    epilogue: Epilogue,
    y: SendPtr,
    buf: &mut [f32],
) {
    let (oh, ow) = (g.out_h(), g.out_w());
    let (th, tw) = (oh.div_ceil(2), ow.div_ceil(2));
    let tiles = tile_rows.len() * tw;
    let (s, out) = buf[..32 * tw].split_at_mut(16 * tw);
    let rows = couts.len();
    for (i_co, co) in couts.enumerate() {
        let (bias, lo, hi) = epilogue.row(co);
        for (k, r) in tile_rows.clone().enumerate() {
            let (img, ty) = (r / th, r % th);
            // Exact-length slices, so that the loops have no bounds checks and vectorise.
            let at = |xi: usize| &m[(xi * rows + i_co) * tiles + k * tw..][..tw];
            // s[a·2 + c]: row a of M transformed along the row (output column c).
            for a in 0..4 {
                let (m0, m1, m2, m3) = (at(a * 4), at(a * 4 + 1), at(a * 4 + 2), at(a * 4 + 3));
                let (s0, s1) = s[a * 2 * tw..][..2 * tw].split_at_mut(tw);
                for j in 0..tw {
                    s0[j] = m0[j] + m1[j] + m2[j];
                    s1[j] = m1[j] - m2[j] - m3[j];
                }
            }
            let srow = |i: usize| &s[i * tw..][..tw];
            for c in 0..2 {
                let (a0, a1, a2, a3) = (srow(c), srow(2 + c), srow(4 + c), srow(6 + c));
                let (top, bottom) = out[c * 2 * tw..][..2 * tw].split_at_mut(tw);
                for j in 0..tw {
                    top[j] = (a0[j] + a1[j] + a2[j] + bias).clamp(lo, hi);
                    bottom[j] = (a1[j] - a2[j] - a3[j] + bias).clamp(lo, hi);
                }
            }
            let plane = (img * g.cout + co) * oh * ow;
            for dy in 0..2.min(oh - 2 * ty) {
                // out[c·2tw + dy·tw + j] is output (2ty + dy, 2j + c).
                let oy = 2 * ty + dy;
                // SAFETY: row `oy` of plane (img, co) lies inside `y`; this task owns tile
                // row `ty` of image `img`.
                let dst =
                    unsafe { std::slice::from_raw_parts_mut(y.get().add(plane + oy * ow), ow) };
                for (j, pair) in dst.chunks_mut(2).enumerate() {
                    pair[0] = out[dy * tw + j];
                    if let Some(right) = pair.get_mut(1) {
                        *right = out[2 * tw + dy * tw + j];
                    }
                }
            }
        }
    }
}
