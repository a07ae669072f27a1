//! The backward passes: input gradient (Wᵀ·dY products, then col2im for k×k) and weight
//! gradient (dY·colᵀ accumulated per image, in partial sums added in a fixed order), and the
//! bias gradient.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::block::{Block, Lhs, Rhs, prefetch, streams};
use super::im2col::{col2im, im2col};
use super::workspace::{GroupGemm, run_tasks, wanted_tasks, with_scratch};
use super::{ConvGeom, check_lens};
use crate::gemm::{Epilogue, Mat, MatMut, SendPtr, sgemm_at};
use crate::simd::Level;
use crate::{depthwise, parallel};

/// [`super::backward_input`] at `level` into a buffer that need not be initialised: every
/// element is written.
pub(super) fn backward_input_at(
    level: Level,
    dy: &[f32],
    w: &[f32],
    dx: &mut [MaybeUninit<f32>],
    g: &ConvGeom,
) {
    check_lens(g, dx.len(), w.len(), dy.len());
    if g.is_depthwise() {
        return depthwise::backward_input_at(level, dy, w, dx, g);
    }
    let d = GroupGemm::new(g);
    let dx_len = dx.len();
    let dx = SendPtr::new(dx.as_mut_ptr().cast::<f32>());
    let planes = g.n * g.groups;
    if d.pointwise {
        // dx tile = Wᵀ·dy tile: tiles write disjoint blocks, as in the forward pass.
        let stream = streams(dx_len, level);
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
                let wt = Lhs {
                    data: wg,
                    rs: 1,
                    cs: d.cin_g,
                    packed: None,
                };
                let dims = [d.cin_g, d.cout_g, len];
                let dyt = Rhs::Strided(dyg, d.ohw);
                // SAFETY: this task's block of `dx` (length checked), disjoint from the others.
                unsafe { block.product(dims, wt, dyt, Epilogue::default(), level) };
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
                let wt = Mat::new(&wg[c0 * d.kk..], 1, d.kc as isize);
                let dyt = Mat::new(&dyg[p0..], d.ohw as isize, 1);
                let c = MatMut::new(dcol, len as isize, 1);
                sgemm_at(level, [rows, d.cout_g, len], 1.0, wt, dyt, 0.0, c);
                col2im(dcol, g, &d, p0 / d.ow, len / d.ow, dxb);
            }
        });
    });
}

/// [`super::backward_weight`] at `level`.
pub(super) fn backward_weight_at(
    level: Level,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    g: &ConvGeom,
) {
    check_lens(g, x.len(), dw.len(), dy.len());
    if g.is_depthwise() {
        return depthwise::backward_weight_at(level, x, dy, dw, g);
    }
    let d = GroupGemm::new(g);
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
                let dyt = Mat::new(&dyg[p0..], d.ohw as isize, 1);
                let colt = Mat::new(b, 1, csb as isize);
                let acc = MatMut::new(accg, d.kc as isize, 1);
                sgemm_at(level, [d.cout_g, len, d.kc], 1.0, dyt, colt, 1.0, acc);
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
