//! A run's configuration, as written in a TOML file (see `configs/`): the settings every stage
//! shares ([`TrainConfig`] with its `[model]`, `[data]`, `[optim]` and `[lr]` tables) and the
//! sections only one stage reads (`[search]`: [`SearchConfig`], `[distill]`: [`DistillConfig`]).
//! One schema for the whole file, so the trainer can record and compare it on resume without
//! depending on the stages that use it.

use std::path::PathBuf;

use depthshrink_data::Augment;
pub use depthshrink_nn::activation::GateGradient;
use depthshrink_nn::arch::{ArchConfig, Family};
use depthshrink_nn::optim::OptimizerConfig;
use depthshrink_nn::schedule::ScheduleConfig;
use serde::{Deserialize, Serialize};

use crate::latency::LatencyTable;
use crate::train::TrainError;

/// A training run, as written in a TOML file (see `configs/`). Scalars first, then the tables
/// `[model]`, `[data]`, `[optim]` (an [`OptimizerConfig`]) and `[lr]` (a [`ScheduleConfig`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Training epochs, ≥ 1.
    pub epochs: usize,
    /// Seeds the initial weights, the data order and augmentation, and dropout.
    #[serde(default)]
    pub seed: u64,
    /// Label smoothing ε of the cross-entropy, in [0, 1); default 0.
    #[serde(default)]
    pub label_smoothing: f64,
    /// Global gradient-norm clip (PyTorch `clip_grad_norm_`); absent = no clipping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grad_clip: Option<f64>,
    /// Worker threads (the CLI's `--threads` wins); absent = all cores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<usize>,
    /// Evaluate on the test split every this many epochs (and always after the last).
    #[serde(default = "one")]
    pub eval_every: usize,
    /// Also write `last.safetensors` every this many batches within an epoch (0 = only at
    /// epoch ends).
    #[serde(default)]
    pub checkpoint_every: usize,
    /// `[model]`: the network.
    pub model: ModelConfig,
    /// `[data]`: the data set and its batching.
    pub data: DataConfig,
    /// `[optim]`: the optimiser and its hyper-parameters.
    pub optim: OptimizerConfig,
    /// `[lr]`: the learning-rate schedule.
    pub lr: ScheduleConfig,
    /// Stage 1 (`depthshrink search`): keep ratio, latency term, logging.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search: Option<SearchConfig>,
    /// Stage 2 (`depthshrink finetune --distill`): self-distillation weights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distill: Option<DistillConfig>,
}

fn one() -> usize {
    1
}

/// The network to train.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Network family; default MobileNetV2.
    #[serde(default = "default_family")]
    pub family: Family,
    /// Channel width multiplier (MobileNetV2).
    #[serde(default = "default_width")]
    pub width: f64,
    /// Absent = the data set's number of classes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_classes: Option<usize>,
    /// CIFAR layout (32×32 inputs).
    #[serde(default)]
    pub cifar: bool,
    /// Dropout before the classifier.
    #[serde(default = "default_dropout")]
    pub dropout: f64,
    /// Channel-pruned hidden widths (`depthshrink prune --channels R` writes such networks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hidden_ratio: Option<f64>,
    /// Block-pruned networks: the family's block positions removed (`depthshrink prune
    /// --blocks`; positions are activation indices − 1).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dropped_blocks: Vec<usize>,
    /// Finetuning: one ReLU6 after each inverted-residual block whose activations are removed
    /// (the paper's free activation); false is its ablation (Table 4).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub free_relu6: bool,
}

fn default_family() -> Family {
    Family::MobilenetV2
}
fn default_width() -> f64 {
    1.0
}
fn default_dropout() -> f64 {
    0.2
}
pub(crate) fn is_true(b: &bool) -> bool {
    *b
}

impl ModelConfig {
    /// The architecture to build; `num_classes` (the data set's) applies when the config gives
    /// none.
    pub fn arch(&self, num_classes: usize) -> ArchConfig {
        let classes = self.num_classes.unwrap_or(num_classes);
        let mut arch = match self.family {
            Family::MobilenetV2 => ArchConfig::mobilenet_v2(self.width as f32, classes, self.cifar),
            Family::EfficientnetLite0 => ArchConfig::efficientnet_lite0(classes, self.cifar),
        };
        arch.hidden_ratio = self.hidden_ratio.map(|r| r as f32);
        arch.dropped_blocks = self.dropped_blocks.clone();
        arch
    }
}

/// Where the data comes from and how it is batched.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Data directory (CIFAR-10 binaries or class folders), relative to the working directory;
    /// absent = the built-in synthetic set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
    /// Training batch size, ≥ 1.
    pub batch_size: usize,
    /// Evaluation batch size (absent = `batch_size`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_batch_size: Option<usize>,
    /// Keep decoded images in memory.
    #[serde(default)]
    pub cache: bool,
    /// Augmentation preset.
    #[serde(default)]
    pub augment: Augment,
    /// Input resolution of the ImageNet-style transforms.
    #[serde(default = "default_res")]
    pub res: usize,
    /// Random-erasing probability on training images (0 = off).
    #[serde(default)]
    pub random_erasing: f64,
    /// Drop each epoch's final partial training batch.
    #[serde(default = "yes")]
    pub drop_last: bool,
    /// Batches prepared ahead of the training loop.
    #[serde(default = "default_prefetch")]
    pub prefetch: usize,
    /// Use only N training images, a fixed random draw over the split (quick experiments and
    /// tests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_train: Option<usize>,
    /// Use only N test images, a fixed random draw over the split.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_test: Option<usize>,
}

fn default_res() -> usize {
    224
}
pub(crate) fn yes() -> bool {
    true
}
fn default_prefetch() -> usize {
    2
}

impl TrainConfig {
    /// Parses a TOML config, then applies `overrides` (dotted keys, e.g. `optim.momentum`, with
    /// TOML values; a value that does not parse as TOML is taken as a string). Unknown keys,
    /// wrong types and invalid values are errors naming the key.
    pub fn from_toml(
        text: &str,
        overrides: &[(String, String)],
    ) -> Result<TrainConfig, TrainError> {
        let config: TrainConfig = if overrides.is_empty() {
            toml::from_str(text).map_err(|e| TrainError::Config(e.to_string()))?
        } else {
            let mut table: toml::Table =
                toml::from_str(text).map_err(|e| TrainError::Config(e.to_string()))?;
            for (key, value) in overrides {
                set_dotted(&mut table, key, parse_value(value))?;
            }
            TrainConfig::deserialize(toml::Value::Table(table))
                .map_err(|e| TrainError::Config(e.to_string().trim().to_string()))?
        };
        config.validate()?;
        Ok(config)
    }

    /// The config as TOML (what `config.toml` holds).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a train config serialises to TOML")
    }

    /// Checks every value that deserialisation accepts but training cannot use, and that the
    /// data directory exists: everything that can be known before any work starts.
    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |msg: String| Err(TrainError::Config(msg));
        if self.epochs == 0 {
            return bad("epochs must be at least 1".into());
        }
        if self.data.batch_size == 0 {
            return bad("data.batch_size must be at least 1".into());
        }
        if self.data.eval_batch_size == Some(0) {
            return bad("data.eval_batch_size must be at least 1".into());
        }
        if self.data.prefetch == 0 {
            return bad("data.prefetch must be at least 1".into());
        }
        if self.data.res == 0 {
            return bad("data.res must be at least 1".into());
        }
        if self.data.limit_train == Some(0) || self.data.limit_test == Some(0) {
            return bad("data.limit_train and data.limit_test must be at least 1".into());
        }
        if !(0.0..=1.0).contains(&self.data.random_erasing) {
            return bad(format!(
                "data.random_erasing is a probability in [0, 1], got {}",
                self.data.random_erasing
            ));
        }
        if !(self.model.width.is_finite() && self.model.width > 0.0) {
            return bad(format!(
                "model.width must be a positive number, got {}",
                self.model.width
            ));
        }
        if self.model.family == Family::EfficientnetLite0 && self.model.width != 1.0 {
            return bad(format!(
                "model.width = {} is for MobileNetV2: EfficientNet-Lite0 has fixed widths (leave it at 1.0)",
                self.model.width
            ));
        }
        if let Some(r) = self.model.hidden_ratio
            && !(r > 0.0 && r <= 1.0)
        {
            return bad(format!("model.hidden_ratio must be in (0, 1], got {r}"));
        }
        if self.model.num_classes == Some(0) {
            return bad("model.num_classes must be at least 1".into());
        }
        if !(0.0..1.0).contains(&self.model.dropout) {
            return bad(format!(
                "model.dropout must be in [0, 1), got {}",
                self.model.dropout
            ));
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            return bad(format!(
                "label_smoothing must be in [0, 1), got {}",
                self.label_smoothing
            ));
        }
        if let Some(c) = self.grad_clip
            && !(c.is_finite() && c > 0.0)
        {
            return bad(format!("grad_clip must be a positive number, got {c}"));
        }
        if self.threads == Some(0) {
            return bad("threads must be at least 1".into());
        }
        if self.eval_every == 0 {
            return bad("eval_every must be at least 1".into());
        }
        self.optim
            .build()
            .map_err(|e| TrainError::Config(format!("optim: {e}")))?;
        // Before the schedule's own checks, which compare other keys (min_lr) against lr.
        let lr = self.lr.lr();
        if !(lr.is_finite() && lr >= 0.0) {
            return bad(format!(
                "lr.lr must be a finite non-negative number, got {lr}"
            ));
        }
        self.lr
            .build(self.epochs, 1)
            .map_err(|e| TrainError::Config(format!("lr: {e}")))?;
        if let Some(search) = &self.search {
            search.validate().map_err(TrainError::Config)?;
        }
        if let Some(distill) = &self.distill {
            distill.validate().map_err(TrainError::Config)?;
        }
        if let Some(dir) = &self.data.dir
            && !dir.is_dir()
        {
            return bad(format!("data.dir: {}: directory not found", dir.display()));
        }
        Ok(())
    }
}

/// A `--set` value: a TOML value if it parses as one, else the text as a string.
fn parse_value(text: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {text}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(text.to_string()))
}

fn set_dotted(table: &mut toml::Table, key: &str, value: toml::Value) -> Result<(), TrainError> {
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(TrainError::Config(format!(
            "--set: `{key}` is not a dotted key"
        )));
    }
    let mut t = table;
    for (i, part) in parts[..parts.len() - 1].iter().enumerate() {
        let entry = t
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        t = entry.as_table_mut().ok_or_else(|| {
            TrainError::Config(format!(
                "--set {key}: `{}` is not a table",
                parts[..=i].join(".")
            ))
        })?;
    }
    t.insert(parts[parts.len() - 1].to_string(), value);
    Ok(())
}

/// The `[search]` table of a config.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchConfig {
    /// Fraction r of the activation indices kept: k = floor(r·N) (official: 0.4, 7 of 19).
    #[serde(default = "default_keep_ratio")]
    pub keep_ratio: f64,
    /// λ of the latency term. ΔL is taken relative to the unmerged network's latency, so λ does
    /// not depend on the batch size or the speed of the machine. 0 = no latency term.
    #[serde(default = "default_latency_weight")]
    pub latency_weight: f64,
    /// Which way the latency term pushes the scores.
    #[serde(default)]
    pub latency_sign: LatencySign,
    /// Where a score receives the task's gradient: at any value (default), or only inside
    /// (0, 1) as the official code clips it.
    #[serde(default)]
    pub gate_gradient: GateGradient,
    /// Activation indices the search may remove (absent = all); the others are always kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub searchable: Option<Vec<usize>>,
    /// Remove only where merging pays: the search (and the random baseline) may remove an index
    /// only when the latency table says merging its block saves time (ΔL > 0), on top of
    /// `searchable`. An activation removed from a block that then stays unmerged costs accuracy
    /// and buys nothing: its pad-first block runs slower than the original one.
    #[serde(default)]
    pub only_if_merge_pays: bool,
    /// Log the gate scores to `metrics.jsonl` every this many steps.
    #[serde(default = "default_log_every")]
    pub log_every: usize,
}

fn default_keep_ratio() -> f64 {
    0.4
}
fn default_latency_weight() -> f64 {
    1.0
}
fn default_log_every() -> usize {
    20
}

impl Default for SearchConfig {
    fn default() -> Self {
        SearchConfig {
            keep_ratio: default_keep_ratio(),
            latency_weight: default_latency_weight(),
            latency_sign: LatencySign::default(),
            gate_gradient: GateGradient::default(),
            searchable: None,
            only_if_merge_pays: false,
            log_every: default_log_every(),
        }
    }
}

/// Which way the latency term pushes the scores.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LatencySign {
    /// −λ·Σ ΔLᵢ·sᵢ: the term falls as a high-saving block's score grows towards removal.
    #[default]
    FavourRemoval,
    /// +λ·Σ ΔLᵢ·sᵢ, as the official code writes it: high-saving blocks are pushed to be kept.
    Official,
}

impl SearchConfig {
    /// Checks the value ranges; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.keep_ratio > 0.0 && self.keep_ratio <= 1.0) {
            return Err(format!(
                "search.keep_ratio must be in (0, 1], got {}",
                self.keep_ratio
            ));
        }
        if !(self.latency_weight.is_finite() && self.latency_weight >= 0.0) {
            return Err(format!(
                "search.latency_weight must be a finite number ≥ 0, got {}",
                self.latency_weight
            ));
        }
        if self.log_every == 0 {
            return Err("search.log_every must be at least 1".into());
        }
        Ok(())
    }

    /// Per index: may the search remove it? Errors on an index outside 0..n.
    pub fn searchable(&self, n: usize) -> Result<Vec<bool>, String> {
        match &self.searchable {
            None => Ok(vec![true; n]),
            Some(list) => {
                let mut s = vec![false; n];
                for &i in list {
                    *s.get_mut(i).ok_or_else(|| {
                        format!("search.searchable: index {i} is out of range (0..{n})")
                    })? = true;
                }
                Ok(s)
            }
        }
    }

    /// This table with `searchable` narrowed to the blocks whose merge `latency` says saves time
    /// when `only_if_merge_pays` asks for it (unchanged otherwise). Errors when it asks without a
    /// table, or on an index outside 0..n.
    pub fn resolve(
        &self,
        n: usize,
        latency: Option<&LatencyTable>,
    ) -> Result<SearchConfig, String> {
        if !self.only_if_merge_pays {
            return Ok(self.clone());
        }
        let table = latency.ok_or(
            "search.only_if_merge_pays needs a latency table to say where merging pays \
             (`--latency T.json`, written by `depthshrink latency --out`)",
        )?;
        let (searchable, savings) = (self.searchable(n)?, table.savings());
        let paying = (0..n)
            .filter(|&i| searchable[i] && savings.get(i).is_some_and(|&dl| dl > 0.0))
            .collect();
        Ok(SearchConfig {
            searchable: Some(paying),
            ..self.clone()
        })
    }
}

/// k = floor(r·N), the number of indices a keep ratio keeps.
pub fn keep_count(ratio: f64, n: usize) -> usize {
    // The epsilon keeps e.g. 0.4·20 = 8 from flooring to 7.
    ((ratio * n as f64) + 1e-9).floor() as usize
}

/// The `[distill]` table of a config: self-distillation from the pretrained network.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistillConfig {
    /// Weight of the soft (teacher) term; official 0.7.
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// Softmax temperature T; official 1.
    #[serde(default = "default_temperature")]
    pub temperature: f64,
}

fn default_alpha() -> f64 {
    0.7
}
fn default_temperature() -> f64 {
    1.0
}

impl Default for DistillConfig {
    fn default() -> Self {
        DistillConfig {
            alpha: default_alpha(),
            temperature: default_temperature(),
        }
    }
}

impl DistillConfig {
    /// Checks the value ranges; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.alpha) {
            return Err(format!(
                "distill.alpha must be in [0, 1], got {}",
                self.alpha
            ));
        }
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return Err(format!(
                "distill.temperature must be a positive number, got {}",
                self.temperature
            ));
        }
        Ok(())
    }
}

/// A small valid config for tests across the crate.
#[cfg(test)]
pub(crate) const TEST_CONFIG: &str = r#"
epochs = 2
[model]
width = 0.25
cifar = true
[data]
batch_size = 16
[optim]
optimizer = "sgd"
momentum = 0.9
weight_decay = 1e-4
[lr]
schedule = "cosine"
lr = 0.1
"#;

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = TEST_CONFIG;

    #[test]
    fn config_parses_with_defaults_and_round_trips() {
        let c = TrainConfig::from_toml(BASE, &[]).unwrap();
        assert_eq!(c.eval_every, 1);
        assert_eq!(c.model.dropout, 0.2);
        assert!(c.data.drop_last);
        let again = TrainConfig::from_toml(&c.to_toml(), &[]).unwrap();
        assert_eq!(c, again);
    }

    #[test]
    fn overrides_set_dotted_keys_with_toml_values() {
        let sets = |kv: &[(&str, &str)]| -> Vec<(String, String)> {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let c = TrainConfig::from_toml(
            BASE,
            &sets(&[
                ("epochs", "3"),
                ("optim.momentum", "0.8"),
                ("data.augment", "none"),
                ("grad_clip", "5"),
            ]),
        )
        .unwrap();
        assert_eq!(c.epochs, 3);
        assert_eq!(c.data.augment, Augment::None);
        assert_eq!(c.grad_clip, Some(5.0));
        match &c.optim {
            OptimizerConfig::Sgd(s) => assert_eq!(s.momentum, 0.8),
            other => panic!("{other:?}"),
        }
        let err = TrainConfig::from_toml(BASE, &sets(&[("data.bogus", "1")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("bogus"), "{err}");
        let err = TrainConfig::from_toml(BASE, &sets(&[("epochs", "many")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("epochs") || err.contains("invalid type"),
            "{err}"
        );
        let err = TrainConfig::from_toml(BASE, &sets(&[("epochs.x", "1")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a table"), "{err}");
    }

    #[test]
    fn invalid_values_are_rejected_by_name() {
        let bad = |k: &str, v: &str| {
            TrainConfig::from_toml(BASE, &[(k.to_string(), v.to_string())])
                .unwrap_err()
                .to_string()
        };
        assert!(bad("data.batch_size", "0").contains("data.batch_size"));
        assert!(bad("epochs", "0").contains("epochs"));
        assert!(bad("model.width", "-1").contains("model.width"));
        assert!(bad("model.hidden_ratio", "1.5").contains("model.hidden_ratio"));
        let lite0 = TrainConfig::from_toml(
            BASE,
            &[
                ("model.family".into(), "\"efficientnet_lite0\"".into()),
                ("model.width".into(), "0.5".into()),
            ],
        )
        .unwrap_err()
        .to_string();
        assert!(
            lite0.contains("model.width = 0.5 is for MobileNetV2"),
            "{lite0}"
        );
        assert!(bad("label_smoothing", "1.5").contains("label_smoothing"));
        assert!(bad("data.dir", "/nonexistent/dir").contains("/nonexistent/dir"));
    }
}
