//! `depthshrink bench ...`: timings with a warm-up and the median of several runs.
//!
//! `bench kernels --json` prints one JSON object per line in the format shared with
//! `bench/pytorch_kernels.py`, so `bench/compare.py` can put both side by side. `bench kernels
//! --only gemm-shapes|gemm-ab|conv-shapes|bn` runs the finer suites behind the kernel decisions in
//! BENCHMARKS.md (wall and on-CPU rates, one thread for the GEMM shapes).

use std::time::{Duration, Instant};

use std::path::PathBuf;

use crate::args::{ArchArgs, load_model, random_model};
use clap::{Args, Subcommand};
use depthshrink_autograd::{Var, ops};
use depthshrink_nn::Ctx;
use depthshrink_nn::module;
use depthshrink_nn::network::Network;
use depthshrink_nn::optim::{Optimizer, Sgd, SgdConfig};
use depthshrink_shrinker::latency::compare_with_original;
use depthshrink_shrinker::merge::{blocks_to_merge, merge_network};
use depthshrink_tensor::batchnorm::{self, BnOptions};
use depthshrink_tensor::conv::{self, ConvGeom, ConvParams};
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
    /// Only the cases of this op (sgemm, copy, conv1x1, depthwise or conv), or one of the suites
    /// that run only when named: gemm-shapes (conv's GEMM products, one thread), gemm-ab (the
    /// GEMM backends alternated), conv-shapes (MobileNetV2 and CIFAR convs through the tensor and
    /// slice APIs), bn (training batch norm).
    #[arg(long, value_name = "OP")]
    only: Option<String>,
    /// With a named suite: only the cases whose label contains every word of TEXT (conv-shapes
    /// also matches its API level, tensor or slice, and pass, fwd, bwd-in or bwd-w).
    #[arg(long, value_name = "TEXT", requires = "only")]
    filter: Option<String>,
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
                None => random_model(&args.model.arch, args.keep.as_deref())?,
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
/// A GEMM (`op` sgemm) records its `M×K·K×N` product as `cout` = M, `cin` = K, `h` = N.
#[derive(Serialize, Default)]
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
    /// `depthwise` (input read and output written once, the least any kernel can move), and the
    /// memory floor of `batchnorm`.
    #[serde(skip_serializing_if = "Option::is_none")]
    gbps: Option<f64>,
    /// The case's label in a named suite (which the PyTorch script does not have).
    #[serde(skip_serializing_if = "Option::is_none")]
    label: Option<String>,
    /// conv-shapes: `tensor` (the output allocated, as autograd does) or `slice` (into reused
    /// buffers: the kernels alone); gemm-ab: the backend.
    #[serde(skip_serializing_if = "Option::is_none")]
    variant: Option<&'static str>,
}

impl KernelRecord {
    /// The record of an op on `[n, cin, cout, hw, k, stride]` (square maps) that took `ms`.
    fn on(op: &'static str, pass: &'static str, shape: [usize; 6], ms: f64) -> KernelRecord {
        let [n, cin, cout, hw, k, stride] = shape;
        KernelRecord {
            op,
            pass,
            n,
            cin,
            cout,
            h: hw,
            w: hw,
            k,
            stride,
            ms,
            ..Default::default()
        }
    }
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

impl ConvCase {
    const fn new(
        op: &'static str,
        n: usize,
        [cin, cout]: [usize; 2],
        [hw, k, stride]: [usize; 3],
    ) -> Self {
        ConvCase {
            op,
            n,
            cin,
            cout,
            hw,
            k,
            stride,
        }
    }
}

const CONV_CASES: &[ConvCase] = &[
    ConvCase::new("conv1x1", 32, [24, 144], [56, 1, 1]),
    ConvCase::new("conv1x1", 32, [144, 24], [56, 1, 1]),
    ConvCase::new("conv1x1", 32, [576, 96], [14, 1, 1]),
    ConvCase::new("depthwise", 32, [144, 144], [56, 3, 1]),
    ConvCase::new("depthwise", 32, [144, 144], [56, 3, 2]),
    ConvCase::new("conv", 32, [32, 32], [56, 3, 1]),
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
    median(&mut times)
}

fn random_vec(rng: &mut StdRng, len: usize) -> Vec<f32> {
    (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

fn random_tensor(rng: &mut StdRng, shape: &[usize]) -> Tensor {
    let data = random_vec(rng, shape.iter().product());
    Tensor::from_vec(shape, data).expect("shape and data agree")
}

/// Where `bench kernels` results go: JSON lines or text, and how many cases ran.
struct Report {
    json: bool,
    cases: usize,
}

impl Report {
    /// Prints a record of the default cases: as JSON, or as a table row.
    fn record(&mut self, r: KernelRecord) {
        let rate = |v: Option<f64>, unit| v.map_or(String::new(), |v| format!("  {v:>7.1} {unit}"));
        let line = format!(
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
        self.json(r);
        self.text(line);
    }

    /// Counts a case, and prints its record in JSON mode.
    fn json(&mut self, r: KernelRecord) {
        if self.json {
            println!("{}", serde_json::to_string(&r).expect("record serialises"));
        }
        self.cases += 1;
    }

    /// Prints `line` in text mode.
    fn text(&self, line: String) {
        if !self.json {
            println!("{line}");
        }
    }
}

fn kernels(args: &KernelArgs) -> Result<(), String> {
    let wanted = |op: &str| match args.only.as_deref() {
        None => !NAMED_SUITES.contains(&op),
        Some(o) => op == o,
    };
    let mut rng = StdRng::seed_from_u64(0);
    let mut report = Report {
        json: args.json,
        cases: 0,
    };
    if wanted("sgemm") {
        let d = 2048;
        let a = random_tensor(&mut rng, &[d, d]);
        let b = random_tensor(&mut rng, &[d, d]);
        let mut c = vec![0f32; d * d];
        let rows = [d as isize, 1];
        let ms = median_ms(args.runs, || {
            let (a, b) = ((a.data(), rows), (b.data(), rows));
            gemm::product_with(gemm::Backend::Sgemm, [d, d, d], a, b, &mut c);
        });
        report.record(gemm_record(None, [d, d, d], ms, None));
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
        report.record(KernelRecord {
            gbps: Some(8.0 * x.numel() as f64 / (ms * 1e6)),
            ..KernelRecord::on("copy", "forward", [n, c, c, hw, 1, 1], ms)
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
            let shape = [case.n, case.cin, case.cout, case.hw, case.k, case.stride];
            report.record(KernelRecord {
                gflops: Some(2.0 * macs / (ms * 1e6)),
                gbps: (case.op == "depthwise").then(|| moved / (ms * 1e6)),
                ..KernelRecord::on(case.op, pass, shape, ms)
            });
        }
    }
    let lab = Lab {
        runs: args.runs,
        filter: args.filter.as_deref().unwrap_or(""),
    };
    if wanted("gemm-shapes") {
        lab.gemm_shapes(&mut rng, &mut report);
    }
    if wanted("gemm-ab") {
        lab.gemm_ab(&mut rng, &mut report);
    }
    if wanted("conv-shapes") {
        lab.conv_shapes(&mut rng, &mut report)?;
    }
    if wanted("bn") {
        lab.batch_norm(&mut rng, &mut report)?;
    }
    if report.cases == 0 {
        let filter = args.filter.as_ref().map(|f| format!(" --filter {f:?}"));
        return Err(format!(
            "no benchmark case matches --only {:?}{}",
            args.only.as_deref().unwrap_or(""),
            filter.unwrap_or_default()
        ));
    }
    Ok(())
}

/// The passes of conv-shapes: the short name `--filter` matches, and the record's pass.
const CONV_PASSES: [(&str, &str); 3] = [
    ("fwd", "forward"),
    ("bwd-in", "backward_input"),
    ("bwd-w", "backward_weight"),
];

/// The `--only` values that run only when named: finer suites behind the kernel decisions.
const NAMED_SUITES: [&str; 4] = ["gemm-shapes", "gemm-ab", "conv-shapes", "bn"];

/// (label, m, k, n, A transposed, B transposed): the products conv issues per image.
const GEMM_SHAPES: [(&str, usize, usize, usize, bool, bool); 10] = [
    ("pw fwd 24→144 @56²", 144, 24, 3136, false, false),
    ("pw fwd 144→24 @56²", 24, 144, 3136, false, false),
    ("pw fwd 576→96 @14²", 96, 576, 196, false, false),
    ("pw bwd-in 24→144 (Wᵀ·dY)", 24, 144, 3136, true, false),
    ("pw bwd-in 144→24 (Wᵀ·dY)", 144, 24, 3136, true, false),
    ("pw bwd-w 24→144 (dY·Xᵀ)", 144, 3136, 24, false, true),
    ("pw bwd-w 144→24 (dY·Xᵀ)", 24, 3136, 144, false, true),
    ("pw bwd-w 576→96 (dY·Xᵀ)", 96, 196, 576, false, true),
    ("im2col 3×3 32→32 @56²", 32, 288, 3136, false, false),
    ("square 512³", 512, 512, 512, false, false),
];

/// (label, n, cin, cout, hw, k, stride, pad, groups): MobileNetV2's convs at batch 32 and 1, and
/// the CIFAR network's small maps at batch 128.
const CONV_SHAPES: [(&str, [usize; 8]); 21] = [
    ("pw 24→144 @56² N32", [32, 24, 144, 56, 1, 1, 0, 1]),
    ("pw 144→24 @56² N32", [32, 144, 24, 56, 1, 1, 0, 1]),
    ("pw 576→96 @14² N32", [32, 576, 96, 14, 1, 1, 0, 1]),
    ("dense3 32→32 @56² N32", [32, 32, 32, 56, 3, 1, 1, 1]),
    ("b1 stem 3→32 s2 @224²", [1, 3, 32, 224, 3, 2, 1, 1]),
    ("b1 pw 32→192 @112²", [1, 32, 192, 112, 1, 1, 0, 1]),
    ("b1 pw 96→24 @112²", [1, 96, 24, 112, 1, 1, 0, 1]),
    ("b1 pw 320→1280 @7²", [1, 320, 1280, 7, 1, 1, 0, 1]),
    ("b1 dense3 24→24 @56²", [1, 24, 24, 56, 3, 1, 1, 1]),
    ("b1 dense3 32→64 s2 @56²", [1, 32, 64, 56, 3, 2, 1, 1]),
    ("dense3 24→24 @56² N32", [32, 24, 24, 56, 3, 1, 1, 1]),
    ("dense5 64→64 s2 @28² N32", [32, 64, 64, 28, 5, 2, 2, 1]),
    ("grouped3 g4 64→64 @28² N32", [32, 64, 64, 28, 3, 1, 1, 4]),
    ("cifar pw 80→480 @4² N128", [128, 80, 480, 4, 1, 1, 0, 1]),
    ("cifar pw 480→80 @4² N128", [128, 480, 80, 4, 1, 1, 0, 1]),
    ("cifar pw 32→192 @8² N128", [128, 32, 192, 8, 1, 1, 0, 1]),
    ("cifar pw 192→32 @8² N128", [128, 192, 32, 8, 1, 1, 0, 1]),
    ("cifar pw 16→96 @16² N128", [128, 16, 96, 16, 1, 1, 0, 1]),
    ("dw3 144 @56² N32", [32, 144, 144, 56, 3, 1, 1, 144]),
    ("dw3 144 s2 @56² N32", [32, 144, 144, 56, 3, 2, 1, 144]),
    ("dw3 576 @7² N32", [32, 576, 576, 7, 3, 1, 1, 576]),
];

/// (label, channels, plane side): training batch norm on the CIFAR MobileNetV2-w0.5 shapes at
/// batch 128, planes 32² down to 4², where per-plane overhead competes with memory traffic.
const BN_CASES: [(&str, usize, usize); 4] = [
    ("48 @32²", 48, 32),
    ("72 @16²", 72, 16),
    ("192 @8²", 192, 8),
    ("480 @4²", 480, 4),
];

/// CPU time consumed so far by all of this process's threads, in seconds (Linux scheduler
/// accounting, 0 elsewhere): on a machine shared with other jobs it shows what a kernel costs
/// while it actually runs.
fn cpu_seconds() -> f64 {
    let tasks = std::fs::read_dir("/proc/self/task").into_iter().flatten();
    let ns: u64 = tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    ns as f64 * 1e-9
}

/// Per-call medians over `runs` runs, each of enough calls to last about `min_run`, after a
/// warm-up call: (wall ms, on-CPU ms).
fn time_per_call(runs: usize, min_run: Duration, mut f: impl FnMut()) -> (f64, f64) {
    f();
    let t = Instant::now();
    f();
    let once = t.elapsed().max(Duration::from_micros(1));
    let reps = (min_run.as_secs_f64() / once.as_secs_f64()).ceil().max(1.0) as usize;
    let (mut wall, mut cpu): (Vec<f64>, Vec<f64>) = (0..runs.max(1))
        .map(|_| {
            let (t, c) = (Instant::now(), cpu_seconds());
            (0..reps).for_each(|_| f());
            let per = |v: f64| v * 1e3 / reps as f64;
            (per(t.elapsed().as_secs_f64()), per(cpu_seconds() - c))
        })
        .unzip();
    (median(&mut wall), median(&mut cpu))
}

/// The median of `v` (sorted in place).
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs `f` in a one-thread pool: the GEMM shapes are timed as conv's tasks run them.
fn single_thread<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("a one-thread pool")
        .install(f)
}

/// The named suites of `bench kernels`: timed runs per case and the `--filter` words.
struct Lab<'a> {
    runs: usize,
    filter: &'a str,
}

impl Lab<'_> {
    /// Whether a case described by `text` passes `--filter`.
    fn wanted(&self, text: &str) -> bool {
        self.filter.split_whitespace().all(|w| text.contains(w))
    }

    /// The ten products conv issues per image, each timed on one thread.
    fn gemm_shapes(&self, rng: &mut StdRng, report: &mut Report) {
        for (label, m, k, n, ta, tb) in GEMM_SHAPES {
            if !self.wanted(label) {
                continue;
            }
            let (a, b, mut c) = gemm_operands(rng, [m, k, n]);
            let (sa, sb) = gemm_strides([m, k, n], ta, tb);
            let product =
                || gemm::product_with(gemm::Backend::Sgemm, [m, k, n], (&a, sa), (&b, sb), &mut c);
            let min_run = Duration::from_millis(100);
            let (ms, cpu) = single_thread(|| time_per_call(self.runs, min_run, product));
            let gf = |ms: f64| 2.0 * (m * k * n) as f64 / (ms * 1e6);
            let line = format!(
                "{label:28} M={m:4} K={k:4} N={n:4}  1 thread: {:7.1} µs {:5.1} GFLOP/s wall, {:5.1} on-CPU",
                ms * 1e3,
                gf(ms),
                gf(cpu)
            );
            report.json(gemm_record(Some(label), [m, k, n], ms, None));
            report.text(line);
        }
    }

    /// Every GEMM backend on the same shapes, one thread, alternating run by run so that load
    /// drifts hit them all alike: per shape and backend, the median of 9 alternations.
    fn gemm_ab(&self, rng: &mut StdRng, report: &mut Report) {
        let backends = gemm::Backend::ALL;
        report.text("one thread, median of 9 alternations: wall GFLOP/s (on-CPU GFLOP/s)".into());
        for (label, m, k, n, ta, tb) in GEMM_SHAPES {
            if !self.wanted(label) {
                continue;
            }
            let (a, b, mut c) = gemm_operands(rng, [m, k, n]);
            let (sa, sb) = gemm_strides([m, k, n], ta, tb);
            let mut times = vec![(vec![], vec![]); backends.len()];
            single_thread(|| {
                for _ in 0..9 {
                    for (&backend, (wall, cpu)) in backends.iter().zip(&mut times) {
                        let product =
                            || gemm::product_with(backend, [m, k, n], (&a, sa), (&b, sb), &mut c);
                        let (t, u) = time_per_call(self.runs, Duration::from_millis(15), product);
                        wall.push(t);
                        cpu.push(u);
                    }
                }
            });
            let mut cols = Vec::new();
            for (&backend, (wall, cpu)) in backends.iter().zip(&mut times) {
                let (ms, cpu) = (median(wall), median(cpu));
                let gf = |ms| 2.0 * (m * k * n) as f64 / (ms * 1e6);
                cols.push(format!(
                    "{} {:5.1} ({:5.1})",
                    backend.name(),
                    gf(ms),
                    gf(cpu)
                ));
                report.json(gemm_record(
                    Some(label),
                    [m, k, n],
                    ms,
                    Some(backend.name()),
                ));
            }
            report.text(format!(
                "{label:28} M={m:4} K={k:4} N={n:4}  {}",
                cols.join(" | ")
            ));
        }
    }

    /// Convolutions forward and backward, through the tensor API (allocating the output, as
    /// autograd does) and the slice API into reused buffers (the kernels alone, without the page
    /// faults of a fresh multi-megabyte output).
    fn conv_shapes(&self, rng: &mut StdRng, report: &mut Report) -> Result<(), String> {
        let err = |e: depthshrink_tensor::TensorError| e.to_string();
        for (label, [n, cin, cout, hw, k, stride, pad, groups]) in CONV_SHAPES {
            let apis = ["tensor fwd bwd-in bwd-w", "slice fwd bwd-in bwd-w"];
            if !apis.iter().any(|a| self.wanted(&format!("{label} {a}"))) {
                continue;
            }
            let p = ConvParams::new(stride, pad, groups);
            let x = random_tensor(rng, &[n, cin, hw, hw]);
            let w_shape = [cout, cin / groups, k, k];
            let w = random_tensor(rng, &w_shape);
            let b = random_tensor(rng, &[cout]);
            let y = conv::conv2d(&x, &w, Some(&b), p).map_err(err)?;
            let g = ConvGeom::new("bench", [n, cin, hw, hw], &w_shape, p).map_err(err)?;
            let flops = 2.0 * g.macs() as f64;
            let min_run = Duration::from_millis(if n == 1 { 50 } else { 200 });
            let (mut yb, mut dxb, mut dwb) = (
                vec![0.0; y.numel()],
                vec![0.0; x.numel()],
                vec![0.0; w.numel()],
            );
            let x_shape = [n, cin, hw, hw];
            let mut call = |api: &str, pass: &str| match (api, pass) {
                ("tensor", "fwd") => drop(conv::conv2d(&x, &w, Some(&b), p)),
                ("tensor", "bwd-in") => drop(conv::conv2d_backward_input(&y, &w, x_shape, p)),
                ("tensor", _) => drop(conv::conv2d_backward_weight(&x, &y, k, p)),
                (_, "fwd") => conv::forward(x.data(), w.data(), Some(b.data()), false, &mut yb, &g),
                (_, "bwd-in") => conv::backward_input(y.data(), w.data(), &mut dxb, &g),
                _ => conv::backward_weight(x.data(), y.data(), &mut dwb, &g),
            };
            let op = if g.is_depthwise() {
                "depthwise"
            } else if k == 1 && stride == 1 && pad == 0 {
                "conv1x1"
            } else {
                "conv"
            };
            let mut line = String::new();
            for api in ["tensor", "slice"] {
                let mut shown = false;
                for (pass, name) in CONV_PASSES {
                    if !self.wanted(&format!("{label} {api} {pass}")) {
                        continue;
                    }
                    if !shown {
                        line += &format!("\n{label:28} {api:6}");
                        shown = true;
                    }
                    let (ms, cpu) = time_per_call(self.runs, min_run, || call(api, pass));
                    let gf = |ms: f64| flops / (ms * 1e6);
                    let (wall_rate, cpu_rate) = (gf(ms), gf(cpu));
                    line += &format!(
                        " {pass} {ms:7.2} ms {wall_rate:5.1} GF/s ({cpu_rate:5.1}/core) |"
                    );
                    report.json(KernelRecord {
                        gflops: Some(gf(ms)),
                        label: Some(label.into()),
                        variant: Some(api),
                        ..KernelRecord::on(op, name, [n, cin, cout, hw, k, stride], ms)
                    });
                }
            }
            report.text(line.trim_start().into());
        }
        Ok(())
    }

    /// Training batch norm, forward and backward, without and with the fused ReLU6; the GB/s
    /// are against the memory floor (forward: x read, y written, x read again from cache;
    /// backward: dy and x read for the sums and again for dx, dx written).
    fn batch_norm(&self, rng: &mut StdRng, report: &mut Report) -> Result<(), String> {
        let err = |e: depthshrink_tensor::TensorError| e.to_string();
        for (label, c, hw) in BN_CASES {
            if !self.wanted(label) {
                continue;
            }
            let shape = [128, c, hw, hw];
            let (x, dy) = (random_tensor(rng, &shape), random_tensor(rng, &shape));
            let (g, b) = (Tensor::full(&[c], 1.0), Tensor::zeros(&[c]));
            let (mut rm, mut rv) = (Tensor::zeros(&[c]), Tensor::full(&[c], 1.0));
            for relu6 in [false, true] {
                let opts = BnOptions {
                    relu6,
                    ..Default::default()
                };
                let (_, stats) =
                    batchnorm::forward_train(&x, &g, &b, &mut rm, &mut rv, opts).map_err(err)?;
                let min_run = Duration::from_millis(200);
                let forward = || drop(batchnorm::forward_train(&x, &g, &b, &mut rm, &mut rv, opts));
                let (fw, fc) = time_per_call(self.runs, min_run, forward);
                let backward = || drop(batchnorm::backward_train(&dy, &x, &g, &stats));
                let (bw, bc) = time_per_call(self.runs, min_run, backward);
                let gb = |streams: usize, ms: f64| (streams * x.numel() * 4) as f64 / (ms * 1e6);
                let line = format!(
                    "bn {label} relu6={relu6}: forward {fw:.2} ms wall {fc:.2} ms cpu ({:.1} GB/s), \
                     backward {bw:.2} ms wall {bc:.2} ms cpu ({:.1} GB/s)",
                    gb(3, fw),
                    gb(5, bw)
                );
                let record = |pass, ms, streams| KernelRecord {
                    gbps: Some(gb(streams, ms)),
                    label: Some(format!("{label} relu6={relu6}")),
                    ..KernelRecord::on("batchnorm", pass, [128, c, c, hw, 1, 1], ms)
                };
                report.json(record("forward", fw, 3));
                report.json(record("backward", bw, 5));
                report.text(line);
            }
        }
        Ok(())
    }
}

/// Random A (`m×k`) and B (`k×n`) and a zero C (`m×n`).
fn gemm_operands(rng: &mut StdRng, [m, k, n]: [usize; 3]) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    (
        random_vec(rng, m * k),
        random_vec(rng, k * n),
        vec![0.0; m * n],
    )
}

/// (row, column) strides of row-major A (`m×k`) and B (`k×n`), or of their transposes.
fn gemm_strides([m, k, n]: [usize; 3], ta: bool, tb: bool) -> ([isize; 2], [isize; 2]) {
    let (m, k, n) = (m as isize, k as isize, n as isize);
    let sa = if ta { [1, m] } else { [k, 1] };
    let sb = if tb { [1, k] } else { [n, 1] };
    (sa, sb)
}

/// The record of a GEMM shape's timing.
fn gemm_record(
    label: Option<&str>,
    [m, k, n]: [usize; 3],
    ms: f64,
    backend: Option<&'static str>,
) -> KernelRecord {
    KernelRecord {
        h: n,
        w: 1,
        gflops: Some(2.0 * (m * k * n) as f64 / (ms * 1e6)),
        label: label.map(String::from),
        variant: backend,
        ..KernelRecord::on("sgemm", "forward", [1, k, m, n, 1, 1], ms)
    }
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
