//! The batch-norm tests, at every SIMD level this CPU has.

use super::*;
use crate::testutil::{assert_close, for_each_level};

fn t(shape: &[usize], v: Vec<f32>) -> Tensor {
    Tensor::from_vec(shape, v).unwrap()
}

#[test]
fn the_frame_is_every_index_outside_the_interior_in_order() {
    for (h, w, b) in [
        (3, 3, 1),
        (4, 7, 1),
        (7, 4, 2),
        (9, 9, 3),
        (5, 5, 0),
        (1, 1, 0),
    ] {
        let region = Region { h, w, border: b };
        let naive: Vec<usize> = (0..if b == 0 { 0 } else { h * w })
            .filter(|&j| {
                let (r, c) = (j / w, j % w);
                r < b || r >= h - b || c < b || c >= w - b
            })
            .collect();
        assert_eq!(
            region.frame().collect::<Vec<_>>(),
            naive,
            "{h}×{w} border {b}"
        );
    }
}

/// Two channels by hand: channel 0 holds {1, 3, 5, 7} (mean 4, biased var 5, unbiased 20/3),
/// channel 1 is constant 2 (var 0, so y = β exactly).
#[test]
fn two_channels_by_hand() {
    for_each_level(|_| {
        let x = t(&[2, 2, 1, 2], vec![1.0, 3.0, 2.0, 2.0, 5.0, 7.0, 2.0, 2.0]);
        let (gamma, beta) = (t(&[2], vec![2.0, 1.0]), t(&[2], vec![0.5, -1.0]));
        let mut rm = Tensor::zeros(&[2]);
        let mut rv = Tensor::full(&[2], 1.0);
        let (y, stats) =
            forward_train(&x, &gamma, &beta, &mut rm, &mut rv, BnOptions::default()).unwrap();
        let s = 2.0 / (5.0f64 + 1e-5).sqrt();
        let y0 = |v: f64| ((v - 4.0) * s + 0.5) as f32;
        let expected = [y0(1.0), y0(3.0), -1.0, -1.0, y0(5.0), y0(7.0), -1.0, -1.0];
        assert_close(y.data(), &expected, 1e-6, "y");
        assert_eq!(stats.mean.data(), &[4.0, 2.0]);
        assert_close(
            stats.inv_std.data(),
            &[
                (1.0 / (5.0f64 + 1e-5).sqrt()) as f32,
                (1e-5f64).powf(-0.5) as f32,
            ],
            1e-6,
            "inv_std",
        );
        // running = 0.9·running + 0.1·batch, with the unbiased variance.
        assert_close(rm.data(), &[0.4, 0.2], 1e-7, "running_mean");
        assert_close(
            rv.data(),
            &[0.9 + 0.1 * 20.0 / 3.0, 0.9],
            1e-7,
            "running_var",
        );

        // A second step moves the running stats by momentum again.
        let opts = BnOptions {
            momentum: 0.5,
            ..Default::default()
        };
        forward_train(&x, &gamma, &beta, &mut rm, &mut rv, opts).unwrap();
        assert_close(rm.data(), &[2.2, 1.1], 1e-7, "running_mean after 2 steps");

        // dy = 1 everywhere: dβ = count, dγ = Σ x̂ = 0, dx = 0 (a constant shift is normalised away).
        let g = backward_train(&Tensor::full(&[2, 2, 1, 2], 1.0), &x, &gamma, &stats).unwrap();
        assert_eq!(g.dbeta.data(), &[4.0, 4.0]);
        assert!(g.dgamma.data().iter().all(|v| v.abs() < 1e-6));
        assert!(g.dx.data().iter().all(|v| v.abs() < 1e-6));
    });
}

/// The ReLU6 mask the backward recomputes from x matches the output's, bounds included:
/// channel 0 lands exactly on 0 and 6 (no gradient, PyTorch's convention), channel 1 inside.
#[test]
fn relu6_mask_at_the_clamp_bounds() {
    for_each_level(|_| {
        // eps = 0: x = ±1 has mean 0 and variance 1, so the output is γ·x + β exactly.
        let x = t(
            &[2, 2, 1, 2],
            vec![-1.0, 1.0, -1.0, 1.0, -1.0, 1.0, -1.0, 1.0],
        );
        let (gamma, beta) = (t(&[2], vec![3.0, 1.0]), t(&[2], vec![3.0, 3.0]));
        let (mut rm, mut rv) = (Tensor::zeros(&[2]), Tensor::full(&[2], 1.0));
        let opts = BnOptions {
            eps: 0.0,
            relu6: true,
            ..Default::default()
        };
        let (y, stats) = forward_train(&x, &gamma, &beta, &mut rm, &mut rv, opts).unwrap();
        assert_eq!(y.data(), &[0.0, 6.0, 2.0, 4.0, 0.0, 6.0, 2.0, 4.0]);
        let g = backward_train(&Tensor::full(&[2, 2, 1, 2], 1.0), &x, &gamma, &stats).unwrap();
        assert_eq!(g.dbeta.data(), &[0.0, 4.0]);
        assert_eq!(g.dgamma.data(), &[0.0, 0.0]);
        assert_eq!(&g.dx.data()[..2], &[0.0, 0.0]);
    });
}

/// Against PyTorch 2.15 CPU (float32): the constants below are pasted from this script.
/// ```python
/// import numpy as np, torch
/// i = torch.arange(24.)
/// x = ((i * 7) % 11 / 3 - 1.5).reshape(2, 3, 2, 2).requires_grad_()
/// dy = ((i * 5) % 13 / 6 - 1).reshape(2, 3, 2, 2)
/// bn = torch.nn.BatchNorm2d(3)  # eps 1e-5, momentum 0.1
/// with torch.no_grad():
///     bn.weight.copy_(torch.tensor([1.5, -0.5, 2.0])); bn.bias.copy_(torch.tensor([0.1, 0.2, -0.3]))
/// y = bn(x); y.backward(dy)
/// for t in (y, x.grad, bn.weight.grad, bn.bias.grad, bn.running_mean, bn.running_var):
///     print([np.float32(v) for v in t.flatten().tolist()])  # shortest f32 digits
/// ```
#[test]
fn matches_pytorch() {
    for_each_level(|_| {
        let x: Vec<f32> = (0..24).map(|i| ((i * 7) % 11) as f32 / 3.0 - 1.5).collect();
        let dy: Vec<f32> = (0..24).map(|i| ((i * 5) % 13) as f32 / 6.0 - 1.0).collect();
        let x = t(&[2, 3, 2, 2], x);
        let dy = t(&[2, 3, 2, 2], dy);
        let gamma = t(&[3], vec![1.5, -0.5, 2.0]);
        let beta = t(&[3], vec![0.1, 0.2, -0.3]);
        let mut rm = Tensor::zeros(&[3]);
        let mut rv = Tensor::full(&[3], 1.0);
        let (y, stats) =
            forward_train(&x, &gamma, &beta, &mut rm, &mut rv, BnOptions::default()).unwrap();
        let g = backward_train(&dy, &x, &gamma, &stats).unwrap();
        assert_close(y.data(), &TORCH_Y, 1e-6, "y");
        assert_close(g.dx.data(), &TORCH_DX, 1e-5, "dx");
        assert_close(g.dgamma.data(), &TORCH_DGAMMA, 1e-6, "dgamma");
        assert_close(g.dbeta.data(), &TORCH_DBETA, 1e-6, "dbeta");
        assert_close(rm.data(), &TORCH_RM, 1e-6, "running_mean");
        assert_close(rv.data(), &TORCH_RV, 1e-6, "running_var");
    });
}

// Printed by the script on `matches_pytorch`; dβ[2] is PyTorch's float32 rounding noise
// around 0.
const TORCH_Y: [f32; 24] = [
    -2.507944,
    0.6669443,
    -1.1472776,
    2.0276108,
    0.0054490864,
    0.6971857,
    -0.51335335,
    0.17838326,
    -2.1740768,
    2.1987693,
    -0.29999998,
    -2.7987692,
    0.6669443,
    -1.1472776,
    2.0276108,
    0.21338892,
    0.6971857,
    -0.51335335,
    0.17838326,
    0.8701198,
    2.1987693,
    -0.29999998,
    -2.7987692,
    1.5740767,
];
const TORCH_DX: [f32; 24] = [
    -0.820938,
    -0.06803278,
    1.283561,
    -0.9116447,
    0.010990226,
    -0.42199165,
    0.2708763,
    -0.16210556,
    -0.944662,
    -0.82275826,
    1.5617307,
    -0.11428022,
    0.6123006,
    -0.9842167,
    -0.23131144,
    1.1202822,
    0.4426791,
    0.011475081,
    -0.42150682,
    0.2695833,
    0.11428022,
    -1.5617306,
    0.8227582,
    0.9446622,
];
const TORCH_DGAMMA: [f32; 3] = [1.0582963, 0.007205562, 2.8111153];
const TORCH_DBETA: [f32; 3] = [-1.3333335, 1.5, 1.1920929e-07];
const TORCH_RM: [f32; 3] = [0.041666664, 0.0125, -0.016666664];
const TORCH_RV: [f32; 3] = [1.0388888, 1.0061507, 1.0301588];

/// The AVX2 plane passes give the portable ones' bits, on plane lengths around the 8- and
/// 16-float vectors and the 512-float flush, with values exactly on the clamp bounds, NaN and
/// ∞ mixed in: every level's path against the portable one. (On a CPU without AVX2 both sides
/// are portable.)
#[test]
fn simd_passes_match_portable_bit_for_bit() {
    for level in crate::simd::supported_levels() {
        passes_match_portable(Path::at(level));
    }
}

fn passes_match_portable(simd: Path) {
    use crate::testutil::{rand_vec, rng};
    let portable = Path::PORTABLE;
    let bits = |v: &[MaybeUninit<f32>]| -> Vec<u32> {
        // SAFETY: both passes write every element.
        v.iter()
            .map(|x| unsafe { x.assume_init() }.to_bits())
            .collect()
    };
    let same = |a: f64, b: f64| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan());
    let mut r = rng(11);
    for len in (0..=40).chain([63, 64, 65, 511, 512, 513, 1024 + 7, 3000]) {
        let mut x: Vec<f32> = rand_vec(&mut r, len)
            .iter()
            .map(|v| v * 4.0 + 1.0)
            .collect();
        let dy = rand_vec(&mut r, len);
        // With map [1, 1, 2] these land exactly on the clamp's 0 and 6.
        for (i, v) in [-1.0, 5.0, f32::NAN, f32::INFINITY].into_iter().enumerate() {
            if let Some(slot) = x.get_mut(i * 7 + 3) {
                *slot = v;
            }
        }
        let (m, map, k) = (0.37, [1.0, 1.0, 2.0], [1.3, -0.2, 0.05]);
        assert!(same(simd.sum(&x), portable.sum(&x)), "sum, len {len}");
        assert!(same(simd.sum_sq_dev(&x, m), portable.sum_sq_dev(&x, m)));
        for range in [(0.0, 6.0), (f32::NEG_INFINITY, f32::INFINITY)] {
            let mut out = [
                vec![MaybeUninit::uninit(); len],
                vec![MaybeUninit::uninit(); len],
            ];
            simd.normalize(&mut out[0], &x, map, range);
            portable.normalize(&mut out[1], &x, map, range);
            assert_eq!(bits(&out[0]), bits(&out[1]), "normalize, len {len}");
        }
        fn check<const R: bool>(p: [Path; 2], dy: &[f32], x: &[f32], m: f32, map: PlaneMap) {
            let [(a1, a2), (b1, b2)] = p.map(|p| p.grad_sums::<R>(dy, x, m, map));
            assert!(a1.to_bits() == b1.to_bits() || a1.is_nan() && b1.is_nan());
            assert!(a2.to_bits() == b2.to_bits() || a2.is_nan() && b2.is_nan());
        }
        check::<true>([simd, portable], &dy, &x, m, map);
        check::<false>([simd, portable], &dy, &x, m, map);
        let mut out = [
            vec![MaybeUninit::uninit(); len],
            vec![MaybeUninit::uninit(); len],
        ];
        for relu6 in [true, false] {
            for (o, p) in out.iter_mut().zip([simd, portable]) {
                match relu6 {
                    true => p.dx::<true>(o, &dy, &x, k, m, map),
                    false => p.dx::<false>(o, &dy, &x, k, m, map),
                }
            }
            assert_eq!(bits(&out[0]), bits(&out[1]), "dx, len {len}");
        }
    }
}

#[test]
fn eval_forward_backward_and_folding() {
    for_each_level(|_| {
        let x = t(&[1, 2, 1, 3], vec![1.0, 2.0, 3.0, -1.0, 0.0, 1.0]);
        let (gamma, beta) = (t(&[2], vec![2.0, -1.0]), t(&[2], vec![1.0, 0.0]));
        let (rm, rv) = (t(&[2], vec![2.0, 0.0]), t(&[2], vec![4.0, 1.0]));
        let y = forward_eval(&x, &gamma, &beta, &rm, &rv, 0.0).unwrap();
        assert_eq!(y.data(), &[0.0, 1.0, 2.0, 1.0, 0.0, -1.0]);
        let (scale, shift) = fold_to_affine(&gamma, &beta, &rm, &rv, 0.0).unwrap();
        assert_eq!(scale.data(), &[1.0, -1.0]);
        assert_eq!(shift.data(), &[-1.0, 0.0]);
        assert_eq!(channel_affine(&x, &scale, &shift).unwrap(), y);
        let dx = backward_eval(&Tensor::full(&[1, 2, 1, 3], 2.0), &gamma, &rv, 0.0).unwrap();
        assert_eq!(dx.data(), &[2.0, 2.0, 2.0, -2.0, -2.0, -2.0]);
    });
}

#[test]
fn errors_leave_running_stats_untouched() {
    for_each_level(|_| {
        let x = Tensor::zeros(&[2, 3, 2, 2]);
        let v3 = Tensor::full(&[3], 1.0);
        let mut rm = Tensor::zeros(&[3]);
        let mut rv = Tensor::full(&[3], 1.0);
        let opts = BnOptions::default();
        let mut bad_rv = Tensor::zeros(&[4]);
        assert!(forward_train(&x, &v3, &v3, &mut rm, &mut bad_rv, opts).is_err());
        assert!(forward_train(&x, &Tensor::zeros(&[2]), &v3, &mut rm, &mut rv, opts).is_err());
        let one = Tensor::zeros(&[1, 3, 1, 1]);
        assert!(forward_train(&one, &v3, &v3, &mut rm, &mut rv, opts).is_err());
        let bad = BnOptions {
            momentum: 1.5,
            ..opts
        };
        assert!(forward_train(&x, &v3, &v3, &mut rm, &mut rv, bad).is_err());
        let bad = BnOptions { eps: -1.0, ..opts };
        assert!(forward_train(&x, &v3, &v3, &mut rm, &mut rv, bad).is_err());
        assert!(
            forward_train(&Tensor::zeros(&[2, 3, 4]), &v3, &v3, &mut rm, &mut rv, opts).is_err()
        );
        // A border that leaves no interior: 2×2 planes, and N×C inputs (1×1 "planes").
        let framed = BnOptions { border: 1, ..opts };
        assert!(forward_train(&x, &v3, &v3, &mut rm, &mut rv, framed).is_err());
        let flat = Tensor::zeros(&[8, 3]);
        assert!(forward_train(&flat, &v3, &v3, &mut rm, &mut rv, framed).is_err());
        assert_eq!(rm, Tensor::zeros(&[3]));
        assert_eq!(rv, Tensor::full(&[3], 1.0));

        let (_, stats) = forward_train(&x, &v3, &v3, &mut rm, &mut rv, opts).unwrap();
        assert!(backward_train(&Tensor::zeros(&[2, 3, 2, 1]), &x, &v3, &stats).is_err());
        assert!(backward_train(&x, &x, &Tensor::zeros(&[2]), &stats).is_err());
        // Same element count, other planes: the statistics' region does not fit.
        let other = Tensor::zeros(&[2, 3, 1, 4]);
        assert!(backward_train(&other, &other, &v3, &stats).is_err());
        assert!(forward_eval(&x, &v3, &v3, &rm, &Tensor::zeros(&[2]), 1e-5).is_err());
        assert!(backward_eval(&x, &v3, &v3, f32::NAN).is_err());
        assert!(fold_to_affine(&v3, &v3, &v3, &Tensor::zeros(&[1]), 1e-5).is_err());
        assert!(channel_affine(&x, &v3, &Tensor::zeros(&[1])).is_err());
    });
}
