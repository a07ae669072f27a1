//! Architecture descriptions: the block list of MobileNetV2 (any width, ImageNet or CIFAR
//! layout) and EfficientNet-Lite0, with parameter and FLOP counts computed from the description
//! alone, so the shrinker can cost a keep list without building a network.

use serde::{Deserialize, Serialize};

/// Which network family, as written in configs and checkpoint metadata.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    /// MobileNetV2 (Sandler et al. 2018), any width multiplier.
    MobilenetV2,
    /// EfficientNet-Lite0: MobileNetV2-style blocks with 3×3 and 5×5 depthwise kernels, no
    /// squeeze-excitation, ReLU6.
    EfficientnetLite0,
}

/// Everything needed to build a network; stored in checkpoint metadata.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ArchConfig {
    /// The network family.
    pub family: Family,
    /// Channel width multiplier (MobileNetV2 only; EfficientNet-Lite0 is fixed at 1.0).
    pub width: f32,
    /// Classifier outputs.
    pub num_classes: usize,
    /// 32×32 layout: stem stride 1 and the first stride-2 stage at stride 1.
    pub cifar: bool,
    /// Channel pruning: every expanding block's hidden width times this ratio, rounded (at
    /// least 1 channel); absent = the family's widths.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hidden_ratio: Option<f32>,
    /// Block pruning: positions (0-based) in the family's block list of the residual blocks
    /// removed, ascending; empty = none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dropped_blocks: Vec<usize>,
}

/// "MobileNetV2 w0.5, CIFAR layout, 10 classes": how messages name an architecture.
impl std::fmt::Display for ArchConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let layout = if self.cifar { "CIFAR" } else { "ImageNet" };
        match self.family {
            Family::MobilenetV2 => write!(f, "MobileNetV2 w{}", self.width)?,
            Family::EfficientnetLite0 => write!(f, "EfficientNet-Lite0")?,
        }
        write!(f, ", {layout} layout, {} classes", self.num_classes)?;
        if let Some(r) = self.hidden_ratio {
            write!(f, ", hidden channels ×{r}")?;
        }
        if !self.dropped_blocks.is_empty() {
            let list: Vec<String> = self.dropped_blocks.iter().map(usize::to_string).collect();
            write!(f, ", blocks {} dropped", list.join(","))?;
        }
        Ok(())
    }
}

impl ArchConfig {
    /// MobileNetV2 at width multiplier `width`.
    pub fn mobilenet_v2(width: f32, num_classes: usize, cifar: bool) -> Self {
        ArchConfig {
            family: Family::MobilenetV2,
            width,
            num_classes,
            cifar,
            hidden_ratio: None,
            dropped_blocks: Vec::new(),
        }
    }

    /// EfficientNet-Lite0 (width 1.0).
    pub fn efficientnet_lite0(num_classes: usize, cifar: bool) -> Self {
        ArchConfig {
            family: Family::EfficientnetLite0,
            width: 1.0,
            num_classes,
            cifar,
            hidden_ratio: None,
            dropped_blocks: Vec::new(),
        }
    }

    /// The block-level description of this network.
    pub fn spec(&self) -> NetSpec {
        let (stages, fixed_ends): (&[Stage], bool) = match self.family {
            Family::MobilenetV2 => (
                &[
                    (1, 16, 1, 1, 3),
                    (6, 24, 2, 2, 3),
                    (6, 32, 3, 2, 3),
                    (6, 64, 4, 2, 3),
                    (6, 96, 3, 1, 3),
                    (6, 160, 3, 2, 3),
                    (6, 320, 1, 1, 3),
                ],
                false,
            ),
            Family::EfficientnetLite0 => (
                &[
                    (1, 16, 1, 1, 3),
                    (6, 24, 2, 2, 3),
                    (6, 40, 2, 2, 5),
                    (6, 80, 3, 2, 3),
                    (6, 112, 3, 1, 5),
                    (6, 192, 4, 2, 5),
                    (6, 320, 1, 1, 3),
                ],
                true,
            ),
        };
        let width = if fixed_ends { 1.0 } else { self.width };
        let stem = if fixed_ends {
            32
        } else {
            make_divisible(32.0 * width)
        };
        let head = if fixed_ends {
            1280
        } else {
            make_divisible(1280.0 * width.max(1.0))
        };
        let mut blocks = Vec::new();
        let mut cin = stem;
        for (stage, &(t, c, n, s, k)) in stages.iter().enumerate() {
            let cout = make_divisible(c as f32 * width);
            for i in 0..n {
                let mut stride = if i == 0 { s } else { 1 };
                // The CIFAR layout keeps full resolution through the first stride-2 stage.
                if self.cifar && stage == 1 {
                    stride = 1;
                }
                let mut hidden = (cin as f32 * t as f32).round() as usize;
                if let (Some(r), true) = (self.hidden_ratio, t != 1) {
                    hidden = pruned_width(hidden, r);
                }
                blocks.push(BlockSpec {
                    expand: t != 1,
                    cin,
                    hidden,
                    cout,
                    k,
                    stride,
                });
                cin = cout;
            }
        }
        let blocks = blocks
            .into_iter()
            .enumerate()
            .filter(|(i, _)| !self.dropped_blocks.contains(i))
            .map(|(_, b)| b)
            .collect();
        NetSpec {
            stem,
            stem_stride: if self.cifar { 1 } else { 2 },
            blocks,
            head,
            num_classes: self.num_classes,
        }
    }
}

/// The hidden width channel pruning at `ratio` keeps of `hidden` channels: rounded, at least 1.
pub fn pruned_width(hidden: usize, ratio: f32) -> usize {
    ((hidden as f32 * ratio).round() as usize).clamp(1, hidden)
}

/// One stage of the block table: (expansion t, channels c, repeats n, stride s, kernel k).
type Stage = (usize, usize, usize, usize, usize);

/// torchvision's `_make_divisible(v, 8)`: round to a multiple of 8, never more than 10% down.
pub fn make_divisible(v: f32) -> usize {
    let rounded = (((v + 4.0) as usize) / 8 * 8).max(8);
    if (rounded as f32) < 0.9 * v {
        // Saturating: absurd widths give absurd channel counts, which the checked counts
        // below refuse.
        rounded.saturating_add(8)
    } else {
        rounded
    }
}

/// One inverted-residual block (or, with `expand == false`, the depthwise-separable block).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockSpec {
    /// False for the DS block (t = 1): dw → BN → act → pw → BN, no expansion conv.
    pub expand: bool,
    /// Input channels.
    pub cin: usize,
    /// Expanded channels (depthwise conv width): `cin · t`.
    pub hidden: usize,
    /// Output channels.
    pub cout: usize,
    /// Depthwise kernel size (3 or 5).
    pub k: usize,
    /// Depthwise stride (1 or 2).
    pub stride: usize,
}

impl BlockSpec {
    /// The residual connection exists iff stride 1 and Cin = Cout.
    pub fn has_skip(&self) -> bool {
        self.stride == 1 && self.cin == self.cout
    }

    /// Output side length for an input side length `h ≥ 1` (padding k/2); `None` on overflow.
    fn out_size(&self, h: usize) -> Option<usize> {
        Some(h.checked_add(2 * (self.k / 2))?.checked_sub(self.k)? / self.stride + 1)
    }
}

/// Stem, blocks, head and classifier of a network.
#[derive(Clone, Debug, PartialEq)]
pub struct NetSpec {
    /// Output channels of the 3×3 stem conv.
    pub stem: usize,
    /// Stride of the stem conv (1 in the CIFAR layout, else 2).
    pub stem_stride: usize,
    /// The blocks in order; block `i` has activation index `i + 1`.
    pub blocks: Vec<BlockSpec>,
    /// Output channels of the 1×1 head conv before pooling.
    pub head: usize,
    /// Classifier outputs.
    pub num_classes: usize,
}

/// Cost of a network under a given keep list, in two conventions.
#[derive(Clone, Copy, Debug, PartialEq, Default, Serialize)]
pub struct Flops {
    /// Conv and linear multiply-adds.
    pub macs: u64,
    /// fvcore's count as the DepthShrinker table uses it: MACs + 5 per BatchNorm output element
    /// + 1 per global-pool input element.
    pub fvcore: u64,
}

impl Flops {
    /// Adds a conv's `macs` and, with BatchNorm, its output elements; `None` on overflow.
    fn conv(&mut self, macs: u64, bn_outputs: Option<u64>) -> Option<()> {
        let bn = bn_outputs.map_or(Some(0), |n| n.checked_mul(5))?;
        self.macs = self.macs.checked_add(macs)?;
        self.fvcore = self.fvcore.checked_add(macs)?.checked_add(bn)?;
        Some(())
    }
}

/// The product of `factors`, or `None` if it overflows 64 bits.
fn product(factors: &[usize]) -> Option<u64> {
    factors
        .iter()
        .try_fold(1u64, |acc, &f| acc.checked_mul(u64::try_from(f).ok()?))
}

impl NetSpec {
    /// Number of activation indices a keep list addresses: stem, every block, head.
    pub fn num_acts(&self) -> usize {
        self.blocks.len() + 2
    }

    /// Trainable parameters of the unmerged network (conv weights, BN affine, classifier);
    /// saturates at `usize::MAX` (see [`NetSpec::checked_num_params`]).
    pub fn num_params(&self) -> usize {
        self.checked_num_params().unwrap_or(usize::MAX)
    }

    /// [`NetSpec::num_params`], or `None` when the count overflows (absurd widths or classes).
    pub fn checked_num_params(&self) -> Option<usize> {
        let conv_bn = |cin: usize, cout: usize, k: usize, groups: usize| {
            product(&[cout, cin / groups, k, k])?.checked_add(product(&[2, cout])?)
        };
        let mut total = conv_bn(3, self.stem, 3, 1)?;
        for b in &self.blocks {
            if b.expand {
                total = total.checked_add(conv_bn(b.cin, b.hidden, 1, 1)?)?;
            }
            total = total
                .checked_add(conv_bn(b.hidden, b.hidden, b.k, b.hidden)?)?
                .checked_add(conv_bn(b.hidden, b.cout, 1, 1)?)?;
        }
        let last = self.blocks.last().map_or(self.stem, |b| b.cout);
        let total = total
            .checked_add(conv_bn(last, self.head, 1, 1)?)?
            .checked_add(product(&[self.head, self.num_classes])?)?
            .checked_add(self.num_classes as u64)?;
        usize::try_from(total).ok()
    }

    /// Cost at input resolution `res` (batch 1) when the IR blocks whose activation is removed
    /// (`keep[i] == false`, indices as in [`NetSpec::num_acts`]) are merged into one dense conv.
    /// The stem, the DS block and the head stay unmerged, as in the DepthShrinker table.
    /// Saturates at `u64::MAX` (see [`NetSpec::checked_flops`]).
    pub fn flops(&self, res: usize, keep: &[bool]) -> Flops {
        self.checked_flops(res, keep).unwrap_or(Flops {
            macs: u64::MAX,
            fvcore: u64::MAX,
        })
    }

    /// [`NetSpec::flops`], or `None` when `res` is 0 or a count overflows 64 bits. Missing
    /// `keep` entries count as kept.
    pub fn checked_flops(&self, res: usize, keep: &[bool]) -> Option<Flops> {
        if res == 0 {
            return None;
        }
        let mut f = Flops::default();
        let mut h = (res.checked_add(2)? - 3) / self.stem_stride + 1;
        f.conv(
            product(&[3, self.stem, 9, h, h])?,
            Some(product(&[self.stem, h, h])?),
        )?;
        for (i, b) in self.blocks.iter().enumerate() {
            let (hin, hout) = (h, b.out_size(h)?);
            let merged = b.expand && keep.get(i + 1) == Some(&false);
            if merged {
                f.conv(product(&[b.cin, b.cout, b.k, b.k, hout, hout])?, None)?;
            } else {
                if b.expand {
                    f.conv(
                        product(&[b.cin, b.hidden, hin, hin])?,
                        Some(product(&[b.hidden, hin, hin])?),
                    )?;
                }
                f.conv(
                    product(&[b.hidden, b.k, b.k, hout, hout])?,
                    Some(product(&[b.hidden, hout, hout])?),
                )?;
                f.conv(
                    product(&[b.hidden, b.cout, hout, hout])?,
                    Some(product(&[b.cout, hout, hout])?),
                )?;
            }
            h = hout;
        }
        let last = self.blocks.last().map_or(self.stem, |b| b.cout);
        let head_outputs = product(&[self.head, h, h])?;
        f.conv(product(&[last, self.head, h, h])?, Some(head_outputs))?;
        f.fvcore = f.fvcore.checked_add(head_outputs)?;
        f.conv(product(&[self.head, self.num_classes])?, None)?;
        Some(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keep_list(bits: &[u8]) -> Vec<bool> {
        bits.iter().map(|&b| b == 1).collect()
    }

    #[test]
    fn make_divisible_matches_torchvision() {
        // Values from torchvision's _make_divisible(v, 8).
        for (v, want) in [
            (32.0 * 1.4, 48),
            (24.0 * 1.4, 32),
            (16.0 * 0.5, 8),
            (32.0 * 0.5, 16),
            (96.0 * 1.4, 136),
            (3.0, 8),
            (20.0, 24),
        ] {
            assert_eq!(make_divisible(v), want, "make_divisible({v})");
        }
    }

    #[test]
    fn mobilenet_v2_widths_match_the_paper() {
        let s = ArchConfig::mobilenet_v2(1.4, 1000, false).spec();
        assert_eq!((s.stem, s.head), (48, 1792));
        let outs: Vec<usize> = s.blocks.iter().map(|b| b.cout).collect();
        assert_eq!(
            outs,
            [
                24, 32, 32, 48, 48, 48, 88, 88, 88, 88, 136, 136, 136, 224, 224, 224, 448
            ]
        );
        assert_eq!(s.num_acts(), 19);
        assert_eq!(
            ArchConfig::efficientnet_lite0(1000, false)
                .spec()
                .num_acts(),
            18
        );
    }

    #[test]
    fn mobilenet_v2_parameter_count_matches_torchvision() {
        assert_eq!(
            ArchConfig::mobilenet_v2(1.0, 1000, false)
                .spec()
                .num_params(),
            3_504_872
        );
    }

    #[test]
    fn flops_reproduce_the_depthshrinker_table() {
        let spec = ArchConfig::mobilenet_v2(1.4, 1000, false).spec();
        let configs: [(&[u8], f64, f64); 7] = [
            (&[1; 19], 630.15, 582.2),
            (
                &[0, 1, 0, 0, 1, 1, 0, 1, 0, 1, 0, 1, 1, 0, 1, 1, 1, 1, 1],
                519.44,
                496.2,
            ),
            (
                &[1, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 1, 1, 0, 1, 1, 1, 1, 1],
                502.47,
                481.9,
            ),
            (
                &[1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 1, 0, 1, 1, 1, 1, 1],
                492.57,
                474.4,
            ),
            (
                &[0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1],
                484.25,
                466.6,
            ),
            (
                &[0, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1],
                474.36,
                459.1,
            ),
            (
                &[1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
                415.98,
                407.9,
            ),
        ];
        for (bits, fvcore, macs) in configs {
            let f = spec.flops(224, &keep_list(bits));
            assert!(
                (f.fvcore as f64 / 1e6 - fvcore).abs() <= 0.01,
                "{bits:?}: fvcore {} vs {fvcore}",
                f.fvcore as f64 / 1e6
            );
            assert!(
                (f.macs as f64 / 1e6 - macs).abs() <= 0.05,
                "{bits:?}: macs {} vs {macs}",
                f.macs as f64 / 1e6
            );
        }
        let base = ArchConfig::mobilenet_v2(1.0, 1000, false)
            .spec()
            .flops(224, &[true; 19]);
        assert!(
            (base.macs as f64 / 1e6 - 300.8).abs() < 0.05,
            "{}",
            base.macs
        );
        assert!(
            (base.fvcore as f64 / 1e6 - 334.2).abs() < 0.05,
            "{}",
            base.fvcore
        );
    }

    #[test]
    fn counts_that_overflow_are_none_not_wrapped() {
        let spec = ArchConfig::mobilenet_v2(1.0, 1000, false).spec();
        let keep = [true; 19];
        assert!(spec.checked_flops(4_000_000_000, &keep).is_none());
        assert!(spec.checked_flops(usize::MAX, &keep).is_none());
        assert!(spec.checked_flops(0, &keep).is_none());
        assert_eq!(spec.flops(4_000_000_000, &keep).macs, u64::MAX);
        let wide = ArchConfig::mobilenet_v2(1e9, 1000, false).spec();
        assert!(wide.checked_num_params().is_none());
        assert!(wide.checked_flops(224, &keep).is_none());
        let absurd = ArchConfig::mobilenet_v2(1e30, 1000, false).spec();
        assert!(absurd.checked_num_params().is_none());
        assert_eq!(
            spec.checked_num_params(),
            Some(3_504_872),
            "a sane network still counts"
        );
    }

    /// timm's `efficientnet_lite0` (1000 classes) has 4,652,008 parameters.
    #[test]
    fn efficientnet_lite0_parameter_count_matches_timm() {
        let spec = ArchConfig::efficientnet_lite0(1000, false).spec();
        assert_eq!(spec.num_params(), 4_652_008);
        assert_eq!(spec.blocks.iter().filter(|b| b.k == 5).count(), 9);
    }
}
