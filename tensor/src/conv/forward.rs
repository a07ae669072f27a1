//! The forward pass: GEMM straight on the image (1×1), im2col tiles + GEMM (everything else but
//! depthwise), and several images per product for maps narrower than the GEMM's micro-tile.

use std::mem::MaybeUninit;

use super::block::{Block, Lhs, Rhs, prefetch, streams};
use super::im2col::{im2col, im2col_packed};
use super::winograd::{self, WinogradWeight};
use super::workspace::{GroupGemm, run_tasks, wanted_tasks, with_col_scratch};
use super::{ConvGeom, check_lens};
use crate::depthwise;
use crate::gemm::{
    Epilogue, PackedLhs, PackedRhs, Product, RawMat, RawMatMut, RhsLayout, SendPtr, TILE_COLS,
};
use crate::simd::Level;

/// Columns a small-map product aims at ([`Forward::small_maps`]): four micro-tiles wide.
const WIDE_PRODUCT: usize = 128;

/// One forward call: its operands (slices sized by `g`), ReLU6 or not, and the level it runs at.
#[derive(Clone, Copy)]
pub(super) struct Forward<'a> {
    pub(super) x: &'a [f32],
    pub(super) w: &'a [f32],
    /// The weight's GEMM operand of each group, packed once ([`super::PackedWeight`]).
    pub(super) packed: Option<&'a [PackedLhs]>,
    /// The weight in the Winograd domain, for the dense 3×3 stride-1 convs it computes.
    pub(super) winograd: Option<&'a WinogradWeight>,
    pub(super) bias: Option<&'a [f32]>,
    pub(super) relu6: bool,
    pub(super) g: &'a ConvGeom,
    pub(super) level: Level,
}

impl Forward<'_> {
    /// Writes every element of `y` (which need not be initialised).
    pub(super) fn run(&self, y: &mut [MaybeUninit<f32>]) {
        let Forward {
            x,
            w,
            packed,
            winograd,
            bias,
            relu6,
            g,
            level,
        } = *self;
        check_lens(g, x.len(), w.len(), y.len());
        if let Some(b) = bias {
            assert_eq!(b.len(), g.cout, "conv: bias slice length");
        }
        if g.is_depthwise() {
            return depthwise::forward_at(level, x, w, bias, relu6, y, g);
        }
        if let Some(u) = winograd
            && winograd::pays(g)
        {
            let epilogue = Epilogue { bias, relu6 };
            return winograd::forward(x, u, epilogue, y, g, level);
        }
        let d = GroupGemm::new(g);
        if let Some(imgs) = self.images_per_product(&d) {
            return self.small_maps(y, &d, imgs);
        }
        let col_rows = if d.pointwise { 0 } else { d.kc };
        let stream = streams(y.len(), level);
        let tile = d.tile(
            col_rows + d.cout_g,
            wanted_tasks().div_ceil((g.n * g.groups).max(1)),
        );
        // im2col writes its columns straight into the GEMM kernel's packed layout where there is
        // one, so the product skips packing them (a pass over the whole column matrix).
        let tiles = d.ohw.div_ceil(tile);
        let y = SendPtr::new(y.as_mut_ptr().cast::<f32>());
        run_tasks(g.n * g.groups * tiles, |t| {
            let (plane, p0) = (t / tiles, t % tiles * tile);
            let (img, grp) = (plane / g.groups, plane % g.groups);
            let len = tile.min(d.ohw - p0);
            let xg = &x[(img * g.cin + grp * d.cin_g) * d.hw..][..d.cin_g * d.hw];
            let wg = &w[grp * d.cout_g * d.kc..][..d.cout_g * d.kc];
            let epilogue = Epilogue {
                bias: bias.map(|b| &b[grp * d.cout_g..][..d.cout_g]),
                relu6,
            };
            let y0 = (img * g.cout + grp * d.cout_g) * d.ohw + p0;
            let out_rows = if stream { d.cout_g } else { 0 };
            let layout = RhsLayout::new(d.kc, len, level).filter(|_| !d.pointwise);
            let col_len = layout.map_or(col_rows * len, |l| l.len());
            with_col_scratch(col_len, len + out_rows * len, |col, rest| {
                let (row, out) = rest.split_at_mut(len);
                let (r0, nr) = (p0 / d.ow, len / d.ow);
                let b = if d.pointwise {
                    prefetch(&xg[p0..], d.cin_g, len, d.hw);
                    Rhs::Strided(&xg[p0..], d.hw)
                } else if let Some(l) = layout {
                    im2col_packed([xg].into_iter(), g, &d, (r0, nr), (l, col), row);
                    Rhs::Packed(PackedRhs::new(l, col))
                } else {
                    im2col(xg, g, &d, r0, nr, col);
                    Rhs::Strided(col, len)
                };
                let block = Block {
                    out: y.get().wrapping_add(y0),
                    ld: d.ohw,
                    scratch: stream.then_some(out),
                };
                let a = Lhs {
                    data: wg,
                    rs: d.kc,
                    cs: 1,
                    packed: packed.map(|p| &p[grp]),
                };
                // SAFETY: the block is rows [grp·cout_g, +cout_g) × positions [p0, p0+len) of
                // image `img`: inside `y` (length checked) and disjoint from every other task's.
                unsafe { block.product([d.cout_g, d.kc, len], a, b, epilogue, level) };
            });
        });
    }

    /// How many images share one product's columns in [`Forward::small_maps`], for maps
    /// narrower than the GEMM's micro-tile (`None`: one product per image, the usual path).
    fn images_per_product(&self, d: &GroupGemm) -> Option<usize> {
        let g = self.g;
        if g.groups != 1
            || d.ohw >= TILE_COLS
            || g.n < 2
            || RhsLayout::new(d.kc, d.ohw, self.level).is_none()
        {
            return None;
        }
        let per_thread = g.n.div_ceil(rayon::current_num_threads().max(1));
        let imgs = (WIDE_PRODUCT / d.ohw).min(per_thread);
        (imgs > 1).then_some(imgs)
    }

    /// Forward pass for maps smaller than the GEMM's micro-tile (32 columns): one image's
    /// product would fill only `ohw` of them (a 1×1 map: one), which wastes most of every tile
    /// and, for a merged block's dense conv with its 9× deeper inner dimension, made merging a
    /// loss on small maps. Each task puts `imgs` images side by side in the columns of one
    /// product, written straight into the kernel's packed layout, computes it (epilogue
    /// included) into scratch and copies each row's per-image segments to their NCHW planes. The
    /// sums are those of the one-image path, term for term.
    fn small_maps(&self, y: &mut [MaybeUninit<f32>], d: &GroupGemm, imgs: usize) {
        let Forward { x, w, g, level, .. } = *self;
        let y = SendPtr::new(y.as_mut_ptr().cast::<f32>());
        let epilogue = Epilogue {
            bias: self.bias,
            relu6: self.relu6,
        };
        run_tasks(g.n.div_ceil(imgs), |t| {
            let images = t * imgs..((t + 1) * imgs).min(g.n);
            let cols = images.len() * d.ohw;
            let layout =
                RhsLayout::new(d.kc, cols, level).expect("images_per_product checked the layout");
            with_col_scratch(layout.len(), cols + g.cout * cols, |col, rest| {
                let (row, out) = rest.split_at_mut(cols);
                let inputs = images
                    .clone()
                    .map(|img| &x[img * g.cin * d.hw..][..g.cin * d.hw]);
                im2col_packed(inputs, g, d, (0, d.ohw / d.ow), (layout, col), row);
                let a = RawMat::new(w.as_ptr(), d.kc as isize, 1);
                // B is read only through its packing.
                let b = RawMat::new(std::ptr::null(), 0, 0);
                let c = RawMatMut::new(out.as_mut_ptr(), cols as isize, 1);
                let product = Product::new([g.cout, d.kc, cols], a, b, c, level)
                    .with_packed_a(self.packed.map(|p| &p[0]))
                    .with_packed_b(Some(PackedRhs::new(layout, col)))
                    .with_epilogue(epilogue);
                // SAFETY: W is cout×kc row-major (its length was checked), B is the packed
                // operand and C this task's scratch of cout×cols floats.
                unsafe { product.run() };
                for (co, out_row) in out.chunks_exact(cols).enumerate() {
                    for (seg, img) in out_row.chunks_exact(d.ohw).zip(images.clone()) {
                        // SAFETY: plane (img, co) lies inside `y` (its length was checked) and
                        // only this task, which owns image `img`, writes it.
                        unsafe {
                            let dst = y.get().add((img * g.cout + co) * d.ohw);
                            std::ptr::copy_nonoverlapping(seg.as_ptr(), dst, d.ohw)
                        };
                    }
                }
            });
        });
    }
}
