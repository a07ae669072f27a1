//! The depthwise tests: every pass against the reference, at every SIMD level this CPU has.

use super::*;
use crate::elementwise::as_uninit;
use crate::geometry::ConvParams;
use crate::reference::depthwise as reference;
use crate::testutil::{assert_close, for_each_level, rand_vec, rng};

const TOL: f32 = 1e-5;

fn geom(n: usize, c: usize, h: usize, w: usize, k: usize, s: usize, p: usize) -> Option<ConvGeom> {
    ConvGeom::new(
        "test",
        [n, c, h, w],
        &[c, 1, k, k],
        ConvParams::new(s, p, c),
    )
    .ok()
}

/// Runs all three passes at every level against the reference. Outputs start as NaN, so an
/// element a kernel forgets to write fails the comparison.
fn check(g: &ConvGeom, seed: u64) {
    let mut r = rng(seed);
    let (xl, yl, wl) = (
        g.n * g.cin * g.h * g.w,
        g.n * g.cin * g.out_h() * g.out_w(),
        g.cin * g.k * g.k,
    );
    let x = rand_vec(&mut r, xl);
    let w = rand_vec(&mut r, wl);
    let b = rand_vec(&mut r, g.cin);
    let dy = rand_vec(&mut r, yl);
    let bias = seed.is_multiple_of(2).then_some(&b[..]);
    let mut y_ref = vec![0f32; yl];
    let mut dx_ref = vec![0f32; xl];
    let mut dw_ref = vec![0f32; wl];
    reference::forward(&x, &w, bias, &mut y_ref, g);
    reference::backward_input(&dy, &w, &mut dx_ref, g);
    reference::backward_weight(&x, &dy, &mut dw_ref, g);
    let relu6 = seed.is_multiple_of(3);
    if relu6 {
        y_ref.iter_mut().for_each(|v| *v = v.clamp(0.0, 6.0));
    }
    for_each_level(|level| {
        let what = |pass: &str| format!("{pass} at {level} {g:?} relu6 {relu6}");
        let mut y = vec![f32::NAN; yl];
        forward(&x, &w, bias, relu6, as_uninit(&mut y), g);
        assert_close(&y, &y_ref, TOL, &what("forward"));
        let mut dx = vec![f32::NAN; xl];
        backward_input(&dy, &w, as_uninit(&mut dx), g);
        assert_close(&dx, &dx_ref, TOL, &what("backward_input"));
        let mut dw = vec![f32::NAN; wl];
        backward_weight(&x, &dy, &mut dw, g);
        assert_close(&dw, &dw_ref, TOL, &what("backward_weight"));
    });
}

/// Many 56×56 planes per task (with up to 24 threads), each clamped by ReLU6.
#[test]
fn relu6_over_many_planes_per_task() {
    let g = geom(8, 150, 56, 56, 3, 1, 1).expect("valid geometry");
    check(&g, 3);
}

/// Every map × k × padding × stride, with channels and batch rotating through their lists so
/// each value meets many shapes without the full (slow) cross product.
#[test]
fn matches_reference_on_many_shapes() {
    const CHANNELS: [usize; 5] = [1, 3, 7, 13, 32];
    const MAPS: [(usize, usize); 9] = [
        (1, 1),
        (2, 2),
        (4, 4),
        (5, 5),
        (7, 7),
        (8, 8),
        (9, 9),
        (13, 17),
        (56, 56),
    ];
    let mut idx = 0u64;
    let mut ran = 0;
    for (h, w) in MAPS {
        for k in [1, 3, 5, 7] {
            for p in [0, k / 2, k / 2 + 1] {
                for s in [1, 2] {
                    idx += 1;
                    let mut c = CHANNELS[idx as usize % CHANNELS.len()];
                    let n = [1, 3][(idx as usize / CHANNELS.len()) % 2];
                    if h * w > 1000 {
                        c = c.min(3);
                    }
                    if let Some(g) = geom(n, c, h, w, k, s, p) {
                        check(&g, idx);
                        ran += 1;
                    }
                }
            }
        }
    }
    assert!(ran > 150, "only {ran} shapes were valid");
}

/// The network's shapes, both channel/batch extremes, and odd sizes with stride 2.
#[test]
fn matches_reference_on_network_shapes() {
    let mut seed = 1000;
    for (n, c, hw, k, s) in [
        (3, 32, 8, 3, 1),
        (1, 13, 8, 3, 2),
        (3, 7, 4, 3, 1),
        (3, 32, 4, 5, 2),
        (1, 32, 7, 3, 1),
        (3, 13, 14, 3, 2),
        (1, 3, 56, 3, 2),
        (3, 1, 56, 5, 1),
        (1, 7, 29, 5, 2),
        (3, 3, 31, 3, 2),
        (1, 13, 15, 5, 2),
    ] {
        for p in [0, k / 2, k / 2 + 1] {
            seed += 1;
            let shapes = [geom(n, c, hw, hw, k, s, p), geom(n, c, hw, hw + 3, k, s, p)];
            for g in shapes.into_iter().flatten() {
                check(&g, seed);
            }
        }
    }
}

/// Padding far beyond k/2 (whole output rows and columns see only zeros) and strides the
/// AVX2 kernels don't cover.
#[test]
fn matches_reference_on_odd_geometry() {
    let mut seed = 2000;
    for (h, w, k, s, p) in [
        (5, 6, 3, 1, 4),
        (5, 6, 3, 2, 5),
        (3, 3, 5, 1, 6),
        (9, 4, 5, 2, 7),
        (2, 1, 3, 1, 3),
        (11, 10, 3, 3, 1),
        (12, 13, 5, 4, 2),
        (10, 10, 2, 2, 0),
        (9, 9, 4, 1, 2),
    ] {
        seed += 1;
        check(&geom(2, 3, h, w, k, s, p).unwrap(), seed);
    }
}

/// Each level runs its kernels (so the tests above compare every implementation with the
/// reference), and the default level runs the highest this CPU has.
#[test]
fn each_level_selects_its_kernels() {
    let d = PlaneGeom::new(&geom(1, 1, 8, 8, 3, 1, 1).unwrap());
    let wide = PlaneGeom::new(&geom(1, 1, 8, 16, 3, 1, 1).unwrap());
    let x86 = cfg!(target_arch = "x86_64");
    for level in simd::supported_levels() {
        assert_eq!(use_avx2(level, &d), x86 && level >= Level::Avx2, "{level}");
        // The AVX-512 forward takes planes of 16 columns and more.
        assert_eq!(use_avx512(level, &wide), x86 && level == Level::Avx512);
        assert!(!use_avx512(level, &d));
    }
    let odd = PlaneGeom::new(&geom(1, 1, 8, 8, 7, 1, 3).unwrap());
    assert!(
        !use_avx2(simd::default_level(), &odd),
        "no AVX2 kernel for k = 7"
    );
    if simd::default_level() < Level::Avx2 {
        eprintln!(
            "note: no AVX2+FMA here (or DEPTHSHRINK_SIMD caps it): only the portable path ran"
        );
    }
}
