//! The convolution tests: every pass against the reference, at every SIMD level this CPU has.

use super::block::{Block, Lhs, Rhs};
use super::*;
use crate::gemm::Epilogue;
use crate::reference::conv as reference;
use crate::simd::{self, Level};
use crate::testutil::{assert_close, for_each_level, rand_vec, rng};
use rand::Rng;

/// [n, cin, cout, h, w, k, stride, pad, groups]
type Case = [usize; 9];

fn tensor(r: &mut rand::rngs::StdRng, shape: &[usize]) -> Tensor {
    Tensor::from_vec(shape, rand_vec(r, shape.iter().product())).unwrap()
}

/// Runs all four passes of one case through the Tensor API and compares with the reference, at
/// every level.
fn check(case: Case, seed: u64) {
    for_each_level(|level| check_at(level, case, seed));
}

fn check_at(level: Level, case: Case, seed: u64) {
    let [n, cin, cout, h, w, k, stride, pad, groups] = case;
    let p = ConvParams::new(stride, pad, groups);
    let w_shape = [cout, cin / groups, k, k];
    let g = ConvGeom::new("test", [n, cin, h, w], &w_shape, p).unwrap();
    let mut r = rng(seed);
    let x = tensor(&mut r, &[n, cin, h, w]);
    let wt = tensor(&mut r, &w_shape);
    let b = tensor(&mut r, &[cout]);
    let dy = tensor(&mut r, &g.output_shape());
    let what = |pass: &str| format!("{pass} of {case:?} at {level}");

    let y = conv2d(&x, &wt, Some(&b), p).unwrap();
    assert_eq!(y.shape(), g.output_shape());
    let expected = reference::forward(x.data(), wt.data(), Some(b.data()), &g);
    assert_close(y.data(), &expected, 1e-5, &what("forward"));
    // Weights ×4 so that outputs pass 6 as well as 0.
    let w4 = crate::elementwise::scale(&wt, 4.0);
    let y = conv2d_act(&x, &w4, Some(&b), p, true).unwrap();
    let expected = reference::forward(x.data(), w4.data(), Some(b.data()), &g);
    let expected: Vec<f32> = expected.iter().map(|v| v.clamp(0.0, 6.0)).collect();
    assert_close(y.data(), &expected, 1e-5, &what("forward + relu6"));
    let y = conv2d(&x, &wt, None, p).unwrap();
    let expected = reference::forward(x.data(), wt.data(), None, &g);
    assert_close(y.data(), &expected, 1e-5, &what("forward without bias"));

    let dx = conv2d_backward_input(&dy, &wt, [n, cin, h, w], p).unwrap();
    let expected = reference::backward_input(dy.data(), wt.data(), &g);
    assert_close(dx.data(), &expected, 1e-5, &what("backward_input"));

    let dw = conv2d_backward_weight(&x, &dy, k, p).unwrap();
    assert_eq!(dw.shape(), w_shape);
    let expected = reference::backward_weight(x.data(), dy.data(), &g);
    assert_close(dw.data(), &expected, 1e-5, &what("backward_weight"));

    let db = conv2d_backward_bias(&dy).unwrap();
    let expected = reference::backward_bias(dy.data(), &g);
    assert_close(db.data(), &expected, 1e-5, &what("backward_bias"));
}

#[test]
fn random_shapes_match_reference() {
    let mut r = rng(2024);
    let pick = |r: &mut rand::rngs::StdRng, v: &[usize]| v[r.random_range(0..v.len())];
    let mut done = 0;
    for seed in 0.. {
        if done == 160 {
            break;
        }
        let groups = pick(&mut r, &[1, 2]);
        let cin = pick(&mut r, &[1, 3, 7, 13]) * groups;
        let cout = pick(&mut r, &[1, 3, 7, 13]) * groups;
        let stride = pick(&mut r, &[1, 2]);
        let maps: &[usize] = if stride == 2 {
            &[1, 5, 7, 9, 11, 13]
        } else {
            &[1, 5, 7, 9]
        };
        let (h, w) = (pick(&mut r, maps), pick(&mut r, maps));
        let k = pick(&mut r, &[1, 3, 5, 7]);
        let pad = r.random_range(0..=k / 2 + 1);
        let n = pick(&mut r, &[1, 3]);
        let case = [n, cin, cout, h, w, k, stride, pad, groups];
        let is_dw = groups > 1 && cin == groups && cout == groups;
        if h + 2 * pad < k || w + 2 * pad < k || is_dw {
            continue;
        }
        check(case, seed);
        done += 1;
    }
}

#[test]
fn pointwise_tiles_and_groups() {
    check([1, 13, 7, 40, 40, 1, 1, 0, 1], 1);
    check([3, 14, 6, 9, 9, 1, 1, 0, 2], 2);
    check([2, 24, 36, 17, 17, 1, 1, 0, 1], 3);
    // Strided and padded 1×1 convolutions go through im2col.
    check([3, 7, 13, 9, 9, 1, 2, 0, 1], 4);
    check([1, 3, 7, 5, 5, 1, 1, 1, 1], 5);
}

#[test]
fn streamed_blocks_match_in_place_ones() {
    // Block sizes and offsets that put row starts at every alignment.
    let mut r = rng(15);
    let cases = [(3, 5, 37, 41, 1), (7, 2, 8, 8, 3), (2, 3, 1, 5, 0)];
    for ((rows, k, len, ld, off), relu6) in cases.into_iter().zip([false, true, true]) {
        let (a, b) = (rand_vec(&mut r, rows * k), rand_vec(&mut r, k * len));
        let bias = rand_vec(&mut r, rows);
        let epilogue = Epilogue {
            bias: Some(&bias),
            relu6,
        };
        let expected = vec![0.0; off + rows * ld];
        let streamed = expected.clone();
        let mut scratch = vec![0.0; rows * len];
        for_each_level(|level| {
            let (mut expected, mut streamed) = (expected.clone(), streamed.clone());
            for (out, scratch) in [
                (&mut expected, None),
                (&mut streamed, Some(&mut scratch[..])),
            ] {
                let out = out[off..].as_mut_ptr();
                let block = Block { out, ld, scratch };
                let a = Lhs {
                    data: &a,
                    rs: k,
                    cs: 1,
                    packed: None,
                };
                let b = Rhs::Strided(&b, len);
                // SAFETY: the block's rows×len at stride ld lie inside `out`.
                unsafe { block.product([rows, k, len], a, b, epilogue, level) };
            }
            assert_close(&streamed, &expected, 1e-6, &format!("streamed at {level}"));
            if relu6 {
                assert!(expected.iter().all(|v| (0.0..=6.0).contains(v)), "clamped");
            }
        });
    }
}

#[test]
fn large_outputs_stream_past_the_cache() {
    // An output and an input gradient of ≥ STREAM_MIN floats, against the reference.
    let mut r = rng(16);
    for [cin, cout] in [[1, 64], [64, 1]] {
        let p = ConvParams::new(1, 0, 1);
        let g = ConvGeom::new("test", [1, cin, 256, 257], &[cout, cin, 1, 1], p).unwrap();
        let x = tensor(&mut r, &[1, cin, 256, 257]);
        let w = tensor(&mut r, &[cout, cin, 1, 1]);
        let y_ref = reference::forward(x.data(), w.data(), None, &g);
        let y = Tensor::from_vec(&g.output_shape(), y_ref.clone()).unwrap();
        let dx_ref = reference::backward_input(y.data(), w.data(), &g);
        for_each_level(|level| {
            let what = |pass: &str| format!("large {pass} at {level}");
            let fwd = conv2d(&x, &w, None, p).unwrap();
            assert_close(fwd.data(), &y_ref, 1e-5, &what("forward"));
            let dx = conv2d_backward_input(&y, &w, [1, cin, 256, 257], p).unwrap();
            assert_close(dx.data(), &dx_ref, 1e-5, &what("backward_input"));
        });
    }
}

#[test]
fn im2col_tiles_split_and_bounded() {
    // kc = 637: the column budget forces several row tiles; N = 1 splits them across tasks
    // and splits the input gradient into channel blocks.
    check([1, 13, 7, 33, 33, 7, 1, 3, 1], 6);
    check([1, 13, 13, 31, 29, 3, 2, 1, 1], 7);
    check([3, 6, 4, 23, 23, 5, 2, 2, 2], 8);
    // Channel multiplier 2 with groups == cin is grouped im2col, not depthwise.
    check([2, 3, 6, 9, 9, 3, 1, 1, 3], 9);
}

#[test]
fn splits_from_inside_a_worker() {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    pool.install(|| {
        check([3, 13, 7, 17, 17, 3, 1, 1, 1], 10);
        check([3, 13, 7, 17, 17, 1, 1, 0, 1], 11);
    });
}

/// The weight gradient's per-task partial sums are added in a fixed order, so repeated runs
/// give the same bits however rayon schedules them. Two callers share the pool to vary the
/// scheduling; on an idle pool it may not vary, so this guards rather than proves (repeated
/// training runs, identical tensor for tensor, are the evidence: commit 2e68d68).
#[test]
fn backward_weight_is_reproducible_bit_for_bit() {
    let mut r = rng(21);
    let (x, dy) = (
        tensor(&mut r, &[8, 24, 16, 16]),
        tensor(&mut r, &[8, 40, 16, 16]),
    );
    let dw = || conv2d_backward_weight(&x, &dy, 1, ConvParams::new(1, 0, 1)).unwrap();
    for_each_level(|level| {
        let first = dw();
        std::thread::scope(|s| {
            let callers = [(); 2].map(|_| {
                s.spawn(|| simd::with_level(level, || (0..20).map(|_| dw()).collect::<Vec<_>>()))
            });
            for caller in callers {
                for run in caller.join().unwrap() {
                    assert_eq!(run.data(), first.data(), "at {level}");
                }
            }
        });
    });
}

#[test]
fn depthwise_dispatch_matches_reference() {
    check([3, 7, 7, 9, 9, 3, 1, 1, 7], 12);
    check([1, 13, 13, 11, 11, 5, 2, 2, 13], 13);
    check([3, 3, 3, 7, 7, 3, 2, 1, 3], 14);
}

#[test]
fn small_maps_share_one_product() {
    // Outputs narrower than the GEMM's micro-tile put several images side by side in one
    // product: pointwise and k×k, stride 1 and 2, 1×1 to 5×5 outputs, image counts that
    // leave a short last group, weights taller than one row strip.
    for (i, case) in [
        [5, 8, 20, 1, 1, 1, 1, 0, 1],
        [33, 7, 13, 2, 2, 3, 1, 1, 1],
        [9, 16, 24, 4, 4, 1, 1, 0, 1],
        [6, 5, 30, 9, 9, 3, 2, 1, 1],
        [3, 4, 6, 5, 5, 3, 1, 1, 1],
    ]
    .into_iter()
    .enumerate()
    {
        check(case, 80 + i as u64);
    }
}

#[test]
fn prepacked_weights_match_plain_ones() {
    let mut r = rng(77);
    // (n, cin, h, w, cout, k, stride, pad, groups): 1×1, im2col, grouped, odd sizes.
    for (n, cin, h, w, cout, k, stride, pad, groups) in [
        (1, 160, 7, 7, 960, 1, 1, 0, 1),
        (2, 13, 9, 11, 30, 3, 2, 1, 1),
        (1, 12, 5, 5, 18, 3, 1, 1, 3),
        (3, 7, 13, 13, 25, 1, 1, 0, 1),
        // Small maps: several images per product.
        (4, 160, 1, 1, 96, 1, 1, 0, 1),
        (5, 24, 4, 4, 30, 3, 1, 1, 1),
        // Winograd-prepared (stride 1), and the same weight at stride 2.
        (1, 48, 9, 8, 20, 3, 1, 1, 1),
        (1, 48, 9, 8, 20, 3, 2, 1, 1),
    ] {
        let p = ConvParams::new(stride, pad, groups);
        let x = tensor(&mut r, &[n, cin, h, w]);
        let wt = tensor(&mut r, &[cout, cin / groups, k, k]);
        let bias = tensor(&mut r, &[cout]);
        // Packed only at the AVX-512 level; a wide dense 3×3 gets its Winograd transform at any.
        for_each_level(|level| {
            let packed = PackedWeight::new(&wt, groups);
            assert_eq!(
                packed.is_some(),
                level == Level::Avx512 || k == 3 && groups == 1 && cin >= 48,
                "packing at {level}"
            );
        });
        let Some(packed) = PackedWeight::new(&wt, groups) else {
            eprintln!(
                "note: no AVX-512 here: {:?} k{k} is not prepacked",
                x.shape()
            );
            continue;
        };
        assert!(packed.packs(&wt, groups) && !packed.packs(&wt, groups + 1));
        // A packing made at AVX-512 serves every level (below it, the weight is read).
        for_each_level(|level| {
            for relu6 in [false, true] {
                let plain = conv2d_act(&x, &wt, Some(&bias), p, relu6).unwrap();
                let fast = conv2d_act_packed(&x, &packed, Some(&bias), p, relu6).unwrap();
                let what = format!(
                    "packed conv {:?} k{k} g{groups} relu6 {relu6} at {level}",
                    x.shape()
                );
                assert_close(fast.data(), plain.data(), 1e-5, &what);
            }
        });
        let wrong = ConvParams::new(stride, pad, groups + 1);
        assert!(conv2d_act_packed(&x, &packed, None, wrong, false).is_err());
        // A write to the weight copies it, so the packing no longer claims it.
        let mut written = wt.clone();
        written.data_mut()[0] += 1.0;
        assert!(!packed.packs(&written, groups));
    }
    let depthwise = Tensor::zeros(&[8, 1, 3, 3]);
    assert!(PackedWeight::new(&depthwise, 8).is_none());
}

#[test]
fn winograd_matches_reference() {
    let mut r = rng(91);
    // (n, cin, h, w, cout, pad): the merged blocks' shapes, odd and even output sizes, maps
    // smaller than a tile, one channel, several images per task, tile rows split across tasks.
    for (n, cin, h, w, cout, pad) in [
        (1, 16, 32, 32, 16, 1),
        (1, 48, 8, 8, 48, 1),
        (2, 13, 9, 11, 30, 0),
        (1, 3, 7, 5, 5, 1),
        (3, 1, 3, 3, 1, 1),
        (2, 8, 1, 1, 4, 1),
        (1, 5, 3, 4, 7, 0),
        (5, 24, 4, 4, 30, 1),
        (2, 7, 33, 17, 9, 1),
        // Batch 1 on a small map: output channels split across tasks.
        (1, 40, 7, 7, 100, 1),
    ] {
        let p = ConvParams::new(1, pad, 1);
        let g = ConvGeom::new("test", [n, cin, h, w], &[cout, cin, 3, 3], p).unwrap();
        let x = tensor(&mut r, &[n, cin, h, w]);
        // Weights ×4 so that outputs pass 6 as well as 0.
        let wt = crate::elementwise::scale(&tensor(&mut r, &[cout, cin, 3, 3]), 4.0);
        let bias = tensor(&mut r, &[cout]);
        let u = winograd::WinogradWeight::new(wt.data(), cout, cin);
        let exact = reference::forward(x.data(), wt.data(), Some(bias.data()), &g);
        for_each_level(|level| {
            for relu6 in [false, true] {
                let epilogue = Epilogue {
                    bias: Some(bias.data()),
                    relu6,
                };
                let len = g.output_shape().iter().product();
                let y = workspace::output_vec(len, |y| {
                    winograd::forward(x.data(), &u, epilogue, y, &g, level)
                });
                let expected: Vec<f32> = exact
                    .iter()
                    .map(|&v| if relu6 { v.clamp(0.0, 6.0) } else { v })
                    .collect();
                let what = format!(
                    "winograd {:?} → {cout} pad {pad} relu6 {relu6} at {level}",
                    x.shape()
                );
                assert_close(&y, &expected, 1e-5, &what);
            }
        });
        // The public entry point, whichever path it takes for the shape (nothing is prepared
        // for fewer than 48 input channels below AVX-512).
        if let Some(packed) = PackedWeight::new(&wt, 1) {
            let y = conv2d_act_packed(&x, &packed, Some(&bias), p, false).unwrap();
            let what = "conv2d_act_packed with a Winograd weight";
            assert_close(y.data(), &exact, 1e-5, what);
        }
    }
}

#[test]
fn bad_shapes_are_errors_not_panics() {
    for_each_level(|_| {
        let z = Tensor::zeros;
        let p = ConvParams::new(1, 0, 1);
        // Mismatched channel counts.
        assert!(conv2d(&z(&[1, 4, 5, 5]), &z(&[2, 3, 3, 3]), None, p).is_err());
        // Kernel larger than the padded input.
        assert!(conv2d(&z(&[1, 3, 3, 3]), &z(&[2, 3, 5, 5]), None, p).is_err());
        assert!(
            conv2d(
                &z(&[1, 3, 3, 3]),
                &z(&[2, 3, 5, 5]),
                None,
                ConvParams::new(1, 1, 1)
            )
            .is_ok()
        );
        // Wrong ranks, bad bias, bad parameters.
        assert!(conv2d(&z(&[1, 3, 5, 5]), &z(&[2, 3, 3]), None, p).is_err());
        assert!(conv2d(&z(&[3, 5, 5]), &z(&[2, 3, 3, 3]), None, p).is_err());
        assert!(conv2d(&z(&[1, 3, 5, 5]), &z(&[2, 3, 3, 3]), Some(&z(&[3])), p).is_err());
        assert!(
            conv2d(
                &z(&[1, 3, 5, 5]),
                &z(&[2, 3, 3, 3]),
                None,
                ConvParams::new(0, 0, 1)
            )
            .is_err()
        );
        assert!(
            conv2d(
                &z(&[1, 4, 5, 5]),
                &z(&[2, 2, 3, 3]),
                None,
                ConvParams::new(1, 0, 0)
            )
            .is_err()
        );
        assert!(conv2d(&z(&[1, 3, 5, 5]), &z(&[2, 3, 3, 2]), None, p).is_err());
        // Backward passes check the output gradient against the geometry.
        let (x, w) = (z(&[2, 3, 5, 5]), z(&[4, 3, 3, 3]));
        assert!(conv2d_backward_input(&z(&[2, 4, 3, 3]), &w, [2, 3, 5, 5], p).is_ok());
        assert!(conv2d_backward_input(&z(&[2, 4, 4, 3]), &w, [2, 3, 5, 5], p).is_err());
        assert!(conv2d_backward_input(&z(&[2, 4, 3, 3]), &w, [2, 2, 5, 5], p).is_err());
        assert!(conv2d_backward_weight(&x, &z(&[2, 4, 3, 3]), 3, p).is_ok());
        assert!(conv2d_backward_weight(&x, &z(&[1, 4, 3, 3]), 3, p).is_err());
        assert!(conv2d_backward_weight(&x, &z(&[2, 4, 3]), 3, p).is_err());
        assert!(conv2d_backward_weight(&x, &z(&[2, 4, 3, 3]), 7, p).is_err());
        let g2 = ConvParams::new(1, 0, 2);
        assert!(conv2d_backward_weight(&x, &z(&[2, 4, 3, 3]), 3, g2).is_err());
        assert!(
            conv2d_backward_weight(&x, &z(&[2, 4, 3, 3]), 3, ConvParams::new(1, 0, 0)).is_err()
        );
        assert!(conv2d_backward_bias(&z(&[2, 4, 3])).is_err());
    });
}

#[test]
fn empty_batch_is_fine() {
    for_each_level(|_| {
        let p = ConvParams::new(1, 1, 1);
        let (x, w) = (
            Tensor::zeros(&[0, 3, 5, 5]),
            Tensor::full(&[2, 3, 3, 3], 1.0),
        );
        let y = conv2d(&x, &w, None, p).unwrap();
        assert_eq!(y.shape(), [0, 2, 5, 5]);
        let dx = conv2d_backward_input(&y, &w, [0, 3, 5, 5], p).unwrap();
        assert_eq!(dx.shape(), [0, 3, 5, 5]);
        let dw = conv2d_backward_weight(&x, &y, 3, p).unwrap();
        assert_eq!(dw.data(), &[0.0; 54]);
        assert_eq!(conv2d_backward_bias(&y).unwrap().data(), &[0.0; 2]);
    });
}
