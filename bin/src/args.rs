//! Arguments shared by several subcommands.

use std::path::Path;

use clap::{Args, ValueEnum};
use depthshrink_nn::arch::{ArchConfig, Family};
use depthshrink_nn::checkpoint;
use depthshrink_nn::keep::KeepList;
use depthshrink_nn::network::Network;
use depthshrink_shrinker::StageError;

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
            ModelName::EfficientnetLite0 if width != 1.0 => {
                return Err(format!(
                    "--width {width} is for MobileNetV2: EfficientNet-Lite0 has fixed widths"
                ));
            }
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
pub fn load_model(weights: &Path, arch: &ArchArgs, keep: Option<&str>) -> Result<Network, String> {
    let ckpt = checkpoint::load(weights).map_err(|e| e.to_string())?;
    if let Some(stored) = ckpt.metadata.get("arch")
        && let Ok(stored) = serde_json::from_value::<ArchConfig>(stored.clone())
    {
        arch.check_stored(&stored, weights)?;
    }
    let mut net =
        Network::from_checkpoint(&ckpt, Some(&arch.arch()?)).map_err(|e| e.to_string())?;
    // timm's names say the architecture as metadata would (EfficientNet-Lite0, its classes).
    if checkpoint::timm::is_timm(&ckpt.tensors) {
        arch.check_stored(&net.arch, weights)?;
    }
    if let Some(keep) = keep {
        let keep = parse_keep(keep)?;
        let stored = net.variant().keep;
        if stored.keeps_all() {
            net.apply_keep(&keep).map_err(|e| format!("--keep: {e}"))?;
        } else if stored != keep {
            return Err(format!(
                "--keep {keep} differs from the keep list {stored} stored in {} (leave --keep out to use the stored one)",
                weights.display()
            ));
        }
    }
    Ok(net)
}

/// A freshly initialised network (seed 0) of the architecture flags, with the activations of
/// `keep` removed (pad-first): what is timed when no weights are given.
pub fn random_model(arch: &ArchArgs, keep: Option<&str>) -> Result<Network, String> {
    let mut net = Network::new(&arch.arch()?, 0);
    if let Some(keep) = keep {
        net.apply_keep(&parse_keep(keep)?)
            .map_err(|e| format!("--keep: {e}"))?;
    }
    Ok(net)
}

/// A `--keep` argument (see [`KeepList::parse`]), its error naming the flag.
pub fn parse_keep(arg: &str) -> Result<KeepList, String> {
    KeepList::parse(arg).map_err(|e| format!("--keep: {e}"))
}

/// A stage's error as the CLI words it: naming the flag of the input it concerns.
pub fn stage_error(e: StageError) -> String {
    match e {
        StageError::Keep(m) => format!("--keep: {m}"),
        StageError::Latency(m) => format!("--latency: {m}"),
        StageError::Pretrained(m) => format!("--pretrained: {m}"),
        e => e.to_string(),
    }
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

/// Writes `value` as pretty JSON, atomically.
pub fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<(), String> {
    depthshrink_shrinker::write_json(path, value).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

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
        std::fs::remove_dir_all(dir).unwrap();
    }
}
