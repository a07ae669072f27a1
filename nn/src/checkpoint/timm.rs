//! timm's EfficientNet parameter names (`efficientnet_lite0`'s `state_dict`), renamed to this
//! crate's torchvision-style ones so that a timm checkpoint loads like any other.
//!
//! timm numbers blocks by stage and position (`blocks.{stage}.{i}`); here they are one flat list
//! (`features.{n}`, the stem at 0 and the head after the last block), in the same order. The first
//! stage's blocks are depthwise-separable (`conv_dw`, `bn1`, `conv_pw`, `bn2`), the others
//! inverted residuals (`conv_pw`, `bn1`, `conv_dw`, `bn2`, `conv_pwl`, `bn3`).

use std::collections::BTreeMap;

use depthshrink_tensor::Tensor;

/// The tensor whose presence marks a timm EfficientNet checkpoint.
const STEM: &str = "conv_stem.weight";

/// True when `tensors` are named as timm names EfficientNet's.
pub fn is_timm(tensors: &BTreeMap<String, Tensor>) -> bool {
    tensors.contains_key(STEM)
}

/// `tensors` under this crate's names. Blocks are numbered in timm's (stage, index) order; names
/// that are not timm's stay as they are, so the loader reports them as unexpected.
pub fn rename(tensors: BTreeMap<String, Tensor>) -> BTreeMap<String, Tensor> {
    let mut blocks: Vec<(usize, usize)> = tensors.keys().filter_map(|n| block_of(n)).collect();
    blocks.sort_unstable();
    blocks.dedup();
    let head = blocks.len() + 1;
    tensors
        .into_iter()
        .map(|(name, t)| {
            let new = ours(&name, &blocks, head).unwrap_or(name);
            (new, t)
        })
        .collect()
}

/// `(stage, index)` of a `blocks.{stage}.{index}.…` name.
fn block_of(name: &str) -> Option<(usize, usize)> {
    let mut parts = name.strip_prefix("blocks.")?.splitn(3, '.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// This crate's name for the timm tensor `name`, or `None` for a name timm does not use.
fn ours(name: &str, blocks: &[(usize, usize)], head: usize) -> Option<String> {
    let (module, field) = name.rsplit_once('.')?;
    let renamed = match module {
        "conv_stem" => "features.0.0".to_string(),
        "bn1" => "features.0.1".to_string(),
        "conv_head" => format!("features.{head}.0"),
        "bn2" => format!("features.{head}.1"),
        "classifier" => "classifier.1".to_string(),
        _ => {
            let (stage, index) = block_of(name)?;
            let n = 1 + blocks.binary_search(&(stage, index)).ok()?;
            let part = module.rsplit('.').next()?;
            let sub = match (stage, part) {
                // Depthwise-separable: dw, its BN, project, its BN.
                (0, "conv_dw") => "0.0",
                (0, "bn1") => "0.1",
                (0, "conv_pw") => "1",
                (0, "bn2") => "2",
                // Inverted residual: expand, BN, dw, BN, project, BN.
                (_, "conv_pw") => "0.0",
                (_, "bn1") => "0.1",
                (_, "conv_dw") => "1.0",
                (_, "bn2") => "1.1",
                (_, "conv_pwl") => "2",
                (_, "bn3") => "3",
                _ => return None,
            };
            format!("features.{n}.conv.{sub}")
        }
    };
    Some(format!("{renamed}.{field}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> BTreeMap<String, Tensor> {
        list.iter()
            .map(|n| (n.to_string(), Tensor::zeros(&[1])))
            .collect()
    }

    #[test]
    fn timm_names_map_to_flat_blocks() {
        let timm = names(&[
            "conv_stem.weight",
            "bn1.running_var",
            "blocks.0.0.conv_dw.weight",
            "blocks.0.0.bn2.bias",
            "blocks.1.0.conv_pw.weight",
            "blocks.1.1.conv_pwl.weight",
            "blocks.1.1.bn3.num_batches_tracked",
            "blocks.10.0.conv_dw.weight",
            "conv_head.weight",
            "bn2.weight",
            "classifier.bias",
            "something.else",
        ]);
        assert!(is_timm(&timm));
        let got: Vec<String> = rename(timm).into_keys().collect();
        // Stage 10 sorts after stage 1 numerically, not as text: it is the fourth block.
        let want = [
            "classifier.1.bias",
            "features.0.0.weight",
            "features.0.1.running_var",
            "features.1.conv.0.0.weight",
            "features.1.conv.2.bias",
            "features.2.conv.0.0.weight",
            "features.3.conv.2.weight",
            "features.3.conv.3.num_batches_tracked",
            "features.4.conv.1.0.weight",
            "features.5.0.weight",
            "features.5.1.weight",
            "something.else",
        ];
        assert_eq!(got, want);
        assert!(!is_timm(&names(&["features.0.0.weight"])));
    }
}
