//! Batch normalisation over N×C×H×W (or N×C) with per-channel statistics, PyTorch semantics:
//! training normalises with the biased batch variance and folds the unbiased one into the running
//! variance; eval normalises with the running statistics.
//!
//! Statistics are computed per H×W plane (two passes over a plane that sits in L1/L2, so x is
//! read from memory once) and merged per channel in f64 with the exact between/within-plane
//! decomposition — numerically stable even when |mean| ≫ std. All passes are parallel over planes.

use std::mem::MaybeUninit;

use crate::elementwise::{build, write1, write2};
use crate::reduce::{channel_dims, fold_channels, lane_sum, lane_sum2, per_plane};
use crate::{Result, Tensor, TensorError};

#[cfg(target_arch = "x86_64")]
mod avx2;

/// `eps` inside the square root and the running-statistics `momentum`
/// (`running = (1 − momentum)·running + momentum·batch`). Defaults are PyTorch's: 1e-5 and 0.1.
/// `relu6` clamps the output to [0, 6] in the normalising pass: BN followed by ReLU6 in one
/// pass over memory instead of two, and without keeping the BN output alive for the backward.
/// `border` > 0 takes the batch statistics from each H×W plane without a border that wide
/// (every element is still normalised): the expand BN of a pad-first block sees its input
/// zero-padded, and its statistics should be those of the unpadded map it was trained on.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BnOptions {
    pub eps: f32,
    pub momentum: f32,
    pub relu6: bool,
    pub border: usize,
}

impl Default for BnOptions {
    fn default() -> Self {
        BnOptions {
            eps: 1e-5,
            momentum: 0.1,
            relu6: false,
            border: 0,
        }
    }
}

/// The part of each `h×w` plane the batch statistics come from: all of it but a `border`-wide
/// frame (the whole plane when `border` is 0).
#[derive(Clone, Copy, Debug, PartialEq)]
struct Region {
    h: usize,
    w: usize,
    border: usize,
}

impl Region {
    /// Checks that `x` has planes with an interior inside `border`.
    fn of(op: &'static str, x: &Tensor, border: usize) -> Result<Region> {
        let (h, w) = match *x.shape() {
            [_, _, h, w] => (h, w),
            [_, _] => (1, 1),
            _ => return Err(TensorError::shape(op, "expected N×C×H×W or N×C")),
        };
        if border > 0 && (h <= 2 * border || w <= 2 * border) {
            return Err(TensorError::argument(
                op,
                format!("a {border}-wide border leaves no interior in {h}×{w} planes"),
            ));
        }
        Ok(Region { h, w, border })
    }

    /// Elements of a plane the statistics come from.
    fn len(&self) -> usize {
        (self.h - 2 * self.border) * (self.w - 2 * self.border)
    }

    /// The interior of `plane` as row segments (the whole plane as one when there is no border).
    fn rows<'a>(&self, plane: &'a [f32]) -> impl Iterator<Item = &'a [f32]> + 'a {
        let Region { h, w, border: b } = *self;
        let (rows, cols, first, pitch) = match b {
            0 => (1, h * w, 0, 0),
            _ => (h - 2 * b, w - 2 * b, b * w + b, w),
        };
        (0..rows).map(move |r| &plane[first + r * pitch..][..cols])
    }

    /// Indices of a plane outside the interior, in order (none when there is no border): whole
    /// rows at the top and bottom, `border` columns at each end of the rows between. Walked
    /// row by row, never testing interior indices (a filter over the whole plane took 10% of a
    /// finetuning step).
    fn frame(&self) -> impl Iterator<Item = usize> {
        let Region { h, w, border: b } = *self;
        let rows = if b == 0 { 0 } else { h };
        (0..rows).flat_map(move |r| {
            let (left, right) = if r < b || r >= h - b {
                (0..w, 0..0)
            } else {
                (0..b, w - b..w)
            };
            left.chain(right).map(move |c| r * w + c)
        })
    }
}

/// The output range of a BN (`relu6`: [0, 6], else unbounded).
fn out_range(relu6: bool) -> (f32, f32) {
    if relu6 {
        (0.0, 6.0)
    } else {
        (f32::NEG_INFINITY, f32::INFINITY)
    }
}

/// What [`backward_train`] needs from [`forward_train`]: the batch mean and
/// `1/sqrt(biased_var + eps)` per channel, both `[C]`.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchStats {
    pub mean: Tensor,
    pub inv_std: Tensor,
    /// Where in each plane the statistics came from.
    region: Region,
    /// With `relu6`: the per-channel scale and shift the output was computed with, so that the
    /// backward recomputes the clamp's mask from x (bit for bit the mask of the output) instead
    /// of reading the whole output again.
    clamp: Option<Affine>,
}

/// A per-channel `x ↦ (x − mean)·scale + shift`, as [`normalize`] evaluates it.
#[derive(Clone, Debug, PartialEq)]
struct Affine {
    scale: Vec<f32>,
    shift: Vec<f32>,
}

/// Gradients of a training-mode batch norm: `dx` shaped like x, `dgamma` and `dbeta` `[C]`.
#[derive(Clone, Debug, PartialEq)]
pub struct BnGrads {
    pub dx: Tensor,
    pub dgamma: Tensor,
    pub dbeta: Tensor,
}

/// Errors unless `t` is a `[c]` vector.
fn check_vector(op: &'static str, name: &str, t: &Tensor, c: usize) -> Result<()> {
    if t.shape() == [c] {
        Ok(())
    } else {
        Err(TensorError::shape(
            op,
            format!("{name} must be [{c}], got {:?}", t.shape()),
        ))
    }
}

fn check_eps(op: &'static str, eps: f32) -> Result<()> {
    if eps >= 0.0 && eps.is_finite() {
        Ok(())
    } else {
        Err(TensorError::argument(
            op,
            format!("eps must be finite and ≥ 0, got {eps}"),
        ))
    }
}

/// `y = clamp((x − center[c])·scale[c] + shift[c], lo, hi)` over planes of `hw` elements
/// (channel = plane mod C). Subtracting the centre before scaling keeps precision when
/// |mean| ≫ std.
fn normalize(
    x: &[f32],
    hw: usize,
    center: &[f32],
    scale: &[f32],
    shift: &[f32],
    (lo, hi): (f32, f32),
) -> Vec<f32> {
    let (c, path) = (scale.len(), Path::detect());
    build(x.len(), hw, |p0, out| {
        let xs = &x[p0 * hw..p0 * hw + out.len()];
        for (i, (o, xp)) in out.chunks_mut(hw).zip(xs.chunks(hw)).enumerate() {
            let ch = (p0 + i) % c;
            path.normalize(o, xp, [center[ch], scale[ch], shift[ch]], (lo, hi));
        }
    })
}

/// `γ / sqrt(var + eps)` per channel, in f64.
fn gamma_inv_std(gamma: &[f32], var: &[f32], eps: f32) -> Vec<f64> {
    gamma
        .iter()
        .zip(var)
        .map(|(&g, &v)| g as f64 / (v as f64 + eps as f64).sqrt())
        .collect()
}

fn to_f32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

/// Training forward: normalises with the batch statistics (then clamps to [0, 6] if
/// `opts.relu6`), returns the output and the [`BatchStats`] for [`backward_train`], and updates
/// `running_mean` / `running_var` in place (the latter with the unbiased variance
/// `n/(n−1)·var`, as PyTorch does). Nothing is modified
/// when an error is returned. Like PyTorch, refuses a channel with a single value (N·H·W = 1).
/// With `opts.border`, the statistics (and the running ones) come from the planes' interiors.
pub fn forward_train(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    running_mean: &mut Tensor,
    running_var: &mut Tensor,
    opts: BnOptions,
) -> Result<(Tensor, BatchStats)> {
    const OP: &str = "batchnorm::forward_train";
    let [n, c, hw] = channel_dims(OP, x)?;
    for (name, t) in [
        ("gamma", gamma),
        ("beta", beta),
        ("running_mean", &*running_mean),
        ("running_var", &*running_var),
    ] {
        check_vector(OP, name, t, c)?;
    }
    check_eps(OP, opts.eps)?;
    if !(0.0..=1.0).contains(&opts.momentum) {
        return Err(TensorError::argument(
            OP,
            format!("momentum must be in [0, 1], got {}", opts.momentum),
        ));
    }
    let region = Region::of(OP, x, opts.border)?;
    let inner = region.len();
    let count = n * inner;
    if count < 2 {
        return Err(TensorError::argument(
            OP,
            format!(
                "training needs more than one value per channel, got input {:?}",
                x.shape()
            ),
        ));
    }

    // Per plane (interior): its mean and Σ(x − plane mean)²; the second pass reads the plane
    // from cache. The deviations use the f32-rounded mean m32, and
    // Σ(x − m32)² = M2 + inner·(m − m32)² exactly, so that term is taken back out.
    let (xd, path) = (x.data(), Path::detect());
    let parts = per_plane(n * c, hw, |p| {
        let plane = &xd[p * hw..(p + 1) * hw];
        let m = region.rows(plane).map(|r| path.sum(r)).sum::<f64>() / inner as f64;
        let m32 = m as f32;
        let shift = m - m32 as f64;
        let sq: f64 = region.rows(plane).map(|r| path.sum_sq_dev(r, m32)).sum();
        (m, (sq - inner as f64 * shift * shift).max(0.0))
    });
    // Interiors are equally sized, so the channel mean is the mean of plane means and
    // M2 = Σ within-plane M2 + inner · Σ (plane mean − channel mean)².
    let plane_means: Vec<f64> = parts.iter().map(|&(m, _)| m).collect();
    let mean: Vec<f64> = fold_channels(&plane_means, c, 0.0, |a, b| a + b)
        .iter()
        .map(|s| s / n as f64)
        .collect();
    let mut m2 = vec![0f64; c];
    for row in parts.chunks(c) {
        for ((acc, &(pm, pm2)), &cm) in m2.iter_mut().zip(row).zip(&mean) {
            *acc += pm2 + inner as f64 * (pm - cm) * (pm - cm);
        }
    }

    let inv_std: Vec<f64> = m2
        .iter()
        .map(|&s| 1.0 / (s / count as f64 + opts.eps as f64).sqrt())
        .collect();
    let m = opts.momentum as f64;
    for (((rm, rv), &mu), &s) in running_mean
        .data_mut()
        .iter_mut()
        .zip(running_var.data_mut().iter_mut())
        .zip(&mean)
        .zip(&m2)
    {
        *rm = ((1.0 - m) * *rm as f64 + m * mu) as f32;
        *rv = ((1.0 - m) * *rv as f64 + m * s / (count - 1) as f64) as f32;
    }

    let mean = to_f32(&mean);
    let scale: Vec<f32> = gamma
        .data()
        .iter()
        .zip(&inv_std)
        .map(|(&g, &is)| (g as f64 * is) as f32)
        .collect();
    let y = normalize(xd, hw, &mean, &scale, beta.data(), out_range(opts.relu6));
    let stats = BatchStats {
        mean: Tensor::from_vec(&[c], mean)?,
        inv_std: Tensor::from_vec(&[c], to_f32(&inv_std))?,
        region,
        clamp: opts.relu6.then(|| Affine {
            scale,
            shift: beta.data().to_vec(),
        }),
    };
    Ok((Tensor::from_vec(x.shape(), y)?, stats))
}

/// Training backward through the batch statistics:
/// `dx = γ·inv_std·(dy − mean(dy) − x̂·mean(dy·x̂))`, `dγ = Σ dy·x̂`, `dβ = Σ dy`, with
/// `x̂ = (x − mean)·inv_std` from [`BatchStats`]. One pass for the per-channel sums, one for `dx`.
///
/// When the forward pass had `relu6` set, `dy` first goes back through the clamp (zero where
/// the output is not strictly inside (0, 6), PyTorch's convention) inside the same two passes;
/// the mask is recomputed from x, which both passes read anyway.
///
/// With statistics from the planes' interiors (`BnOptions::border`), the mean terms average
/// over the interior and the frame's `dx` is the plain `γ·inv_std·dy`: its values are not in
/// the statistics.
pub fn backward_train(
    dy: &Tensor,
    x: &Tensor,
    gamma: &Tensor,
    stats: &BatchStats,
) -> Result<BnGrads> {
    const OP: &str = "batchnorm::backward_train";
    let [n, c, hw] = channel_dims(OP, x)?;
    x.expect_same_shape(OP, dy)?;
    check_vector(OP, "gamma", gamma, c)?;
    check_vector(OP, "stats.mean", &stats.mean, c)?;
    check_vector(OP, "stats.inv_std", &stats.inv_std, c)?;
    if Region::of(OP, x, stats.region.border)? != stats.region {
        return Err(TensorError::shape(
            OP,
            format!("x {:?} is not the forward's input", x.shape()),
        ));
    }
    let count = n * hw;
    if count == 0 {
        return Err(TensorError::shape(
            OP,
            format!("empty input {:?}", x.shape()),
        ));
    }

    let (dyd, xd) = (dy.data(), x.data());
    let (dx, dgamma, dbeta) = match &stats.clamp {
        Some(clamp) => train_grads::<true>(dyd, xd, gamma.data(), stats, Some(clamp), [n, c, hw]),
        None => train_grads::<false>(dyd, xd, gamma.data(), stats, None, [n, c, hw]),
    };
    Ok(BnGrads {
        dx: Tensor::from_vec(x.shape(), dx)?,
        dgamma: Tensor::from_vec(&[c], dgamma)?,
        dbeta: Tensor::from_vec(&[c], dbeta)?,
    })
}

/// The body of [`backward_train`] on checked slices: `(dx, dγ, dβ)`; `clamp` is the stats' own
/// (`Some` exactly when `RELU6`), so it holds one value per channel.
fn train_grads<const RELU6: bool>(
    dyd: &[f32],
    xd: &[f32],
    gamma: &[f32],
    stats: &BatchStats,
    clamp: Option<&Affine>,
    [n, c, hw]: [usize; 3],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (mean, path) = (stats.mean.data(), Path::detect());
    // The clamp's affine map for channel `ch` (unused without RELU6).
    let affine = |ch: usize| match clamp {
        Some(a) if RELU6 => [mean[ch], a.scale[ch], a.shift[ch]],
        _ => [0.0; 3],
    };
    let parts = per_plane(n * c, hw, |p| {
        let (r, ch) = (p * hw..(p + 1) * hw, p % c);
        path.grad_sums::<RELU6>(&dyd[r.clone()], &xd[r], mean[ch], affine(ch))
    });
    let sums = fold_channels(&parts, c, (0.0, 0.0), |(a, b), (u, v)| (a + u, b + v));

    // dx = g·k1 + (x − mean)·k2 + k3 per channel, g = dy through the clamp (g·k1 on the frame).
    let inv_m = 1.0 / (n * stats.region.len()) as f64;
    let mut k = vec![[0f32; 3]; c];
    let mut dgamma = vec![0f32; c];
    let mut dbeta = vec![0f32; c];
    for ch in 0..c {
        let (sdy, sdxm) = sums[ch];
        let (g, is) = (gamma[ch] as f64, stats.inv_std.data()[ch] as f64);
        let dg = sdxm * is;
        dgamma[ch] = dg as f32;
        dbeta[ch] = sdy as f32;
        k[ch] = [
            (g * is) as f32,
            (-g * is * is * dg * inv_m) as f32,
            (-g * is * sdy * inv_m) as f32,
        ];
    }
    let dx = build(xd.len(), hw, |p0, out| {
        let r = p0 * hw..p0 * hw + out.len();
        let planes = out.chunks_mut(hw).zip(dyd[r.clone()].chunks(hw));
        for (i, ((o, g), xp)) in planes.zip(xd[r].chunks(hw)).enumerate() {
            let ch = (p0 + i) % c;
            let (m, map) = (mean[ch], affine(ch));
            path.dx::<RELU6>(o, g, xp, k[ch], m, map);
            let frame_k = [k[ch][0], 0.0, 0.0];
            for j in stats.region.frame() {
                o[j].write(dx_value::<RELU6>(g[j], xp[j], frame_k, m, map));
            }
        }
    });
    (dx, dgamma, dbeta)
}

/// One channel's `x ↦ (x − mean)·scale + shift`, as `[mean, scale, shift]`.
type PlaneMap = [f32; 3];

/// `(v − m)²`, the terms of a plane's M2.
#[inline(always)]
fn sq_dev(v: f32, m: f32) -> f32 {
    (v - m) * (v - m)
}

/// `(v − m)·s + b`. Subtracting the centre before scaling keeps precision when |mean| ≫ std.
#[inline(always)]
fn affine(v: f32, [m, s, b]: PlaneMap) -> f32 {
    (v - m) * s + b
}

/// `clamp(affine(v), lo, hi)`: an output of [`normalize`].
#[inline(always)]
fn normalized(v: f32, map: PlaneMap, (lo, hi): (f32, f32)) -> f32 {
    affine(v, map).clamp(lo, hi)
}

/// `dy` through the clamp when `RELU6`: zero unless `0 < (x − mean)·scale + shift < 6`, the
/// output's value before the clamp, computed as [`normalized`] did. Otherwise `dy` untouched, so
/// NaN and ∞ propagate.
#[inline(always)]
fn through_clamp<const RELU6: bool>(dy: f32, x: f32, map: PlaneMap) -> f32 {
    let pre = affine(x, map);
    if !RELU6 || (0.0 < pre && pre < 6.0) {
        dy
    } else {
        0.0
    }
}

/// `g·(x − m)`, g = dy through the clamp: the terms of dγ's sum.
#[inline(always)]
fn centred_grad<const RELU6: bool>(dy: f32, x: f32, m: f32, map: PlaneMap) -> f32 {
    through_clamp::<RELU6>(dy, x, map) * (x - m)
}

/// One element of the training `dx`: `g·k1 + (x − m)·k2 + k3`, g = dy through the clamp.
#[inline(always)]
fn dx_value<const RELU6: bool>(
    dy: f32,
    x: f32,
    [k1, k2, k3]: [f32; 3],
    m: f32,
    map: PlaneMap,
) -> f32 {
    through_clamp::<RELU6>(dy, x, map) * k1 + (x - m) * k2 + k3
}

/// Which code the per-plane passes run: the AVX2 twins (`avx2.rs`, same bits) when the CPU has
/// AVX2, else the portable loops. [`Path::detect`] is the only way to get the AVX2 one.
#[derive(Clone, Copy, Debug)]
struct Path {
    avx2: bool,
}

impl Path {
    #[cfg(test)]
    const PORTABLE: Path = Path { avx2: false };

    fn detect() -> Path {
        Path {
            avx2: cfg!(target_arch = "x86_64") && crate::simd::avx2_fma(),
        }
    }

    /// Σx over a plane.
    fn sum(self, x: &[f32]) -> f64 {
        #[cfg(target_arch = "x86_64")]
        if self.avx2 {
            // SAFETY: `avx2` is set only when the CPU has AVX2 (`detect`).
            return unsafe { avx2::sum(x) };
        }
        lane_sum(x, |v| v)
    }

    /// Σ(x − m)² over a plane.
    fn sum_sq_dev(self, x: &[f32], m: f32) -> f64 {
        #[cfg(target_arch = "x86_64")]
        if self.avx2 {
            // SAFETY: as in `sum`.
            return unsafe { avx2::sum_sq_dev(x, m) };
        }
        lane_sum(x, |v| sq_dev(v, m))
    }

    /// [`normalized`] over a plane.
    fn normalize(self, out: &mut [MaybeUninit<f32>], x: &[f32], map: PlaneMap, range: (f32, f32)) {
        #[cfg(target_arch = "x86_64")]
        if self.avx2 {
            // SAFETY: as in `sum`.
            return unsafe { avx2::normalize(out, x, map, range) };
        }
        write1(out, x, |v| normalized(v, map, range))
    }

    /// `(Σ g, Σ g·(x − m))` over a plane, g = dy through the clamp; two passes, the second
    /// reading dy and x from cache.
    fn grad_sums<const RELU6: bool>(
        self,
        dy: &[f32],
        x: &[f32],
        m: f32,
        map: PlaneMap,
    ) -> (f64, f64) {
        #[cfg(target_arch = "x86_64")]
        if self.avx2 {
            // SAFETY: as in `sum`.
            return unsafe { avx2::grad_sums::<RELU6>(dy, x, m, map) };
        }
        (
            lane_sum2(dy, x, |dy, x| through_clamp::<RELU6>(dy, x, map)),
            lane_sum2(dy, x, |dy, x| centred_grad::<RELU6>(dy, x, m, map)),
        )
    }

    /// [`dx_value`] over a plane.
    fn dx<const RELU6: bool>(
        self,
        out: &mut [MaybeUninit<f32>],
        dy: &[f32],
        x: &[f32],
        k: [f32; 3],
        m: f32,
        map: PlaneMap,
    ) {
        #[cfg(target_arch = "x86_64")]
        if self.avx2 {
            // SAFETY: as in `sum`.
            return unsafe { avx2::dx::<RELU6>(out, dy, x, k, m, map) };
        }
        write2(out, dy, x, |dy, x| dx_value::<RELU6>(dy, x, k, m, map))
    }
}

/// Eval forward: `y = (x − running_mean)·γ/sqrt(running_var + eps) + β`.
pub fn forward_eval(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    running_mean: &Tensor,
    running_var: &Tensor,
    eps: f32,
) -> Result<Tensor> {
    const OP: &str = "batchnorm::forward_eval";
    let [_, c, hw] = channel_dims(OP, x)?;
    for (name, t) in [
        ("gamma", gamma),
        ("beta", beta),
        ("running_mean", running_mean),
        ("running_var", running_var),
    ] {
        check_vector(OP, name, t, c)?;
    }
    check_eps(OP, eps)?;
    let scale = to_f32(&gamma_inv_std(gamma.data(), running_var.data(), eps));
    let y = normalize(
        x.data(),
        hw,
        running_mean.data(),
        &scale,
        beta.data(),
        out_range(false),
    );
    Tensor::from_vec(x.shape(), y)
}

/// Eval (frozen) backward for the input: the statistics are constants, so
/// `dx = dy·γ/sqrt(running_var + eps)`.
pub fn backward_eval(
    dy: &Tensor,
    gamma: &Tensor,
    running_var: &Tensor,
    eps: f32,
) -> Result<Tensor> {
    const OP: &str = "batchnorm::backward_eval";
    let [_, c, hw] = channel_dims(OP, dy)?;
    check_vector(OP, "gamma", gamma, c)?;
    check_vector(OP, "running_var", running_var, c)?;
    check_eps(OP, eps)?;
    let scale = to_f32(&gamma_inv_std(gamma.data(), running_var.data(), eps));
    let zeros = vec![0.0; c];
    let dx = normalize(dy.data(), hw, &zeros, &scale, &zeros, out_range(false));
    Tensor::from_vec(dy.shape(), dx)
}

/// Eval batch norm as a per-channel affine `(scale, shift)`, `scale = γ/sqrt(var + eps)`,
/// `shift = β − mean·scale`, for [`channel_affine`] or for folding into the preceding conv.
pub fn fold_to_affine(
    gamma: &Tensor,
    beta: &Tensor,
    running_mean: &Tensor,
    running_var: &Tensor,
    eps: f32,
) -> Result<(Tensor, Tensor)> {
    const OP: &str = "batchnorm::fold_to_affine";
    let c = gamma.numel();
    for (name, t) in [
        ("gamma", gamma),
        ("beta", beta),
        ("running_mean", running_mean),
        ("running_var", running_var),
    ] {
        check_vector(OP, name, t, c)?;
    }
    check_eps(OP, eps)?;
    let scale = gamma_inv_std(gamma.data(), running_var.data(), eps);
    let shift: Vec<f64> = beta
        .data()
        .iter()
        .zip(running_mean.data())
        .zip(&scale)
        .map(|((&b, &m), &s)| b as f64 - m as f64 * s)
        .collect();
    Ok((
        Tensor::from_vec(&[c], to_f32(&scale))?,
        Tensor::from_vec(&[c], to_f32(&shift))?,
    ))
}

/// `y = x·scale[c] + shift[c]` over N×C×H×W (or N×C), `scale`/`shift` `[C]`: a folded eval BN in
/// one pass.
pub fn channel_affine(x: &Tensor, scale: &Tensor, shift: &Tensor) -> Result<Tensor> {
    const OP: &str = "batchnorm::channel_affine";
    let [_, c, hw] = channel_dims(OP, x)?;
    check_vector(OP, "scale", scale, c)?;
    check_vector(OP, "shift", shift, c)?;
    let zeros = vec![0.0; c];
    let y = normalize(
        x.data(),
        hw,
        &zeros,
        scale.data(),
        shift.data(),
        out_range(false),
    );
    Tensor::from_vec(x.shape(), y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::assert_close;

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
    }

    /// The ReLU6 mask the backward recomputes from x matches the output's, bounds included:
    /// channel 0 lands exactly on 0 and 6 (no gradient, PyTorch's convention), channel 1 inside.
    #[test]
    fn relu6_mask_at_the_clamp_bounds() {
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
    /// ∞ mixed in. (On a CPU without AVX2 both sides are portable.)
    #[test]
    fn simd_passes_match_portable_bit_for_bit() {
        use crate::testutil::{rand_vec, rng};
        let (simd, portable) = (Path::detect(), Path::PORTABLE);
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
    }

    #[test]
    fn errors_leave_running_stats_untouched() {
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
    }
}
