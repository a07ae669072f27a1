//! Conv2d, BatchNorm2d, Linear and the conv → BN pair, with torchvision's initialisation.

use depthshrink_autograd::{Var, ops};
use depthshrink_tensor::batchnorm::BnOptions;
use depthshrink_tensor::conv::{self, ConvParams, PackedWeight};
use depthshrink_tensor::{Result, Tensor, TensorError};
use rand::Rng;

use crate::activation::Act;
use crate::module::{Ctx, Entry, Module, Param, join};

/// Samples N(0, std²) by Box–Muller (rand 0.9 ships no normal distribution).
pub fn normal(rng: &mut impl Rng, shape: &[usize], std: f32) -> Tensor {
    let numel: usize = shape.iter().product();
    let mut data = Vec::with_capacity(numel + 1);
    while data.len() < numel {
        let u1: f32 = rng.random_range(f32::EPSILON..1.0);
        let u2: f32 = rng.random();
        let r = (-2.0 * u1.ln()).sqrt() * std;
        let theta = std::f32::consts::TAU * u2;
        data.extend([r * theta.cos(), r * theta.sin()]);
    }
    data.truncate(numel);
    Tensor::from_vec(shape, data).expect("numel matches shape")
}

/// A square-kernel convolution; weight `[cout, cin/groups, k, k]`.
#[derive(Clone)]
pub struct Conv2d {
    /// `[cout, cin/groups, k, k]`.
    pub weight: Param,
    /// `[cout]`, if the conv has one.
    pub bias: Option<Param>,
    /// Stride, zero padding and groups.
    pub params: ConvParams,
    /// The weight's GEMM packing, made by [`Conv2d::prepack`] for inference; used only while
    /// it still packs `weight` (a write to the weight copies it, which retires the packing).
    packed: Option<PackedWeight>,
}

impl Conv2d {
    /// Kaiming-normal (fan-out) weights as torchvision's MobileNetV2 initialises them.
    pub fn new(
        rng: &mut impl Rng,
        cin: usize,
        cout: usize,
        k: usize,
        params: ConvParams,
        bias: bool,
    ) -> Conv2d {
        let fan_out = (cout / params.groups * k * k) as f32;
        let weight = normal(
            rng,
            &[cout, cin / params.groups, k, k],
            (2.0 / fan_out).sqrt(),
        );
        let bias = bias.then(|| Param::new(Tensor::zeros(&[cout]), false));
        Conv2d::from_parts(Param::new(weight, true), bias, params)
    }

    /// A conv with the given weights (no packing yet).
    pub fn from_parts(weight: Param, bias: Option<Param>, params: ConvParams) -> Conv2d {
        Conv2d {
            weight,
            bias,
            params,
            packed: None,
        }
    }

    /// Packs the weight for the GEMM once, so that evaluation does not repack it every call
    /// (no-op for depthwise weights and where the GEMM kernel cannot read packings).
    pub fn prepack(&mut self) {
        self.packed = PackedWeight::new(&self.weight.value, self.params.groups);
    }

    /// The conv on `x` `[N, cin, H, W]`.
    pub fn forward(&mut self, x: &Var, ctx: &Ctx) -> Result<Var> {
        self.forward_act(x, ctx, Act::Identity)
    }

    /// The conv, then `act` (a ReLU6 runs inside the conv's output pass).
    pub fn forward_act(&mut self, x: &Var, ctx: &Ctx, act: Act) -> Result<Var> {
        self.forward_padded(x, ctx, self.params.pad, act)
    }

    /// The same with another zero padding (pad-first blocks run their depthwise at 0).
    pub fn forward_padded(&mut self, x: &Var, ctx: &Ctx, pad: usize, act: Act) -> Result<Var> {
        let w = self.weight.bind(ctx);
        let b = self.bias.as_mut().map(|b| b.bind(ctx));
        let (p, relu6) = (ConvParams { pad, ..self.params }, act == Act::Relu6);
        let untracked =
            !(x.is_tracked() || w.is_tracked() || b.as_ref().is_some_and(Var::is_tracked));
        let y = match &self.packed {
            Some(packed) if untracked && packed.packs(w.value(), p.groups) => {
                let bias = b.as_ref().map(Var::value);
                Var::constant(conv::conv2d_act_packed(x.value(), packed, bias, p, relu6)?)
            }
            _ => ops::conv2d_act(x, &w, b.as_ref(), p, relu6)?,
        };
        if relu6 { Ok(y) } else { act.apply(&y, ctx) }
    }

    /// The kernel's side `k`, read from the weight.
    pub fn kernel_size(&self) -> usize {
        self.weight.value.shape()[2]
    }
}

impl Module for Conv2d {
    fn visit(&mut self, prefix: &str, f: &mut dyn FnMut(&str, Entry<'_>)) {
        f(&join(prefix, "weight"), Entry::Param(&mut self.weight));
        if let Some(b) = &mut self.bias {
            f(&join(prefix, "bias"), Entry::Param(b));
        }
    }
}

/// Batch normalisation over the channels of NCHW maps (PyTorch defaults: momentum 0.1, eps 1e-5).
#[derive(Clone)]
pub struct BatchNorm2d {
    /// Scale γ, `[C]`.
    pub weight: Param,
    /// Shift β, `[C]`.
    pub bias: Param,
    /// Running mean μ, `[C]`, used in evaluation.
    pub running_mean: Tensor,
    /// Running (unbiased) variance σ², `[C]`, used in evaluation.
    pub running_var: Tensor,
    /// `running = (1 − momentum)·running + momentum·batch`.
    pub momentum: f32,
    /// Added to the variance inside the square root.
    pub eps: f32,
}

impl BatchNorm2d {
    /// `c` channels: γ = 1, β = 0, running mean 0 and variance 1.
    pub fn new(c: usize) -> BatchNorm2d {
        BatchNorm2d {
            weight: Param::new(Tensor::full(&[c], 1.0), false),
            bias: Param::new(Tensor::zeros(&[c]), false),
            running_mean: Tensor::zeros(&[c]),
            running_var: Tensor::full(&[c], 1.0),
            momentum: 0.1,
            eps: 1e-5,
        }
    }

    /// Batch statistics (and a running-stat update) in training, running statistics otherwise.
    pub fn forward(&mut self, x: &Var, ctx: &Ctx) -> Result<Var> {
        self.forward_act(x, ctx, Act::Identity)
    }

    /// [`BatchNorm2d::forward`] then `act`; in training a ReLU6 runs inside the BN's own pass.
    pub fn forward_act(&mut self, x: &Var, ctx: &Ctx, act: Act) -> Result<Var> {
        self.forward_framed(x, ctx, act, 0)
    }

    /// [`BatchNorm2d::forward_act`] on maps whose `border`-wide frame is padding: in training
    /// the batch statistics come from the interior only.
    pub fn forward_framed(&mut self, x: &Var, ctx: &Ctx, act: Act, border: usize) -> Result<Var> {
        let (g, b) = (self.weight.bind(ctx), self.bias.bind(ctx));
        if !ctx.train {
            let y =
                ops::batch_norm_eval(x, &g, &b, &self.running_mean, &self.running_var, self.eps)?;
            return act.apply(&y, ctx);
        }
        let opts = BnOptions {
            eps: self.eps,
            momentum: self.momentum,
            relu6: act == Act::Relu6,
            border,
        };
        let (rm, rv) = (&mut self.running_mean, &mut self.running_var);
        let y = ops::batch_norm_train(x, &g, &b, rm, rv, opts)?;
        if opts.relu6 {
            Ok(y)
        } else {
            act.apply(&y, ctx)
        }
    }

    /// The per-channel affine map `y = x·scale + shift` this BN applies in evaluation.
    pub fn eval_affine(&self) -> (Vec<f32>, Vec<f32>) {
        let (gamma, beta) = (self.weight.value.data(), self.bias.value.data());
        let (mean, var) = (self.running_mean.data(), self.running_var.data());
        (0..gamma.len())
            .map(|c| {
                let scale = gamma[c] / (var[c] + self.eps).sqrt();
                (scale, beta[c] - mean[c] * scale)
            })
            .unzip()
    }
}

impl Module for BatchNorm2d {
    fn visit(&mut self, prefix: &str, f: &mut dyn FnMut(&str, Entry<'_>)) {
        f(&join(prefix, "weight"), Entry::Param(&mut self.weight));
        f(&join(prefix, "bias"), Entry::Param(&mut self.bias));
        f(
            &join(prefix, "running_mean"),
            Entry::Buffer(&mut self.running_mean),
        );
        f(
            &join(prefix, "running_var"),
            Entry::Buffer(&mut self.running_var),
        );
    }
}

/// y = x·Wᵀ + b with W `[out, in]`; initialised N(0, 0.01²) as torchvision's classifier.
#[derive(Clone)]
pub struct Linear {
    /// `[out, in]`.
    pub weight: Param,
    /// `[out]`.
    pub bias: Param,
}

impl Linear {
    /// `inputs` → `outputs` features; the bias starts at 0.
    pub fn new(rng: &mut impl Rng, inputs: usize, outputs: usize) -> Linear {
        Linear {
            weight: Param::new(normal(rng, &[outputs, inputs], 0.01), true),
            bias: Param::new(Tensor::zeros(&[outputs]), false),
        }
    }

    /// `x` `[N, in]` → `[N, out]`.
    pub fn forward(&mut self, x: &Var, ctx: &Ctx) -> Result<Var> {
        let (w, b) = (self.weight.bind(ctx), self.bias.bind(ctx));
        ops::linear(x, &w, Some(&b))
    }
}

impl Module for Linear {
    fn visit(&mut self, prefix: &str, f: &mut dyn FnMut(&str, Entry<'_>)) {
        f(&join(prefix, "weight"), Entry::Param(&mut self.weight));
        f(&join(prefix, "bias"), Entry::Param(&mut self.bias));
    }
}

/// A bias-free conv followed by batch norm, the unit every Network layer is built from.
/// `names` are the two children's local names (torchvision uses "0"/"1" or e.g. "2"/"3").
#[derive(Clone)]
pub struct ConvBn {
    /// The bias-free conv (with a bias once [`ConvBn::fold`] has run).
    pub conv: Conv2d,
    /// The batch norm over the conv's output channels.
    pub bn: BatchNorm2d,
    names: [&'static str; 2],
    /// The BN has been folded into the conv's weight and bias (inference only).
    folded: bool,
}

impl ConvBn {
    /// A `k`×`k` conv `cin` → `cout` (initialised as [`Conv2d::new`]) and a fresh BN.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        rng: &mut impl Rng,
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        pad: usize,
        groups: usize,
        names: [&'static str; 2],
    ) -> ConvBn {
        let conv = Conv2d::new(
            rng,
            cin,
            cout,
            k,
            ConvParams::new(stride, pad, groups),
            false,
        );
        ConvBn {
            conv,
            bn: BatchNorm2d::new(cout),
            names,
            folded: false,
        }
    }

    /// Conv, then BN (unless folded).
    pub fn forward(&mut self, x: &Var, ctx: &Ctx) -> Result<Var> {
        self.forward_act(x, ctx, Act::Identity)
    }

    /// Conv, BN and the activation `act` (fused into the BN's pass where possible).
    pub fn forward_act(&mut self, x: &Var, ctx: &Ctx, act: Act) -> Result<Var> {
        self.forward_padded(x, ctx, self.conv.params.pad, act)
    }

    /// Conv with zero padding `pad`, then BN (unless folded), then `act`.
    pub fn forward_padded(&mut self, x: &Var, ctx: &Ctx, pad: usize, act: Act) -> Result<Var> {
        self.forward_framed(x, ctx, pad, act, 0)
    }

    /// A 1×1 conv and its BN on an input zero-padded by `border` (the expand of a pad-first
    /// block): the BN's training statistics skip the padded frame, so they are those of the
    /// unpadded map the pretrained statistics describe. Evaluation is unaffected (the BN is a
    /// fixed affine map there).
    pub fn forward_padded_input(&mut self, x: &Var, ctx: &Ctx, border: usize) -> Result<Var> {
        self.forward_framed(x, ctx, self.conv.params.pad, Act::Identity, border)
    }

    fn forward_framed(
        &mut self,
        x: &Var,
        ctx: &Ctx,
        pad: usize,
        act: Act,
        border: usize,
    ) -> Result<Var> {
        match (self.folded, ctx.train) {
            (false, _) => {
                let y = self.conv.forward_padded(x, ctx, pad, Act::Identity)?;
                self.bn.forward_framed(&y, ctx, act, border)
            }
            (true, false) => self.conv.forward_padded(x, ctx, pad, act),
            (true, true) => Err(TensorError::argument(
                "ConvBn",
                "a network with folded batch norms cannot train",
            )),
        }
    }

    /// Folds the BN into the conv for inference: one pass over the output instead of two.
    pub fn fold(&mut self) -> Result<()> {
        if !self.folded {
            let (w, b) = self.folded()?;
            self.conv.weight.value = w;
            self.conv.bias = Some(Param::new(b, false));
            self.folded = true;
        }
        Ok(())
    }

    /// The conv with this BN folded in (evaluation statistics): W' = W·γ/σ, b' = β − γ·μ/σ.
    /// After [`ConvBn::fold`] the conv already holds them, and they are returned as they are.
    pub fn folded(&self) -> Result<(Tensor, Tensor)> {
        if self.folded
            && let Some(bias) = &self.conv.bias
        {
            return Ok((self.conv.weight.value.clone(), bias.value.clone()));
        }
        let (scale, shift) = self.bn.eval_affine();
        let mut w = self.conv.weight.value.clone();
        let per_out = w.numel() / scale.len();
        for (row, s) in w.data_mut().chunks_exact_mut(per_out).zip(&scale) {
            row.iter_mut().for_each(|v| *v *= s);
        }
        Ok((w, Tensor::from_vec(&[shift.len()], shift)?))
    }
}

impl Module for ConvBn {
    fn visit(&mut self, prefix: &str, f: &mut dyn FnMut(&str, Entry<'_>)) {
        self.conv.visit(&join(prefix, self.names[0]), f);
        self.bn.visit(&join(prefix, self.names[1]), f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn folding_twice_folds_once() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        let mut cb = ConvBn::new(&mut rng, 3, 4, 3, 1, 1, 1, ["0", "1"]);
        cb.bn.weight.value = Tensor::from_vec(&[4], vec![0.5, 2.0, 1.5, 0.25]).unwrap();
        cb.bn.running_mean = Tensor::from_vec(&[4], vec![0.1, -0.2, 0.3, 0.0]).unwrap();
        let (w, b) = cb.folded().unwrap();
        cb.fold().unwrap();
        let (w2, b2) = cb.folded().unwrap();
        assert_eq!((w.data(), b.data()), (w2.data(), b2.data()));
    }
}
