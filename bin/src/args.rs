//! Arguments shared by several subcommands.

use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use depthshrink_nn::arch::{ArchConfig, Family};
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

/// The architecture flags. Files written by depthshrink carry their architecture, which is then
/// used, and a flag given explicitly that contradicts it is an error; the flags describe files
/// that carry none (e.g. torchvision exports). Unset flags take their defaults.
#[derive(Args, Clone, Debug)]
pub struct ArchArgs {
    /// Network family [default: mobilenet_v2].
    #[arg(long, value_enum)]
    pub model: Option<ModelName>,
    /// Channel width multiplier (MobileNetV2) [default: 1.0].
    #[arg(long)]
    pub width: Option<f32>,
    /// Number of classes of the classifier [default: 10 with --cifar, else 1000].
    #[arg(long)]
    pub num_classes: Option<usize>,
    /// CIFAR layout (32×32 inputs: stem and first stride-2 stage at stride 1).
    #[arg(long)]
    pub cifar: bool,
}

impl ArchArgs {
    pub fn arch(&self) -> Result<ArchConfig, String> {
        let width = self.width.unwrap_or(1.0);
        if !(width > 0.0 && width.is_finite()) {
            return Err(format!("--width must be a positive number, got {width}"));
        }
        let classes = self
            .num_classes
            .unwrap_or(if self.cifar { 10 } else { 1000 });
        if classes == 0 {
            return Err("--num-classes must be at least 1".into());
        }
        Ok(match self.model.unwrap_or(ModelName::MobilenetV2) {
            ModelName::MobilenetV2 => ArchConfig::mobilenet_v2(width, classes, self.cifar),
            ModelName::EfficientnetLite0 => ArchConfig::efficientnet_lite0(classes, self.cifar),
        })
    }

    /// Refuses flags given explicitly that contradict the architecture `stored` in `file`
    /// (they would otherwise be silently ignored), naming each flag with its value.
    pub fn check_stored(&self, stored: &ArchConfig, file: &Path) -> Result<(), String> {
        let mut clashes = Vec::new();
        if let Some(m) = self.model {
            let family = match m {
                ModelName::MobilenetV2 => Family::MobilenetV2,
                ModelName::EfficientnetLite0 => Family::EfficientnetLite0,
            };
            if family != stored.family
                && let Some(name) = m.to_possible_value()
            {
                clashes.push(format!("--model {}", name.get_name()));
            }
        }
        if let Some(w) = self.width.filter(|&w| w != stored.width) {
            clashes.push(format!("--width {w}"));
        }
        if let Some(n) = self.num_classes.filter(|&n| n != stored.num_classes) {
            clashes.push(format!("--num-classes {n}"));
        }
        if self.cifar && !stored.cifar {
            clashes.push("--cifar".into());
        }
        if clashes.is_empty() {
            return Ok(());
        }
        let verb = if clashes.len() == 1 {
            "contradicts"
        } else {
            "contradict"
        };
        Err(format!(
            "{} {verb} the architecture stored in {} ({stored}): leave the flag out, the file's \
             own architecture is used",
            clashes.join(", "),
            file.display()
        ))
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
    if let Some(stored) = ckpt.metadata.get("arch")
        && let Ok(stored) = serde_json::from_value::<ArchConfig>(stored.clone())
    {
        arch.check_stored(&stored, weights)?;
    }
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

/// Refuses an output path (given as `flag`) that is one of the command's `inputs` (flag, path):
/// writing it would destroy the input. Paths are compared resolved (`./a` and `a`, symlinks,
/// and on Unix hard links too); an output that does not exist yet cannot be an input.
pub fn refuse_overwriting_inputs(
    flag: &str,
    out: &Path,
    inputs: &[(&str, &Path)],
) -> Result<(), String> {
    match inputs.iter().find(|(_, input)| same_file(out, input)) {
        Some((input_flag, input)) => Err(format!(
            "{flag} {} is the same file as {input_flag} {}: writing it would destroy that \
             input; choose another output path",
            out.display(),
            input.display()
        )),
        None => Ok(()),
    }
}

/// True when both paths exist and name the same file.
fn same_file(a: &Path, b: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let (Ok(a), Ok(b)) = (std::fs::metadata(a), std::fs::metadata(b)) {
            return (a.dev(), a.ino()) == (b.dev(), b.ino());
        }
    }
    matches!((a.canonicalize(), b.canonicalize()), (Ok(a), Ok(b)) if a == b)
}

/// The file a `--keep` argument reads, if it names an existing one (for
/// [`refuse_overwriting_inputs`]).
pub fn keep_file(arg: &str) -> Option<PathBuf> {
    [arg, count_suffix(arg).0]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// `FILE:N` split into `FILE` and `N`; `(arg, None)` without a numeric suffix.
fn count_suffix(arg: &str) -> (&str, Option<usize>) {
    match arg.rsplit_once(':') {
        Some((file, n)) => match n.parse() {
            Ok(n) => (file, Some(n)),
            Err(_) => (arg, None),
        },
        None => (arg, None),
    }
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
    let path = Path::new(arg);
    if let (file, Some(kept)) = count_suffix(arg)
        && !path.exists()
        && Path::new(file).is_file()
    {
        return search_keep_list(file, kept);
    }
    let text = if path.is_file() {
        std::fs::read_to_string(arg).map_err(|e| format!("--keep: cannot read {arg}: {e}"))?
    } else if path.exists() {
        return Err(format!("--keep: {arg} is not a file"));
    } else {
        // A path that is not there would otherwise be parsed as a list of 0/1.
        let file = count_suffix(arg).0;
        if file.contains(['/', '\\']) || file.ends_with(".json") || file.ends_with(".toml") {
            return Err(format!("--keep: {file} does not exist"));
        }
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
    fn a_keep_file_that_is_not_there_is_called_missing() {
        for (arg, file) in [
            ("runs/x/search.json", "runs/x/search.json"),
            ("runs/x/search.json:5", "runs/x/search.json"),
            ("search.json", "search.json"),
            ("keep.toml", "keep.toml"),
        ] {
            let err = parse_keep(arg).unwrap_err();
            assert_eq!(err, format!("--keep: {file} does not exist"));
        }
        let err = parse_keep(env!("CARGO_MANIFEST_DIR")).unwrap_err();
        assert!(err.ends_with("is not a file"), "{err}");
        assert!(
            parse_keep("1,0,x")
                .unwrap_err()
                .contains("`x` is not 0 or 1")
        );
    }

    #[test]
    fn explicit_arch_flags_must_agree_with_the_stored_architecture() {
        let stored = ArchConfig::mobilenet_v2(0.5, 10, true);
        let file = Path::new("w.safetensors");
        let flags = |model, width, num_classes, cifar| ArchArgs {
            model,
            width,
            num_classes,
            cifar,
        };
        assert!(
            flags(None, None, None, false)
                .check_stored(&stored, file)
                .is_ok()
        );
        let same = flags(Some(ModelName::MobilenetV2), Some(0.5), Some(10), true);
        assert!(same.check_stored(&stored, file).is_ok());
        for (args, flag) in [
            (flags(None, Some(1.0), None, false), "--width 1 "),
            (flags(None, None, Some(100), false), "--num-classes 100 "),
            (
                flags(Some(ModelName::EfficientnetLite0), None, None, false),
                "--model efficientnet_lite0 ",
            ),
        ] {
            let err = args.check_stored(&stored, file).unwrap_err();
            assert!(err.starts_with(flag), "{err}");
            assert!(
                err.contains(
                    "stored in w.safetensors (MobileNetV2 w0.5, CIFAR layout, 10 classes)"
                ),
                "{err}"
            );
        }
        let err = flags(None, Some(1.0), Some(100), false)
            .check_stored(&stored, file)
            .unwrap_err();
        assert!(
            err.starts_with("--width 1, --num-classes 100 contradict "),
            "{err}"
        );
        let imagenet = ArchConfig::mobilenet_v2(0.5, 10, false);
        let err = flags(None, None, None, true)
            .check_stored(&imagenet, file)
            .unwrap_err();
        assert!(err.starts_with("--cifar contradicts"), "{err}");
    }

    #[test]
    fn an_output_is_refused_when_it_resolves_to_an_input() {
        let dir = std::env::temp_dir().join(format!("ds-args-same-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        let input = dir.join("w.safetensors");
        std::fs::write(&input, b"w").unwrap();
        let dotted = dir.join("sub/../w.safetensors");
        let err =
            refuse_overwriting_inputs("--out", &dotted, &[("--weights", &input)]).unwrap_err();
        assert!(err.contains("is the same file as --weights"), "{err}");
        let fresh = dir.join("new.safetensors");
        assert!(refuse_overwriting_inputs("--out", &fresh, &[("--weights", &input)]).is_ok());
        assert_eq!(
            keep_file(&format!("{}:3", input.display())),
            Some(input.clone())
        );
        assert_eq!(keep_file("1,0,1"), None);
        std::fs::remove_dir_all(dir).unwrap();
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
