//! MobileNetV2 (any width, ImageNet or CIFAR layout) and EfficientNet-Lite0 as one type,
//! [`Network`]: both share one skeleton: stem conv → depthwise-separable block →
//! inverted-residual blocks → head conv → global pool → dropout → linear. Parameter names follow
//! torchvision's `mobilenet_v2`.

use depthshrink_autograd::{Var, ops};
use depthshrink_tensor::conv::ConvParams;
use depthshrink_tensor::{Result, TensorError, parallel};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::activation::{Act, SearchGates};
use crate::arch::{ArchConfig, BlockSpec, NetSpec};
use crate::checkpoint::{self, Checkpoint, CheckpointError, LoadOptions};
use crate::keep::KeepList;
use crate::layers::{Conv2d, ConvBn, Linear};
use crate::module::{Ctx, Entry, Module, join};

/// Which activations a network keeps and which blocks are merged; stored in checkpoint
/// metadata beside the [`ArchConfig`], so a compressed network rebuilds from its file alone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Variant {
    /// Per activation index (stem, blocks, head): true = ReLU6 kept. Stored as `true`/`false`
    /// (not 0/1) in checkpoint metadata, the form every existing checkpoint holds.
    #[serde(with = "crate::keep::as_bools")]
    pub keep: KeepList,
    /// Per block: merged into one dense conv.
    pub merged: Vec<bool>,
    /// Linearised inverted-residual blocks end with one ReLU6 (the paper's free activation;
    /// false only in its ablation). Absent in files from before the ablation existed: true.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub free_relu6: bool,
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

/// An inverted-residual block (`expand == None`: the depthwise-separable first block).
#[derive(Clone)]
pub struct InvertedResidual {
    /// Channels, kernel size and stride.
    pub spec: BlockSpec,
    /// 1×1 expansion conv `cin` → `hidden`.
    pub expand: Option<ConvBn>,
    /// `k`×`k` depthwise conv on `hidden` channels, carrying the block's stride.
    pub dw: ConvBn,
    /// 1×1 linear projection `hidden` → `cout` (no activation after it).
    pub project: ConvBn,
    /// The activation at both sites (after expand and after the depthwise conv).
    pub act: Act,
    /// Activations removed: pad-first evaluation, and (for an IR block) one ReLU6 after the
    /// residual add, so the block equals its merged conv + ReLU6 exactly.
    pub linearised: bool,
    /// Whether that one ReLU6 follows a linearised IR block (true but in the paper's ablation
    /// of it, where the block is purely linear).
    pub free_relu6: bool,
}

impl InvertedResidual {
    /// A block as `spec` describes it, initialised as torchvision initialises MobileNetV2,
    /// with its activations in place.
    pub fn new(rng: &mut impl rand::Rng, spec: BlockSpec) -> Self {
        let (k, p) = (spec.k, spec.k / 2);
        let (expand, dw, project) = if spec.expand {
            (
                Some(ConvBn::new(
                    rng,
                    spec.cin,
                    spec.hidden,
                    1,
                    1,
                    0,
                    1,
                    ["0.0", "0.1"],
                )),
                ConvBn::new(
                    rng,
                    spec.hidden,
                    spec.hidden,
                    k,
                    spec.stride,
                    p,
                    spec.hidden,
                    ["1.0", "1.1"],
                ),
                ConvBn::new(rng, spec.hidden, spec.cout, 1, 1, 0, 1, ["2", "3"]),
            )
        } else {
            (
                None,
                ConvBn::new(
                    rng,
                    spec.cin,
                    spec.hidden,
                    k,
                    spec.stride,
                    p,
                    spec.hidden,
                    ["0.0", "0.1"],
                ),
                ConvBn::new(rng, spec.hidden, spec.cout, 1, 1, 0, 1, ["1", "2"]),
            )
        };
        InvertedResidual {
            spec,
            expand,
            dw,
            project,
            act: Act::Relu6,
            linearised: false,
            free_relu6: true,
        }
    }

    /// Keeps the block's activations (ReLU6 at both sites) or removes them: identity at both
    /// sites and, for an expanding block, pad-first evaluation with one ReLU6 after the skip
    /// add, so the block equals its merged conv followed by ReLU6.
    pub fn set_kept(&mut self, keep: bool) {
        self.act = if keep { Act::Relu6 } else { Act::Identity };
        self.linearised = !keep;
    }

    fn forward(&mut self, x: &Var, ctx: &Ctx) -> Result<Var> {
        if self.linearised && self.expand.is_some() {
            return self.forward_pad_first(x, ctx);
        }
        let mut h = x.clone();
        if let Some(expand) = &mut self.expand {
            h = expand.forward_act(&h, ctx, self.act)?;
        }
        h = self.dw.forward_act(&h, ctx, self.act)?;
        let out = self.project.forward(&h, ctx)?;
        if self.spec.has_skip() {
            ops::add(&out, x)
        } else {
            Ok(out)
        }
    }

    /// Pad the input once, run the expand conv on the padded map and the depthwise conv with
    /// padding 0: the intermediate border then holds expand(0) = its bias, as in the merged conv.
    /// In training the expand BN takes its statistics from the unpadded interior, as the
    /// pretrained network's did (the padded zeros would shift them, most on 4×4 maps).
    fn forward_pad_first(&mut self, x: &Var, ctx: &Ctx) -> Result<Var> {
        let expand = self
            .expand
            .as_mut()
            .expect("pad-first is only used for IR blocks");
        let p = self.spec.k / 2;
        let h = expand.forward_padded_input(&ops::pad2d(x, p)?, ctx, p)?;
        let d = self.dw.forward_padded(&h, ctx, 0, Act::Identity)?;
        let out = self.project.forward(&d, ctx)?;
        let out = if self.spec.has_skip() {
            ops::add(&out, x)?
        } else {
            out
        };
        if self.free_relu6 {
            ops::relu6(&out)
        } else {
            Ok(out)
        }
    }
}

impl Module for InvertedResidual {
    fn visit(&mut self, prefix: &str, f: &mut dyn FnMut(&str, Entry<'_>)) {
        let prefix = join(prefix, "conv");
        if let Some(e) = &mut self.expand {
            e.visit(&prefix, f);
        }
        self.dw.visit(&prefix, f);
        self.project.visit(&prefix, f);
    }
}

/// A block compiled by the merge stage into one dense conv (bias included), plus the block's
/// output ReLU6 when it had one.
#[derive(Clone)]
pub struct MergedBlock {
    /// The dense `k`×`k` conv `cin` → `cout` with the block's stride (and its skip, if any,
    /// folded into the weights).
    pub conv: Conv2d,
    /// A ReLU6 follows the conv.
    pub relu6: bool,
}

impl Module for MergedBlock {
    fn visit(&mut self, prefix: &str, f: &mut dyn FnMut(&str, Entry<'_>)) {
        self.conv.visit(&join(prefix, "merged"), f);
    }
}

/// A network holds a few dozen blocks, so the variants' size difference does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
pub enum Block {
    /// The block as trained: expand, depthwise, project (and skip).
    Ir(InvertedResidual),
    /// The block after the merge stage: one conv.
    Merged(MergedBlock),
}

impl Block {
    /// The block's output for `x`.
    pub fn forward(&mut self, x: &Var, ctx: &Ctx) -> Result<Var> {
        match self {
            Block::Ir(b) => b.forward(x, ctx),
            Block::Merged(m) => {
                let act = if m.relu6 { Act::Relu6 } else { Act::Identity };
                m.conv.forward_act(x, ctx, act)
            }
        }
    }
}

/// MobileNetV2 or EfficientNet-Lite0, per its [`ArchConfig`].
#[derive(Clone)]
pub struct Network {
    /// What the network was built from.
    pub arch: ArchConfig,
    /// The block-level description `arch` expands to.
    pub spec: NetSpec,
    /// 3×3 conv, 3 → `spec.stem` channels (activation index 0).
    pub stem: ConvBn,
    /// The activation after the stem.
    pub stem_act: Act,
    /// The blocks in order (block `i` has activation index `i + 1`).
    pub blocks: Vec<Block>,
    /// 1×1 conv to `spec.head` channels before pooling (activation index `blocks.len() + 1`).
    pub head: ConvBn,
    /// The activation after the head conv.
    pub head_act: Act,
    /// The linear layer `spec.head` → `num_classes`.
    pub classifier: Linear,
    /// Dropout probability before the classifier (torchvision: 0.2).
    pub dropout: f32,
    /// The search stage's gate scores (parameter `search.gates`), only while searching.
    pub search: Option<SearchGates>,
}

/// Runs an evaluation pass (or its timing) on the thread [`Network::forward`] uses for a
/// batch of `batch`: a single image on a worker of the rayon pool, so each kernel forks inside
/// the pool instead of handing its split over from this thread and sleeping until it is done
/// (with kernels of tens of µs that handoff is felt: batch 1 takes 0.88-0.92× the time); larger
/// batches on this thread, since their big tensors would come from a worker's malloc arena,
/// which maps them afresh each time (1.4-1.5× the page faults; batch 32 at 224² took 1.18× the
/// time on a worker, training steps at width 1.0 4-8% more).
pub fn run_eval<R: Send>(batch: usize, f: impl FnOnce() -> R + Send) -> R {
    if batch == 1 {
        parallel::on_pool(f)
    } else {
        f()
    }
}

impl Network {
    /// A freshly initialised network (torchvision's initialisation), deterministic in `seed`.
    pub fn new(arch: &ArchConfig, seed: u64) -> Network {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let spec = arch.spec();
        let stem = ConvBn::new(
            &mut rng,
            3,
            spec.stem,
            3,
            spec.stem_stride,
            1,
            1,
            ["0", "1"],
        );
        let blocks = spec
            .blocks
            .iter()
            .map(|&b| Block::Ir(InvertedResidual::new(&mut rng, b)))
            .collect();
        let last = spec.blocks.last().map_or(spec.stem, |b| b.cout);
        let head = ConvBn::new(&mut rng, last, spec.head, 1, 1, 0, 1, ["0", "1"]);
        let classifier = Linear::new(&mut rng, spec.head, spec.num_classes);
        Network {
            arch: arch.clone(),
            spec,
            stem,
            stem_act: Act::Relu6,
            blocks,
            head,
            head_act: Act::Relu6,
            classifier,
            dropout: 0.2,
            search: None,
        }
    }

    /// Logits `[N, classes]` for images `[N, 3, H, W]`; evaluation runs as [`run_eval`] says.
    pub fn forward(&mut self, x: &Var, ctx: &Ctx) -> Result<Var> {
        if ctx.train {
            self.forward_here(x, ctx)
        } else {
            let batch = x.value().shape().first().copied().unwrap_or(0);
            run_eval(batch, || self.forward_here(x, ctx))
        }
    }

    fn forward_here(&mut self, x: &Var, ctx: &Ctx) -> Result<Var> {
        let mut h = self.stem.forward_act(x, ctx, self.stem_act)?;
        for block in &mut self.blocks {
            h = block.forward(&h, ctx)?;
        }
        h = self.head.forward_act(&h, ctx, self.head_act)?;
        h = ops::global_avg_pool(&h)?;
        if ctx.train && self.dropout > 0.0 {
            h = ops::dropout(&h, self.dropout, ctx.dropout_seed)?;
        }
        self.classifier.forward(&h, ctx)
    }

    /// What a checkpoint records about this network (`arch` and `variant`), so that
    /// [`Network::from_checkpoint`] can rebuild it from the file alone.
    pub fn metadata(&self) -> serde_json::Value {
        serde_json::json!({ "arch": self.arch, "variant": self.variant() })
    }

    /// Builds the network a checkpoint holds and loads its weights. The architecture comes from
    /// the file's metadata, or from `fallback` for files without any (torchvision exports).
    /// Every missing, unexpected or mis-shaped tensor is reported by name.
    pub fn from_checkpoint(
        ckpt: &Checkpoint,
        fallback: Option<&ArchConfig>,
    ) -> std::result::Result<Network, CheckpointError> {
        let bad = |detail: String| CheckpointError::Architecture {
            path: ckpt.path.clone(),
            detail,
        };
        // timm's names: renamed, and the architecture is EfficientNet-Lite0 whatever the flags
        // say of the family (its classes read off the classifier).
        let timm = checkpoint::timm::is_timm(&ckpt.tensors);
        let renamed;
        let ckpt = if timm {
            renamed = Checkpoint {
                tensors: checkpoint::timm::rename(ckpt.tensors.clone()),
                ..ckpt.clone()
            };
            &renamed
        } else {
            ckpt
        };
        let arch = match ckpt.metadata.get("arch") {
            Some(a) => serde_json::from_value::<ArchConfig>(a.clone()).map_err(|e| bad(format!("invalid `arch` metadata: {e}")))?,
            None if timm => {
                let classes = ckpt.tensors.get("classifier.1.weight").map(|w| w.shape()[0]);
                let classes = classes.or(fallback.map(|f| f.num_classes)).unwrap_or(1000);
                ArchConfig::efficientnet_lite0(classes, fallback.is_some_and(|f| f.cifar))
            }
            None => fallback.cloned().ok_or_else(|| {
                bad("carries no architecture metadata (a torchvision export?): give the architecture with --model, --width, --num-classes and --cifar".into())
            })?,
        };
        let mut net = Network::new(&arch, 0);
        if ckpt.tensors.contains_key(SEARCH_GATES) {
            net.search = Some(SearchGates::new(net.num_acts(), vec![true; net.num_acts()]));
        }
        if let Some(v) = ckpt.metadata.get("variant") {
            let variant: Variant = serde_json::from_value(v.clone())
                .map_err(|e| bad(format!("invalid `variant` metadata: {e}")))?;
            net.set_variant(&variant).map_err(|e| bad(e.to_string()))?;
        }
        let opts = LoadOptions {
            extra_prefixes: vec!["optim.".into()],
            ..LoadOptions::default()
        };
        checkpoint::load_into(&mut net, ckpt, &opts)?;
        Ok(net)
    }

    /// Replaces the blocks marked merged by (zero) dense convs of the right shape and applies
    /// the keep list: the skeleton a merged checkpoint's weights are loaded into.
    pub fn set_variant(&mut self, variant: &Variant) -> Result<()> {
        if variant.merged.len() != self.blocks.len() {
            return Err(TensorError::argument(
                "set_variant",
                format!(
                    "{} merged flags for {} blocks",
                    variant.merged.len(),
                    self.blocks.len()
                ),
            ));
        }
        for (i, block) in self.blocks.iter_mut().enumerate() {
            if variant.merged[i] {
                let s = self.spec.blocks[i];
                let weight = depthshrink_tensor::Tensor::zeros(&[s.cout, s.cin, s.k, s.k]);
                let conv = merged_conv(
                    weight,
                    depthshrink_tensor::Tensor::zeros(&[s.cout]),
                    s.stride,
                );
                *block = Block::Merged(MergedBlock {
                    conv,
                    relu6: s.expand && variant.free_relu6,
                });
            }
        }
        self.set_free_relu6(variant.free_relu6);
        self.apply_keep(&variant.keep)
    }

    /// Whether linearised inverted-residual blocks end with their one ReLU6 (default true);
    /// false is the paper's ablation of that free activation.
    pub fn set_free_relu6(&mut self, free: bool) {
        for block in &mut self.blocks {
            if let Block::Ir(b) = block {
                b.free_relu6 = free;
            }
        }
    }

    /// A copy for fast evaluation: every batch norm folded into its conv, every weight packed
    /// for the GEMM once, and gated sites fixed to the search's current decision.
    pub fn for_inference(&self) -> Result<Network> {
        let mut net = self.clone();
        if let Some(search) = net.search.take() {
            net.fix_gates(&search.decision());
        }
        for cb in [&mut net.stem, &mut net.head] {
            cb.fold()?;
            cb.conv.prepack();
        }
        for block in &mut net.blocks {
            match block {
                Block::Ir(b) => {
                    for cb in b.expand.iter_mut().chain([&mut b.dw, &mut b.project]) {
                        cb.fold()?;
                        cb.conv.prepack();
                    }
                }
                Block::Merged(m) => m.conv.prepack(),
            }
        }
        Ok(net)
    }

    /// The network the method starts from, with these weights: every activation back to ReLU6
    /// and ordinary padding (no pad-first). What a speed-up of the method is measured against.
    /// Fails for merged blocks, whose weights no longer hold the block.
    pub fn original(&self) -> Result<Network> {
        if self.blocks.iter().any(|b| matches!(b, Block::Merged(_))) {
            return Err(TensorError::argument(
                "original",
                "a merged network no longer holds its blocks' weights: start from the unmerged one",
            ));
        }
        let mut net = self.clone();
        net.search = None;
        net.apply_keep(&vec![true; net.num_acts()])?;
        Ok(net)
    }

    /// Number of activation indices (stem, every block, head).
    pub fn num_acts(&self) -> usize {
        self.blocks.len() + 2
    }

    /// Sets every activation site from `acts[index]` (the search installs gated sites).
    pub fn set_acts(&mut self, acts: &[Act]) -> Result<()> {
        self.check_len("set_acts", acts.len())?;
        self.stem_act = acts[0];
        self.head_act = acts[acts.len() - 1];
        for (block, &act) in self.blocks.iter_mut().zip(&acts[1..]) {
            if let Block::Ir(b) = block {
                b.act = act;
                b.linearised = false;
            }
        }
        Ok(())
    }

    /// Replaces every gated site by ReLU6 (`keep[index]`) or identity, as the search's forward
    /// pass computes them (no pad-first: the search does not linearise blocks).
    fn fix_gates(&mut self, keep: &[bool]) {
        let fix = |act: &mut Act| {
            if let Act::Gated { index } = *act {
                *act = if keep[index] {
                    Act::Relu6
                } else {
                    Act::Identity
                };
            }
        };
        fix(&mut self.stem_act);
        fix(&mut self.head_act);
        for block in &mut self.blocks {
            if let Block::Ir(b) = block {
                fix(&mut b.act);
            }
        }
    }

    /// Removes the activations with `keep[i] == false`: identity sites, and pad-first with one
    /// output ReLU6 for removed inverted-residual blocks (the finetuning and merging form).
    pub fn apply_keep(&mut self, keep: &[bool]) -> Result<()> {
        self.check_len("apply_keep", keep.len())?;
        let act = |k: bool| if k { Act::Relu6 } else { Act::Identity };
        self.stem_act = act(keep[0]);
        self.head_act = act(keep[keep.len() - 1]);
        for (block, &k) in self.blocks.iter_mut().zip(&keep[1..]) {
            match block {
                Block::Ir(b) => b.set_kept(k),
                Block::Merged(_) if k => {
                    return Err(TensorError::argument(
                        "apply_keep",
                        "a merged block cannot get its activations back",
                    ));
                }
                Block::Merged(_) => {}
            }
        }
        Ok(())
    }

    /// The keep list and merged flags this network currently has.
    pub fn variant(&self) -> Variant {
        let kept = |a: Act| a != Act::Identity;
        let mut keep = vec![kept(self.stem_act)];
        keep.extend(self.blocks.iter().map(|b| match b {
            Block::Ir(b) => !b.linearised && kept(b.act),
            Block::Merged(_) => false,
        }));
        keep.push(kept(self.head_act));
        let merged = self
            .blocks
            .iter()
            .map(|b| matches!(b, Block::Merged(_)))
            .collect();
        // Network-wide: the merge keeps a merged IR block's ReLU6 exactly when it had one.
        let free_relu6 = self
            .blocks
            .iter()
            .zip(&self.spec.blocks)
            .all(|(b, s)| match b {
                Block::Ir(b) => b.free_relu6,
                Block::Merged(m) => m.relu6 || !s.expand,
            });
        Variant {
            keep: KeepList::new(keep),
            merged,
            free_relu6,
        }
    }

    fn check_len(&self, op: &'static str, len: usize) -> Result<()> {
        if len != self.num_acts() {
            return Err(TensorError::argument(
                op,
                format!(
                    "this network has {} activation indices (stem, {} blocks, head), got {len}",
                    self.num_acts(),
                    self.blocks.len()
                ),
            ));
        }
        Ok(())
    }
}

impl Module for Network {
    fn visit(&mut self, prefix: &str, f: &mut dyn FnMut(&str, Entry<'_>)) {
        let features = join(prefix, "features");
        self.stem.visit(&join(&features, "0"), f);
        for (i, block) in self.blocks.iter_mut().enumerate() {
            let name = join(&features, &(i + 1).to_string());
            match block {
                Block::Ir(b) => b.visit(&name, f),
                Block::Merged(m) => m.visit(&name, f),
            }
        }
        self.head
            .visit(&join(&features, &(self.blocks.len() + 1).to_string()), f);
        self.classifier.visit(&join(prefix, "classifier.1"), f);
        if let Some(search) = &mut self.search {
            f(
                &join(prefix, SEARCH_GATES),
                Entry::Param(&mut search.scores),
            );
        }
    }
}

/// The parameter name of the search's gate scores.
pub const SEARCH_GATES: &str = "search.gates";

/// Builds a merged block's conv (used by the merge compiler and when loading merged files).
pub fn merged_conv(
    weight: depthshrink_tensor::Tensor,
    bias: depthshrink_tensor::Tensor,
    stride: usize,
) -> Conv2d {
    let k = weight.shape()[2];
    Conv2d::from_parts(
        crate::Param::new(weight, true),
        Some(crate::Param::new(bias, false)),
        ConvParams::new(stride, k / 2, 1),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Files from before the free-ReLU6 ablation carry no `free_relu6`: they had it. A network
    /// with it writes nothing new, so those files and new ones read alike.
    #[test]
    fn a_variant_without_free_relu6_had_it() {
        let old: Variant =
            serde_json::from_str(r#"{"keep": [true, false], "merged": [true]}"#).unwrap();
        assert!(old.free_relu6);
        assert!(!serde_json::to_string(&old).unwrap().contains("free_relu6"));
        let ablated = Variant {
            free_relu6: false,
            ..old
        };
        let text = serde_json::to_string(&ablated).unwrap();
        assert_eq!(serde_json::from_str::<Variant>(&text).unwrap(), ablated);
    }
}
