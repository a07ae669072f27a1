//! Latency tables measured on this machine with this project's kernels (depthshrinker.md §3).
//!
//! For every block: the time of the original block (BN folded, ReLU6 kept) and of its merged
//! dense conv, at the block's real input size; ΔL = unmerged − merged is what the search's
//! latency term weighs. Whether a merge pays is a measurement: on a CPU a merged 5×5 block can
//! be slower than the original.

use std::path::Path;
use std::time::Instant;

use depthshrink_autograd::Var;
use depthshrink_nn::Ctx;
use depthshrink_nn::arch::ArchConfig;
use depthshrink_nn::network::{Block, Network, run_eval};
use depthshrink_tensor::{Result, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::StageError;
use crate::merge::{merge_block, merge_network};

/// One block's measured latency.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BlockLatency {
    /// Activation index of the block (1 = the DS block, 2.. = IR blocks).
    pub index: usize,
    /// Input channels.
    pub cin: usize,
    /// Output channels.
    pub cout: usize,
    /// Depthwise (and merged) kernel size.
    pub k: usize,
    /// The block's stride.
    pub stride: usize,
    /// Input side length.
    pub size: usize,
    /// Median time of the original block (BN folded, ReLU6 kept) on one batch, in ms.
    pub unmerged_ms: f64,
    /// Median time of its merged dense conv on the same input, in ms.
    pub merged_ms: f64,
}

impl BlockLatency {
    /// ΔL: what merging this block saves (negative when the merged conv is slower).
    pub fn saving_ms(&self) -> f64 {
        self.unmerged_ms - self.merged_ms
    }
}

/// Per-block and whole-network latencies of one architecture at one input size and batch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LatencyTable {
    /// The network measured.
    pub arch: ArchConfig,
    /// Input side length of the network, in pixels.
    pub res: usize,
    /// Batch size of every timed pass.
    pub batch: usize,
    /// Threads of the pool the times were taken with.
    pub threads: usize,
    /// One entry per block, in order (activation indices 1..=B).
    pub blocks: Vec<BlockLatency>,
    /// The original network (BN folded).
    pub network_ms: f64,
    /// Every block merged (activations removed everywhere but stem and head).
    pub merged_network_ms: f64,
}

impl LatencyTable {
    /// Reads a table written by `depthshrink latency --out` (or a demo's `latency.json`) and,
    /// when `arch` is given, checks it was measured for that network (at `res`, when given).
    /// The error names the file.
    pub fn read(
        path: &Path,
        arch: Option<&ArchConfig>,
        res: Option<usize>,
    ) -> std::result::Result<LatencyTable, StageError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| StageError::Latency(format!("{}: {e}", path.display())))?;
        let table: LatencyTable = serde_json::from_str(&text).map_err(|e| {
            StageError::Latency(format!(
                "{}: not a latency table (write one with `depthshrink latency --out`): {e}",
                path.display()
            ))
        })?;
        if let Some(arch) = arch {
            table
                .check(arch, res)
                .map_err(|e| StageError::Latency(format!("{}: {e}", path.display())))?;
        }
        Ok(table)
    }

    /// Checks that this table was measured for `arch` (and, when given, at input size `res`):
    /// a table of another network would weigh the wrong blocks. The error names the mismatch.
    pub fn check(&self, arch: &ArchConfig, res: Option<usize>) -> std::result::Result<(), String> {
        if self.arch != *arch {
            return Err(format!(
                "the table was measured for {}, the network is {}",
                self.arch, arch
            ));
        }
        let blocks = arch.spec().blocks.len();
        if self.blocks.len() != blocks {
            return Err(format!(
                "the table has {} blocks, the network {blocks}",
                self.blocks.len()
            ));
        }
        if let Some((i, b)) = self
            .blocks
            .iter()
            .enumerate()
            .find(|(i, b)| b.index != i + 1)
        {
            return Err(format!(
                "the table's block {i} has activation index {}, expected {}",
                b.index,
                i + 1
            ));
        }
        match res {
            Some(res) if res != self.res => Err(format!(
                "the table was measured at {}×{} input, the network runs at {res}×{res}",
                self.res, self.res
            )),
            _ => Ok(()),
        }
    }

    /// ΔL per activation index (stem and head: 0, nothing to merge).
    pub fn savings(&self) -> Vec<f64> {
        let mut s = vec![0.0; self.blocks.len() + 2];
        for b in &self.blocks {
            s[b.index] = b.saving_ms();
        }
        s
    }
}

#[cfg(test)]
impl LatencyTable {
    /// A made-up table for the tests: `arch` at `res`, network 10 ms, block `index` taking
    /// `times(index)` = (original, merged) ms.
    pub(crate) fn made_up(
        arch: ArchConfig,
        res: usize,
        times: impl Fn(usize) -> (f64, f64),
    ) -> LatencyTable {
        let blocks = (1..=arch.spec().blocks.len())
            .map(|index| {
                let (unmerged_ms, merged_ms) = times(index);
                BlockLatency {
                    index,
                    cin: 1,
                    cout: 1,
                    k: 3,
                    stride: 1,
                    size: 8,
                    unmerged_ms,
                    merged_ms,
                }
            })
            .collect();
        LatencyTable {
            arch,
            res,
            batch: 1,
            threads: 1,
            blocks,
            network_ms: 10.0,
            merged_network_ms: 5.0,
        }
    }
}

/// Median time (ms) of each of `fs` over `runs` rounds after one warm-up round, the calls
/// interleaved within each round so that a change of load on a shared machine hits all alike
/// (measured one after the other, two identical blocks once timed 3.4 and 10.3 ms).
pub fn interleaved_medians(
    runs: usize,
    fs: &mut [&mut dyn FnMut() -> Result<()>],
) -> Result<Vec<f64>> {
    let mut times = vec![Vec::with_capacity(runs.max(1)); fs.len()];
    for round in 0..=runs.max(1) {
        for (f, t) in fs.iter_mut().zip(&mut times) {
            let start = Instant::now();
            f()?;
            if round > 0 {
                t.push(start.elapsed().as_secs_f64() * 1e3);
            }
        }
    }
    Ok(times
        .into_iter()
        .map(|mut t| {
            t.sort_by(f64::total_cmp);
            t[t.len() / 2]
        })
        .collect())
}

/// Median forward time (ms) of each network in evaluation mode (BN folded) on one batch of
/// `batch` × 3 × `res`², the runs interleaved.
pub fn compare_networks(
    nets: &[&Network],
    res: usize,
    batch: usize,
    runs: usize,
) -> Result<Vec<f64>> {
    let mut fast = nets
        .iter()
        .map(|n| n.for_inference())
        .collect::<Result<Vec<_>>>()?;
    let (x, ctx) = (input(&[batch, 3, res, res])?, Ctx::eval());
    let mut fs: Vec<_> = fast
        .iter_mut()
        .map(|net| || net.forward(&x, &ctx).map(drop))
        .collect();
    let mut fs: Vec<&mut dyn FnMut() -> Result<()>> = fs.iter_mut().map(|f| f as _).collect();
    interleaved_medians(runs, &mut fs)
}

/// Inference speed of a compressed network at one batch size, three ways, timed interleaved in
/// one process (images/s): the **original** architecture with the same weights (every
/// activation, ordinary padding) — what a speed-up of the method is measured against — the
/// finetuned network before merging (pad-first blocks), and the merged network.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Throughput {
    /// Batch size of the timed passes.
    pub batch: usize,
    /// The original architecture, images/s.
    pub original: f64,
    /// The finetuned network before merging, images/s.
    pub unmerged: f64,
    /// The merged network, images/s.
    pub merged: f64,
    /// merged / original: the method's speed-up.
    pub speedup_vs_original: f64,
    /// merged / unmerged (pad-first): what merging alone buys.
    pub speedup_vs_unmerged: f64,
}

/// Times `unmerged`'s original architecture, `unmerged` and `merged` interleaved (median of
/// `runs` passes each) on a `batch` × 3 × `res`² input.
pub fn compare_with_original(
    unmerged: &Network,
    merged: &Network,
    res: usize,
    batch: usize,
    runs: usize,
) -> Result<Throughput> {
    let original = unmerged.original()?;
    let ms = compare_networks(&[&original, unmerged, merged], res, batch, runs)?;
    let ips = |ms: f64| batch as f64 / (ms / 1e3);
    Ok(Throughput {
        batch,
        original: ips(ms[0]),
        unmerged: ips(ms[1]),
        merged: ips(ms[2]),
        speedup_vs_original: ms[0] / ms[2],
        speedup_vs_unmerged: ms[1] / ms[2],
    })
}

fn input(shape: &[usize]) -> Result<Var> {
    let n: usize = shape.iter().product();
    Ok(Var::constant(Tensor::from_vec(
        shape,
        (0..n).map(|i| ((i % 97) as f32 - 48.0) / 48.0).collect(),
    )?))
}

/// Measures every block and the whole network of `arch` (fresh weights) at `res`×`res` and
/// batch `batch`, each time the median of `runs` passes. `progress(done, total)` is called
/// after each block.
pub fn measure(
    arch: &ArchConfig,
    res: usize,
    batch: usize,
    runs: usize,
    mut progress: impl FnMut(usize, usize),
) -> Result<LatencyTable> {
    let net = Network::new(arch, 0);
    let mut fast = net.for_inference()?;
    let mut linear = net.clone();
    linear.apply_keep(&vec![false; net.num_acts()])?;
    let ctx = Ctx::eval();
    let mut size = (res + 2 - 3) / net.spec.stem_stride + 1;
    let mut blocks = Vec::new();
    let total = net.blocks.len();
    for (i, (block, lin)) in fast.blocks.iter_mut().zip(&linear.blocks).enumerate() {
        let s = net.spec.blocks[i];
        let x = input(&[batch, s.cin, size, size])?;
        let Block::Ir(lin) = lin else {
            unreachable!("a fresh network has no merged blocks")
        };
        let mut merged = merge_block(lin)?;
        merged.conv.prepack();
        let mut merged = Block::Merged(merged);
        // Timed on the thread the whole network's pass would use.
        let t = run_eval(batch, || {
            interleaved_medians(
                runs,
                &mut [&mut || block.forward(&x, &ctx).map(drop), &mut || {
                    merged.forward(&x, &ctx).map(drop)
                }],
            )
        })?;
        let (unmerged_ms, merged_ms) = (t[0], t[1]);
        blocks.push(BlockLatency {
            index: i + 1,
            cin: s.cin,
            cout: s.cout,
            k: s.k,
            stride: s.stride,
            size,
            unmerged_ms,
            merged_ms,
        });
        size = (size + 2 * (s.k / 2) - s.k) / s.stride + 1;
        progress(i + 1, total);
    }
    let x = input(&[batch, 3, res, res])?;
    let mut all_merged = merge_network(&linear, &vec![true; total])?.for_inference()?;
    let t = interleaved_medians(
        runs,
        &mut [&mut || fast.forward(&x, &ctx).map(drop), &mut || {
            all_merged.forward(&x, &ctx).map(drop)
        }],
    )?;
    let (network_ms, merged_network_ms) = (t[0], t[1]);
    Ok(LatencyTable {
        arch: arch.clone(),
        res,
        batch,
        threads: rayon::current_num_threads(),
        blocks,
        network_ms,
        merged_network_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_covers_every_block_with_positive_times() {
        let arch = ArchConfig::mobilenet_v2(0.35, 10, true);
        let mut calls = 0;
        let t = measure(&arch, 16, 1, 1, |_, _| calls += 1).unwrap();
        assert_eq!(t.blocks.len(), 17);
        assert_eq!(calls, 17);
        assert!(
            t.blocks
                .iter()
                .all(|b| b.unmerged_ms > 0.0 && b.merged_ms > 0.0)
        );
        assert_eq!(t.savings().len(), 19);
        assert_eq!((t.savings()[0], t.savings()[18]), (0.0, 0.0));
        // Sizes follow the strides: the CIFAR layout keeps 16 through stage 2, then halves.
        assert_eq!(t.blocks[0].size, 16);
        assert_eq!(t.blocks.last().unwrap().size, 2);
        let round_trip: LatencyTable =
            serde_json::from_str(&serde_json::to_string(&t).unwrap()).unwrap();
        assert_eq!(
            (round_trip.arch, round_trip.blocks.len()),
            (t.arch, t.blocks.len())
        );
    }
}
