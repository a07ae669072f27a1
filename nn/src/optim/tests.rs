//! The optimisers against hand-computed steps and PyTorch, state round trips, clipping.
use super::*;
use crate::module::join;

/// A decayed weight, a no-decay bias, a parameter that never gets a gradient, and a buffer.
struct Tiny {
    weight: Param,
    bias: Param,
    frozen: Param,
    running: Tensor,
}

impl Tiny {
    fn new() -> Tiny {
        Tiny {
            weight: Param::new(t(&[2, 2], &[1.0, -2.0, 0.5, 3.0]), true),
            bias: Param::new(t(&[2], &[0.25, -0.75]), false),
            frozen: Param::new(t(&[3], &[1.0, 2.0, 3.0]), true),
            running: t(&[2], &[0.5, 0.5]),
        }
    }
}

impl Module for Tiny {
    fn visit(&mut self, prefix: &str, f: &mut dyn FnMut(&str, Entry<'_>)) {
        f(&join(prefix, "weight"), Entry::Param(&mut self.weight));
        f(&join(prefix, "bias"), Entry::Param(&mut self.bias));
        f(&join(prefix, "frozen"), Entry::Param(&mut self.frozen));
        f(&join(prefix, "running"), Entry::Buffer(&mut self.running));
    }
}

fn t(shape: &[usize], v: &[f32]) -> Tensor {
    Tensor::from_vec(shape, v.to_vec()).unwrap()
}

const GW: [[f32; 4]; 3] = [
    [0.1, -0.2, 0.3, 0.4],
    [-0.5, 0.25, 0.0, 1.0],
    [0.2, 0.2, -0.1, -0.3],
];
const GB: [[f32; 2]; 3] = [[1.0, -1.0], [0.5, 0.5], [-0.25, 2.0]];
const LRS: [f32; 3] = [0.1, 0.05, 0.02];

/// Steps `i` of the golden sequence: sets the gradients (the bias's only where `bias_grad`)
/// and steps with `LRS[i]`.
fn golden_step(opt: &mut dyn Optimizer, m: &mut Tiny, i: usize, bias_grad: bool) {
    m.weight.grad = Some(t(&[2, 2], &GW[i]));
    m.bias.grad = bias_grad.then(|| t(&[2], &GB[i]));
    opt.step(m, LRS[i]).unwrap();
}

fn assert_close(got: &Tensor, want: &[f32]) {
    for (g, w) in got.data().iter().zip(want) {
        assert!(
            (g - w).abs() <= 1e-6 * w.abs().max(1.0),
            "{got:?} vs {want:?}"
        );
    }
}

fn sgd(momentum: f64, nesterov: bool, no_decay_weight_decay: f64) -> Sgd {
    Sgd::new(SgdConfig {
        momentum,
        nesterov,
        weight_decay: 0.01,
        no_decay_weight_decay,
    })
    .unwrap()
}

fn adamw() -> AdamW {
    AdamW::new(AdamWConfig {
        betas: default_betas(),
        eps: default_eps(),
        weight_decay: 0.05,
        no_decay_weight_decay: 0.0,
    })
    .unwrap()
}

/// The expected values come from PyTorch 2.15 (CPU), with w, b, GW, GB, LRS as here:
///
/// ```python
/// def run(make_opt, grads_w, grads_b, lrs):
///     w = torch.tensor([[1.0, -2.0], [0.5, 3.0]], requires_grad=True)
///     b = torch.tensor([0.25, -0.75], requires_grad=True)
///     opt = make_opt(w, b)
///     for gw, gb, lr in zip(grads_w, grads_b, lrs):
///         for g in opt.param_groups: g["lr"] = lr
///         w.grad = None if gw is None else torch.tensor(gw)
///         b.grad = None if gb is None else torch.tensor(gb)
///         opt.step()
///     print([str(np.float32(x)) for x in [*w.flatten(), *b]])  # shortest f32
/// groups = lambda w, b, wd_b: [{"params": [w], "weight_decay": 0.01},
///                              {"params": [b], "weight_decay": wd_b}]
/// run(lambda w, b: torch.optim.SGD(groups(w, b, 0.0), lr=0.1, momentum=0.9), GW, GB, LRS)
/// run(lambda w, b: torch.optim.SGD(groups(w, b, 1e-3), lr=0.1, momentum=0.9, nesterov=True),
///     GW, GB, LRS)
/// ```
#[test]
fn sgd_matches_pytorch() {
    let cases: [(bool, f64, [f32; 4], [f32; 2]); 2] = [
        (
            false,
            0.0,
            [1.0113938, -1.983795, 0.45242363, 2.866096],
            [0.059800006, -0.6628],
        ),
        (
            true,
            1e-3,
            [1.0195644, -1.9785558, 0.42839593, 2.7905052],
            [-0.041246872, -0.6362524],
        ),
    ];
    for (nesterov, no_decay_wd, want_w, want_b) in cases {
        let mut m = Tiny::new();
        let mut opt = sgd(0.9, nesterov, no_decay_wd);
        for i in 0..3 {
            golden_step(&mut opt, &mut m, i, true);
        }
        assert_close(&m.weight.value, &want_w);
        assert_close(&m.bias.value, &want_b);
        assert_eq!(opt.steps(), 3);
    }
}

/// PyTorch, with `run` and `groups` as in [`sgd_matches_pytorch`] (the bias has no gradient
/// in step 2, so its bias correction lags one step behind the weight's):
///
/// ```python
/// opt = lambda w, b: torch.optim.AdamW([{"params": [w], "weight_decay": 0.05},
///                                       {"params": [b], "weight_decay": 0.0}], lr=0.1)
/// run(opt, GW, [GB[0], None, GB[2]], LRS)
/// ```
#[test]
fn adamw_matches_pytorch() {
    let mut m = Tiny::new();
    let mut opt = adamw();
    for i in 0..3 {
        golden_step(&mut opt, &mut m, i, i != 1);
    }
    assert_close(
        &m.weight.value,
        &[0.92570144, -1.900424, 0.35685766, 2.8174071],
    );
    assert_close(&m.bias.value, &[0.14061064, -0.6573221]);
    let state = opt.state();
    let count = |name: &str| {
        state
            .iter()
            .find(|(n, _)| n == name)
            .unwrap()
            .1
            .item()
            .unwrap()
    };
    assert_eq!(
        (count("step"), count("step.weight"), count("step.bias")),
        (3.0, 3.0, 2.0)
    );
}

#[test]
fn sgd_without_momentum_is_plain_descent_and_keeps_no_buffers() {
    let mut m = Tiny::new();
    let mut opt = sgd(0.0, false, 0.0);
    m.weight.grad = Some(t(&[2, 2], &GW[0]));
    opt.step(&mut m, 0.5).unwrap();
    let want: Vec<f32> = [1.0f32, -2.0, 0.5, 3.0]
        .iter()
        .zip(GW[0])
        .map(|(p, g)| p - 0.5 * (g + 0.01 * p))
        .collect();
    assert_close(&m.weight.value, &want);
    assert_eq!(names(&opt.state()), ["step"]);
}

#[test]
fn no_decay_group_is_not_decayed() {
    let optimizers: [Box<dyn Optimizer>; 2] = [Box::new(sgd(0.9, true, 0.0)), Box::new(adamw())];
    for mut opt in optimizers {
        let mut m = Tiny::new();
        m.weight.grad = Some(Tensor::zeros(&[2, 2]));
        m.bias.grad = Some(Tensor::zeros(&[2]));
        opt.step(&mut m, 0.1).unwrap();
        assert_eq!(m.bias.value.data(), &[0.25, -0.75]);
        let shrunk = m.weight.value.data();
        assert!(shrunk[1] > -2.0 && shrunk[3] < 3.0, "{shrunk:?}");
    }
}

#[test]
fn params_without_grad_are_untouched_and_get_no_state() {
    let optimizers: [Box<dyn Optimizer>; 2] = [Box::new(sgd(0.9, false, 0.0)), Box::new(adamw())];
    for mut opt in optimizers {
        let mut m = Tiny::new();
        for i in 0..2 {
            golden_step(opt.as_mut(), &mut m, i, true);
        }
        assert_eq!(m.frozen.value.data(), &[1.0, 2.0, 3.0]);
        assert_eq!(m.running.data(), &[0.5, 0.5]);
        assert!(names(&opt.state()).iter().all(|n| !n.contains("frozen")));
    }
}

fn names(state: &[(String, Tensor)]) -> Vec<&str> {
    state.iter().map(|(n, _)| n.as_str()).collect()
}

#[test]
fn state_round_trip_gives_identical_steps() {
    let makers: [fn() -> Box<dyn Optimizer>; 2] =
        [|| Box::new(sgd(0.9, true, 1e-3)), || Box::new(adamw())];
    for make in makers {
        let (mut a, mut m) = (make(), Tiny::new());
        golden_step(a.as_mut(), &mut m, 0, true);
        golden_step(a.as_mut(), &mut m, 1, false);
        let saved = a.state();
        let mut b = make();
        b.load_state(saved.clone()).unwrap();
        assert_eq!(b.state(), saved);
        assert_eq!(b.steps(), 2);
        let mut m2 = Tiny::new();
        m2.weight.value = m.weight.value.clone();
        m2.bias.value = m.bias.value.clone();
        golden_step(a.as_mut(), &mut m, 2, true);
        golden_step(b.as_mut(), &mut m2, 2, true);
        assert_eq!(m.weight.value, m2.weight.value);
        assert_eq!(m.bias.value, m2.bias.value);
        assert_eq!(a.state(), b.state());
    }
}

/// `state` with `name` removed, or its tensor replaced.
fn edit(state: &[(String, Tensor)], name: &str, with: Option<Tensor>) -> Vec<(String, Tensor)> {
    state
        .iter()
        .filter_map(|(n, v)| match (n == name, &with) {
            (false, _) => Some((n.clone(), v.clone())),
            (true, w) => w.clone().map(|w| (n.clone(), w)),
        })
        .collect()
}

#[test]
fn load_state_errors_name_the_entry() {
    let mut opt = adamw();
    let mut m = Tiny::new();
    golden_step(&mut opt, &mut m, 0, true);
    let saved = opt.state();
    let before = opt.state();
    let err = |state: Vec<(String, Tensor)>| {
        let mut fresh = adamw();
        fresh.load_state(state).unwrap_err()
    };
    assert_eq!(
        err(edit(&saved, "exp_avg_sq.bias", None)),
        OptimError::MissingEntry("exp_avg_sq.bias".into())
    );
    assert_eq!(
        err(edit(&saved, "step", None)),
        OptimError::MissingEntry("step".into())
    );
    assert!(matches!(
        err(edit(&saved, "exp_avg_sq.weight", Some(Tensor::zeros(&[4])))),
        OptimError::StateShape { entry, .. } if entry == "exp_avg_sq.weight"
    ));
    assert!(matches!(
        err(edit(&saved, "step.bias", Some(Tensor::full(&[1], 1.5)))),
        OptimError::InvalidEntry { entry, .. } if entry == "step.bias"
    ));
    let mut extra = saved.clone();
    extra.push(("momentum.weight".into(), Tensor::zeros(&[2, 2])));
    assert_eq!(
        err(extra),
        OptimError::UnknownEntry("momentum.weight".into())
    );
    let mut dup = saved.clone();
    dup.push(saved[1].clone());
    assert_eq!(err(dup), OptimError::DuplicateEntry(saved[1].0.clone()));
    // A failed load leaves the existing state alone.
    assert!(opt.load_state(edit(&saved, "step", None)).is_err());
    assert_eq!(opt.state(), before);
}

#[test]
fn misfit_state_or_grad_fails_the_step_without_changes() {
    let mut opt = sgd(0.9, false, 0.0);
    let state = vec![
        ("step".to_string(), Tensor::full(&[1], 7.0)),
        ("momentum.weight".to_string(), Tensor::zeros(&[4])),
    ];
    opt.load_state(state).unwrap();
    let mut m = Tiny::new();
    m.weight.grad = Some(t(&[2, 2], &GW[0]));
    m.bias.grad = Some(t(&[2], &GB[0]));
    let err = opt.step(&mut m, 0.1).unwrap_err();
    assert!(err.to_string().contains("`momentum.weight`"), "{err}");
    assert_eq!(Tiny::new().bias.value, m.bias.value);
    assert_eq!(opt.steps(), 7);

    let mut opt = adamw();
    m.weight.grad = Some(Tensor::zeros(&[4]));
    let err = opt.step(&mut m, 0.1).unwrap_err();
    assert!(
        matches!(&err, OptimError::GradShape { name, .. } if name == "weight"),
        "{err}"
    );
    assert_eq!(Tiny::new().bias.value, m.bias.value);
    assert_eq!(names(&opt.state()), ["step"]);
    m.weight.grad = Some(t(&[2, 2], &GW[0]));
    for lr in [f32::NAN, -0.1] {
        assert!(matches!(
            opt.step(&mut m, lr),
            Err(OptimError::LearningRate(_))
        ));
    }
}

/// PyTorch: `torch.nn.utils.clip_grad_norm_([w, b], max_norm)` with the step-0 gradients
/// GW[0], GB[0] returns 1.5165751 and, for `max_norm = 1`, leaves
/// w.grad = [0.06593801, -0.13187602, 0.19781403, 0.26375204],
/// b.grad = [0.6593801, -0.6593801].
#[test]
fn clip_grad_norm_matches_pytorch() {
    for (max_norm, scale) in [(10.0, None), (1.0, Some(())), (f32::INFINITY, None)] {
        let mut m = Tiny::new();
        m.weight.grad = Some(t(&[2, 2], &GW[0]));
        m.bias.grad = Some(t(&[2], &GB[0]));
        let norm = clip_grad_norm(&mut m, max_norm);
        assert!((norm - 1.5165751).abs() < 1e-6, "{norm}");
        let (w, b) = (m.weight.grad.unwrap(), m.bias.grad.unwrap());
        match scale {
            None => {
                assert_eq!(w.data(), &GW[0]);
                assert_eq!(b.data(), &GB[0]);
            }
            Some(()) => {
                assert_close(&w, &[0.06593801, -0.13187602, 0.19781403, 0.26375204]);
                assert_close(&b, &[0.6593801, -0.6593801]);
            }
        }
    }
    assert_eq!(clip_grad_norm(&mut Tiny::new(), 1.0), 0.0);
}

#[test]
fn zero_grad_drops_gradients() {
    let mut m = Tiny::new();
    m.weight.grad = Some(Tensor::zeros(&[2, 2]));
    zero_grad(&mut m);
    assert!(m.weight.grad.is_none());
}

#[test]
fn configs_deserialize_strictly() {
    let sgd: OptimizerConfig = serde_json::from_str(
        r#"{"optimizer": "sgd", "momentum": 0.9, "nesterov": true, "weight_decay": 4e-5}"#,
    )
    .unwrap();
    assert_eq!(
        sgd,
        OptimizerConfig::Sgd(SgdConfig {
            momentum: 0.9,
            nesterov: true,
            weight_decay: 4e-5,
            no_decay_weight_decay: 0.0,
        })
    );
    let adamw: OptimizerConfig = serde_json::from_str(
        r#"{"optimizer": "adamw", "weight_decay": 0.05, "no_decay_weight_decay": 1e-5}"#,
    )
    .unwrap();
    assert_eq!(
        adamw,
        OptimizerConfig::AdamW(AdamWConfig {
            betas: [0.9, 0.999],
            eps: 1e-8,
            weight_decay: 0.05,
            no_decay_weight_decay: 1e-5,
        })
    );
    assert!(adamw.build().is_ok());
    let unknown = serde_json::from_str::<OptimizerConfig>(
        r#"{"optimizer": "sgd", "momentum": 0.9, "weight_decay": 0, "betas": [0.9, 0.99]}"#,
    )
    .unwrap_err();
    assert!(unknown.to_string().contains("betas"), "{unknown}");
    let nesterov_without_momentum = OptimizerConfig::Sgd(SgdConfig {
        momentum: 0.0,
        nesterov: true,
        weight_decay: 0.0,
        no_decay_weight_decay: 0.0,
    });
    assert!(matches!(
        nesterov_without_momentum.build(),
        Err(OptimError::Config(_))
    ));
    for momentum in [1.0, 5.0, -0.1, f64::NAN] {
        let config = OptimizerConfig::Sgd(SgdConfig {
            momentum,
            nesterov: false,
            weight_decay: 0.0,
            no_decay_weight_decay: 0.0,
        });
        let err = config.build().err().expect("refused").to_string();
        assert!(err.contains("momentum must be in [0, 1)"), "{err}");
    }
}
