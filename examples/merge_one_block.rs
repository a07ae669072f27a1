//! One inverted-residual block merged into one dense convolution, step by step.
//!
//! What it teaches: why a MobileNetV2 block whose two ReLU6s are removed is a single k×k conv,
//! and how the library computes that conv (`shrinker::merge::merge_block`, depthshrinker.md §5):
//!
//! 1. build a block with non-trivial batch-norm statistics and remove its activations
//!    (pad-first, as `Network::apply_keep` does);
//! 2. fold each batch norm into its conv;
//! 3. compose expand 1×1 → depthwise k×k → project 1×1 into one dense k×k kernel and bias;
//! 4. fuse the skip connection (a 1 at the centre tap of each channel's own kernel);
//! 5. run the unmerged block and the merged conv on the same input and compare;
//! 6. see why pad-first matters (ordinary padding differs on the border);
//! 7. count the multiply-adds before and after.
//!
//! Steps 2-4 are computed here with public tensor ops and checked against what the library's
//! `merge_block` returns, so the example explains the library's merge rather than a copy of it.
//!
//! Run it with:
//!
//! ```sh
//! cargo run --release --example merge_one_block
//! ```

use depthshrink::autograd::{Var, ops};
use depthshrink::nn::Ctx;
use depthshrink::nn::arch::ArchConfig;
use depthshrink::nn::layers::{BatchNorm2d, Conv2d, ConvBn};
use depthshrink::nn::network::{Block, InvertedResidual};
use depthshrink::shrinker::merge::merge_block;
use depthshrink::tensor::conv::{ConvGeom, conv2d, conv2d_act};
use depthshrink::tensor::elementwise::sub;
use depthshrink::tensor::reduce::max_abs;
use depthshrink::tensor::{Tensor, gemm};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// The block's input side: this block runs on 32×32 maps in the CIFAR-layout network.
const SIDE: usize = 32;

fn main() -> Result<()> {
    let mut rng = StdRng::seed_from_u64(2022);

    // ── Step 1: the block ────────────────────────────────────────────────────────────────
    // Block 2 of MobileNetV2 w0.5 (CIFAR layout), activation index 3: stride 1 and Cin = Cout,
    // so it has a skip connection and every step of the merge shows up.
    let arch = ArchConfig::mobilenet_v2(0.5, 10, true);
    let block_index = 2;
    let spec = arch.spec().blocks[block_index];
    let (cin, hidden, cout, k) = (spec.cin, spec.hidden, spec.cout, spec.k);
    println!("Step 1. One inverted-residual block of {arch} (block {block_index}):");
    println!(
        "  expand 1×1 {cin}→{hidden} → BN → ReLU6 → depthwise {k}×{k} stride {} → BN → ReLU6 → \
         project 1×1 {hidden}→{cout} → BN{}",
        spec.stride,
        if spec.has_skip() { " (+ skip)" } else { "" }
    );
    // The three conv → BN pairs (expand, depthwise, project), as the library builds them.
    let mut block = InvertedResidual::new(&mut rng, spec);
    // A fresh BN is the identity map (γ = 1, β = 0, μ = 0, σ² = 1), which would make folding
    // trivially right; give every BN the kind of statistics a trained network has.
    for conv_bn in [
        block.expand.as_mut().expect("built above"),
        &mut block.dw,
        &mut block.project,
    ] {
        randomise(&mut conv_bn.bn, &mut rng);
    }
    // Remove both activations exactly as `Network::apply_keep` does for a removed IR block: both
    // sites become the identity, and the block switches to pad-first evaluation (pad the input,
    // expand on the padded map, depthwise without padding) with one ReLU6 after the skip add.
    block.set_kept(false);
    println!("  activations removed: the block is now linear up to one ReLU6 at its output\n");

    // ── Step 2: fold each BN into its conv ───────────────────────────────────────────────
    // In evaluation a BN is a per-channel affine map y = x·γ/σ + (β − γ·μ/σ), σ = √(var + eps),
    // so it can be absorbed into the conv before it: W' = W·γ/σ (per output channel),
    // b' = β − γ·μ/σ. `ConvBn::folded` returns (W', b'); here it is checked against the
    // formula and, on a random input, against conv-then-BN.
    println!("Step 2. Fold each batch norm into its conv: W' = W·γ/σ, b' = β − γ·μ/σ");
    let ctx = Ctx::eval();
    let expand = block
        .expand
        .as_mut()
        .expect("an IR block has an expand conv");
    let (w1, b1) = check_fold("expand", expand, cin, &mut rng)?;
    let (wd, bd) = check_fold("depthwise", &mut block.dw, hidden, &mut rng)?;
    let (w3, b3) = check_fold("project", &mut block.project, hidden, &mut rng)?;
    println!();

    // ── Step 3: compose the three convs into one dense k×k conv ──────────────────────────
    // As matrices: W1 [hidden, cin], the depthwise taps Wd [hidden, k²], W3 [cout, hidden].
    // Without activations in between, tap (u, v) of the merged kernel is the product
    //   K[:, :, u, v] = W3 · diag(Wd[:, u, v]) · W1            ([cout, cin])
    // i.e. K[o, i, u, v] = Σ_m W3[o, m] · Wd[m, u, v] · W1[m, i].
    let taps = k * k;
    let w1 = w1.reshape(&[hidden, cin])?;
    let wd = wd.reshape(&[hidden, taps])?;
    let w3 = w3.reshape(&[cout, hidden])?;
    println!("Step 3. Compose expand → depthwise → project into one {k}×{k} kernel:");
    println!(
        "  W3 {:?} · diag(Wd[:, tap]) · W1 {:?} = one {cout}×{cin} matrix per tap, {taps} taps",
        w3.shape(),
        w1.shape()
    );
    let mut kernel = vec![0f32; cout * cin * taps];
    for tap in 0..taps {
        // diag(Wd[:, tap]) · W1 scales row m of W1 by channel m's depthwise weight at this tap.
        let mut scaled = w1.clone();
        for (row, channel_taps) in scaled
            .data_mut()
            .chunks_exact_mut(cin)
            .zip(wd.data().chunks_exact(taps))
        {
            row.iter_mut().for_each(|w| *w *= channel_taps[tap]);
        }
        let kernel_tap = gemm::matmul(&w3, &scaled)?;
        // Scatter the [cout, cin] tap into the [cout, cin, k, k] layout convs use.
        for (oi, &value) in kernel_tap.data().iter().enumerate() {
            kernel[oi * taps + tap] = value;
        }
    }
    // The bias. The expand bias b1 is a constant map; the depthwise conv multiplies it by the
    // sum of its taps (pad-first keeps this true at the border too: there the depthwise conv
    // reads expand(0) = b1, not a zero). So B = b3 + W3 · (bd + b1 · Σ_taps Wd).
    let inner: Vec<f32> = (0..hidden)
        .map(|m| {
            bd.data()[m] + b1.data()[m] * wd.data()[m * taps..(m + 1) * taps].iter().sum::<f32>()
        })
        .collect();
    let inner = Tensor::from_vec(&[hidden, 1], inner)?;
    let projected = gemm::matmul(&w3, &inner)?;
    let bias: Vec<f32> = projected
        .data()
        .iter()
        .zip(b3.data())
        .map(|(p, b)| p + b)
        .collect();
    let bias = Tensor::from_vec(&[cout], bias)?;
    println!("  merged kernel K [{cout}, {cin}, {k}, {k}], bias B [{cout}]\n");

    // ── Step 4: fuse the skip connection ─────────────────────────────────────────────────
    // x + conv(x) = conv'(x) where conv' adds the identity kernel: a 1 at the centre tap of
    // output channel o's kernel for input channel o. Then the block is ReLU6(conv'(x)).
    println!("Step 4. Fuse the skip: K[o, o, {}, {}] += 1", k / 2, k / 2);
    if spec.has_skip() {
        let centre = (k / 2) * k + k / 2;
        for o in 0..cout {
            kernel[(o * cin + o) * taps + centre] += 1.0;
        }
    }
    let kernel = Tensor::from_vec(&[cout, cin, k, k], kernel)?;

    // The library's merge, for comparison with the steps above.
    let merged = merge_block(&block)?;
    let library_bias = merged.conv.bias.as_ref().expect("a merged conv has a bias");
    println!(
        "  shrinker::merge::merge_block gives the same conv: max |ΔK| = {:.1e}, max |ΔB| = {:.1e}\n",
        max_abs(&sub(&merged.conv.weight.value, &kernel)?),
        max_abs(&sub(&library_bias.value, &bias)?),
    );

    // ── Step 5: run both on the same input ───────────────────────────────────────────────
    let x = random_input(&mut rng, &[1, cin, SIDE, SIDE])?;
    let unmerged_out = Block::Ir(block.clone()).forward(&x, &ctx)?;
    let merged_conv = merged.conv.clone();
    let merged_out = Block::Merged(merged).forward(&x, &ctx)?;
    // The kernel built by hand, run on the same conv kernel every layer of the library uses.
    let by_hand = conv2d_act(x.value(), &kernel, Some(&bias), merged_conv.params, true)?;
    println!("Step 5. Run both on one random {cin}×{SIDE}×{SIDE} input (evaluation mode):");
    let (abs, rel) = deviation(merged_out.value(), unmerged_out.value())?;
    println!(
        "  merged block (library) vs unmerged block: max abs error {abs:.2e}, relative {rel:.2e}"
    );
    let (abs, rel) = deviation(&by_hand, unmerged_out.value())?;
    println!(
        "  merged conv (by hand)  vs unmerged block: max abs error {abs:.2e}, relative {rel:.2e}"
    );
    println!("  (float rounding only: the merged conv computes the same function)\n");

    // ── Step 6: why pad-first ────────────────────────────────────────────────────────────
    // With ordinary padding the depthwise conv zero-pads the expand output, whereas the merged
    // conv zero-pads the input, i.e. sees expand(0) = b1 at the border. The two then agree in
    // the interior and differ on a k/2-wide frame.
    let mut ordinary = block.clone();
    ordinary.linearised = false;
    let ordinary_out = ops::relu6(&Block::Ir(ordinary).forward(&x, &ctx)?)?;
    let (border, interior) = border_and_interior(merged_out.value(), ordinary_out.value(), k / 2);
    println!(
        "Step 6. Why pad-first: the same linear block with ordinary padding vs the merged conv:"
    );
    println!(
        "  max abs error on the {}-pixel border {border:.2e}, in the interior {interior:.2e}\n",
        k / 2
    );

    // ── Step 7: multiply-adds ────────────────────────────────────────────────────────────
    // Per conv, from its geometry (`ConvGeom::macs`), for one image, with the original padding.
    let expand = block
        .expand
        .as_ref()
        .expect("an IR block has an expand conv");
    let (expand_macs, _) = conv_cost(&expand.conv, SIDE)?;
    let (dw_macs, out_side) = conv_cost(&block.dw.conv, SIDE)?;
    let (project_macs, _) = conv_cost(&block.project.conv, out_side)?;
    let before = expand_macs + dw_macs + project_macs;
    let (after, _) = conv_cost(&merged_conv, SIDE)?;
    println!("Step 7. Multiply-adds for one {SIDE}×{SIDE} image:");
    println!("  expand 1×1      {expand_macs:>10}");
    println!("  depthwise {k}×{k}   {dw_macs:>10}");
    println!("  project 1×1     {project_macs:>10}");
    println!(
        "  block total     {before:>10}  →  merged {k}×{k} conv {after:>10}  ({:.2}× fewer)",
        before as f64 / after as f64
    );
    // The same saving from the network-level count in nn::arch, which costs a keep list
    // without building a network. (The CIFAR layout keeps a 32×32 input at 32×32 up to this
    // block, so the network's input side is the block's.)
    let net = arch.spec();
    let keep_all = vec![true; net.num_acts()];
    let mut keep_without_block = keep_all.clone();
    keep_without_block[block_index + 1] = false;
    let (net_before, net_after) = (
        net.flops(SIDE, &keep_all).macs,
        net.flops(SIDE, &keep_without_block).macs,
    );
    println!(
        "  whole network (NetSpec::flops): {:.2} → {:.2} M multiply-adds, saving {} = {before} − {after}",
        net_before as f64 / 1e6,
        net_after as f64 / 1e6,
        net_before - net_after
    );
    assert_eq!(
        net_before - net_after,
        before - after,
        "nn::arch counts this block as above"
    );
    Ok(())
}

/// Gives a BN the statistics and affine parameters of a trained one (γ, var around 1, μ, β
/// around 0).
fn randomise(bn: &mut BatchNorm2d, rng: &mut StdRng) {
    let mut fill = |t: &mut Tensor, lo: f32, hi: f32| {
        t.data_mut()
            .iter_mut()
            .for_each(|v| *v = rng.random_range(lo..hi));
    };
    fill(&mut bn.weight.value, 0.5, 1.5);
    fill(&mut bn.bias.value, -0.3, 0.3);
    fill(&mut bn.running_mean, -0.5, 0.5);
    fill(&mut bn.running_var, 0.5, 1.5);
}

/// Folds `conv_bn` with the library (`ConvBn::folded`), checks the result against the formula
/// and against conv-then-BN on a random `channels`×SIDE×SIDE input, prints both checks and the
/// shapes, and returns (W', b').
fn check_fold(
    name: &str,
    conv_bn: &mut ConvBn,
    channels: usize,
    rng: &mut StdRng,
) -> Result<(Tensor, Tensor)> {
    let (weight, bias) = conv_bn.folded()?;
    // The formula by hand, from the BN's fields.
    let bn = &conv_bn.bn;
    let mut by_hand = conv_bn.conv.weight.value.clone();
    let per_channel = by_hand.numel() / bn.running_var.numel();
    let mut shift = Vec::with_capacity(bn.running_var.numel());
    for (c, weights) in by_hand.data_mut().chunks_exact_mut(per_channel).enumerate() {
        let gamma_over_sigma =
            bn.weight.value.data()[c] / (bn.running_var.data()[c] + bn.eps).sqrt();
        weights.iter_mut().for_each(|w| *w *= gamma_over_sigma);
        shift.push(bn.bias.value.data()[c] - gamma_over_sigma * bn.running_mean.data()[c]);
    }
    let formula_error = max_abs(&sub(&weight, &by_hand)?).max(max_abs(&sub(
        &bias,
        &Tensor::from_vec(bias.shape(), shift)?,
    )?));
    // Conv then BN (evaluation) vs the folded conv, on the same input.
    let x = random_input(rng, &[1, channels, SIDE, SIDE])?;
    let conv_then_bn = conv_bn.forward(&x, &Ctx::eval())?;
    let folded_conv = conv2d(x.value(), &weight, Some(&bias), conv_bn.conv.params)?;
    let (_, rel) = deviation(&folded_conv, conv_then_bn.value())?;
    println!(
        "  {name:<9} W' {:?}, b' {:?}: formula vs ConvBn::folded {formula_error:.1e}, \
         folded conv vs conv → BN relative error {rel:.1e}",
        weight.shape(),
        bias.shape()
    );
    Ok((weight, bias))
}

/// Uniform values in [-2, 2): activations of the size a trained network passes between blocks.
fn random_input(rng: &mut StdRng, shape: &[usize]) -> Result<Var> {
    let n = shape.iter().product();
    let data = (0..n).map(|_| rng.random_range(-2.0f32..2.0)).collect();
    Ok(Var::constant(Tensor::from_vec(shape, data)?))
}

/// Largest |a − b| and that over the largest |b|.
fn deviation(a: &Tensor, b: &Tensor) -> Result<(f32, f32)> {
    let abs = max_abs(&sub(a, b)?);
    Ok((abs, abs / max_abs(b).max(f32::MIN_POSITIVE)))
}

/// Largest |a − b| on the `width`-pixel frame of each map, and inside it.
fn border_and_interior(a: &Tensor, b: &Tensor, width: usize) -> (f32, f32) {
    let (h, w) = (a.shape()[2], a.shape()[3]);
    let (mut border, mut interior) = (0f32, 0f32);
    for (i, (p, q)) in a.data().iter().zip(b.data()).enumerate() {
        let (y, x) = ((i / w) % h, i % w);
        let on_border = y < width || x < width || y >= h - width || x >= w - width;
        let slot = if on_border {
            &mut border
        } else {
            &mut interior
        };
        *slot = slot.max((p - q).abs());
    }
    (border, interior)
}

/// Multiply-adds of `conv` on one image of side `side`, and the side of its output.
fn conv_cost(conv: &Conv2d, side: usize) -> Result<(u64, usize)> {
    let weight = conv.weight.value.shape();
    let channels = weight[1] * conv.params.groups;
    let geometry = ConvGeom::new("macs", [1, channels, side, side], weight, conv.params)?;
    Ok((geometry.macs(), geometry.out_h()))
}
