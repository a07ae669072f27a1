//! A comparative study: many networks trained on one data set, each in its own directory under
//! the study's folder with a `summary.json` ([`RunRecord`]), plus one latency table of all of
//! them timed interleaved in one process ([`StudyLatency`]). `depthshrink report` reads it.
//!
//! ```text
//! results/cifar10/
//!   latency.json            every network, batch 1 and 64, timed interleaved
//!   blocks.json             per-block latency of the original vs merged network (optional)
//!   ds-keep10/summary.json  one directory per network: summary.json, metrics.jsonl,
//!   ds-keep10/metrics.jsonl   search-metrics.jsonl and search.json where there was a search
//! ```

use std::path::{Path, PathBuf};

use depthshrink_nn::arch::{ArchConfig, NetSpec};
use depthshrink_nn::keep::KeepList;
use depthshrink_nn::network::Network;
use serde::{Deserialize, Serialize};

mod run;

pub use run::run_network;

use crate::StageError;
use crate::config::DistillConfig;
use crate::latency::compare_networks;
use crate::merge::merge_network;

/// A network's record in its run directory.
pub const SUMMARY: &str = "summary.json";
/// The interleaved latency table, at the study's root.
pub const STUDY_LATENCY: &str = "latency.json";
/// The per-block latency table of the original vs merged network, at the study's root.
pub const BLOCK_LATENCY: &str = "blocks.json";
/// A search's `metrics.jsonl` (its gate trajectories), copied beside the finetuning's.
pub const SEARCH_METRICS: &str = "search-metrics.jsonl";

/// How a network of the study was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// The network every other one starts from.
    Baseline,
    /// A uniformly narrower network trained from scratch.
    Width,
    /// Searched activations removed, finetuned, merged.
    Depthshrinker,
    /// Activations removed at random (among the ones whose removal merges a block).
    Random,
    /// Whole residual blocks dropped.
    BlockPruning,
    /// Each block's hidden width shrunk by a uniform ratio.
    ChannelPruning,
    /// A DepthShrinker network with one ingredient taken out.
    Ablation,
}

impl Method {
    /// Every method, in the order reports list them.
    pub const ALL: [Method; 7] = [
        Method::Baseline,
        Method::Depthshrinker,
        Method::Width,
        Method::Random,
        Method::BlockPruning,
        Method::ChannelPruning,
        Method::Ablation,
    ];

    /// The name a report shows.
    pub fn label(self) -> &'static str {
        match self {
            Method::Baseline => "baseline",
            Method::Width => "width scaling",
            Method::Depthshrinker => "DepthShrinker",
            Method::Random => "random removal",
            Method::BlockPruning => "block pruning",
            Method::ChannelPruning => "channel pruning",
            Method::Ablation => "ablation",
        }
    }
}

/// `summary.json`: what one network of the study is, how it was made and how it scores.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// Unique within the study (the run directory's name, usually).
    pub name: String,
    /// How it was made.
    pub method: Method,
    /// Test top-1 of the last epoch, in percent.
    pub top1: f64,
    /// The activations kept, where some were removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep: Option<KeepList>,
    /// Seeds its initial weights (from scratch), search, data order and dropout.
    pub seed: u64,
    /// Epochs of the run that made it (finetuning epochs for a finetuned network).
    pub epochs: usize,
    /// The command that made it, for a reader to repeat.
    pub command: String,
    /// The committed weights file, relative to the repository root, where there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<String>,
    /// Runs of one configuration under different seeds share a group (the report shows their
    /// spread).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Parameters of the deployed network (merged where it merges).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<u64>,
    /// Multiply-adds of the deployed network, in millions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub macs_m: Option<f64>,
    /// fvcore-convention MFLOPs (the paper's tables).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fvcore_mflops: Option<f64>,
    /// Wall time of the run that made it, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wall_seconds: Option<f64>,
    /// The architecture, so the study can time the network without its weights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<ArchConfig>,
    /// Per block: merged into one dense conv in the deployed network (absent: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merged: Option<Vec<bool>>,
    /// Linearised blocks end with one ReLU6 (false only in that ablation).
    #[serde(
        default = "crate::config::yes",
        skip_serializing_if = "crate::config::is_true"
    )]
    pub free_relu6: bool,
}

impl RunRecord {
    /// The network as deployed, with seeded weights (its latency does not depend on their
    /// values): the architecture, the activations the keep list removes, the blocks merged.
    /// `None` when the record has no architecture.
    pub fn deployed(&self) -> Result<Option<Network>, StageError> {
        let Some(arch) = &self.arch else {
            return Ok(None);
        };
        let mut net = Network::new(arch, self.seed);
        if let Some(keep) = &self.keep {
            keep.check_len(net.num_acts())
                .map_err(|e| StageError::Keep(format!("{}: {e}", self.name)))?;
            net.apply_keep(keep)?;
        }
        net.set_free_relu6(self.free_relu6);
        if let Some(plan) = &self.merged {
            net = merge_network(&net, plan)?;
        }
        Ok(Some(net))
    }
}

/// Times every network of `study` that records its architecture, all interleaved in one
/// process (medians of `runs` rounds), at each of `batches` on `res`² inputs: the one
/// comparison a noisy shared machine cannot skew between methods.
pub fn time_study(
    study: &Study,
    res: usize,
    batches: &[usize],
    runs: usize,
) -> Result<StudyLatency, StageError> {
    let mut names = Vec::new();
    let mut nets = Vec::new();
    for (_, record) in &study.runs {
        if let Some(net) = record.deployed()? {
            names.push(record.name.clone());
            nets.push(net);
        }
    }
    if nets.is_empty() {
        return Err(StageError::Config(format!(
            "{}: no summary.json records an architecture (`arch`), so nothing can be timed",
            study.dir.display()
        )));
    }
    let refs: Vec<&Network> = nets.iter().collect();
    let mut ms = vec![Vec::new(); nets.len()];
    for &batch in batches {
        let times = compare_networks(&refs, res, batch, runs)?;
        for (m, t) in ms.iter_mut().zip(times) {
            m.push(t);
        }
    }
    Ok(StudyLatency {
        res,
        threads: rayon::current_num_threads(),
        runs,
        batches: batches.to_vec(),
        networks: names
            .into_iter()
            .zip(ms)
            .map(|(name, ms)| NetworkLatency { name, ms })
            .collect(),
    })
}

/// Every network of a study timed interleaved in one process (merged networks merged).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StudyLatency {
    /// Input side length.
    pub res: usize,
    /// Worker threads while timing.
    pub threads: usize,
    /// Timed rounds per network and batch (medians are kept).
    pub runs: usize,
    /// The batch sizes of every network's `ms`, in order.
    pub batches: Vec<usize>,
    /// One entry per timed network.
    pub networks: Vec<NetworkLatency>,
}

/// One network's median forward time per batch size of its [`StudyLatency`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NetworkLatency {
    /// A [`RunRecord::name`].
    pub name: String,
    /// Milliseconds per forward pass, one per batch size.
    pub ms: Vec<f64>,
}

impl StudyLatency {
    /// The median ms of network `name` at batch `batch`, if it was timed.
    pub fn ms(&self, name: &str, batch: usize) -> Option<f64> {
        let b = self.batches.iter().position(|&x| x == batch)?;
        self.networks
            .iter()
            .find(|n| n.name == name)
            .and_then(|n| n.ms.get(b).copied())
    }
}

/// A study's folder, read.
pub struct Study {
    /// The study folder.
    pub dir: PathBuf,
    /// Every run directory holding a `summary.json`, with its record, sorted by method then
    /// name.
    pub runs: Vec<(PathBuf, RunRecord)>,
    /// The interleaved table, when measured.
    pub latency: Option<StudyLatency>,
}

impl Study {
    /// Reads every `*/summary.json` under `dir` and `latency.json` if present. A summary that
    /// does not parse is an error naming its file; a folder without any is an error too.
    pub fn read(dir: &Path) -> Result<Study, StageError> {
        let bad = |path: &Path, e: String| StageError::Config(format!("{}: {e}", path.display()));
        let entries = std::fs::read_dir(dir).map_err(|e| bad(dir, e.to_string()))?;
        let mut runs = Vec::new();
        for entry in entries {
            let run_dir = entry.map_err(|e| bad(dir, e.to_string()))?.path();
            let path = run_dir.join(SUMMARY);
            if !path.is_file() {
                continue;
            }
            let text = std::fs::read_to_string(&path).map_err(|e| bad(&path, e.to_string()))?;
            let record: RunRecord =
                serde_json::from_str(&text).map_err(|e| bad(&path, e.to_string()))?;
            runs.push((run_dir, record));
        }
        if runs.is_empty() {
            return Err(bad(
                dir,
                format!("no run directory with a {SUMMARY} (expected DIR/<run>/{SUMMARY})"),
            ));
        }
        runs.sort_by(|a, b| (a.1.method, &a.1.name).cmp(&(b.1.method, &b.1.name)));
        let path = dir.join(STUDY_LATENCY);
        let latency = if path.is_file() {
            let text = std::fs::read_to_string(&path).map_err(|e| bad(&path, e.to_string()))?;
            Some(serde_json::from_str(&text).map_err(|e| bad(&path, e.to_string()))?)
        } else {
            None
        };
        Ok(Study {
            dir: dir.to_path_buf(),
            runs,
            latency,
        })
    }
}

/// A study's plan, as written in TOML (e.g. `configs/study-cifar10.toml`): the recipe every
/// network shares and the list of networks. `depthshrink study PLAN` runs it, resumably.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StudyPlan {
    /// The baseline's training config (data, optimiser, schedule): every stage starts from it.
    pub config: PathBuf,
    /// The baseline network every finetuned network starts from.
    pub pretrained: PathBuf,
    /// Where the records go (committed): `<out>/<name>/summary.json`, metrics, search output.
    pub out: PathBuf,
    /// Where the runs' checkpoints go (not committed; each run resumes from here).
    pub work: PathBuf,
    /// Epochs of every search.
    pub search_epochs: usize,
    /// Epochs of every finetuning: one budget for every finetuned network, so they compare.
    pub finetune_epochs: usize,
    /// Learning rate of searches and finetuning (they start from a trained network).
    pub stage_lr: f64,
    /// Self-distillation of every finetuning.
    pub distill: DistillConfig,
    /// Batch size of the latency table the searches weigh (`<out>/search-latency.json`).
    pub latency_batch: usize,
    /// Activation indices searches and random draws may remove (absent: the config's
    /// `search.searchable`, else all).
    #[serde(default)]
    pub searchable: Option<Vec<usize>>,
    /// The networks, run in this order.
    #[serde(rename = "network")]
    pub networks: Vec<NetworkPlan>,
}

/// One network of a [`StudyPlan`].
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkPlan {
    /// Unique: the directory name under `out` and `work`.
    pub name: String,
    /// How it is made.
    pub method: Method,
    /// Activations kept (DepthShrinker and random removal).
    #[serde(default)]
    pub keep: Option<usize>,
    /// Seeds the search, the data order and dropout (and the random draw).
    #[serde(default)]
    pub seed: u64,
    /// Width multiplier of a network trained from scratch (width scaling).
    #[serde(default)]
    pub width: Option<f64>,
    /// Fraction of hidden channels kept (channel pruning).
    #[serde(default)]
    pub channels: Option<f64>,
    /// Residual blocks dropped, by activation index (block pruning).
    #[serde(default)]
    pub blocks: Option<Vec<usize>>,
    /// Seeds of one configuration share a group.
    #[serde(default)]
    pub group: Option<String>,
    /// The command that made a network the study does not make itself (the baseline).
    #[serde(default)]
    pub command: Option<String>,
    /// Which ingredient an ablation takes out (ablation networks only).
    #[serde(default)]
    pub ablation: Option<Ablation>,
    /// The DepthShrinker network of the plan whose keep list and merge plan an ablation uses
    /// (listed, and so run, before it).
    #[serde(default)]
    pub keep_from: Option<String>,
    /// Overrides of the shared config for this network only, by dotted key (as `--set`), e.g.
    /// `set = { "search.gate_gradient" = "clipped" }`.
    #[serde(default)]
    pub set: std::collections::BTreeMap<String, toml::Value>,
}

/// The ingredients of the paper's Table 4 a study can take out of a DepthShrinker network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ablation {
    /// Finetune without self-distillation.
    NoDistill,
    /// Train the compressed architecture from scratch with the baseline's recipe, no
    /// pretraining.
    FromScratch,
    /// Finetune without the one ReLU6 after each linearised block: the merged blocks are then
    /// purely linear, back to back.
    NoFreeRelu6,
}

impl StudyPlan {
    /// Reads a plan; paths in it are relative to the working directory (the repository root).
    pub fn read(path: &Path) -> Result<StudyPlan, StageError> {
        let bad = |e: String| StageError::Config(format!("{}: {e}", path.display()));
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let plan: StudyPlan = toml::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let mut names = std::collections::BTreeSet::new();
        for n in &plan.networks {
            if !names.insert(&n.name) {
                return Err(bad(format!("network `{}` is listed twice", n.name)));
            }
            // Each method's own setting: required for it, refused for the others.
            let settings = [
                (
                    "keep",
                    n.keep.is_some(),
                    &[Method::Depthshrinker, Method::Random][..],
                ),
                ("width", n.width.is_some(), &[Method::Width]),
                ("channels", n.channels.is_some(), &[Method::ChannelPruning]),
                ("blocks", n.blocks.is_some(), &[Method::BlockPruning]),
                ("ablation", n.ablation.is_some(), &[Method::Ablation]),
                ("keep_from", n.keep_from.is_some(), &[Method::Ablation]),
            ];
            for (key, given, methods) in settings {
                if given != methods.contains(&n.method) {
                    let names: Vec<&str> = methods.iter().map(|m| m.label()).collect();
                    return Err(bad(format!(
                        "network `{}`: `{key}` is required for {} networks, and only for them",
                        n.name,
                        names.join(" and ")
                    )));
                }
            }
            if n.blocks.as_ref().is_some_and(|b| b.contains(&0)) {
                return Err(bad(format!(
                    "network `{}`: `blocks` are activation indices of blocks, from 1",
                    n.name
                )));
            }
            if let Some(source) = &n.keep_from {
                let earlier = &plan.networks[..plan
                    .networks
                    .iter()
                    .position(|m| m.name == n.name)
                    .expect("listed")];
                if !earlier
                    .iter()
                    .any(|m| &m.name == source && m.method == Method::Depthshrinker)
                {
                    return Err(bad(format!(
                        "network `{}`: keep_from = `{source}` must name a depthshrinker network listed before it",
                        n.name
                    )));
                }
            }
        }
        Ok(plan)
    }
}

/// Activation memory of one block in inference, before and after merging.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockMemory {
    /// Activation index of the block (1 = the DS block).
    pub index: usize,
    /// Largest set of activation tensors alive at once in the unmerged block, in bytes (f32,
    /// batch 1): the input (kept for the skip), the expanded map, the depthwise output, the
    /// output.
    pub unmerged_bytes: u64,
    /// The same for the merged conv: input and output.
    pub merged_bytes: u64,
}

/// Peak activation memory per block of `spec` at input side `res` (the paper's Fig. 5):
/// merging removes the expanded intermediate maps. Kernel workspaces are not counted.
pub fn block_memory(spec: &NetSpec, res: usize) -> Vec<BlockMemory> {
    let mut side = res.div_ceil(spec.stem_stride) as u64;
    let mut out = Vec::with_capacity(spec.blocks.len());
    for (i, b) in spec.blocks.iter().enumerate() {
        let next = side.div_ceil(b.stride as u64);
        let (cin, hid, cout) = (b.cin as u64, b.hidden as u64, b.cout as u64);
        let input = cin * side * side;
        let skip = if b.has_skip() { input } else { 0 };
        let expanded = if b.expand { hid * side * side } else { input };
        let dw = hid * next * next;
        let output = cout * next * next;
        let unmerged = if b.expand {
            (input + expanded).max(skip + expanded + dw)
        } else {
            input + dw
        }
        .max(skip + dw + output);
        out.push(BlockMemory {
            index: i + 1,
            unmerged_bytes: 4 * unmerged,
            merged_bytes: 4 * (input + output),
        });
        side = next;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use depthshrink_nn::arch::ArchConfig;

    #[test]
    fn merging_removes_the_expanded_maps_from_the_peak() {
        let spec = ArchConfig::mobilenet_v2(1.0, 10, true).spec();
        let mem = block_memory(&spec, 32);
        assert_eq!(mem.len(), spec.blocks.len());
        // IR1 of the CIFAR layout: 16 → 96 (t = 6) → 24 at 32×32, stride 1 (no skip: 16 ≠ 24).
        let b = &spec.blocks[1];
        assert_eq!((b.cin, b.hidden, b.cout, b.stride), (16, 96, 24, 1));
        let side = 32 * 32;
        assert_eq!(mem[1].unmerged_bytes, 4 * 2 * 96 * side);
        assert_eq!(mem[1].merged_bytes, 4 * (16 + 24) * side);
        assert!(mem.iter().all(|m| m.merged_bytes <= m.unmerged_bytes));
    }

    #[test]
    fn a_study_times_each_deployed_network_at_each_batch() {
        let arch = ArchConfig::mobilenet_v2(0.25, 10, true);
        let mut keep = vec![true; 19];
        keep[3] = false;
        let mut merged = vec![false; 17];
        merged[2] = true;
        let record = |name: &str, keep: Option<KeepList>, merged: Option<Vec<bool>>| RunRecord {
            name: name.into(),
            method: Method::Depthshrinker,
            top1: 80.0,
            keep,
            seed: 0,
            epochs: 1,
            command: String::new(),
            weights: None,
            group: None,
            params: None,
            macs_m: None,
            fvcore_mflops: None,
            wall_seconds: None,
            arch: Some(arch.clone()),
            merged,
            free_relu6: true,
        };
        let a = record("a", None, None);
        let b = record("b", Some(KeepList::new(keep)), Some(merged));
        let net = b.deployed().unwrap().unwrap();
        assert!(matches!(
            net.blocks[2],
            depthshrink_nn::network::Block::Merged(_)
        ));
        let study = Study {
            dir: PathBuf::from("s"),
            runs: vec![(PathBuf::from("s/a"), a), (PathBuf::from("s/b"), b)],
            latency: None,
        };
        let table = time_study(&study, 16, &[1, 2], 1).unwrap();
        assert_eq!(table.networks.len(), 2);
        assert!(
            table
                .networks
                .iter()
                .all(|n| n.ms.len() == 2 && n.ms[0] > 0.0)
        );
        let bad = record("c", Some(KeepList::new(vec![true; 3])), None);
        let err = bad.deployed().err().unwrap().to_string();
        assert!(err.starts_with("c: 3 entries"), "{err}");
    }

    #[test]
    fn a_plan_names_the_setting_a_network_lacks_or_should_not_have() {
        let dir = std::env::temp_dir().join(format!("ds-plan-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("plan.toml");
        let plan = |network: &str| {
            let text = format!(
                "config = \"c.toml\"\npretrained = \"p\"\nout = \"o\"\nwork = \"w\"\nsearch_epochs = 1\nfinetune_epochs = 1\nstage_lr = 0.01\nlatency_batch = 1\ndistill = {{ alpha = 0.7, temperature = 4.0 }}\n[[network]]\n{network}"
            );
            std::fs::write(&path, text).unwrap();
            StudyPlan::read(&path)
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        assert!(plan("name = \"d\"\nmethod = \"depthshrinker\"\nkeep = 9").is_ok());
        assert!(
            plan("name = \"d\"\nmethod = \"depthshrinker\"\nkeep = 9\nset = { \"search.gate_gradient\" = \"clipped\" }")
                .is_ok()
        );
        let err = plan("name = \"d\"\nmethod = \"depthshrinker\"").unwrap_err();
        assert!(
            err.contains("`keep` is required for DepthShrinker and random removal"),
            "{err}"
        );
        let err = plan("name = \"w\"\nmethod = \"width\"\nwidth = 0.3\nkeep = 3").unwrap_err();
        assert!(err.contains("network `w`: `keep`"), "{err}");
        let err = plan("name = \"b\"\nmethod = \"block_pruning\"\nblocks = [0]").unwrap_err();
        assert!(err.contains("from 1"), "{err}");
        let err = plan(
            "name = \"a\"\nmethod = \"ablation\"\nablation = \"no_distill\"\nkeep_from = \"d\"",
        )
        .unwrap_err();
        assert!(
            err.contains("must name a depthshrinker network listed before it"),
            "{err}"
        );
        let err = plan("name = \"x\"\nmethod = \"nope\"").unwrap_err();
        assert!(err.contains("plan.toml"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_study_folder_reads_its_runs_and_latency_and_names_a_bad_summary() {
        let dir = std::env::temp_dir().join(format!("ds-study-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let record = |name: &str, method| RunRecord {
            name: name.into(),
            method,
            top1: 88.0,
            keep: None,
            seed: 0,
            epochs: 1,
            command: "depthshrink train".into(),
            weights: None,
            group: None,
            params: None,
            macs_m: None,
            fvcore_mflops: None,
            wall_seconds: None,
            arch: None,
            merged: None,
            free_relu6: true,
        };
        for (name, method) in [("w035", Method::Width), ("base", Method::Baseline)] {
            std::fs::create_dir_all(dir.join(name)).unwrap();
            let json = serde_json::to_string(&record(name, method)).unwrap();
            std::fs::write(dir.join(name).join(SUMMARY), json).unwrap();
        }
        let latency = StudyLatency {
            res: 32,
            threads: 2,
            runs: 3,
            batches: vec![1, 64],
            networks: vec![NetworkLatency {
                name: "base".into(),
                ms: vec![1.5, 20.0],
            }],
        };
        std::fs::write(
            dir.join(STUDY_LATENCY),
            serde_json::to_string(&latency).unwrap(),
        )
        .unwrap();
        let study = Study::read(&dir).unwrap();
        let names: Vec<&str> = study.runs.iter().map(|r| r.1.name.as_str()).collect();
        assert_eq!(names, ["base", "w035"]);
        let table = study.latency.unwrap();
        assert_eq!(table.ms("base", 64), Some(20.0));
        assert_eq!(table.ms("base", 8), None);
        std::fs::write(dir.join("w035").join(SUMMARY), "{").unwrap();
        let err = Study::read(&dir).err().unwrap().to_string();
        assert!(err.contains("w035/summary.json"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
