//! Every differentiable op against central finite differences (`GradCheck`), on small inputs
//! with awkward sizes. The gated activation's gate gradient is a straight-through estimate, not
//! a derivative, so it is checked against hand-derived values instead.

use depthshrink_autograd::gradcheck::GradCheck;
use depthshrink_autograd::{Tape, Var, ops};
use depthshrink_tensor::Tensor;
use depthshrink_tensor::batchnorm::BnOptions;
use depthshrink_tensor::conv::ConvParams;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn random(rng: &mut StdRng, shape: &[usize]) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_vec(
        shape,
        (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect(),
    )
    .unwrap()
}

/// Values in [-3, 9] at least 0.05 away from the ReLU6 kinks at 0 and 6, where the
/// derivative jumps and a finite difference straddling the kink would be meaningless.
fn away_from_kinks(rng: &mut StdRng, shape: &[usize]) -> Tensor {
    let n = shape.iter().product();
    let data = (0..n)
        .map(|_| {
            loop {
                let v = rng.random_range(-3.0f32..9.0);
                if v.abs() > 0.05 && (v - 6.0).abs() > 0.05 {
                    break v;
                }
            }
        })
        .collect();
    Tensor::from_vec(shape, data).unwrap()
}

/// A random N×C×H×W input whose batch-normalised values x̂ give `gamma·x̂ + beta` at least 0.2
/// away from ReLU6's kinks at 0 and 6 (redrawn until they do).
fn bn_input_away_from_kinks(rng: &mut StdRng, shape: &[usize], gamma: f32, beta: f32) -> Tensor {
    let (c, hw) = (shape[1], shape[2] * shape[3]);
    loop {
        let x = random(rng, shape);
        let ok = (0..c).all(|ch| {
            let vals: Vec<f32> = (x.data().chunks(hw).skip(ch).step_by(c))
                .flatten()
                .copied()
                .collect();
            let mean = vals.iter().sum::<f32>() / vals.len() as f32;
            let var = vals.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / vals.len() as f32;
            vals.iter().all(|v| {
                let y = gamma * (v - mean) / (var + 1e-5).sqrt() + beta;
                y.abs() > 0.2 && (y - 6.0).abs() > 0.2
            })
        });
        if ok {
            return x;
        }
    }
}

fn check(f: impl Fn(&[Var]) -> depthshrink_tensor::Result<Var>, inputs: &[Tensor]) {
    GradCheck::default()
        .check(f, inputs)
        .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn conv2d_dense_grouped_and_depthwise() {
    let mut rng = StdRng::seed_from_u64(1);
    // (n, cin, cout, h, w, k, stride, pad, groups)
    let cases = [
        (2, 3, 4, 7, 5, 3, 2, 1, 1),
        (1, 5, 3, 4, 4, 1, 1, 0, 1),
        (2, 4, 6, 5, 5, 3, 1, 1, 2),
        (2, 6, 6, 7, 7, 3, 1, 1, 6),
        (1, 3, 3, 9, 8, 5, 2, 2, 3),
        (1, 2, 3, 6, 6, 1, 2, 0, 1),
    ];
    for (n, cin, cout, h, w, k, stride, pad, groups) in cases {
        let p = ConvParams::new(stride, pad, groups);
        let inputs = [
            random(&mut rng, &[n, cin, h, w]),
            random(&mut rng, &[cout, cin / groups, k, k]),
            random(&mut rng, &[cout]),
        ];
        check(|v| ops::conv2d(&v[0], &v[1], Some(&v[2]), p), &inputs);
    }
    // Fused ReLU6: an identity 1×1 conv keeps the outputs (= inputs) away from the kinks.
    let c = 3;
    let eye = (0..c * c).map(|i| if i % (c + 1) == 0 { 1.0 } else { 0.0 });
    let inputs = [
        away_from_kinks(&mut rng, &[2, c, 4, 3]),
        Tensor::from_vec(&[c, c, 1, 1], eye.collect()).unwrap(),
        Tensor::zeros(&[c]),
    ];
    let p = ConvParams::new(1, 0, 1);
    check(
        |v| ops::conv2d_act(&v[0], &v[1], Some(&v[2]), p, true),
        &inputs,
    );
}

#[test]
fn pad_linear_add_scale_reshape_pool() {
    let mut rng = StdRng::seed_from_u64(2);
    check(|v| ops::pad2d(&v[0], 2), &[random(&mut rng, &[2, 3, 3, 4])]);
    let lin = [
        random(&mut rng, &[3, 5]),
        random(&mut rng, &[4, 5]),
        random(&mut rng, &[4]),
    ];
    check(|v| ops::linear(&v[0], &v[1], Some(&v[2])), &lin);
    check(
        |v| ops::add(&v[0], &v[1]),
        &[
            random(&mut rng, &[2, 3, 2, 2]),
            random(&mut rng, &[2, 3, 2, 2]),
        ],
    );
    check(|v| ops::scale(&v[0], -1.5), &[random(&mut rng, &[7])]);
    check(
        |v| ops::reshape(&v[0], &[6, 2]),
        &[random(&mut rng, &[3, 4])],
    );
    check(
        |v| ops::global_avg_pool(&v[0]),
        &[random(&mut rng, &[2, 3, 5, 3])],
    );
    check(
        |v| ops::dropout(&v[0], 0.3, 42),
        &[random(&mut rng, &[4, 9])],
    );
}

#[test]
fn batch_norm_train_and_eval() {
    let mut rng = StdRng::seed_from_u64(3);
    let inputs = [
        random(&mut rng, &[3, 4, 3, 2]),
        random(&mut rng, &[4]),
        random(&mut rng, &[4]),
    ];
    let (rm, rv) = (random(&mut rng, &[4]), Tensor::full(&[4], 0.7));
    check(
        |v| {
            // Fresh running statistics per call, so the checked function is deterministic.
            let (mut m, mut var) = (rm.clone(), rv.clone());
            ops::batch_norm_train(&v[0], &v[1], &v[2], &mut m, &mut var, BnOptions::default())
        },
        &inputs,
    );
    // Fused ReLU6: γ = 4, β = 3 put the outputs in about [−5, 11], so the clamp cuts at both
    // ends, with every output kept 0.2 away from the kinks at 0 and 6.
    let opts = BnOptions {
        relu6: true,
        ..Default::default()
    };
    let wide = [
        bn_input_away_from_kinks(&mut rng, &[2, 3, 2, 2], 4.0, 3.0),
        Tensor::full(&[3], 4.0),
        Tensor::full(&[3], 3.0),
    ];
    check(
        |v| {
            let (mut m, mut var) = (Tensor::zeros(&[3]), Tensor::full(&[3], 1.0));
            ops::batch_norm_train(&v[0], &v[1], &v[2], &mut m, &mut var, opts)
        },
        &wide,
    );
    // Statistics from the interior (a pad-first block's expand BN): the frame's values move
    // only their own outputs.
    let framed = BnOptions {
        border: 1,
        ..Default::default()
    };
    check(
        |v| {
            let (mut m, mut var) = (Tensor::zeros(&[3]), Tensor::full(&[3], 1.0));
            ops::batch_norm_train(&v[0], &v[1], &v[2], &mut m, &mut var, framed)
        },
        &[
            random(&mut rng, &[2, 3, 4, 5]),
            random(&mut rng, &[3]),
            random(&mut rng, &[3]),
        ],
    );
    check(
        |v| ops::batch_norm_eval(&v[0], &v[1], &v[2], &rm, &rv, 1e-5),
        &inputs,
    );
}

#[test]
fn relu6_and_gated_input_gradient() {
    let mut rng = StdRng::seed_from_u64(4);
    let x = away_from_kinks(&mut rng, &[2, 3, 4, 4]);
    check(|v| ops::relu6(&v[0]), std::slice::from_ref(&x));
    for removed in [false, true] {
        let gate = Var::constant(Tensor::scalar(0.3));
        check(
            |v| ops::gated_relu6(&v[0], &gate, removed),
            std::slice::from_ref(&x),
        );
    }
}

#[test]
fn clamp_passes_the_gradient_strictly_inside() {
    let mut rng = StdRng::seed_from_u64(7);
    let x = away_from_kinks(&mut rng, &[3, 5]);
    check(|v| ops::clamp(&v[0], 0.0, 6.0), std::slice::from_ref(&x));
    let tape = Tape::new();
    let xv = Var::leaf(
        &tape,
        Tensor::from_vec(&[4], vec![-0.5, 0.0, 0.5, 1.0]).unwrap(),
    );
    let y = ops::clamp(&xv, 0.0, 1.0).unwrap();
    assert_eq!(y.value().data(), &[0.0, 0.0, 0.5, 1.0]);
    let grads = y.backward_with(Tensor::full(&[4], 2.0)).unwrap();
    assert_eq!(grads.get(&xv).unwrap().data(), &[0.0, 0.0, 2.0, 0.0]);
    assert!(ops::clamp(&xv, 1.0, 0.0).is_err());
}

#[test]
fn pick_one_element() {
    let mut rng = StdRng::seed_from_u64(6);
    let x = random(&mut rng, &[5]);
    check(|v| ops::pick(&v[0], 3), std::slice::from_ref(&x));
    assert!(ops::pick(&Var::constant(x), 5).is_err());
}

#[test]
fn losses() {
    let mut rng = StdRng::seed_from_u64(5);
    let logits = random(&mut rng, &[5, 7]);
    check(
        |v| ops::cross_entropy(&v[0], &[0, 6, 3, 3, 1], 0.1),
        std::slice::from_ref(&logits),
    );
    let targets = Tensor::from_vec(
        &[5, 7],
        (0..35)
            .map(|i| if i % 7 == i / 7 { 0.7 } else { 0.05 })
            .collect(),
    )
    .unwrap();
    check(
        |v| ops::soft_cross_entropy(&v[0], &targets),
        std::slice::from_ref(&logits),
    );
    check(|v| ops::kl_divergence(&v[0], &targets), &[logits]);
}

/// depthshrinker.md §3: the forward value follows the hard choice, dy/dx too, and
/// dy/dc = Σ (x − ReLU6(x))·dy at any gate value, summed over every site sharing the gate.
#[test]
fn gated_relu6_straight_through_estimator() {
    let x = Tensor::from_vec(&[1, 1, 1, 4], vec![-2.0, 1.0, 7.5, 3.0]).unwrap();
    let dy = Tensor::from_vec(&[1, 1, 1, 4], vec![1.0, 2.0, 3.0, 4.0]).unwrap();
    for (s, removed, want_y, want_dx, want_ds) in [
        // Kept: ReLU6 values, ReLU6 gradient; ds = (-2-0)·1 + 0 + (7.5-6)·3 + 0 = 2.5.
        (0.25, false, [0.0, 1.0, 6.0, 3.0], [0.0, 2.0, 0.0, 4.0], 2.5),
        // Removed: identity values and gradient; same ds.
        (0.75, true, [-2.0, 1.0, 7.5, 3.0], [1.0, 2.0, 3.0, 4.0], 2.5),
        // The gate's value does not matter (clipping it is the caller's choice).
        (1.5, true, [-2.0, 1.0, 7.5, 3.0], [1.0, 2.0, 3.0, 4.0], 2.5),
        (-0.5, false, [0.0, 1.0, 6.0, 3.0], [0.0, 2.0, 0.0, 4.0], 2.5),
    ] {
        let tape = Tape::new();
        let (xv, gate) = (
            Var::leaf(&tape, x.clone()),
            Var::leaf(&tape, Tensor::scalar(s)),
        );
        let y = ops::gated_relu6(&xv, &gate, removed).unwrap();
        assert_eq!(y.value().data(), &want_y);
        let grads = y.backward_with(dy.clone()).unwrap();
        assert_eq!(grads.get(&xv).unwrap().data(), &want_dx);
        assert_eq!(
            grads.get(&gate).unwrap().item().unwrap(),
            want_ds,
            "s = {s}"
        );
    }
    // Two sites sharing one gate (an IR block) sum their gate gradients.
    let tape = Tape::new();
    let (xv, gate) = (
        Var::leaf(&tape, x.clone()),
        Var::leaf(&tape, Tensor::scalar(0.5)),
    );
    let h = ops::gated_relu6(&xv, &gate, true).unwrap();
    let y = ops::gated_relu6(&ops::scale(&h, 2.0).unwrap(), &gate, true).unwrap();
    let grads = y.backward_with(dy).unwrap();
    // Second site: x' = 2x = [-4, 2, 15, 6] → (x' − ReLU6(x'))·dy = -4 + 0 + 27 + 0 = 23;
    // first site: dy' = 2·dy → (-2)·2 + 1.5·6 = 5. Total 28.
    assert_eq!(grads.get(&gate).unwrap().item().unwrap(), 28.0);
}

#[test]
fn backward_reaches_shared_inputs_and_skips_constants() {
    let tape = Tape::new();
    let x = Var::leaf(&tape, Tensor::from_vec(&[3], vec![1.0, 2.0, 3.0]).unwrap());
    let c = Var::constant(Tensor::from_vec(&[3], vec![5.0, 5.0, 5.0]).unwrap());
    // y = 2x + x + c: x is used twice, c is off the tape.
    let y = ops::add(&ops::add(&ops::scale(&x, 2.0).unwrap(), &x).unwrap(), &c).unwrap();
    let grads = y.backward_with(Tensor::full(&[3], 1.0)).unwrap();
    assert_eq!(grads.get(&x).unwrap().data(), &[3.0, 3.0, 3.0]);
    assert!(grads.get(&c).is_none());
    // Inference: nothing recorded when no input is on a tape.
    let before = tape.len();
    let z = ops::relu6(&c).unwrap();
    assert!(!z.is_tracked());
    assert_eq!(tape.len(), before);
    assert!(z.backward().is_err());
}
