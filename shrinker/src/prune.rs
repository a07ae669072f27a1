//! Channel pruning, the baseline the paper compares DepthShrinker against (MetaPruning, AMC)
//! at this project's scale: every expanding block keeps a uniform fraction of its hidden
//! channels, those whose expand filters have the largest L1 norm (Li et al., 2017), and the
//! network is then finetuned like any other.

use depthshrink_nn::Param;
use depthshrink_nn::arch::pruned_width;
use depthshrink_nn::layers::ConvBn;
use depthshrink_nn::network::{Block, Network};
use depthshrink_tensor::{Result, Tensor, TensorError};

/// `net` without the residual blocks at `positions` (0-based block positions, each a block
/// whose input and output shapes agree, so the skip alone carries the signal through): the
/// layer-pruning baseline. Refuses a network already block-pruned, a block without a skip, and
/// a merged or searching network.
pub fn prune_blocks(net: &Network, positions: &[usize]) -> Result<Network> {
    let bad = |why: String| Err(TensorError::argument("prune_blocks", why));
    if !net.arch.dropped_blocks.is_empty() {
        return bad("the network is already block-pruned".into());
    }
    if net.search.is_some() {
        return bad("the network is being searched".into());
    }
    let mut positions = positions.to_vec();
    positions.sort_unstable();
    positions.dedup();
    if positions.is_empty() {
        return bad("no block to drop".into());
    }
    let droppable: Vec<usize> = (0..net.blocks.len())
        .filter(|&i| matches!(&net.blocks[i], Block::Ir(ir) if ir.spec.has_skip()))
        .collect();
    if let Some(p) = positions.iter().find(|p| !droppable.contains(p)) {
        let list: Vec<String> = droppable.iter().map(usize::to_string).collect();
        return bad(format!(
            "block {p} has no residual connection (or is merged) and cannot be dropped; the residual blocks are {}",
            list.join(",")
        ));
    }
    let mut out = net.clone();
    for &p in positions.iter().rev() {
        out.blocks.remove(p);
    }
    out.arch.dropped_blocks = positions;
    out.spec = out.arch.spec();
    Ok(out)
}

/// `net` with each expanding block's hidden width cut to `ratio` of it (rounded, at least one
/// channel): the expand conv and its BN keep the rows of the kept channels, the depthwise conv
/// and its BN the same channels, the project conv the same input columns. The kept channels'
/// contribution is unchanged; the dropped ones' is gone. Refuses a network already pruned,
/// merged, linearised or searching (prune first, then remove activations).
pub fn prune_channels(net: &Network, ratio: f32) -> Result<Network> {
    let bad = |why: String| Err(TensorError::argument("prune_channels", why));
    if !(ratio > 0.0 && ratio <= 1.0) {
        return bad(format!("the ratio must be in (0, 1], got {ratio}"));
    }
    if net.arch.hidden_ratio.is_some() {
        return bad("the network is already channel-pruned".into());
    }
    if net.search.is_some() {
        return bad("the network is being searched".into());
    }
    let mut out = net.clone();
    out.arch.hidden_ratio = Some(ratio);
    out.spec = out.arch.spec();
    for (i, block) in out.blocks.iter_mut().enumerate() {
        let Block::Ir(ir) = block else {
            return bad(format!("block {i} is merged: prune before merging"));
        };
        if ir.linearised {
            return bad(format!(
                "block {i} has its activations removed: prune before removing them"
            ));
        }
        let Some(expand) = &mut ir.expand else {
            continue;
        };
        let hidden = expand.conv.weight.value.shape()[0];
        let keep = strongest(&expand.conv.weight.value, pruned_width(hidden, ratio))?;
        keep_outputs(expand, &keep)?;
        keep_outputs(&mut ir.dw, &keep)?;
        ir.dw.conv.params.groups = keep.len();
        let project = &mut ir.project.conv.weight;
        project.value = select(&project.value, 1, &keep)?;
        ir.spec = out.spec.blocks[i];
    }
    Ok(out)
}

/// The `n` output channels of `weight` (`[C, …]`) with the largest L1 norm, in channel order.
fn strongest(weight: &Tensor, n: usize) -> Result<Vec<usize>> {
    let rows = weight.shape()[0];
    let per_row = weight.data().len() / rows.max(1);
    let mut norms: Vec<(usize, f32)> = weight
        .data()
        .chunks_exact(per_row)
        .map(|row| row.iter().map(|v| v.abs()).sum())
        .enumerate()
        .collect();
    // Largest first; ties to the lower index, so the choice is deterministic.
    norms.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut keep: Vec<usize> = norms.into_iter().take(n).map(|(i, _)| i).collect();
    keep.sort_unstable();
    Ok(keep)
}

/// Keeps output channels `keep` of a conv and its BN.
fn keep_outputs(layer: &mut ConvBn, keep: &[usize]) -> Result<()> {
    let param =
        |p: &Param| -> Result<Param> { Ok(Param::new(select(&p.value, 0, keep)?, p.decay)) };
    layer.conv.weight = param(&layer.conv.weight)?;
    if let Some(b) = &layer.conv.bias {
        layer.conv.bias = Some(param(b)?);
    }
    layer.bn.weight = param(&layer.bn.weight)?;
    layer.bn.bias = param(&layer.bn.bias)?;
    layer.bn.running_mean = select(&layer.bn.running_mean, 0, keep)?;
    layer.bn.running_var = select(&layer.bn.running_var, 0, keep)?;
    Ok(())
}

/// The entries `keep` of `t` along `axis` (0 or 1).
fn select(t: &Tensor, axis: usize, keep: &[usize]) -> Result<Tensor> {
    let shape = t.shape();
    let outer: usize = shape[..axis].iter().product();
    let inner: usize = shape[axis + 1..].iter().product();
    let len = shape[axis];
    if let Some(&i) = keep.iter().find(|&&i| i >= len) {
        return Err(TensorError::argument(
            "prune_channels",
            format!("channel {i} of {len}"),
        ));
    }
    let d = t.data();
    let mut data = Vec::with_capacity(outer * keep.len() * inner);
    for o in 0..outer {
        for &k in keep {
            let start = (o * len + k) * inner;
            data.extend_from_slice(&d[start..start + inner]);
        }
    }
    let mut new_shape = shape.to_vec();
    new_shape[axis] = keep.len();
    Tensor::from_vec(&new_shape, data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use depthshrink_autograd::Var;
    use depthshrink_nn::Ctx;
    use depthshrink_nn::arch::ArchConfig;
    use depthshrink_nn::checkpoint;
    use depthshrink_nn::module::state_dict;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    fn input(seed: u64) -> Var {
        let mut rng = StdRng::seed_from_u64(seed);
        let data = (0..2 * 3 * 16 * 16)
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        Var::constant(Tensor::from_vec(&[2, 3, 16, 16], data).unwrap())
    }

    #[test]
    fn pruned_shapes_follow_the_architecture_and_survive_a_checkpoint() {
        let net = Network::new(&ArchConfig::mobilenet_v2(0.5, 10, true), 3);
        let pruned = prune_channels(&net, 0.5).unwrap();
        assert_eq!(pruned.arch.hidden_ratio, Some(0.5));
        let fresh = Network::new(&pruned.arch, 0);
        let (mut a, mut b) = (pruned.clone(), fresh);
        let shapes = |n: &mut Network| -> Vec<(String, Vec<usize>)> {
            state_dict(n)
                .into_iter()
                .map(|(k, t)| (k, t.shape().to_vec()))
                .collect()
        };
        assert_eq!(shapes(&mut a), shapes(&mut b));
        // Block 1 (IR1, 16 → 96 → 24 at w0.5: 8·6 = 48 hidden) keeps 24.
        let Block::Ir(ir) = &pruned.blocks[1] else {
            panic!()
        };
        assert_eq!(ir.dw.conv.weight.value.shape(), [24, 1, 3, 3]);
        assert_eq!(ir.project.conv.weight.value.shape()[1], 24);
        let path =
            std::env::temp_dir().join(format!("ds-prune-{}.safetensors", std::process::id()));
        checkpoint::save(&path, &state_dict(&mut a), &a.metadata()).unwrap();
        let back = Network::from_checkpoint(&checkpoint::load(&path).unwrap(), None).unwrap();
        assert_eq!(back.arch, pruned.arch);
        std::fs::remove_file(path).unwrap();
        // Fewer multiply-adds; the ratio 1 keeps everything.
        let full = net.arch.spec().flops(32, &[true; 19]).macs;
        assert!(pruned.arch.spec().flops(32, &[true; 19]).macs < full);
        assert_eq!(
            prune_channels(&net, 1.0)
                .unwrap()
                .spec
                .flops(32, &[true; 19])
                .macs,
            full
        );
        assert!(prune_channels(&pruned, 0.5).is_err());
        assert!(prune_channels(&net, 0.0).is_err());
    }

    /// The pruned network computes what the original computes once the dropped channels'
    /// contribution is removed (their project columns zeroed).
    #[test]
    fn the_pruned_network_equals_the_original_without_the_dropped_channels() {
        let net = Network::new(&ArchConfig::mobilenet_v2(0.5, 10, false), 5);
        let ratio = 0.4;
        let pruned = prune_channels(&net, ratio).unwrap();
        let mut reference = net.clone();
        for block in &mut reference.blocks {
            let Block::Ir(ir) = block else { panic!() };
            let Some(expand) = &ir.expand else { continue };
            let hidden = expand.conv.weight.value.shape()[0];
            let keep = strongest(&expand.conv.weight.value, pruned_width(hidden, ratio)).unwrap();
            let w = &mut ir.project.conv.weight.value;
            let (cout, hid) = (w.shape()[0], w.shape()[1]);
            let data = w.data_mut();
            for o in 0..cout {
                for h in (0..hid).filter(|h| !keep.contains(h)) {
                    data[o * hid + h] = 0.0;
                }
            }
        }
        let ctx = Ctx::eval();
        let x = input(1);
        let mut p = pruned.for_inference().unwrap();
        let mut r = reference.for_inference().unwrap();
        let (yp, yr) = (p.forward(&x, &ctx).unwrap(), r.forward(&x, &ctx).unwrap());
        let scale = yr.value().data().iter().fold(0f32, |m, v| m.max(v.abs()));
        let diff = yp
            .value()
            .data()
            .iter()
            .zip(yr.value().data())
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(diff <= 1e-5 * scale.max(1.0), "diff {diff}, scale {scale}");
        // And it is not the unpruned function (the test can fail).
        let mut o = net.for_inference().unwrap();
        let yo = o.forward(&x, &ctx).unwrap();
        let moved = yo
            .value()
            .data()
            .iter()
            .zip(yp.value().data())
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(moved > 1e-3 * scale, "pruning changed nothing");
    }

    /// Dropping residual blocks: shapes rebuild from the architecture, the function is the
    /// original's with those blocks' residual branches zeroed.
    #[test]
    fn a_block_pruned_network_skips_the_dropped_blocks() {
        let net = Network::new(&ArchConfig::mobilenet_v2(0.5, 10, true), 7);
        let pruned = prune_blocks(&net, &[4, 2]).unwrap();
        assert_eq!(pruned.arch.dropped_blocks, [2, 4]);
        assert_eq!(pruned.blocks.len(), net.blocks.len() - 2);
        assert_eq!(pruned.num_acts(), 17);
        let (mut a, mut b) = (pruned.clone(), Network::new(&pruned.arch, 0));
        let shapes = |n: &mut Network| -> Vec<Vec<usize>> {
            state_dict(n)
                .into_iter()
                .map(|(_, t)| t.shape().to_vec())
                .collect()
        };
        assert_eq!(shapes(&mut a), shapes(&mut b));
        let mut reference = net.clone();
        for p in [2, 4] {
            let Block::Ir(ir) = &mut reference.blocks[p] else {
                panic!()
            };
            // The project BN's γ and β at 0: the residual branch adds nothing.
            ir.project.bn.weight.value.data_mut().fill(0.0);
            ir.project.bn.bias.value.data_mut().fill(0.0);
        }
        let (ctx, x) = (Ctx::eval(), input(2));
        let yp = pruned.for_inference().unwrap().forward(&x, &ctx).unwrap();
        let yr = reference
            .for_inference()
            .unwrap()
            .forward(&x, &ctx)
            .unwrap();
        let diff = yp
            .value()
            .data()
            .iter()
            .zip(yr.value().data())
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(diff < 1e-4, "{diff}");
        let err = prune_blocks(&net, &[1]).err().unwrap().to_string();
        assert!(err.contains("block 1 has no residual connection"), "{err}");
        assert!(prune_blocks(&pruned, &[5]).is_err());
    }

    #[test]
    fn the_strongest_channels_are_kept_in_order() {
        let w = Tensor::from_vec(&[4, 2], vec![0.1, 0.1, -3.0, 0.0, 1.0, 1.0, 0.0, 0.5]).unwrap();
        assert_eq!(strongest(&w, 2).unwrap(), [1, 2]);
        assert_eq!(strongest(&w, 4).unwrap(), [0, 1, 2, 3]);
    }
}
