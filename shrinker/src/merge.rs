//! Stage 3: compile each linearised block into one dense convolution (depthshrinker.md §5).
//!
//! Weight transforms are plain functions: fold every BN into its conv, then compose
//! expand (1×1) → depthwise (k×k) → project (1×1) into one k×k conv with the depthwise stride,
//! and fuse the skip connection as an identity kernel. The merged network runs on the same
//! conv kernels as everything else, so [`verify`] can compare it with the unmerged network.

use depthshrink_autograd::Var;
use depthshrink_nn::Ctx;
use depthshrink_nn::network::{Block, InvertedResidual, MergedBlock, Network, merged_conv};
use depthshrink_tensor::{Result, Tensor, TensorError, gemm};

use crate::error::StageError;
use crate::latency::LatencyTable;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// One dense conv (weight `[cout, cin, k, k]`, bias `[cout]`) equal to a linearised block.
pub fn merge_block(block: &InvertedResidual) -> Result<MergedBlock> {
    let s = block.spec;
    let (wd, bd) = block.dw.folded()?;
    let (w3, b3) = block.project.folded()?;
    let k2 = s.k * s.k;
    // Depthwise taps as an [M, k²] matrix, and the projection as [Cout, M].
    let wd = wd.reshape(&[s.hidden, k2])?;
    let w3 = w3.reshape(&[s.cout, s.hidden])?;
    let (weight, bias) = match &block.expand {
        Some(expand) => {
            let (w1, b1) = expand.folded()?;
            let w1 = w1.reshape(&[s.hidden, s.cin])?;
            // K[:, :, u, v] = W3 · diag(Wd[:, u, v]) · W1, one GEMM per tap.
            let mut kernel = vec![0f32; s.cout * s.cin * k2];
            for tap in 0..k2 {
                let mut scaled = w1.clone();
                for (row, m) in scaled.data_mut().chunks_exact_mut(s.cin).zip(0..) {
                    let d = wd.data()[m * k2 + tap];
                    row.iter_mut().for_each(|v| *v *= d);
                }
                let k_tap = gemm::matmul(&w3, &scaled)?;
                for (oi, v) in k_tap.data().iter().enumerate() {
                    kernel[oi * k2 + tap] = *v;
                }
            }
            // B = b3 + W3·(bd + b1·Σ_taps Wd): the expand bias passes through every tap.
            let inner: Vec<f32> = (0..s.hidden)
                .map(|m| {
                    bd.data()[m]
                        + b1.data()[m] * wd.data()[m * k2..(m + 1) * k2].iter().sum::<f32>()
                })
                .collect();
            (kernel, affine_bias(&w3, &inner, &b3)?)
        }
        None => {
            // Depthwise-separable block: K[o, i, u, v] = W2[o, i]·Wd[i, u, v], B = W2·bd + b2.
            let mut kernel = vec![0f32; s.cout * s.cin * k2];
            for o in 0..s.cout {
                for i in 0..s.cin {
                    let w = w3.data()[o * s.hidden + i];
                    let dst = &mut kernel[(o * s.cin + i) * k2..(o * s.cin + i + 1) * k2];
                    dst.iter_mut()
                        .zip(&wd.data()[i * k2..(i + 1) * k2])
                        .for_each(|(d, &t)| *d = w * t);
                }
            }
            (kernel, affine_bias(&w3, bd.data(), &b3)?)
        }
    };
    let mut weight = weight;
    if s.has_skip() {
        // x + conv(x) = conv'(x) with a 1 at the centre tap of each channel's own kernel.
        let centre = (s.k / 2) * s.k + s.k / 2;
        for o in 0..s.cout {
            weight[(o * s.cin + o) * k2 + centre] += 1.0;
        }
    }
    let weight = Tensor::from_vec(&[s.cout, s.cin, s.k, s.k], weight)?;
    Ok(MergedBlock {
        conv: merged_conv(weight, bias, s.stride),
        relu6: s.expand && block.free_relu6,
    })
}

/// W·v + b for W `[rows, cols]`.
fn affine_bias(w: &Tensor, v: &[f32], b: &Tensor) -> Result<Tensor> {
    let cols = w.shape()[1];
    let out = w
        .data()
        .chunks_exact(cols)
        .zip(b.data())
        .map(|(row, &b)| b + row.iter().zip(v).map(|(a, x)| a * x).sum::<f32>())
        .collect();
    Tensor::from_vec(b.shape(), out)
}

/// Which blocks `depthshrink merge` compiles: every inverted-residual block whose activations
/// are removed; the depthwise-separable block too when `merge_ds` or when a latency table is
/// given (a dense 3×3 usually costs several times dw + pw, so by default it stays unmerged).
/// With `only_if_faster`, a block stays unmerged when the table says merging does not pay.
pub fn blocks_to_merge(
    net: &Network,
    merge_ds: bool,
    only_if_faster: Option<&LatencyTable>,
) -> Vec<bool> {
    let keep = net.variant().keep;
    let pays = |i: usize| {
        only_if_faster.is_none_or(|t| {
            t.blocks
                .iter()
                .find(|b| b.index == i + 1)
                .is_some_and(|b| b.saving_ms() > 0.0)
        })
    };
    net.blocks
        .iter()
        .zip(&keep[1..])
        .enumerate()
        .map(|(i, (b, &k))| {
            let Block::Ir(ir) = b else { return false };
            let kind_ok = ir.expand.is_some() || merge_ds || only_if_faster.is_some();
            !k && kind_ok && pays(i)
        })
        .collect()
}

/// Merges every block with `merge[i]` set. Each must already be linearised (its activations
/// removed, [`Network::apply_keep`]); the result computes the same function in evaluation.
pub fn merge_network(net: &Network, merge: &[bool]) -> Result<Network> {
    if merge.len() != net.blocks.len() {
        return Err(TensorError::argument(
            "merge",
            format!("{} flags for {} blocks", merge.len(), net.blocks.len()),
        ));
    }
    let mut out = net.clone();
    for (i, (block, &m)) in out.blocks.iter_mut().zip(merge).enumerate() {
        if !m {
            continue;
        }
        let merged = match block {
            Block::Ir(b)
                if b.linearised
                    || (b.expand.is_none()
                        && b.act == depthshrink_nn::activation::Act::Identity) =>
            {
                merge_block(b)?
            }
            Block::Ir(_) => {
                return Err(TensorError::argument(
                    "merge",
                    format!(
                        "block {} (activation index {}) still has its activations",
                        i,
                        i + 1
                    ),
                ));
            }
            Block::Merged(_) => continue,
        };
        *block = Block::Merged(merged);
    }
    Ok(out)
}

/// The largest relative logit difference a merge may introduce before it is rejected.
pub const MERGE_TOLERANCE: f32 = 1e-4;

/// Largest differences between two networks' evaluation logits.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Deviation {
    /// max |a − b| over all inputs and logits (`a` the unmerged network's logits, `b` the
    /// merged one's).
    pub max_abs: f32,
    /// max |a − b| / max |a| per input size, the largest over the sizes.
    pub max_rel: f32,
}

/// Runs both networks in evaluation mode on the same random inputs (each of `sizes`, batch 2)
/// and reports the largest difference, borders included.
pub fn verify(
    unmerged: &Network,
    merged: &Network,
    sizes: &[(usize, usize)],
    seed: u64,
) -> Result<Deviation> {
    let (mut a, mut b) = (unmerged.clone(), merged.clone());
    let ctx = Ctx::eval();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut err = Deviation {
        max_abs: 0.0,
        max_rel: 0.0,
    };
    for &(h, w) in sizes {
        let data = (0..2 * 3 * h * w)
            .map(|_| rng.random_range(-2.0f32..2.0))
            .collect();
        let x = Var::constant(Tensor::from_vec(&[2, 3, h, w], data)?);
        let (ya, yb) = (a.forward(&x, &ctx)?, b.forward(&x, &ctx)?);
        let scale = ya
            .value()
            .data()
            .iter()
            .fold(0f32, |m, v| m.max(v.abs()))
            .max(1e-12);
        let diff = ya
            .value()
            .data()
            .iter()
            .zip(yb.value().data())
            .fold(0f32, |m, (p, q)| m.max((p - q).abs()));
        err.max_abs = err.max_abs.max(diff);
        err.max_rel = err.max_rel.max(diff / scale);
    }
    Ok(err)
}

/// A merged network and how it was checked.
pub struct Merged {
    /// The network with the planned blocks merged.
    pub network: Network,
    /// Per block: merged.
    pub plan: Vec<bool>,
    /// Largest difference from the unmerged network on random inputs.
    pub deviation: Deviation,
}

impl Merged {
    /// How many blocks were merged.
    pub fn count(&self) -> usize {
        self.plan.iter().filter(|&&m| m).count()
    }
}

/// Stage 3: merges the blocks `plan` marks (see [`blocks_to_merge`]) and verifies the result
/// against `net` on random inputs at `res`×`res` and at an odd smaller size (borders and odd
/// strides), both as the merged network is stored and as it runs for inference (batch norms
/// folded, weights prepared: dense 3×3 stride-1 convs then run as Winograd F(2×2, 3×3) where
/// that is faster); the deviation is the larger. A deviation over [`MERGE_TOLERANCE`] is an
/// error: a merge that changes the function is never returned.
pub fn merge_and_verify(
    net: &Network,
    plan: Vec<bool>,
    res: usize,
) -> std::result::Result<Merged, StageError> {
    let network = merge_network(net, &plan)?;
    let sizes = [(res, res), (res / 2 + 3, res / 2 + 1)];
    let stored = verify(net, &network, &sizes, 0)?;
    let deployed = verify(net, &network.for_inference()?, &sizes, 0)?;
    let deviation = Deviation {
        max_abs: stored.max_abs.max(deployed.max_abs),
        max_rel: stored.max_rel.max(deployed.max_rel),
    };
    if deviation.max_rel > MERGE_TOLERANCE {
        return Err(StageError::MergeMismatch {
            max_rel: deviation.max_rel,
        });
    }
    Ok(Merged {
        network,
        plan,
        deviation,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use depthshrink_nn::arch::ArchConfig;
    use depthshrink_nn::checkpoint;
    use depthshrink_nn::module::state_dict;
    use depthshrink_nn::{Entry, Module};

    /// Non-trivial BN statistics and affine parameters everywhere, so folding is really tested.
    fn randomise_bn(net: &mut Network, seed: u64) {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut fill = |t: &mut Tensor, lo: f32, hi: f32| {
            t.data_mut()
                .iter_mut()
                .for_each(|v| *v = rng.random_range(lo..hi))
        };
        net.visit("", &mut |name, entry| match entry {
            Entry::Buffer(b) if name.ends_with("running_mean") => fill(b, -0.5, 0.5),
            Entry::Buffer(b) => fill(b, 0.5, 1.5),
            Entry::Param(p) if p.value.ndim() == 1 && name.ends_with("weight") => {
                fill(&mut p.value, 0.5, 1.5)
            }
            Entry::Param(p) if p.value.ndim() == 1 => fill(&mut p.value, -0.3, 0.3),
            Entry::Param(_) => {}
        });
    }

    fn random_input(rng: &mut StdRng, shape: &[usize]) -> Var {
        let n = shape.iter().product();
        Var::constant(
            Tensor::from_vec(
                shape,
                (0..n).map(|_| rng.random_range(-2.0f32..2.0)).collect(),
            )
            .unwrap(),
        )
    }

    fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
        assert_eq!(a.shape(), b.shape());
        let scale = b.data().iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
        a.data()
            .iter()
            .zip(b.data())
            .fold(0f32, |m, (p, q)| m.max((p - q).abs()))
            / scale
    }

    /// Every block of MobileNetV2 (k = 3; the DS block, stride 1 with and without skip,
    /// stride 2, Cin ≠ Cout) and EfficientNet-Lite0 (k = 5, stride 2, skip), on odd and tiny
    /// maps: the merged conv equals the linearised block, borders included.
    #[test]
    fn every_block_kind_merges_exactly() {
        let mut rng = StdRng::seed_from_u64(7);
        for (arch, seed) in [
            (ArchConfig::mobilenet_v2(0.5, 10, true), 1),
            (ArchConfig::efficientnet_lite0(10, false), 2),
        ] {
            let mut net = Network::new(&arch, seed);
            randomise_bn(&mut net, seed);
            net.apply_keep(&vec![false; net.num_acts()]).unwrap();
            let ctx = Ctx::eval();
            for (i, block) in net.blocks.iter_mut().enumerate() {
                let Block::Ir(b) = block else { unreachable!() };
                let spec = b.spec;
                let mut merged = Block::Merged(merge_block(b).unwrap());
                for (h, w) in [(7, 9), (5, 5), (1, 1), (2, 3)] {
                    let x = random_input(&mut rng, &[2, spec.cin, h, w]);
                    let want = block.forward(&x, &ctx).unwrap();
                    let got = merged.forward(&x, &ctx).unwrap();
                    let err = rel_err(got.value(), want.value());
                    assert!(
                        err < 1e-5,
                        "{:?} block {i} ({:?}) on {h}×{w}: relative error {err:e}",
                        arch.family,
                        spec
                    );
                }
            }
        }
    }

    #[test]
    fn merged_networks_match_for_official_keep_lists() {
        // Config D of the paper (depthshrinker.md §7) on a small CIFAR MobileNetV2, and
        // everything removed.
        let d = [0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1];
        let keeps: [Vec<bool>; 2] = [d.iter().map(|&b| b == 1).collect(), vec![false; 19]];
        // With the one free ReLU6 after each linearised block, and without it (the ablation).
        for (keep, free_relu6) in keeps.iter().flat_map(|k| [(k, true), (k, false)]) {
            let mut net = Network::new(&ArchConfig::mobilenet_v2(0.35, 10, true), 3);
            randomise_bn(&mut net, 3);
            net.apply_keep(keep).unwrap();
            net.set_free_relu6(free_relu6);
            let merge: Vec<bool> = keep[1..keep.len() - 1].iter().map(|k| !k).collect();
            let merged = merge_network(&net, &merge).unwrap();
            assert_eq!(merged.variant().merged, merge);
            assert_eq!(*merged.variant().keep, keep[..]);
            assert_eq!(merged.variant().free_relu6, free_relu6);
            let err = verify(&net, &merged, &[(32, 32), (13, 17)], 0).unwrap();
            // Per block the merge is exact to 1e-5; over a whole network f32 rounding adds up.
            assert!(err.max_rel < 1e-4, "{err:?}");
            // The merged file rebuilds the same network, free ReLU6 or not.
            let path = std::env::temp_dir().join(format!(
                "ds-merged-{free_relu6}-{}.safetensors",
                std::process::id()
            ));
            let mut m = merged.clone();
            checkpoint::save(&path, &state_dict(&mut m), &m.metadata()).unwrap();
            let back = Network::from_checkpoint(&checkpoint::load(&path).unwrap(), None).unwrap();
            std::fs::remove_file(path).unwrap();
            assert_eq!(back.variant(), merged.variant());
            assert_eq!(verify(&merged, &back, &[(13, 17)], 1).unwrap().max_abs, 0.0);
        }
        // The flag matters: the same weights without the free ReLU6 compute something else.
        let mut with = Network::new(&ArchConfig::mobilenet_v2(0.35, 10, true), 3);
        randomise_bn(&mut with, 3);
        with.apply_keep(&keeps[1]).unwrap();
        let mut without = with.clone();
        without.set_free_relu6(false);
        assert!(verify(&with, &without, &[(16, 16)], 2).unwrap().max_abs > 1e-3);
    }

    /// What speed-ups are measured against: the same weights with every activation back and
    /// ordinary padding computes exactly what the network computed before any was removed.
    #[test]
    fn the_original_network_is_the_one_before_activations_were_removed() {
        let arch = ArchConfig::mobilenet_v2(0.35, 10, true);
        let mut before = Network::new(&arch, 5);
        randomise_bn(&mut before, 5);
        let mut net = before.clone();
        let mut keep = vec![false; net.num_acts()];
        keep[4] = true;
        net.apply_keep(&keep).unwrap();
        let mut original = net.original().unwrap();
        assert_eq!(original.variant(), before.variant());
        let x = random_input(&mut StdRng::seed_from_u64(1), &[2, 3, 13, 11]);
        let ctx = Ctx::eval();
        let (want, got) = (
            before.forward(&x, &ctx).unwrap(),
            original.forward(&x, &ctx).unwrap(),
        );
        assert_eq!(got.value().data(), want.value().data());
        // Removing activations changed the function, so the comparison above is not vacuous.
        let removed = net.forward(&x, &ctx).unwrap();
        assert!(rel_err(removed.value(), want.value()) > 1e-3);
        let merge: Vec<bool> = keep[1..keep.len() - 1].iter().map(|k| !k).collect();
        let merged = merge_network(&net, &merge).unwrap();
        let err = merged.original().map(drop).unwrap_err().to_string();
        assert!(err.contains("merged network"), "{err}");
    }

    #[test]
    fn blocks_with_activations_refuse_to_merge() {
        let net = Network::new(&ArchConfig::mobilenet_v2(0.35, 10, true), 0);
        let mut merge = vec![false; net.blocks.len()];
        merge[3] = true;
        let Err(err) = merge_network(&net, &merge) else {
            panic!("merged a block with activations")
        };
        assert!(
            err.to_string()
                .contains("block 3 (activation index 4) still has its activations"),
            "{err}"
        );
    }

    #[test]
    fn which_blocks_merge_follows_the_keep_list_and_the_latency_table() {
        let arch = ArchConfig::mobilenet_v2(0.35, 10, true);
        let mut net = Network::new(&arch, 0);
        let mut keep = vec![true; net.num_acts()];
        for i in [1, 2, 3, 5] {
            keep[i] = false; // the DS block and IR blocks 1, 2, 4
        }
        net.apply_keep(&keep).unwrap();
        let indices = |m: Vec<bool>| -> Vec<usize> {
            m.iter()
                .enumerate()
                .filter(|(_, m)| **m)
                .map(|(i, _)| i + 1)
                .collect()
        };
        assert_eq!(indices(blocks_to_merge(&net, false, None)), [2, 3, 5]);
        assert_eq!(indices(blocks_to_merge(&net, true, None)), [1, 2, 3, 5]);
        // A table where merging pays for indices 1 and 3 only.
        let table = LatencyTable::made_up(arch, 32, |index| {
            (1.0, if index == 1 || index == 3 { 0.5 } else { 2.0 })
        });
        assert_eq!(indices(blocks_to_merge(&net, false, Some(&table))), [1, 3]);
    }
}
