//! What removing each activation of a trained network costs, measured two ways, and how keep
//! lists compare before any finetuning (RESULTS.md, "The search"):
//!
//! 1. leave-one-out: the network with only that block's activations removed (pad-first with its
//!    one output ReLU6, as finetuning starts), its batch-norm statistics re-estimated on 40
//!    training batches, then its test loss and top-1;
//! 2. the search's straight-through gradient for that block's score (depthshrinker.md §3),
//!    averaged over 30 training batches, each with a random 10 of the 19 indices kept (the
//!    stem and head always), as a search sees them; positive = removing it raises the loss.
//!
//! Keep lists given as arguments (`1,1,0,…` or `1100…`) are scored like (1), beside the latency
//! their merged blocks save by the study's table. Needs the real CIFAR-10
//! (`../shared/data/cifar10`) and the shipped network; takes a few minutes on 2 cores:
//!
//! ```sh
//! cargo run --release --example removal_cost -- 1100100110010011011
//! ```

use std::path::Path;

use depthshrink::autograd::Var;
use depthshrink::nn::checkpoint;
use depthshrink::nn::module::{Ctx, collect_grads};
use depthshrink::nn::network::Network;
use depthshrink::nn::optim::zero_grad;
use depthshrink::shrinker::config::SearchConfig;
use depthshrink::shrinker::finetune::student;
use depthshrink::shrinker::latency::LatencyTable;
use depthshrink::shrinker::search::{GateSearch, install_gates};
use depthshrink::shrinker::train::{Data, Objective, TrainConfig, evaluate};
use depthshrink::tensor::Tensor;
use rand::SeedableRng;
use rand::seq::SliceRandom;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

const DATA: &str = "../shared/data/cifar10";
const NETWORK: &str = "models/cifar10-mbv2-w0.5.safetensors";
const LATENCY: &str = "results/cifar10/search-latency.json";
/// The indices a search may remove: the inverted-residual blocks (not stem, DS block, head).
const SEARCHABLE: std::ops::RangeInclusive<usize> = 2..=17;
const RECALIBRATION_BATCHES: usize = 40;
const GRADIENT_BATCHES: usize = 30;
const KEPT_WHILE_SEARCHING: usize = 10;

fn main() -> Result<()> {
    if !Path::new(DATA).is_dir() {
        return Err(format!("{DATA} is absent: this example needs the real CIFAR-10").into());
    }
    let text = std::fs::read_to_string("configs/cifar10-mbv2-w0.5.toml")?;
    let mut config = TrainConfig::from_toml(&text, &[])?;
    config.data.dir = Some(DATA.into());
    let data = config.data.open(0)?;
    let pretrained = Network::from_checkpoint(&checkpoint::load(NETWORK)?, None)?;
    let table = LatencyTable::read(Path::new(LATENCY), Some(&pretrained.arch), None)?;
    let n = pretrained.num_acts();

    let all = vec![true; n];
    let (loss, top1) = recalibrated(&pretrained, &all, &data)?;
    println!("every activation kept: test loss {loss:.3}, top-1 {top1:.2}%");
    let gradients = straight_through(&pretrained, &data)?;
    println!("\nindex  saving ms  leave-one-out loss, top-1   STE gradient mean (sd)");
    for i in SEARCHABLE {
        let mut keep = all.clone();
        keep[i] = false;
        let (loss, top1) = recalibrated(&pretrained, &keep, &data)?;
        let (mean, sd) = gradients[i];
        println!(
            "{i:5}  {:9.2}  {loss:8.3}  {top1:6.2}%          {mean:+.3} ({sd:.3})",
            table.savings()[i]
        );
    }
    for list in std::env::args().skip(1) {
        let keep: Vec<bool> = list
            .chars()
            .filter(|c| matches!(c, '0' | '1'))
            .map(|c| c == '1')
            .collect();
        if keep.len() != n {
            return Err(format!("{list}: {} entries, the network has {n}", keep.len()).into());
        }
        let saving: f64 = (0..n)
            .filter(|&i| !keep[i])
            .map(|i| table.savings()[i])
            .sum();
        let (loss, top1) = recalibrated(&pretrained, &keep, &data)?;
        println!("\n{list}: saves {saving:.1} ms; test loss {loss:.3}, top-1 {top1:.2}%");
    }
    Ok(())
}

/// The student for `keep`, its BN statistics re-estimated, evaluated: (loss, top-1 %).
fn recalibrated(pretrained: &Network, keep: &[bool], data: &Data) -> Result<(f64, f64)> {
    let mut net = student(pretrained, keep)?;
    for (step, batch) in data.train.epoch(7).take(RECALIBRATION_BATCHES).enumerate() {
        let ctx = Ctx::train_no_grad(step as u64);
        net.forward(&Var::constant(batch?.images), &ctx)?;
    }
    let stats = evaluate(&net, &data.test)?;
    Ok((stats.loss, 100.0 * stats.top1))
}

/// Per index: mean and standard deviation of the task's gradient on its gate score.
fn straight_through(pretrained: &Network, data: &Data) -> Result<Vec<(f64, f64)>> {
    let n = pretrained.num_acts();
    let config = SearchConfig {
        keep_ratio: KEPT_WHILE_SEARCHING as f64 / n as f64,
        searchable: Some(SEARCHABLE.collect()),
        ..SearchConfig::default()
    };
    let mut net = pretrained.clone();
    install_gates(&mut net, &config)?;
    let mut objective = GateSearch::new(&config, None, n, 0.0);
    let (mut sum, mut squares) = (vec![0f64; n], vec![0f64; n]);
    for (step, batch) in data.train.epoch(3).take(GRADIENT_BATCHES).enumerate() {
        // Random scores in (0, 1): a random keep list, and every gate inside the clip.
        let mut order: Vec<usize> = SEARCHABLE.collect();
        order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(step as u64));
        let mut scores = vec![0f32; n];
        for (rank, &i) in order.iter().enumerate() {
            scores[i] = (rank + 1) as f32 / (order.len() + 1) as f32;
        }
        let gates = net.search.as_mut().expect("installed above");
        gates.scores.value = Tensor::from_vec(&[n], scores)?;
        let mut ctx = Ctx::train(step as u64);
        let (loss, _) = objective.loss(&mut net, &mut ctx, &batch?)?;
        let mut grads = loss.backward()?;
        drop((loss, ctx));
        collect_grads(&mut net, &mut grads);
        let gates = net.search.as_mut().expect("installed above");
        let grad = gates
            .scores
            .grad
            .take()
            .ok_or("no gradient reached the scores")?;
        for (i, &g) in grad.data().iter().enumerate() {
            sum[i] += g as f64;
            squares[i] += (g as f64).powi(2);
        }
        zero_grad(&mut net);
    }
    let k = GRADIENT_BATCHES as f64;
    Ok((0..n)
        .map(|i| {
            let mean = sum[i] / k;
            (mean, (squares[i] / k - mean * mean).max(0.0).sqrt())
        })
        .collect())
}
