//! Stage 1 (depthshrinker.md §3): learn which activations are redundant.
//!
//! One score per activation index lives in the network ([`SearchGates`], parameter
//! `search.gates`), so the one optimiser, the checkpoints and exact resume cover it. Each step
//! keeps the k smallest-scored indices (ReLU6) and runs the rest as identity; the
//! straight-through estimator of `gated_relu6` gives every score its gradient. The optional
//! latency term λ·Σ ΔLᵢ·g(sᵢ) uses ΔL measured on this machine ([`LatencyTable`]) and, by
//! default, the sign that pushes the blocks whose merge saves the most towards removal (the
//! official code's sign does the opposite; it is kept as an option for comparison).

use std::path::Path;

use depthshrink_autograd::{Gradients, Var, ops};
use depthshrink_data::Batch;
use depthshrink_nn::Ctx;
use depthshrink_nn::activation::{Act, SearchGates, keep_smallest};
use depthshrink_nn::keep::KeepList;
use depthshrink_nn::network::Network;
use depthshrink_tensor::{Tensor, TensorError};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::config::{LatencySign, SearchConfig, keep_count};
use crate::error::{StageError, write_json};
use crate::latency::LatencyTable;
use crate::train::{Objective, Observer, TrainConfig, Trainer};

/// Turns `net` into the search network: gated sites everywhere and fresh scores (kept when the
/// network already carries some, e.g. resumed from a search checkpoint).
pub fn install_gates(net: &mut Network, config: &SearchConfig) -> Result<(), StageError> {
    let n = net.num_acts();
    let searchable = config.searchable(n).map_err(StageError::Config)?;
    let keep = keep_count(config.keep_ratio, n);
    let mut gates = SearchGates::new(keep, searchable);
    gates.gradient = config.gate_gradient;
    if let Some(old) = net.search.take() {
        gates.scores = old.scores;
    }
    net.search = Some(gates);
    let acts: Vec<Act> = (0..n).map(|index| Act::Gated { index }).collect();
    Ok(net.set_acts(&acts)?)
}

/// The search's objective: cross-entropy through the gated network, plus the latency term's
/// gradient on the scores.
pub struct GateSearch {
    /// Label smoothing of the cross-entropy.
    pub smoothing: f32,
    /// d(latency term)/dsᵢ per index: ±λ·ΔLᵢ/L (constant: the term is linear in s).
    pub pull: Vec<f32>,
    /// Log the scores and the keep decision every this many steps.
    pub log_every: usize,
}

impl GateSearch {
    /// `latency` = None: no latency term.
    pub fn new(
        config: &SearchConfig,
        latency: Option<&LatencyTable>,
        n: usize,
        smoothing: f32,
    ) -> GateSearch {
        let pull = match latency {
            Some(table) if config.latency_weight > 0.0 => {
                let sign = match config.latency_sign {
                    LatencySign::FavourRemoval => -1.0,
                    LatencySign::Official => 1.0,
                };
                table
                    .savings()
                    .iter()
                    .map(|&dl| (sign * config.latency_weight * dl / table.network_ms) as f32)
                    .collect()
            }
            _ => vec![0.0; n],
        };
        GateSearch {
            smoothing,
            pull,
            log_every: config.log_every,
        }
    }
}

fn no_gates() -> TensorError {
    TensorError::argument("search", "the network carries no search gates")
}

impl Objective for GateSearch {
    fn loss(
        &mut self,
        model: &mut Network,
        ctx: &mut Ctx,
        batch: &Batch,
    ) -> depthshrink_tensor::Result<(Var, Tensor)> {
        let gates = model.search.as_mut().ok_or_else(no_gates)?.bind(ctx)?;
        ctx.gates = Some(gates);
        let logits = model.forward(&Var::constant(batch.images.clone()), ctx)?;
        let loss = ops::cross_entropy(&logits, &batch.labels, self.smoothing)?;
        Ok((loss, logits.value().clone()))
    }

    fn after_backward(&mut self, model: &mut Network, _grads: &mut Gradients) {
        let Some(search) = model.search.as_mut() else {
            return;
        };
        let n = self.pull.len();
        let grad = search
            .scores
            .grad
            .get_or_insert_with(|| Tensor::zeros(&[n]));
        for (g, p) in grad.data_mut().iter_mut().zip(&self.pull) {
            *g += p;
        }
    }

    fn step_log(&mut self, model: &Network, step: usize) -> Option<Value> {
        let search = model.search.as_ref()?;
        step.is_multiple_of(self.log_every).then(|| {
            json!({
                "gates": search.scores.value.data(),
                "keep": KeepList::new(search.decision()),
            })
        })
    }
}

/// The keep list of one count in a search's output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KeepChoice {
    /// How many activations `keep` keeps.
    pub kept: usize,
    /// `kept` over the number of activation indices.
    pub ratio: f64,
    /// The list: the `kept` smallest-scored indices (plus the unsearchable ones).
    pub keep: KeepList,
    /// ΔL summed over the removed blocks, from the latency table (ms), when one was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saving_ms: Option<f64>,
}

/// What `depthshrink search` writes (`search.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SearchOutput {
    /// "gates" (learnt scores) or "random" (the baseline).
    pub method: String,
    /// The `[search]` keep ratio the run used.
    pub keep_ratio: f64,
    /// The keep list at `keep_ratio` (what `finetune --keep FILE` reads).
    pub keep: KeepList,
    /// Final scores (absent for the random baseline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gates: Option<Vec<f32>>,
    /// Keep lists for every count from the always-kept indices to all of them.
    pub keep_lists: Vec<KeepChoice>,
}

fn keep_choice(keep: KeepList, latency: Option<&LatencyTable>) -> KeepChoice {
    let kept = keep.kept();
    let saving_ms = latency.map(|t| {
        t.savings()
            .iter()
            .zip(&keep)
            .filter(|(_, k)| !**k)
            .map(|(s, _)| s)
            .sum()
    });
    KeepChoice {
        kept,
        ratio: kept as f64 / keep.len() as f64,
        keep,
        saving_ms,
    }
}

impl SearchOutput {
    /// From learnt scores: the k smallest at every k.
    pub fn from_scores(
        scores: &[f32],
        searchable: &[bool],
        keep_ratio: f64,
        latency: Option<&LatencyTable>,
    ) -> SearchOutput {
        let n = scores.len();
        let fixed = searchable.iter().filter(|&&s| !s).count();
        let keep_lists = (fixed..=n)
            .map(|k| keep_choice(keep_smallest(scores, k, searchable).into(), latency))
            .collect();
        SearchOutput {
            method: "gates".into(),
            keep_ratio,
            keep: keep_smallest(scores, keep_count(keep_ratio, n), searchable).into(),
            gates: Some(scores.to_vec()),
            keep_lists,
        }
    }

    /// The random-removal baseline: the same number of kept indices, chosen at random (seeded)
    /// among the searchable ones.
    pub fn random(
        searchable: &[bool],
        keep_ratio: f64,
        seed: u64,
        latency: Option<&LatencyTable>,
    ) -> SearchOutput {
        let n = searchable.len();
        let mut order: Vec<usize> = (0..n).filter(|&i| searchable[i]).collect();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
        // A random permutation as scores: rank = position, so "k smallest" is a random k-set
        // and the lists for different k are nested, like the learnt ones.
        let mut scores = vec![0f32; n];
        for (rank, &i) in order.iter().enumerate() {
            scores[i] = rank as f32;
        }
        SearchOutput {
            method: "random".into(),
            gates: None,
            ..SearchOutput::from_scores(&scores, searchable, keep_ratio, latency)
        }
    }
}

/// The search's output file, in its run directory.
pub const SEARCH_JSON: &str = "search.json";

/// Stage 1: learns which activations of `pretrained` to remove, training the gated network per
/// `config` (its `[search]` table; the defaults without one) in `out`, with the latency term
/// when `latency` is given. `resume` continues the search in `out`. Writes `search.json` there
/// and returns it.
pub fn search(
    mut config: TrainConfig,
    mut pretrained: Network,
    latency: Option<&LatencyTable>,
    out: &Path,
    resume: bool,
    observer: &mut dyn Observer,
) -> Result<SearchOutput, StageError> {
    let n = pretrained.num_acts();
    if let Some(table) = latency {
        table
            .check(&pretrained.arch, None)
            .map_err(StageError::Latency)?;
    }
    let search = config
        .search
        .get_or_insert_with(SearchConfig::default)
        .resolve(n, latency)
        .map_err(StageError::Config)?;
    let searchable = search.searchable(n).map_err(StageError::Config)?;
    install_gates(&mut pretrained, &search)?;
    let smoothing = config.label_smoothing as f32;
    let mut trainer = Trainer::with_model(config, out, resume, Some(pretrained))?;
    if let Some(table) = latency {
        let res = trainer.data.input_res()?;
        table
            .check(&trainer.model.arch, Some(res))
            .map_err(StageError::Latency)?;
    }
    // Also on resume: the checkpoint holds the scores, the config the rest.
    install_gates(&mut trainer.model, &search)?;
    let mut objective = GateSearch::new(&search, latency, n, smoothing);
    trainer.run_stage("searching", observer, &mut objective)?;
    let gates = trainer.model.search.as_ref().expect("installed above");
    let output = SearchOutput::from_scores(
        gates.scores.value.data(),
        &searchable,
        search.keep_ratio,
        latency,
    );
    write_output(out, &output)?;
    Ok(output)
}

/// The random-removal baseline for the network `config` describes: the keep ratio of its
/// `[search]` table, the indices drawn with its `seed` among the searchable ones; no training.
/// Writes `search.json` in `out` and returns it.
pub fn random_search(
    config: &TrainConfig,
    latency: Option<&LatencyTable>,
    out: &Path,
) -> Result<SearchOutput, StageError> {
    let search = config.search.clone().unwrap_or_default();
    // The classifier's width does not change the activation count.
    let arch = config
        .model
        .arch(latency.map_or(10, |t| t.arch.num_classes));
    if let Some(table) = latency {
        table.check(&arch, None).map_err(StageError::Latency)?;
    }
    let n = arch.spec().num_acts();
    let search = search.resolve(n, latency).map_err(StageError::Config)?;
    let searchable = search.searchable(n).map_err(StageError::Config)?;
    let output = SearchOutput::random(&searchable, search.keep_ratio, config.seed, latency);
    write_output(out, &output)?;
    Ok(output)
}

fn write_output(out: &Path, output: &SearchOutput) -> Result<(), StageError> {
    std::fs::create_dir_all(out).map_err(|source| StageError::Write {
        path: out.to_path_buf(),
        source,
    })?;
    write_json(&out.join(SEARCH_JSON), output)
}

#[cfg(test)]
mod tests {
    use super::*;
    use depthshrink_nn::arch::ArchConfig;

    #[test]
    fn keep_count_floors_the_ratio() {
        assert_eq!(keep_count(0.4, 19), 7);
        assert_eq!(keep_count(0.4, 20), 8);
        assert_eq!(keep_count(1.0, 19), 19);
        assert_eq!(keep_count(0.01, 19), 0);
    }

    #[test]
    fn random_baseline_keeps_the_same_count_and_respects_fixed_indices() {
        let mut searchable = vec![true; 19];
        searchable[18] = false;
        let out = SearchOutput::random(&searchable, 0.4, 3, None);
        assert_eq!(out.keep.kept(), 7);
        assert!(out.keep[18]);
        assert_eq!(out.keep_lists.len(), 19);
        assert_eq!(out.keep_lists[0].kept, 1);
        // Another seed, another set; the same seed, the same set.
        assert_ne!(
            out.keep,
            SearchOutput::random(&searchable, 0.4, 4, None).keep
        );
        assert_eq!(out, SearchOutput::random(&searchable, 0.4, 3, None));
    }

    #[test]
    fn searchable_indices_are_checked() {
        let config = SearchConfig {
            searchable: Some(vec![0, 3]),
            ..SearchConfig::default()
        };
        assert_eq!(config.searchable(4).unwrap(), [true, false, false, true]);
        assert!(config.searchable(3).unwrap_err().contains("index 3"));
    }

    /// `only_if_merge_pays` narrows the searchable indices to the blocks the table says save
    /// time (not the stem or head, not a block whose merge is slower), and needs a table.
    #[test]
    fn only_paying_merges_are_searchable() {
        let arch = ArchConfig::mobilenet_v2(0.35, 10, true);
        let n = arch.spec().num_acts();
        // Blocks 2, 3 and 5 save time, block 4 breaks even, the rest are slower merged.
        let table = crate::latency::LatencyTable::made_up(arch, 8, |index| match index {
            2 | 3 | 5 => (1.0, 0.5),
            4 => (1.0, 1.0),
            _ => (1.0, 2.0),
        });
        let config = SearchConfig {
            only_if_merge_pays: true,
            searchable: Some((1..n - 1).filter(|&i| i != 5).collect()),
            ..SearchConfig::default()
        };
        let resolved = config.resolve(n, Some(&table)).unwrap();
        assert_eq!(resolved.searchable, Some(vec![2, 3]));
        let err = config.resolve(n, None).unwrap_err();
        assert!(err.contains("search.only_if_merge_pays"), "{err}");
        // Off: unchanged, with or without a table.
        let off = SearchConfig::default();
        assert_eq!(off.resolve(n, Some(&table)).unwrap(), off);
        assert_eq!(off.resolve(n, None).unwrap(), off);
    }

    /// One search step moves the scores by the STE gradient plus the latency pull, and the
    /// favour-removal sign raises the score (towards removal) of a block that saves latency.
    #[test]
    fn latency_pull_has_the_configured_sign() {
        let arch = ArchConfig::mobilenet_v2(0.35, 10, true);
        let mut net = Network::new(&arch, 0);
        let n = net.num_acts();
        install_gates(&mut net, &SearchConfig::default()).unwrap();
        let table = crate::latency::LatencyTable::made_up(arch, 8, |index| {
            (if index == 3 { 3.0 } else { 1.0 }, 1.0)
        });
        for (sign, want) in [
            (LatencySign::FavourRemoval, -0.1),
            (LatencySign::Official, 0.1),
        ] {
            let config = SearchConfig {
                latency_weight: 0.5,
                latency_sign: sign,
                ..SearchConfig::default()
            };
            let mut obj = GateSearch::new(&config, Some(&table), n, 0.0);
            net.search.as_mut().unwrap().scores.grad = None;
            obj.after_backward(&mut net, &mut Gradients::default());
            let grad = net.search.as_ref().unwrap().scores.grad.clone().unwrap();
            // 0.5 · (3 − 1) / 10 = 0.1; gradient descent moves s against the gradient.
            assert!((grad.data()[3] - want).abs() < 1e-7, "{sign:?}");
            assert_eq!(grad.data()[2], 0.0);
        }
    }
}
