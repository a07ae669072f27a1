//! `depthshrink bench ...`: timings with a warm-up and the median of several runs.
//!
//! `bench kernels --json` prints one JSON object per line in the format shared with
//! `bench/pytorch_kernels.py`, so `bench/compare.py` can put both side by side.

use std::time::Instant;

use std::path::PathBuf;

use crate::args::{ArchArgs, load_model, parse_keep};
use clap::{Args, Subcommand};
use depthshrink_autograd::{Var, ops};
use depthshrink_nn::Ctx;
use depthshrink_nn::module;
use depthshrink_nn::network::Network;
use depthshrink_nn::optim::{Optimizer, Sgd, SgdConfig};
use depthshrink_shrinker::latency::compare_with_original;
use depthshrink_shrinker::merge::{blocks_to_merge, merge_network};
use depthshrink_tensor::conv::{self, ConvParams};
use depthshrink_tensor::{Tensor, gemm};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use serde::Serialize;
use serde_json::json;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// GEMM and convolution kernels on MobileNetV2 shapes, forward and backward.
    Kernels(KernelArgs),
    /// Full training steps (forward, backward, SGD update) on random data.
    Train(TrainArgs),
    /// Evaluation-mode forward passes on random data.
    Infer(InferArgs),
}

/// The network a model benchmark runs.
#[derive(Args)]
pub struct ModelArgs {
    #[command(flatten)]
    arch: ArchArgs,
    /// Images per batch.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Timed runs (the median is reported).
    #[arg(long, default_value_t = 7, value_name = "N")]
    runs: usize,
    /// Print one JSON object instead of a sentence.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct TrainArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Input resolution (default: 32 with --cifar, else 224).
    #[arg(long)]
    res: Option<usize>,
}

#[derive(Args)]
pub struct InferArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Input resolution (default: 32 with --cifar, else 224).
    #[arg(long)]
    res: Option<usize>,
    /// Time this network (e.g. a merged file) instead of a freshly initialised one.
    #[arg(long, value_name = "FILE")]
    weights: Option<PathBuf>,
    /// Remove these activations first (0/1 per activation index, 1 = keep; pad-first, unmerged).
    #[arg(long, value_name = "LIST|FILE")]
    keep: Option<String>,
    /// Merge the blocks --keep removes before timing (as `depthshrink merge` would).
    #[arg(long, requires = "keep")]
    merged: bool,
    /// Time three networks in one process, runs interleaved (the fair comparison on a shared
    /// machine): the original architecture with the same weights (every activation, ordinary
    /// padding), the network with the activations --keep or the finetuned weights remove
    /// (pad-first, unmerged), and its merged form; prints the speed-up over the original first.
    #[arg(long, conflicts_with = "merged")]
    compare: bool,
}

#[derive(Args)]
pub struct KernelArgs {
    /// Print one JSON object per case instead of a table.
    #[arg(long)]
    json: bool,
    /// Timed runs per case (the median is reported); at least 7 for published figures.
    #[arg(long, default_value_t = 7, value_name = "N")]
    runs: usize,
    /// Only the cases of this op (sgemm, copy, conv1x1, depthwise or conv).
    #[arg(long, value_name = "OP")]
    only: Option<String>,
}

pub fn run(cmd: BenchCommand) -> Result<(), String> {
    match cmd {
        BenchCommand::Kernels(args) => kernels(&args),
        BenchCommand::Train(args) => {
            let net = Network::new(&args.model.arch.arch()?, 0);
            model_bench(net, &args.model, args.res, true)
        }
        BenchCommand::Infer(args) => {
            let net = match &args.weights {
                Some(w) => load_model(w, &args.model.arch, args.keep.as_deref())?,
                None => {
                    let mut net = Network::new(&args.model.arch.arch()?, 0);
                    if let Some(keep) = &args.keep {
                        net.apply_keep(&parse_keep(keep)?)
                            .map_err(|e| format!("--keep: {e}"))?;
                    }
                    net
                }
            };
            if args.compare {
                return compare_merged(&net, &args);
            }
            let net = if args.merged {
                let merge = blocks_to_merge(&net, false, None);
                merge_network(&net, &merge).map_err(|e| e.to_string())?
            } else {
                net
            };
            model_bench(net, &args.model, args.res, false)
        }
    }
}

/// One line of `bench kernels --json`; field names are the contract with the PyTorch script.
#[derive(Serialize)]
struct KernelRecord {
    op: &'static str,
    pass: &'static str,
    n: usize,
    cin: usize,
    cout: usize,
    h: usize,
    w: usize,
    k: usize,
    stride: usize,
    ms: f64,
    /// Not for `copy`, which does no arithmetic.
    #[serde(skip_serializing_if = "Option::is_none")]
    gflops: Option<f64>,
    /// Bytes read and written per second (GB/s), for the memory-bound cases: `copy` and
    /// `depthwise` (input read and output written once, the least any kernel can move).
    #[serde(skip_serializing_if = "Option::is_none")]
    gbps: Option<f64>,
}

/// A convolution case: `op` names the kernel family the dispatch picks for it.
struct ConvCase {
    op: &'static str,
    n: usize,
    cin: usize,
    cout: usize,
    hw: usize,
    k: usize,
    stride: usize,
}

const CONV_CASES: &[ConvCase] = &[
    ConvCase {
        op: "conv1x1",
        n: 32,
        cin: 24,
        cout: 144,
        hw: 56,
        k: 1,
        stride: 1,
    },
    ConvCase {
        op: "conv1x1",
        n: 32,
        cin: 144,
        cout: 24,
        hw: 56,
        k: 1,
        stride: 1,
    },
    ConvCase {
        op: "conv1x1",
        n: 32,
        cin: 576,
        cout: 96,
        hw: 14,
        k: 1,
        stride: 1,
    },
    ConvCase {
        op: "depthwise",
        n: 32,
        cin: 144,
        cout: 144,
        hw: 56,
        k: 3,
        stride: 1,
    },
    ConvCase {
        op: "depthwise",
        n: 32,
        cin: 144,
        cout: 144,
        hw: 56,
        k: 3,
        stride: 2,
    },
    ConvCase {
        op: "conv",
        n: 32,
        cin: 32,
        cout: 32,
        hw: 56,
        k: 3,
        stride: 1,
    },
];

/// A named kernel invocation to time.
type Pass<'a> = (&'static str, Box<dyn Fn() + 'a>);

/// Runs `f` once to warm up, then `runs` times; returns the median in milliseconds.
pub fn median_ms(runs: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut times: Vec<f64> = (0..runs.max(1))
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn random_tensor(rng: &mut StdRng, shape: &[usize]) -> Tensor {
    let numel = shape.iter().product();
    let data = (0..numel).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    Tensor::from_vec(shape, data).expect("shape and data agree")
}

fn kernels(args: &KernelArgs) -> Result<(), String> {
    let wanted = |op: &str| args.only.as_deref().is_none_or(|o| op == o);
    let mut rng = StdRng::seed_from_u64(0);
    let mut records = Vec::new();
    let mut emit = |r: KernelRecord| {
        if args.json {
            println!("{}", serde_json::to_string(&r).expect("record serialises"));
        } else {
            let rate =
                |v: Option<f64>, unit| v.map_or(String::new(), |v| format!("  {v:>7.1} {unit}"));
            println!(
                "{:<10} {:<16} n={:<3} {:>4}→{:<4} {:>4}² k={} s={}  {:>9.2} ms{}{}",
                r.op,
                r.pass,
                r.n,
                r.cin,
                r.cout,
                r.h,
                r.k,
                r.stride,
                r.ms,
                rate(r.gflops, "GFLOP/s"),
                rate(r.gbps, "GB/s"),
            );
        }
        records.push(r);
    };

    if wanted("sgemm") {
        let d = 2048;
        let a = random_tensor(&mut rng, &[d, d]);
        let b = random_tensor(&mut rng, &[d, d]);
        let mut c = vec![0f32; d * d];
        let di = d as isize;
        let ms = median_ms(args.runs, || {
            gemm::sgemm(
                d,
                d,
                d,
                1.0,
                a.data(),
                di,
                1,
                b.data(),
                di,
                1,
                0.0,
                &mut c,
                di,
                1,
            );
        });
        let gflops = 2.0 * (d * d * d) as f64 / (ms * 1e6);
        emit(KernelRecord {
            op: "sgemm",
            pass: "forward",
            n: 1,
            cin: d,
            cout: d,
            h: d,
            w: 1,
            k: 1,
            stride: 1,
            ms,
            gflops: Some(gflops),
            gbps: None,
        });
    }

    if wanted("copy") {
        // The yardstick of the memory-bound depthwise kernels: their input, copied across the
        // pool into a buffer written before (no page faults), as a tuned memcpy would.
        let (n, c, hw) = (32, 144, 56);
        let x = random_tensor(&mut rng, &[n, c, hw, hw]);
        let mut dst = vec![0f32; x.numel()];
        let chunk = x.numel().div_ceil(4 * rayon::current_num_threads());
        let ms = median_ms(args.runs, || {
            dst.par_chunks_mut(chunk)
                .zip(x.data().par_chunks(chunk))
                .for_each(|(d, s)| d.copy_from_slice(s));
        });
        emit(KernelRecord {
            op: "copy",
            pass: "forward",
            n,
            cin: c,
            cout: c,
            h: hw,
            w: hw,
            k: 1,
            stride: 1,
            ms,
            gflops: None,
            gbps: Some(8.0 * x.numel() as f64 / (ms * 1e6)),
        });
    }

    for case in CONV_CASES.iter().filter(|c| wanted(c.op)) {
        let groups = if case.op == "depthwise" { case.cin } else { 1 };
        let p = ConvParams::new(case.stride, case.k / 2, groups);
        let x = random_tensor(&mut rng, &[case.n, case.cin, case.hw, case.hw]);
        let w = random_tensor(&mut rng, &[case.cout, case.cin / groups, case.k, case.k]);
        let y = conv::conv2d(&x, &w, None, p).map_err(|e| e.to_string())?;
        let dy = random_tensor(&mut rng, y.shape());
        let [n, _, oh, ow] = y.nchw("bench").map_err(|e| e.to_string())?;
        let macs = (n * case.cout * oh * ow * (case.cin / groups) * case.k * case.k) as f64;
        let x_shape = [case.n, case.cin, case.hw, case.hw];
        let moved = 4.0 * (x.numel() + y.numel()) as f64;
        let passes: [Pass<'_>; 3] = [
            ("forward", Box::new(|| drop(conv::conv2d(&x, &w, None, p)))),
            (
                "backward_input",
                Box::new(|| drop(conv::conv2d_backward_input(&dy, &w, x_shape, p))),
            ),
            (
                "backward_weight",
                Box::new(|| drop(conv::conv2d_backward_weight(&x, &dy, case.k, p))),
            ),
        ];
        for (pass, f) in passes {
            let ms = median_ms(args.runs, &*f);
            emit(KernelRecord {
                op: case.op,
                pass,
                n: case.n,
                cin: case.cin,
                cout: case.cout,
                h: case.hw,
                w: case.hw,
                k: case.k,
                stride: case.stride,
                ms,
                gflops: Some(2.0 * macs / (ms * 1e6)),
                gbps: (case.op == "depthwise").then(|| moved / (ms * 1e6)),
            });
        }
    }
    if records.is_empty() {
        return Err(format!(
            "no benchmark case matches --only {:?}",
            args.only.as_deref().unwrap_or("")
        ));
    }
    Ok(())
}

/// One line of `bench train|infer --json`.
#[derive(Serialize)]
struct ModelRecord {
    bench: &'static str,
    model: String,
    width: f32,
    res: usize,
    batch: usize,
    images_per_s: f64,
    ms_per_batch: f64,
    peak_rss_mb: f64,
}

fn model_bench(
    mut net: Network,
    args: &ModelArgs,
    res: Option<usize>,
    train: bool,
) -> Result<(), String> {
    if args.batch == 0 {
        return Err("--batch must be at least 1".into());
    }
    let arch = net.arch.clone();
    let res = res.unwrap_or(if arch.cifar { 32 } else { 224 });
    let mut rng = StdRng::seed_from_u64(0);
    let x = Var::constant(random_tensor(&mut rng, &[args.batch, 3, res, res]));
    let labels: Vec<usize> = (0..args.batch)
        .map(|_| rng.random_range(0..arch.num_classes))
        .collect();
    let err = |e: depthshrink_tensor::TensorError| e.to_string();
    let ms = if train {
        let mut sgd = Sgd::new(SgdConfig {
            momentum: 0.9,
            nesterov: true,
            weight_decay: 4e-5,
            no_decay_weight_decay: 0.0,
        })
        .map_err(|e| e.to_string())?;
        let mut step = || -> Result<(), String> {
            let ctx = Ctx::train(0);
            let loss = ops::cross_entropy(&net.forward(&x, &ctx).map_err(err)?, &labels, 0.1)
                .map_err(err)?;
            let mut grads = loss.backward().map_err(err)?;
            drop(ctx);
            module::collect_grads(&mut net, &mut grads);
            sgd.step(&mut net, 0.01).map_err(|e| e.to_string())
        };
        step()?;
        median_ms(args.runs, || {
            step().expect("a training step that succeeded once succeeds again")
        })
    } else {
        let mut net = net.for_inference().map_err(err)?;
        let ctx = Ctx::eval();
        net.forward(&x, &ctx).map_err(err)?;
        median_ms(args.runs, || drop(net.forward(&x, &ctx)))
    };
    let record = ModelRecord {
        bench: if train { "train" } else { "infer" },
        model: serde_json::to_value(arch.family)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default(),
        width: arch.width,
        res,
        batch: args.batch,
        images_per_s: args.batch as f64 / (ms / 1e3),
        ms_per_batch: ms,
        peak_rss_mb: peak_rss_mb(),
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&record).expect("record serialises")
        );
    } else {
        println!(
            "{} {} w{} {}² batch {}: {:.1} images/s, {:.2} ms/batch, peak RSS {:.0} MB",
            record.bench,
            record.model,
            record.width,
            res,
            record.batch,
            record.images_per_s,
            ms,
            record.peak_rss_mb
        );
    }
    Ok(())
}

/// `bench infer --compare`: original vs unmerged (pad-first) vs merged, interleaved.
fn compare_merged(net: &Network, args: &InferArgs) -> Result<(), String> {
    let m = &args.model;
    if m.batch == 0 {
        return Err("--batch must be at least 1".into());
    }
    let res = args.res.unwrap_or(if net.arch.cifar { 32 } else { 224 });
    let merge = blocks_to_merge(net, false, None);
    if !merge.contains(&true) {
        return Err(
            "--compare: no block to merge (give --keep, or the weights of a finetuned network)"
                .into(),
        );
    }
    let merged = merge_network(net, &merge).map_err(|e| e.to_string())?;
    let t = compare_with_original(net, &merged, res, m.batch, m.runs).map_err(|e| e.to_string())?;
    let merged_blocks = merge.iter().filter(|&&b| b).count();
    if m.json {
        let record = json!({
            "bench": "infer_compare",
            "width": net.arch.width,
            "cifar": net.arch.cifar,
            "res": res,
            "batch": m.batch,
            "merged_blocks": merged_blocks,
            "original_images_per_s": t.original,
            "unmerged_images_per_s": t.unmerged,
            "merged_images_per_s": t.merged,
            "speedup_vs_original": t.speedup_vs_original,
            "speedup_vs_unmerged": t.speedup_vs_unmerged,
        });
        println!("{record}");
    } else {
        println!(
            "infer w{} {res}² batch {}: original {:.1} images/s, unmerged (pad-first) {:.1}, merged ({merged_blocks} blocks) {:.1}; merged vs original {:.2}× (vs pad-first unmerged {:.2}×)",
            net.arch.width,
            m.batch,
            t.original,
            t.unmerged,
            t.merged,
            t.speedup_vs_original,
            t.speedup_vs_unmerged
        );
    }
    Ok(())
}

/// Peak resident memory of this process (Linux `VmHWM`), or 0 where unavailable.
fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}
