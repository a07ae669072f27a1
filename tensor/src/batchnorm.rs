//! Batch normalisation over N×C×H×W (or N×C) with per-channel statistics, PyTorch semantics:
//! training normalises with the biased batch variance and folds the unbiased one into the running
//! variance; eval normalises with the running statistics.
//!
//! Statistics are computed per H×W plane (two passes over a plane that sits in L1/L2, so x is
//! read from memory once) and merged per channel in f64 with the exact between/within-plane
//! decomposition — numerically stable even when |mean| ≫ std. All passes are parallel over planes,
//! and run the AVX2 twins of the plane loops at the AVX2 level and above (read once per call,
//! [`crate::simd::level`]).

use std::mem::MaybeUninit;

use crate::elementwise::{build, write1, write2};
use crate::reduce::{channel_dims, fold_channels, lane_sum, lane_sum2, per_plane};
use crate::simd::{self, Level};
use crate::{Result, Tensor, TensorError};

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(test)]
mod tests;

/// `eps` inside the square root and the running-statistics `momentum`
/// (`running = (1 − momentum)·running + momentum·batch`). Defaults are PyTorch's: 1e-5 and 0.1.
/// `relu6` clamps the output to [0, 6] in the normalising pass: BN followed by ReLU6 in one
/// pass over memory instead of two, and without keeping the BN output alive for the backward.
/// `border` > 0 takes the batch statistics from each H×W plane without a border that wide
/// (every element is still normalised): the expand BN of a pad-first block sees its input
/// zero-padded, and its statistics should be those of the unpadded map it was trained on.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BnOptions {
    /// Added to the variance inside the square root.
    pub eps: f32,
    /// Weight of the batch statistics in the running ones.
    pub momentum: f32,
    /// Clamp the output to [0, 6] in the same pass.
    pub relu6: bool,
    /// Width of the frame left out of the batch statistics (0: none).
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
    /// The batch mean per channel, `[C]`.
    pub mean: Tensor,
    /// `1/sqrt(biased_var + eps)` per channel, `[C]`.
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
    /// Gradient of the input, shaped like it.
    pub dx: Tensor,
    /// Gradient of the scale γ, `[C]`.
    pub dgamma: Tensor,
    /// Gradient of the shift β, `[C]`.
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
/// (channel = plane mod C), on `path`. Subtracting the centre before scaling keeps precision when
/// |mean| ≫ std.
fn normalize(
    path: Path,
    x: &[f32],
    hw: usize,
    [center, scale, shift]: [&[f32]; 3],
    (lo, hi): (f32, f32),
) -> Vec<f32> {
    let c = scale.len();
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
    let (xd, path) = (x.data(), Path::at(simd::level()));
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
    let map = [&mean[..], &scale, beta.data()];
    let y = normalize(path, xd, hw, map, out_range(opts.relu6));
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
    let (path, dims) = (Path::at(simd::level()), [n, c, hw]);
    let (dx, dgamma, dbeta) = match &stats.clamp {
        Some(clamp) => train_grads::<true>(path, (dyd, xd), gamma.data(), stats, Some(clamp), dims),
        None => train_grads::<false>(path, (dyd, xd), gamma.data(), stats, None, dims),
    };
    Ok(BnGrads {
        dx: Tensor::from_vec(x.shape(), dx)?,
        dgamma: Tensor::from_vec(&[c], dgamma)?,
        dbeta: Tensor::from_vec(&[c], dbeta)?,
    })
}

/// The body of [`backward_train`] on checked slices `(dy, x)`, on `path`: `(dx, dγ, dβ)`;
/// `clamp` is the stats' own (`Some` exactly when `RELU6`), so it holds one value per channel.
fn train_grads<const RELU6: bool>(
    path: Path,
    (dyd, xd): (&[f32], &[f32]),
    gamma: &[f32],
    stats: &BatchStats,
    clamp: Option<&Affine>,
    [n, c, hw]: [usize; 3],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let mean = stats.mean.data();
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

/// Which code the per-plane passes run: the AVX2 twins (`avx2.rs`, same bits) at the AVX2 level
/// and above, else the portable loops. [`Path::at`] is the only way to get the AVX2 one.
#[derive(Clone, Copy, Debug)]
struct Path {
    avx2: bool,
}

impl Path {
    #[cfg(test)]
    const PORTABLE: Path = Path { avx2: false };

    /// The path of `level`, a level from [`simd::level`] (so at most what this CPU has).
    fn at(level: Level) -> Path {
        debug_assert!(level <= simd::host_level(), "{level} beyond this CPU");
        Path {
            avx2: cfg!(target_arch = "x86_64") && level >= Level::Avx2,
        }
    }

    /// Σx over a plane.
    fn sum(self, x: &[f32]) -> f64 {
        #[cfg(target_arch = "x86_64")]
        if self.avx2 {
            // SAFETY: `avx2` is set only when the CPU has AVX2 (`at`).
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
    let map = [running_mean.data(), &scale, beta.data()];
    let y = normalize(Path::at(simd::level()), x.data(), hw, map, out_range(false));
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
    let path = Path::at(simd::level());
    let dx = normalize(
        path,
        dy.data(),
        hw,
        [&zeros, &scale, &zeros],
        out_range(false),
    );
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
    let map = [&zeros[..], scale.data(), shift.data()];
    let y = normalize(Path::at(simd::level()), x.data(), hw, map, out_range(false));
    Tensor::from_vec(x.shape(), y)
}
