//! Golden tests against PyTorch 2.15 and timm (fixtures and their generator:
//! tests/fixtures/README.md, tools/make_fixtures.py). Relative errors are measured against each tensor's largest value.

use std::collections::BTreeMap;

use depthshrink::autograd::{Tape, Var, ops};
use depthshrink::nn::arch::ArchConfig;
use depthshrink::nn::checkpoint::{self, Checkpoint, LoadOptions};
use depthshrink::nn::network::Network;
use depthshrink::nn::optim::{Optimizer, Sgd, SgdConfig};
use depthshrink::nn::{Ctx, Module, loss, module};
use depthshrink::tensor::batchnorm::BnOptions;
use depthshrink::tensor::conv::{self, ConvParams};
use depthshrink::tensor::{Tensor, elementwise, gemm, pool, softmax};

fn fixture(name: &str) -> Checkpoint {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    checkpoint::load(&path).unwrap_or_else(|e| panic!("{e}"))
}

fn get<'a>(f: &'a Checkpoint, name: &str) -> &'a Tensor {
    f.tensors
        .get(name)
        .unwrap_or_else(|| panic!("fixture has no tensor {name}"))
}

fn labels(t: &Tensor) -> Vec<usize> {
    t.data().iter().map(|&v| v as usize).collect()
}

/// max |a − e| / max |e|.
#[track_caller]
fn assert_close(actual: &Tensor, expected: &Tensor, tol: f32, what: &str) {
    assert_eq!(actual.shape(), expected.shape(), "{what}: shape");
    let scale = expected
        .data()
        .iter()
        .fold(0f32, |m, v| m.max(v.abs()))
        .max(1e-12);
    let diff = actual
        .data()
        .iter()
        .zip(expected.data())
        .fold(0f32, |m, (a, e)| m.max((a - e).abs()));
    assert!(
        diff / scale <= tol,
        "{what}: relative error {:e} > {tol:e} (max abs diff {diff:e})",
        diff / scale
    );
}

#[test]
fn conv_cases_match_pytorch() {
    let f = fixture("kernels.safetensors");
    for (case, stride, pad, groups) in [
        ("conv_s2p1", 2, 1, 1),
        ("conv_1x1", 1, 0, 1),
        ("conv_g2", 1, 1, 2),
        ("dw_k3s1", 1, 1, 6),
        ("dw_k3s2", 2, 1, 6),
        ("dw_k5s2", 2, 2, 6),
    ] {
        let t = |n: &str| get(&f, &format!("{case}.{n}"));
        let p = ConvParams::new(stride, pad, groups);
        let (x, w, dy) = (t("x"), t("w"), t("dy"));
        assert_close(
            &conv::conv2d(x, w, Some(t("b")), p).unwrap(),
            t("y"),
            1e-5,
            &format!("{case} y"),
        );
        let dx = conv::conv2d_backward_input(dy, w, x.nchw("test").unwrap(), p).unwrap();
        assert_close(&dx, t("dx"), 1e-5, &format!("{case} dx"));
        let dw = conv::conv2d_backward_weight(x, dy, w.shape()[2], p).unwrap();
        assert_close(&dw, t("dw"), 1e-5, &format!("{case} dw"));
        assert_close(
            &conv::conv2d_backward_bias(dy).unwrap(),
            t("db"),
            1e-5,
            &format!("{case} db"),
        );
    }
}

#[test]
fn batch_norm_linear_relu6_pool_match_pytorch() {
    let f = fixture("kernels.safetensors");
    let t = |n: &str| get(&f, n);
    for train in [true, false] {
        let case = if train { "bn_train" } else { "bn_eval" };
        let c = |n: &str| t(&format!("{case}.{n}"));
        let tape = Tape::new();
        let (x, g, b) = (
            Var::leaf(&tape, c("x").clone()),
            Var::leaf(&tape, c("gamma").clone()),
            Var::leaf(&tape, c("beta").clone()),
        );
        let (mut rm, mut rv) = (c("running_mean").clone(), c("running_var").clone());
        let y = if train {
            ops::batch_norm_train(&x, &g, &b, &mut rm, &mut rv, BnOptions::default()).unwrap()
        } else {
            ops::batch_norm_eval(&x, &g, &b, &rm, &rv, 1e-5).unwrap()
        };
        assert_close(y.value(), c("y"), 1e-5, &format!("{case} y"));
        let grads = y.backward_with(c("dy").clone()).unwrap();
        assert_close(grads.get(&x).unwrap(), c("dx"), 1e-5, &format!("{case} dx"));
        assert_close(
            grads.get(&g).unwrap(),
            c("dgamma"),
            1e-5,
            &format!("{case} dgamma"),
        );
        assert_close(
            grads.get(&b).unwrap(),
            c("dbeta"),
            1e-5,
            &format!("{case} dbeta"),
        );
        if train {
            assert_close(&rm, c("running_mean_after"), 1e-6, "running_mean");
            assert_close(&rv, c("running_var_after"), 1e-6, "running_var");
        }
    }
    let (x, w, dy) = (t("linear.x"), t("linear.w"), t("linear.dy"));
    assert_close(
        &gemm::linear_forward(x, w, Some(t("linear.b"))).unwrap(),
        t("linear.y"),
        1e-5,
        "linear y",
    );
    assert_close(
        &gemm::linear_backward_input(dy, w).unwrap(),
        t("linear.dx"),
        1e-5,
        "linear dx",
    );
    assert_close(
        &gemm::linear_backward_weight(dy, x).unwrap(),
        t("linear.dw"),
        1e-5,
        "linear dw",
    );

    assert_eq!(elementwise::relu6(t("relu6.x")).data(), t("relu6.y").data());
    assert_eq!(
        elementwise::relu6_backward(t("relu6.x"), t("relu6.dy"))
            .unwrap()
            .data(),
        t("relu6.dx").data(),
        "relu6 gradient at 0 and 6"
    );

    let pooled = pool::global_avg_pool(t("avgpool_global.x")).unwrap();
    assert_close(
        &pooled.reshape(&[2, 6, 1, 1]).unwrap(),
        t("avgpool_global.y"),
        1e-6,
        "global pool",
    );
}

#[test]
fn losses_match_pytorch() {
    let f = fixture("kernels.safetensors");
    let t = |n: &str| get(&f, n);
    let (loss, grad) =
        softmax::cross_entropy(t("ce_ls.logits"), &labels(t("ce_ls.labels")), 0.1).unwrap();
    assert!((loss - t("ce_ls.loss").data()[0]).abs() < 1e-6, "{loss}");
    assert_close(&grad, t("ce_ls.dlogits"), 1e-5, "ce dlogits");

    let tape = Tape::new();
    let student = Var::leaf(&tape, t("softce.logits").clone());
    let l = loss::distillation(
        &student,
        t("softce.teacher_logits"),
        &labels(t("softce.labels")),
        0.7,
        2.0,
        0.0,
    )
    .unwrap();
    // Ours is the KL form (PyTorch's F.kl_div, batchmean); `loss`, the soft cross-entropy
    // form, differs by a constant and has the same gradient.
    let want = t("softce.loss_kl").data()[0];
    assert!((l.value().item().unwrap() - want).abs() < 1e-5);
    let grads = l.backward().unwrap();
    assert_close(
        grads.get(&student).unwrap(),
        t("softce.dlogits"),
        1e-5,
        "distillation dlogits",
    );
}

/// A torchvision-layout MobileNetV2 with the fixture's weights (names under `prefix`).
fn mobilenet_from(f: &Checkpoint, prefix: &str, width: f32) -> Network {
    let mut net = Network::new(&ArchConfig::mobilenet_v2(width, 10, false), 0);
    let tensors: BTreeMap<String, Tensor> = f
        .tensors
        .iter()
        .filter_map(|(k, v)| k.strip_prefix(prefix).map(|k| (k.to_string(), v.clone())))
        .filter(|(k, _)| k.starts_with("features.") || k.starts_with("classifier."))
        .collect();
    let weights = Checkpoint {
        path: f.path.clone(),
        tensors,
        metadata: serde_json::Value::Null,
    };
    checkpoint::load_into(&mut net, &weights, &LoadOptions::default())
        .unwrap_or_else(|e| panic!("{e}"));
    net
}

#[test]
fn torchvision_mobilenet_v2_logits_match() {
    let f = fixture("mbv2_forward.safetensors");
    let mut net = mobilenet_from(&f, "", 0.5);
    for (input, logits) in [("input", "logits"), ("input_odd", "logits_odd")] {
        let y = net
            .forward(&Var::constant(get(&f, input).clone()), &Ctx::eval())
            .unwrap();
        assert_close(y.value(), get(&f, logits), 1e-4, logits);
    }
}

/// A string from a fixture file's safetensors `__metadata__` map (`checkpoint::load` keeps only
/// depthshrink's own document).
fn file_metadata(name: &str, key: &str) -> String {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + len]).unwrap();
    header["__metadata__"][key]
        .as_str()
        .unwrap_or_else(|| panic!("{path}: no metadata {key}"))
        .to_string()
}

/// The weights `formula_weights` in tools/make_fixtures.py gives the tensors `shapes` (in that
/// order): integer hashing, so both sides draw exactly the same u.
fn formula_weights(shapes: &[(String, Vec<usize>)]) -> BTreeMap<String, Tensor> {
    let weights = shapes.iter().enumerate().map(|(s, (name, shape))| {
        let n: usize = shape.iter().product();
        let scale = (2.0 * (6.0 / (n / shape[0]) as f64).sqrt()) as f32;
        let field = name.rsplit('.').next().unwrap();
        let data = (0..n as u64)
            .map(|i| {
                let h = (i * 2_654_435_761 + s as u64 * 40_503 + 12_345) % (1 << 32);
                let u = (h as f64 / 4_294_967_296.0) as f32;
                if shape.len() > 1 {
                    (u - 0.5) * scale
                } else if field == "weight" || field == "running_var" {
                    0.5 + u
                } else {
                    (u - 0.5) * 0.2
                }
            })
            .collect();
        (name.clone(), Tensor::from_vec(shape, data).unwrap())
    });
    weights.collect()
}

/// timm's `efficientnet_lite0` state dict, under timm's names, loads without architecture flags
/// and gives timm's logits, as trained (BN unfolded) and as run for inference.
#[test]
fn timm_efficientnet_lite0_logits_match() {
    let name = "lite0_timm.safetensors";
    let f = fixture(name);
    let shapes: Vec<(String, Vec<usize>)> =
        serde_json::from_str(&file_metadata(name, "timm_state")).unwrap();
    let weights = Checkpoint {
        path: f.path.clone(),
        tensors: formula_weights(&shapes),
        metadata: serde_json::Value::Null,
    };
    let mut net = Network::from_checkpoint(&weights, None).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(net.arch, ArchConfig::efficientnet_lite0(10, false));
    let mut fast = net.for_inference().unwrap();
    // These logits share a large common part, so a wrong weight moves them little: swapping the
    // expand and depthwise batch norms of every block gave 1.1e-4 (matched: 1.0e-6).
    const TOL: f32 = 1e-5;
    for size in ["x64", "x97"] {
        let x = Var::constant(get(&f, &format!("input.{size}")).clone());
        let want = get(&f, &format!("logits.{size}"));
        let y = net.forward(&x, &Ctx::eval()).unwrap();
        assert_close(y.value(), want, TOL, &format!("logits {size}"));
        let y = fast.forward(&x, &Ctx::eval()).unwrap();
        assert_close(y.value(), want, TOL, &format!("inference logits {size}"));
    }
}

#[test]
fn one_sgd_training_step_matches_pytorch() {
    let f = fixture("mbv2_train_step.safetensors");
    let mut net = mobilenet_from(&f, "init.", 0.25);
    net.dropout = 0.0;
    let ctx = Ctx::train(0);
    let logits = net
        .forward(&Var::constant(get(&f, "input").clone()), &ctx)
        .unwrap();
    assert_close(logits.value(), get(&f, "logits"), 1e-4, "logits");
    let loss = ops::cross_entropy(&logits, &labels(get(&f, "labels")), 0.1).unwrap();
    assert!((loss.value().item().unwrap() - get(&f, "loss").data()[0]).abs() < 1e-5);
    let mut grads = loss.backward().unwrap();
    drop(ctx);
    module::collect_grads(&mut net, &mut grads);

    net.visit("", &mut |name, entry| {
        if let depthshrink::nn::Entry::Param(p) = entry {
            let want = get(&f, &format!("grad.{name}"));
            let got = p
                .grad
                .as_ref()
                .unwrap_or_else(|| panic!("no gradient for {name}"));
            // Projection-BN biases have zero gradient in exact arithmetic (the next training-mode
            // BN cancels a shift); PyTorch's stored values are rounding noise.
            let is_zero_in_theory = want.data().iter().all(|v| v.abs() < 1e-6);
            if is_zero_in_theory {
                assert!(
                    got.data().iter().all(|v| v.abs() < 1e-5),
                    "grad {name} should vanish"
                );
            } else {
                assert_close(got, want, 1e-4, &format!("grad {name}"));
            }
        }
    });

    let cfg = SgdConfig {
        momentum: 0.9,
        nesterov: true,
        weight_decay: 1e-4,
        no_decay_weight_decay: 0.0,
    };
    Sgd::new(cfg).unwrap().step(&mut net, 0.1).unwrap();
    net.visit("", &mut |name, entry| {
        let value = match entry {
            depthshrink::nn::Entry::Param(p) => p.value.clone(),
            depthshrink::nn::Entry::Buffer(b) => b.clone(),
        };
        assert_close(
            &value,
            get(&f, &format!("after.{name}")),
            1e-4,
            &format!("after {name}"),
        );
    });
}
