#!/usr/bin/env python3
"""Writes the PyTorch golden fixtures that the Rust test suite compares against.

Purpose
    depthshrink's kernels, losses, MobileNetV2 forward pass and one SGD training step must match
    PyTorch numerically. This script computes reference values with PyTorch (CPU, float32) and
    stores them as small safetensors files under tests/fixtures/. The Rust tests and CI only read
    those committed files; they never need PyTorch. Re-run this script only when a fixture changes.

Command (from the repository root; the virtualenv lives OUTSIDE the repository):
    python3 -m venv VENV && VENV/bin/pip install torch torchvision safetensors onnxruntime timm
    VENV/bin/python tools/make_fixtures.py            # writes tests/fixtures/*.safetensors
    VENV/bin/python tools/make_fixtures.py --out DIR  # writes elsewhere (e.g. to diff a rerun)
    VENV/bin/python tools/make_fixtures.py --list     # also prints every tensor's name/dtype/shape
    VENV/bin/python tools/make_fixtures.py --search-train-seed 48   # only rates candidate data
                                                      # seeds of the training step (see below)
    A run takes about 25 s. A file whose tensors and metadata are unchanged is not rewritten.

Files written (tensor names, shapes and formulas: tests/fixtures/README.md)
    kernels.safetensors          one case per name prefix ("conv_s2p1.", "bn_train.", "ce_ls.",
                                 ...): inputs, outputs, an upstream gradient `dy` and the input /
                                 parameter gradients. All float32. Per-case op parameters are in the
                                 file metadata as JSON, keyed by the case name without the dot.
    mbv2_forward.safetensors     torchvision mobilenet_v2(width_mult=0.5, num_classes=10), eval
                                 mode: state_dict (float16, torchvision names, num_batches_tracked
                                 dropped), inputs 2x3x64x64 and 1x3x97x83, logits, a few block
                                 outputs (act.features.<i>) and the final feature map.
    lite0_timm.safetensors       timm efficientnet_lite0(num_classes=10), eval mode, weights from a
                                 formula the Rust test recomputes (only names and shapes stored,
                                 in the metadata), inputs 2x3x64x64 and 1x3x97x83, logits.
    mbv2_train_step.safetensors  torchvision mobilenet_v2(width_mult=0.25, num_classes=10), dropout
                                 p=0, train mode, input 4x3x48x48: one step of CE(label smoothing
                                 0.1) + SGD(lr 0.1, momentum 0.9, nesterov, weight decay 1e-4 on
                                 conv/linear weights only): init.* (float16), grad.*, after.*,
                                 loss, logits.

Why the training step uses 48x48 and data seed 1046
    At 32x32 the last stages run on 1x1 maps, so train-mode BN normalises 4 values per channel and
    float32 PyTorch itself is only ~1e-3 away from float64 in the gradients. And whatever the size,
    a ReLU6 pre-activation that lands within rounding of 0 or 6 flips a gradient mask and moves
    the gradients by ~10%: a fixture with such an element cannot be matched by an independent
    implementation. So every regeneration re-runs the step in float64 and with other kernels
    (channels_last, oneDNN off) and asserts (1) all three agree to 2e-4, and (2) every ReLU6 input
    is at least 4 RMS-rounding-errors away from 0 and 6. `--search-train-seed N` rates seeds
    1000..1000+N-1 on these criteria; 1046 was the best of 48. The measured figures are stored in
    the file metadata ("conditioning"). float64 is used only for this check, never for an output.

Versions used for the committed fixtures
    torch 2.15.0 (PyPI wheel, run on CPU), torchvision 0.29.2, safetensors 0.8.0, numpy 2.4.6,
    Python 3 on x86-64 (AVX-512, MKL, oneDNN 3.13). The exact versions are also recorded in every
    file's metadata ("torch_version", "torchvision_version").

Determinism
    Every case draws from its own torch.Generator with a fixed seed (adding a case does not shift
    the others); the networks are initialised after torch.manual_seed(0). One thread,
    torch.use_deterministic_algorithms(True), float32 everywhere (float64 is never used to compute
    an output). Large weights are rounded to float16-representable values BEFORE they are used and
    saved as float16, so the Rust side loads exactly the values PyTorch computed with. Inputs,
    outputs and gradients are float32.
"""

import argparse
import copy
import json
import os
import sys
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from safetensors import safe_open
from safetensors.torch import load_file, save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

BN_EPS = 1e-5
BN_MOMENTUM = 0.1


def setup():
    # mkldnn.flags() warns about TF32 on Intel GPUs; irrelevant on CPU.
    warnings.filterwarnings("ignore", message="TF32 acceleration")
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.set_float32_matmul_precision("highest")
    torch.set_default_dtype(torch.float32)


def gen(seed):
    return torch.Generator().manual_seed(seed)


def randn(g, *shape, scale=1.0):
    return torch.randn(*shape, generator=g) * scale


def f16r(t):
    """Rounds to the nearest float16-representable value, kept as float32."""
    return t.half().float()


def base_metadata():
    return {
        "format": "pt",
        "generator": "tools/make_fixtures.py",
        "torch_version": torch.__version__,
        "torchvision_version": torchvision.__version__,
    }


def max_rel(a, b):
    a, b = a.double(), b.double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def leaf(t):
    return t.detach().clone().requires_grad_(True)


def f32(t):
    return t.detach().to(torch.float32).contiguous().clone()


# ----------------------------------------------------------------------------------------------
# kernels.safetensors
# ----------------------------------------------------------------------------------------------


def conv_case(seed, n, cin, cout, h, w, k, stride, padding, groups):
    g = gen(seed)
    x = randn(g, n, cin, h, w)
    wt = randn(g, cout, cin // groups, k, k, scale=(2.0 / (cin // groups * k * k)) ** 0.5)
    b = randn(g, cout, scale=0.5)
    xl, wl, bl = leaf(x), leaf(wt), leaf(b)
    y = F.conv2d(xl, wl, bl, stride=stride, padding=padding, groups=groups)
    dy = randn(g, *y.shape)
    y.backward(dy)
    tensors = {"x": x, "w": wt, "b": b, "y": y, "dy": dy, "dx": xl.grad, "dw": wl.grad,
               "db": bl.grad}
    params = {"op": "conv2d", "kernel": k, "stride": stride, "padding": padding, "groups": groups,
              "bias": True}
    return tensors, params


def bn_case(seed, train):
    g = gen(seed)
    n, c, h, w = 3, 4, 5, 6
    x = randn(g, n, c, h, w) * 1.5 + 0.7
    gamma = 1.0 + randn(g, c, scale=0.3)
    beta = randn(g, c, scale=0.3)
    running_mean = randn(g, c, scale=0.5)
    running_var = torch.rand(c, generator=g) * 1.5 + 0.5
    dy = randn(g, n, c, h, w)
    xl, gl, bl = leaf(x), leaf(gamma), leaf(beta)
    rm, rv = running_mean.clone(), running_var.clone()
    y = F.batch_norm(xl, rm, rv, gl, bl, training=train, momentum=BN_MOMENTUM, eps=BN_EPS)
    y.backward(dy)
    tensors = {"x": x, "gamma": gamma, "beta": beta, "running_mean": running_mean,
               "running_var": running_var, "y": y, "dy": dy, "dx": xl.grad, "dgamma": gl.grad,
               "dbeta": bl.grad}
    if train:
        tensors["running_mean_after"] = rm
        tensors["running_var_after"] = rv
        tensors["batch_mean"] = x.mean(dim=(0, 2, 3))
        tensors["batch_var"] = x.var(dim=(0, 2, 3), unbiased=False)
    params = {"op": "batch_norm2d", "training": train, "momentum": BN_MOMENTUM, "eps": BN_EPS,
              "running_var_update": "unbiased (n/(n-1)) batch variance" if train else "none"}
    return tensors, params


def linear_case(seed):
    g = gen(seed)
    n, fin, fout = 4, 9, 5
    x = randn(g, n, fin)
    wt = randn(g, fout, fin, scale=fin ** -0.5)
    b = randn(g, fout, scale=0.5)
    xl, wl, bl = leaf(x), leaf(wt), leaf(b)
    y = F.linear(xl, wl, bl)
    dy = randn(g, n, fout)
    y.backward(dy)
    return ({"x": x, "w": wt, "b": b, "y": y, "dy": dy, "dx": xl.grad, "dw": wl.grad,
             "db": bl.grad},
            {"op": "linear", "formula": "y = x @ w.T + b"})


def relu6_case(seed):
    g = gen(seed)
    x = torch.rand(2, 3, 4, 5, generator=g) * 12.0 - 3.0  # in [-3, 9)
    flat = x.view(-1)
    flat[0::10] = 0.0  # exact boundaries: 12 zeros, 12 sixes and one -0.0
    flat[5::10] = 6.0
    flat[7] = -0.0
    dy = randn(g, *x.shape)
    xl = leaf(x)
    y = F.relu6(xl)
    y.backward(dy)
    return ({"x": x, "y": y, "dy": dy, "dx": xl.grad},
            {"op": "relu6", "grad_rule": "dx = dy where 0 < x < 6 (strict), else 0"})


def avgpool_case(seed):
    g = gen(seed)
    x = randn(g, 2, 6, 5, 7)
    xl = leaf(x)
    y = F.adaptive_avg_pool2d(xl, (1, 1))
    dy = randn(g, *y.shape)
    y.backward(dy)
    return ({"x": x, "y": y, "dy": dy, "dx": xl.grad},
            {"op": "adaptive_avg_pool2d", "output_size": [1, 1]})


def ce_ls_case(seed):
    g = gen(seed)
    n, k, eps = 5, 7, 0.1
    logits = randn(g, n, k, scale=2.0)
    labels = torch.randint(0, k, (n,), generator=g)
    ll = leaf(logits)
    loss = F.cross_entropy(ll, labels, label_smoothing=eps)
    loss.backward()
    return ({"logits": logits, "labels": labels.to(torch.float32), "loss": loss.reshape(1),
             "dlogits": ll.grad},
            {"op": "cross_entropy", "label_smoothing": eps, "reduction": "mean",
             "num_classes": k, "labels_dtype": "float32 holding integers"})


def softce_case(seed):
    g = gen(seed)
    n, k, alpha, temp = 5, 7, 0.7, 2.0
    student = randn(g, n, k, scale=2.0)
    teacher = randn(g, n, k, scale=2.0)
    labels = torch.randint(0, k, (n,), generator=g)
    sl = leaf(student)
    p_t = F.softmax(teacher / temp, dim=1)
    logp_s = F.log_softmax(sl / temp, dim=1)
    soft = -(p_t * logp_s).sum(dim=1).mean()
    hard = F.cross_entropy(sl, labels)
    loss = alpha * temp * temp * soft + (1.0 - alpha) * hard
    loss.backward()
    with torch.no_grad():
        kl = F.kl_div(logp_s, p_t, reduction="batchmean")
        loss_kl = alpha * temp * temp * kl + (1.0 - alpha) * hard
    return ({"logits": student, "teacher_logits": teacher, "labels": labels.to(torch.float32),
             "loss": loss.reshape(1), "loss_soft": soft.reshape(1), "loss_hard": hard.reshape(1),
             "loss_kl": loss_kl.reshape(1), "dlogits": sl.grad},
            {"op": "distill_soft_ce", "alpha": alpha, "T": temp,
             "formula": "alpha*T^2*mean_i(-sum_k softmax(t_i/T)_k*log_softmax(s_i/T)_k)"
                        " + (1-alpha)*CE(s, y)",
             "hard_label_smoothing": 0.0, "teacher_has_grad": False,
             "labels_dtype": "float32 holding integers"})


def make_kernels():
    cases = {
        "conv_s2p1": conv_case(101, 2, 5, 7, 9, 11, 3, 2, 1, 1),
        "conv_1x1": conv_case(102, 2, 8, 6, 7, 7, 1, 1, 0, 1),
        "conv_g2": conv_case(103, 2, 6, 4, 8, 7, 3, 1, 1, 2),
        "dw_k3s1": conv_case(104, 2, 6, 6, 9, 9, 3, 1, 1, 6),
        "dw_k3s2": conv_case(105, 2, 6, 6, 10, 10, 3, 2, 1, 6),
        "dw_k5s2": conv_case(106, 2, 6, 6, 11, 10, 5, 2, 2, 6),
        "bn_train": bn_case(107, True),
        "bn_eval": bn_case(108, False),
        "linear": linear_case(109),
        "relu6": relu6_case(110),
        "avgpool_global": avgpool_case(111),
        "ce_ls": ce_ls_case(112),
        "softce": softce_case(113),
    }
    tensors, meta = {}, base_metadata()
    for name, (ts, params) in cases.items():
        for key, t in ts.items():
            tensors[f"{name}.{key}"] = f32(t)
        meta[name] = json.dumps(params, sort_keys=True)
    return tensors, meta


# ----------------------------------------------------------------------------------------------
# MobileNetV2 helpers
# ----------------------------------------------------------------------------------------------


def bns(model):
    return [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]


@torch.no_grad()
def round_state_to_f16(model):
    for v in model.state_dict().values():
        if v.is_floating_point():
            v.copy_(f16r(v))


@torch.no_grad()
def perturb_affine(model, g):
    """BN gamma/beta and the classifier bias away from torchvision's 1 / 0 / 0 init."""
    for bn in bns(model):
        bn.weight.copy_(torch.rand(bn.num_features, generator=g) * 0.5 + 0.75)  # [0.75, 1.25)
        bn.bias.copy_(randn(g, bn.num_features, scale=0.1))
    lin = model.classifier[1]
    lin.bias.copy_(randn(g, lin.out_features, scale=0.1))


@torch.no_grad()
def calibrated_running_stats(model, g, calib):
    """Running stats = batch stats of a random calibration batch, then perturbed (so eval mode
    differs from train mode yet activations stay O(1) through the whole network)."""
    for bn in bns(model):
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average: one batch -> exactly that batch's statistics
    model.train()
    model(calib)
    for bn in bns(model):
        bn.momentum = BN_MOMENTUM
        c = bn.num_features
        std = bn.running_var.sqrt()
        bn.running_mean.add_(randn(g, c, scale=0.2) * std)
        bn.running_var.mul_(torch.exp(randn(g, c, scale=0.3))).clamp_(min=1e-2)
        bn.num_batches_tracked.zero_()


def state_f16(model, prefix=""):
    """Float state (parameters and BN running stats), as float16, num_batches_tracked dropped."""
    out = {}
    for k, v in model.state_dict().items():
        if k.endswith("num_batches_tracked"):
            continue
        h = v.detach().half()
        assert torch.equal(h.float(), v), f"{k} is not float16-representable"
        out[prefix + k] = h.contiguous().clone()
    return out


def arch_metadata(model, width, num_classes):
    feats = model.features
    channels = [feats[0][0].out_channels] + [b.out_channels for b in feats[1:-1]] + \
        [feats[-1][0].out_channels]
    return {
        "constructor": f"torchvision.models.mobilenet_v2(width_mult={width}, "
                       f"num_classes={num_classes})",
        "width_mult": width,
        "num_classes": num_classes,
        "last_channel": model.last_channel,
        "feature_out_channels": channels,
        "bn_eps": BN_EPS,
        "bn_momentum": BN_MOMENTUM,
        "num_batches_tracked": "dropped",
    }


# ----------------------------------------------------------------------------------------------
# mbv2_forward.safetensors
# ----------------------------------------------------------------------------------------------


FORWARD_ACTS = (1, 3, 6, 13, 17)  # features[i] outputs stored as act.features.<i> (input 64x64)


def make_mbv2_forward():
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2(width_mult=0.5, num_classes=10)
    g = gen(201)
    perturb_affine(model, g)
    round_state_to_f16(model)
    calibrated_running_stats(model, g, randn(g, 8, 3, 64, 64))
    round_state_to_f16(model)
    model.eval()

    x = randn(g, 2, 3, 64, 64)
    x_odd = randn(g, 1, 3, 97, 83)
    acts = {}
    with torch.no_grad():
        h = x
        for i, block in enumerate(model.features):
            h = block(h)
            if i in FORWARD_ACTS:
                acts[f"act.features.{i}"] = h
        feats = h
        logits = model(x)
        logits_odd = model(x_odd)
        assert torch.equal(model.features(x), feats)
        assert torch.equal(model.classifier(torch.flatten(F.adaptive_avg_pool2d(feats, 1), 1)),
                           logits)
        m64 = copy.deepcopy(model).double()
        cond = {"f32_vs_f64": {
            "features": max_rel(feats, m64.features(x.double())),
            "logits": max_rel(logits, m64(x.double())),
            "logits_odd": max_rel(logits_odd, m64(x_odd.double())),
        }}
    assert max(cond["f32_vs_f64"].values()) <= MAX_REL_F32_F64, cond

    tensors = state_f16(model)
    tensors.update({"input": f32(x), "logits": f32(logits), "features": f32(feats),
                    "input_odd": f32(x_odd), "logits_odd": f32(logits_odd)})
    tensors.update({k: f32(v) for k, v in acts.items()})
    params = arch_metadata(model, 0.5, 10)
    params.update({"mode": "eval", "dropout": "classifier.0 Dropout(p=0.2), inactive in eval"})
    meta = base_metadata()
    meta["params"] = json.dumps(params, sort_keys=True)
    meta["conditioning"] = json.dumps(cond, sort_keys=True)
    return tensors, meta


# ----------------------------------------------------------------------------------------------
# mbv2_train_step.safetensors
# ----------------------------------------------------------------------------------------------

TRAIN = dict(width=0.25, num_classes=10, n=4, size=48, lr=0.1, momentum=0.9, wd=1e-4,
             label_smoothing=0.1)
# Seed of the input batch and labels. Chosen with `--search-train-seed 48` among seeds 1000..1047
# as the best-conditioned draw (see `train_conditioning`): train-mode BN on tiny late feature maps
# and ReLU6 kinks make some draws fragile (a pre-activation within float32 rounding of 0 or 6
# flips a gradient mask and changes the gradients by ~10%); this one has the largest margin.
TRAIN_DATA_SEED = 1046
# Gates for the conditioning check that runs on every regeneration.
MAX_REL_F32_F64 = 2e-4  # max |f32 - f64| / max |f64| per tensor (grads, after-weights, logits)
MIN_RELU6_MARGIN = 4.0  # min over ReLU6 inputs of dist(x, {0, 6}) / RMS(f32 - f64) of that layer


def train_model():
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2(width_mult=TRAIN["width"],
                                            num_classes=TRAIN["num_classes"])
    model.classifier[0].p = 0.0  # keeps the module (and the state_dict names); no randomness
    g = gen(301)
    perturb_affine(model, g)
    with torch.no_grad():  # non-trivial initial running stats, to test the momentum update
        for bn in bns(model):
            bn.running_mean.copy_(randn(g, bn.num_features, scale=0.1))
            bn.running_var.copy_(torch.rand(bn.num_features, generator=g) * 1.5 + 0.5)
    round_state_to_f16(model)
    return model


def train_data(seed):
    g = gen(seed)
    x = randn(g, TRAIN["n"], 3, TRAIN["size"], TRAIN["size"])
    labels = torch.randint(0, TRAIN["num_classes"], (TRAIN["n"],), generator=g)
    return x, labels


def train_step(model, x, labels, dtype=torch.float32, alt_kernels=False):
    """One training step on a copy of `model`: returns logits, loss, grads, state after the step,
    and the input of every ReLU6 (in forward order)."""
    model = copy.deepcopy(model).to(dtype)
    relu_inputs = []
    for mod in model.modules():
        if isinstance(mod, nn.ReLU6):  # in-place: copy the input before it is overwritten
            mod.register_forward_pre_hook(lambda _m, i: relu_inputs.append(i[0].detach().clone()))
    decay, no_decay = [], []
    for p in model.parameters():
        (decay if p.dim() > 1 else no_decay).append(p)  # conv / linear weights vs BN and biases
    opt = torch.optim.SGD([{"params": decay, "weight_decay": TRAIN["wd"]},
                           {"params": no_decay, "weight_decay": 0.0}],
                          lr=TRAIN["lr"], momentum=TRAIN["momentum"], nesterov=True,
                          foreach=False)
    model.train()
    opt.zero_grad(set_to_none=True)
    x = x.to(dtype)
    if alt_kernels:  # same maths, other kernels and summation orders
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.backends.mkldnn.flags(enabled=False):
            logits = model(x)
    else:
        logits = model(x)
    loss = F.cross_entropy(logits, labels, label_smoothing=TRAIN["label_smoothing"])
    loss.backward()
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters()}
    opt.step()
    after = {k: v.detach().clone() for k, v in model.state_dict().items()
             if not k.endswith("num_batches_tracked")}
    return logits.detach(), loss.detach(), grads, after, relu_inputs


def train_conditioning(model, x, labels, ref32=None):
    """How far float32 PyTorch is from float64 (and from float32 with other kernels) on this
    step: the tolerance the Rust comparison needs, and whether it is robust at all."""
    r32 = ref32 or train_step(model, x, labels)
    r64 = train_step(model, x, labels, torch.float64)
    ralt = train_step(model, x, labels, alt_kernels=True)
    g32, g64, galt = r32[2], r64[2], ralt[2]
    scale = max(float(g.abs().max()) for g in g64.values())
    # Gradients that are mathematically zero: the shift of a BN whose output reaches only
    # (1x1 conv ->) train-mode BN is removed again by that BN's mean subtraction.
    zero = sorted(n for n, g in g64.items() if float(g.abs().max()) <= 1e-9 * scale)
    live = [n for n in g32 if n not in zero]
    margins = []
    for a, b in zip(r32[4], r64[4]):
        rms = float((a.double() - b).pow(2).mean().sqrt())
        dist = float(torch.minimum(b.abs(), (b - 6).abs()).min())
        margins.append(dist / max(rms, 1e-30))
    return {
        "f32_vs_f64": {
            "logits": max_rel(r32[0], r64[0]),
            "loss": max_rel(r32[1], r64[1]),
            "grads_max": max(max_rel(g32[n], g64[n]) for n in live),
            "after_max": max(max_rel(r32[3][k], r64[3][k]) for k in r32[3]),
            "zero_grads_max_abs": max((float(g32[n].abs().max()) for n in zero), default=0.0),
        },
        "alt_kernels_vs_f32_grads_max": max(max_rel(galt[n], g32[n]) for n in live),
        "relu6_min_margin_over_rms_err": min(margins),
        "relu6_head_margin_over_rms_err": margins[-1],
        "max_abs_grad": scale,
        "zero_grad_params": zero,
    }


def conditioning_ok(c):
    return (c["f32_vs_f64"]["logits"] <= MAX_REL_F32_F64
            and c["f32_vs_f64"]["grads_max"] <= MAX_REL_F32_F64
            and c["f32_vs_f64"]["after_max"] <= MAX_REL_F32_F64
            and c["alt_kernels_vs_f32_grads_max"] <= MAX_REL_F32_F64
            and c["relu6_min_margin_over_rms_err"] >= MIN_RELU6_MARGIN)


def search_train_seed(count):
    model = train_model()
    for seed in range(1000, 1000 + count):
        x, labels = train_data(seed)
        c = train_conditioning(model, x, labels)
        print(f"seed {seed}: ok={conditioning_ok(c)!s:5s} "
              f"f64 grads {c['f32_vs_f64']['grads_max']:.1e} "
              f"alt grads {c['alt_kernels_vs_f32_grads_max']:.1e} "
              f"relu6 margin {c['relu6_min_margin_over_rms_err']:.2f} "
              f"(head {c['relu6_head_margin_over_rms_err']:.1f})", flush=True)


def make_mbv2_train_step():
    model = train_model()
    init = state_f16(model, "init.")
    x, labels = train_data(TRAIN_DATA_SEED)
    ref = train_step(model, x, labels)
    logits, loss, grads, after, _ = ref
    cond = train_conditioning(model, x, labels, ref)
    assert conditioning_ok(cond), f"ill-conditioned training-step fixture: {cond}"

    tensors = dict(init)
    tensors.update({"input": f32(x), "labels": labels.to(torch.float32),
                    "logits": f32(logits), "loss": f32(loss.reshape(1))})
    for name, gr in grads.items():
        tensors["grad." + name] = f32(gr)
    for k, v in after.items():
        tensors["after." + k] = f32(v)

    params = arch_metadata(model, TRAIN["width"], TRAIN["num_classes"])
    params.update({
        "mode": "train",
        "input_shape": list(x.shape),
        "data_seed": TRAIN_DATA_SEED,
        "dropout": "classifier.0 Dropout p set to 0.0",
        "loss": {"op": "cross_entropy", "label_smoothing": TRAIN["label_smoothing"],
                 "reduction": "mean"},
        "optimizer": {"op": "SGD", "lr": TRAIN["lr"], "momentum": TRAIN["momentum"],
                      "dampening": 0.0, "nesterov": True, "weight_decay": TRAIN["wd"],
                      "weight_decay_on": "parameters with dim > 1 (conv and linear weights)",
                      "first_step_update": "d = g + wd*w; buf = d; w -= lr*(d + momentum*buf)"},
    })
    meta = base_metadata()
    meta["params"] = json.dumps(params, sort_keys=True)
    meta["conditioning"] = json.dumps(cond, sort_keys=True)
    return tensors, meta


# ----------------------------------------------------------------------------------------------


def same_content(path, tensors, meta):
    if not os.path.exists(path):
        return False
    with safe_open(path, "pt") as f:
        if f.metadata() != meta or set(f.keys()) != set(tensors):
            return False
        return all(f.get_tensor(k).dtype == v.dtype and torch.equal(f.get_tensor(k), v)
                   for k, v in tensors.items())


def write(path, tensors, meta):
    """Writes the file unless it already holds exactly these tensors and metadata (the header's
    key order is not stable across runs, so an unchanged fixture is not rewritten)."""
    if same_content(path, tensors, meta):
        status = "unchanged"
    else:
        save_file(tensors, path, metadata=meta)
        status = "written"
    back = load_file(path)
    assert back.keys() == tensors.keys()
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v), k
    return os.path.getsize(path), status


# ----------------------------------------------------------------------------------------------
# lite0_timm.safetensors
# ----------------------------------------------------------------------------------------------


def formula_weights(shapes):
    """Deterministic weights from their timm names' order and shapes alone, so that the fixture
    need not carry 3.4 M parameters: the Rust test recomputes them (tests/golden.rs,
    `formula_weights`). Element i of tensor number s draws u = ((i * 2654435761 + s * 40503 +
    12345) mod 2^32) / 2^32, exact in integers on both sides, then: conv/linear weights
    (u - 0.5) * 2 * sqrt(6 / fan_in) (variance 2 / fan_in, so that the input still shows in
    the logits after 16 blocks), BN weight and running_var 0.5 + u,
    every bias and running_mean (u - 0.5) * 0.2."""
    import numpy as np
    out = {}
    for s, (name, shape) in enumerate(shapes):
        n = 1
        for d in shape:
            n *= d
        i = np.arange(n, dtype=np.uint64)
        h = (i * np.uint64(2654435761) + np.uint64(s * 40503 + 12345)) % np.uint64(2**32)
        u = (h.astype(np.float64) / 2.0**32).astype(np.float32)
        field = name.rsplit(".", 1)[1]
        if len(shape) > 1:
            fan_in = n // shape[0]
            v = (u - np.float32(0.5)) * np.float32(2.0 * (6.0 / fan_in) ** 0.5)
        elif field in ("weight", "running_var"):
            v = np.float32(0.5) + u
        else:
            v = (u - np.float32(0.5)) * np.float32(0.2)
        out[name] = torch.from_numpy(v.astype(np.float32).reshape(shape))
    return out


def make_lite0_timm():
    """timm efficientnet_lite0(num_classes=10), eval mode, weights by `formula_weights` over its
    state_dict (num_batches_tracked dropped) in timm's names, inputs 2x3x64x64 and 1x3x97x83,
    logits. The names and shapes are in the metadata (`timm_state`), in the order the formula
    numbers them."""
    import timm
    model = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=10).eval()
    shapes = [(k, list(v.shape)) for k, v in model.state_dict().items()
              if not k.endswith("num_batches_tracked")]
    weights = formula_weights(shapes)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing)
    tensors, meta = {}, base_metadata()
    meta["timm_version"] = timm.__version__
    meta["timm_state"] = json.dumps(shapes)
    g = gen(700)
    for name, shape in [("x64", (2, 3, 64, 64)), ("x97", (1, 3, 97, 83))]:
        x = randn(g, *shape)
        with torch.no_grad():
            tensors[f"input.{name}"] = f32(x)
            tensors[f"logits.{name}"] = f32(model(x))
    return tensors, meta


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "fixtures"),
                    help="output directory (default: tests/fixtures)")
    ap.add_argument("--list", action="store_true", help="print every tensor's name/shape/dtype")
    ap.add_argument("--search-train-seed", type=int, metavar="COUNT",
                    help="only rate the training-step data seeds 1000..1000+COUNT-1 and exit")
    args = ap.parse_args()
    setup()
    if args.search_train_seed:
        search_train_seed(args.search_train_seed)
        return
    os.makedirs(args.out, exist_ok=True)
    total = 0
    for fname, make in [("kernels.safetensors", make_kernels),
                        ("mbv2_forward.safetensors", make_mbv2_forward),
                        ("mbv2_train_step.safetensors", make_mbv2_train_step),
                        ("lite0_timm.safetensors", make_lite0_timm)]:
        tensors, meta = make()
        for k, v in tensors.items():
            assert torch.isfinite(v.float()).all(), f"{fname}: {k} is not finite"
        size, status = write(os.path.join(args.out, fname), tensors, meta)
        total += size
        print(f"{fname}: {len(tensors)} tensors, {size / 1024:.1f} KiB ({status})",
              file=sys.stderr)
        if args.list:
            for k, v in tensors.items():
                print(f"  {k:60s} {str(v.dtype)[6:]:8s} {list(v.shape)}")
    print(f"total {total / 1024:.1f} KiB", file=sys.stderr)


if __name__ == "__main__":
    main()
