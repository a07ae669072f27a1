//! Arguments shared by several subcommands.

use std::path::Path;

use clap::Args;
use depthshrink_nn::arch::ArchConfig;
use depthshrink_nn::checkpoint;
use depthshrink_nn::mobilenet::MobileNet;
use depthshrink_shrinker::search::SearchOutput;

/// Network families the CLI can build.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ModelName {
    #[value(name = "mobilenet_v2")]
    MobilenetV2,
    #[value(name = "efficientnet_lite0")]
    EfficientnetLite0,
}

/// The architecture flags. Files written by depthshrink carry their architecture, which then
/// takes precedence; the flags describe files that do not (e.g. torchvision exports).
#[derive(Args, Clone, Debug)]
pub struct ArchArgs {
    /// Network family.
    #[arg(long, value_enum, default_value = "mobilenet_v2")]
    pub model: ModelName,
    /// Channel width multiplier (MobileNetV2).
    #[arg(long, default_value_t = 1.0)]
    pub width: f32,
    /// Number of classes of the classifier [default: 10 with --cifar, else 1000].
    #[arg(long)]
    pub num_classes: Option<usize>,
    /// CIFAR layout (32×32 inputs: stem and first stride-2 stage at stride 1).
    #[arg(long)]
    pub cifar: bool,
}

impl ArchArgs {
    pub fn arch(&self) -> Result<ArchConfig, String> {
        if !(self.width > 0.0 && self.width.is_finite()) {
            return Err(format!(
                "--width must be a positive number, got {}",
                self.width
            ));
        }
        let classes = self
            .num_classes
            .unwrap_or(if self.cifar { 10 } else { 1000 });
        if classes == 0 {
            return Err("--num-classes must be at least 1".into());
        }
        Ok(match self.model {
            ModelName::MobilenetV2 => ArchConfig::mobilenet_v2(self.width, classes, self.cifar),
            ModelName::EfficientnetLite0 => ArchConfig::efficientnet_lite0(classes, self.cifar),
        })
    }
}

/// Loads a network from a weights file (architecture and keep list from its metadata, else
/// from `arch`). `keep` removes activations from a network that still has them all; a file
/// that already removed some (a finetuned or merged network) carries its own list, and a
/// `keep` that differs from it is an error naming both (it would silently run another function).
pub fn load_model(
    weights: &Path,
    arch: &ArchArgs,
    keep: Option<&str>,
) -> Result<MobileNet, String> {
    let ckpt = checkpoint::load(weights).map_err(|e| e.to_string())?;
    let mut net =
        MobileNet::from_checkpoint(&ckpt, Some(&arch.arch()?)).map_err(|e| e.to_string())?;
    if let Some(keep) = keep {
        let keep = parse_keep(keep)?;
        let stored = net.variant().keep;
        if stored.iter().all(|&k| k) {
            net.apply_keep(&keep).map_err(|e| format!("--keep: {e}"))?;
        } else if stored != keep {
            return Err(format!(
                "--keep {} differs from the keep list {} stored in {} (leave --keep out to use the stored one)",
                keep_text(&keep),
                keep_text(&stored),
                weights.display()
            ));
        }
    }
    Ok(net)
}

/// A keep list as the CLI writes it: `1,0,0,1,…`.
pub fn keep_text(keep: &[bool]) -> String {
    let bits: Vec<&str> = keep.iter().map(|&k| if k { "1" } else { "0" }).collect();
    bits.join(",")
}

/// Writes `value` as pretty JSON, atomically (temp file, then rename).
pub fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<(), String> {
    let json = serde_json::to_vec_pretty(value).expect("our outputs serialise to JSON");
    depthshrink_nn::checkpoint::write_atomic(path, &json)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// A keep list: comma-separated 0/1 in activation-index order (1 = keep), or a file holding
/// such a list, a JSON array of 0/1, a JSON object with a `keep` array (a search's
/// search.json), or a TOML file with `keep = [...]` (configs/mbv2-140-*.toml). `FILE:N` picks
/// the list keeping N activations from a search.json's `keep_lists`.
pub fn parse_keep(arg: &str) -> Result<Vec<bool>, String> {
    if let Some((file, kept)) = arg.rsplit_once(':')
        && let Ok(kept) = kept.parse::<usize>()
        && !Path::new(arg).exists()
        && Path::new(file).is_file()
    {
        return search_keep_list(file, kept);
    }
    let text = if Path::new(arg).is_file() {
        std::fs::read_to_string(arg).map_err(|e| format!("--keep: cannot read {arg}: {e}"))?
    } else {
        arg.to_string()
    };
    let trimmed = text.trim();
    let bits: Vec<u64> = if arg.ends_with(".toml") {
        let table: toml::Table =
            toml::from_str(trimmed).map_err(|e| format!("--keep: {arg} is not valid TOML: {e}"))?;
        let list = table
            .get("keep")
            .ok_or_else(|| format!("--keep: {arg} has no `keep = [...]`"))?;
        list.clone()
            .try_into()
            .map_err(|_| format!("--keep: `keep` in {arg} is not a list of 0/1"))?
    } else if trimmed.starts_with('[') || trimmed.starts_with('{') {
        let v: serde_json::Value = serde_json::from_str(trimmed)
            .map_err(|e| format!("--keep: {arg} is not valid JSON: {e}"))?;
        let list = v.get("keep").unwrap_or(&v);
        serde_json::from_value(list.clone())
            .map_err(|_| format!("--keep: {arg} holds no list of 0/1"))?
    } else {
        trimmed
            .split(',')
            .map(|b| {
                b.trim()
                    .parse::<u64>()
                    .map_err(|_| format!("--keep: `{b}` is not 0 or 1 (expected e.g. 1,0,0,1,…)"))
            })
            .collect::<Result<_, _>>()?
    };
    bits.into_iter()
        .map(|b| match b {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(format!("--keep: {b} is not 0 or 1")),
        })
        .collect()
}

/// The list keeping `kept` activations among a search.json's `keep_lists`.
fn search_keep_list(file: &str, kept: usize) -> Result<Vec<bool>, String> {
    let text =
        std::fs::read_to_string(file).map_err(|e| format!("--keep: cannot read {file}: {e}"))?;
    let search: SearchOutput = serde_json::from_str(&text)
        .map_err(|e| format!("--keep: {file} is not a search's search.json: {e}"))?;
    let list = search
        .keep_lists
        .into_iter()
        .find(|l| l.kept == kept)
        .ok_or_else(|| format!("--keep: {file} has no keep list keeping {kept} activations"))?;
    Ok(list.keep.into_iter().map(|b| b == 1).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_lists_parse_from_text_and_json() {
        assert_eq!(parse_keep("1,0, 1").unwrap(), [true, false, true]);
        assert_eq!(parse_keep("[0,1]").unwrap(), [false, true]);
        assert_eq!(parse_keep(r#"{"keep": [1]}"#).unwrap(), [true]);
        assert!(parse_keep("1,2").unwrap_err().contains("2 is not 0 or 1"));
        assert!(parse_keep("1,x").unwrap_err().contains("`x`"));
        let d = concat!(env!("CARGO_MANIFEST_DIR"), "/../configs/mbv2-140-D.toml");
        assert_eq!(parse_keep(d).unwrap().iter().filter(|&&k| k).count(), 7);
    }

    #[test]
    fn a_search_file_with_a_count_picks_that_keep_list() {
        use depthshrink_shrinker::search::KeepList;
        let file = std::env::temp_dir().join(format!("ds-keep-{}.json", std::process::id()));
        let list = |kept, keep: [u8; 3]| KeepList {
            kept,
            ratio: kept as f64 / 3.0,
            keep: keep.to_vec(),
            saving_ms: None,
        };
        let search = SearchOutput {
            method: "gates".into(),
            keep_ratio: 0.67,
            keep: vec![1, 1, 0],
            gates: None,
            keep_lists: vec![list(1, [0, 1, 0]), list(2, [1, 1, 0])],
        };
        std::fs::write(&file, serde_json::to_string(&search).unwrap()).unwrap();
        let f = file.to_str().unwrap();
        assert_eq!(parse_keep(f).unwrap(), [true, true, false]);
        assert_eq!(parse_keep(&format!("{f}:1")).unwrap(), [false, true, false]);
        let err = parse_keep(&format!("{f}:3")).unwrap_err();
        assert!(err.contains("no keep list keeping 3"), "{err}");
        std::fs::write(&file, "[1, 0]").unwrap();
        let err = parse_keep(&format!("{f}:1")).unwrap_err();
        assert!(err.contains("is not a search's search.json"), "{err}");
        std::fs::remove_file(file).unwrap();
    }
}
