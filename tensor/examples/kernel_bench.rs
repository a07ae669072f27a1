//! Timing harness for the GEMM and convolution kernels (release mode; noisy shared machines:
//! compare medians and ratios).
//!
//! `cargo run --release -p depthshrink-tensor --example kernel_bench -- gemm|conv|bn [filter]`
//! Thread count: `RAYON_NUM_THREADS` (default: all cores). Add `--features matrixmultiply` to time
//! the `matrixmultiply` backend, and for `gemm-ab` (both backends side by side).

use std::time::{Duration, Instant};

use depthshrink_tensor::Tensor;
use depthshrink_tensor::conv::{self, ConvParams};
use depthshrink_tensor::gemm::sgemm;
use rand::{Rng, SeedableRng, rngs::StdRng};

const RUNS: usize = 7;

/// (level, pass name, timed call)
type Pass<'a> = (&'static str, &'static str, Box<dyn FnMut() + 'a>);

fn rand_vec(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// CPU time consumed so far by all of this process's threads (scheduler accounting, ns): on a
/// machine shared with other jobs it shows what a kernel costs while it actually runs.
fn cpu_seconds() -> f64 {
    let mut ns = 0u64;
    for task in std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
    {
        if let Ok(s) = std::fs::read_to_string(task.path().join("schedstat")) {
            ns += s
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
        }
    }
    ns as f64 * 1e-9
}

/// Per-call medians over `RUNS` runs of enough calls to last ~`min_run`: (wall s, CPU s).
fn time(mut f: impl FnMut(), min_run: Duration) -> (f64, f64) {
    f();
    let t = Instant::now();
    f();
    let once = t.elapsed().max(Duration::from_micros(1));
    let reps = (min_run.as_secs_f64() / once.as_secs_f64()).ceil().max(1.0) as usize;
    let (mut wall, mut cpu): (Vec<f64>, Vec<f64>) = (0..RUNS)
        .map(|_| {
            let (t, c) = (Instant::now(), cpu_seconds());
            for _ in 0..reps {
                f();
            }
            let per = |v: f64| v / reps as f64;
            (per(t.elapsed().as_secs_f64()), per(cpu_seconds() - c))
        })
        .unzip();
    wall.sort_by(f64::total_cmp);
    cpu.sort_by(f64::total_cmp);
    (wall[RUNS / 2], cpu[RUNS / 2])
}

fn single_thread<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap()
        .install(f)
}

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

fn bench_gemm(rng: &mut StdRng, filter: &str) {
    let backend = if cfg!(not(feature = "matrixmultiply")) {
        "gemm crate"
    } else {
        "matrixmultiply"
    };
    println!(
        "backend: {backend}, rayon threads: {}",
        rayon::current_num_threads()
    );
    if "2048".contains(filter) {
        let s = 2048;
        let (a, b) = (rand_vec(rng, s * s), rand_vec(rng, s * s));
        let mut c = vec![0.0; s * s];
        let si = s as isize;
        let (t, cpu) = time(
            || sgemm(s, s, s, 1.0, &a, si, 1, &b, si, 1, 0.0, &mut c, si, 1),
            Duration::from_millis(300),
        );
        let flop = 2.0 * (s * s * s) as f64;
        println!(
            "sgemm 2048³ threaded: {:.1} ms  {:.1} GFLOP/s wall, {:.1} GFLOP/s per busy core",
            t * 1e3,
            flop / t / 1e9,
            flop / cpu / 1e9
        );
    }
    for (label, m, k, n, ta, tb) in GEMM_SHAPES {
        if !label.contains(filter) {
            continue;
        }
        let (a, b) = (rand_vec(rng, m * k), rand_vec(rng, k * n));
        let mut c = vec![0.0; m * n];
        let (rsa, csa) = if ta { (1, m as isize) } else { (k as isize, 1) };
        let (rsb, csb) = if tb { (1, k as isize) } else { (n as isize, 1) };
        let mut call = || {
            sgemm(
                m, k, n, 1.0, &a, rsa, csa, &b, rsb, csb, 0.0, &mut c, n as isize, 1,
            )
        };
        let (t, cpu) = single_thread(|| time(&mut call, Duration::from_millis(100)));
        let flop = 2.0 * (m * k * n) as f64;
        println!(
            "{label:28} M={m:4} K={k:4} N={n:4}  1 thread: {:7.1} µs {:5.1} GFLOP/s wall, {:5.1} on-CPU",
            t * 1e6,
            flop / t / 1e9,
            flop / cpu / 1e9
        );
    }
}

/// The backend crates and `sgemm` (this crate's AVX-512 kernel where the CPU has one) in one
/// process, alternating run by run so that load drifts hit them all alike:
/// per shape, the median over 9 alternations of each backend's per-call time.
#[cfg(feature = "matrixmultiply")]
fn bench_gemm_ab(rng: &mut StdRng, filter: &str) {
    type Backend = fn(usize, usize, usize, &[f32], [isize; 2], &[f32], [isize; 2], &mut [f32]);
    #[allow(clippy::too_many_arguments)]
    fn mm(
        m: usize,
        k: usize,
        n: usize,
        a: &[f32],
        sa: [isize; 2],
        b: &[f32],
        sb: [isize; 2],
        c: &mut [f32],
    ) {
        // SAFETY: the bench sizes every buffer for its strides.
        unsafe {
            matrixmultiply::sgemm(
                m,
                k,
                n,
                1.0,
                a.as_ptr(),
                sa[0],
                sa[1],
                b.as_ptr(),
                sb[0],
                sb[1],
                0.0,
                c.as_mut_ptr(),
                n as isize,
                1,
            )
        }
    }
    #[allow(clippy::too_many_arguments)]
    fn gc(
        m: usize,
        k: usize,
        n: usize,
        a: &[f32],
        sa: [isize; 2],
        b: &[f32],
        sb: [isize; 2],
        c: &mut [f32],
    ) {
        // SAFETY: as above; dst = 0·dst + 1·a·b.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                c.as_mut_ptr(),
                1,
                n as isize,
                false,
                a.as_ptr(),
                sa[1],
                sa[0],
                b.as_ptr(),
                sb[1],
                sb[0],
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            )
        }
    }
    #[allow(clippy::too_many_arguments)]
    fn own(
        m: usize,
        k: usize,
        n: usize,
        a: &[f32],
        sa: [isize; 2],
        b: &[f32],
        sb: [isize; 2],
        c: &mut [f32],
    ) {
        sgemm(
            m, k, n, 1.0, a, sa[0], sa[1], b, sb[0], sb[1], 0.0, c, n as isize, 1,
        )
    }
    let backends: [(&str, Backend); 3] =
        [("matrixmultiply", mm), ("gemm crate", gc), ("sgemm", own)];
    println!("single thread, median of 9 alternations: wall GFLOP/s (on-CPU GFLOP/s)");
    for (label, m, k, n, ta, tb) in GEMM_SHAPES {
        if !label.contains(filter) {
            continue;
        }
        let (a, b) = (rand_vec(rng, m * k), rand_vec(rng, k * n));
        let mut c = vec![0.0; m * n];
        let sa = if ta { [1, m as isize] } else { [k as isize, 1] };
        let sb = if tb { [1, k as isize] } else { [n as isize, 1] };
        let mut res = vec![(vec![], vec![]); backends.len()];
        single_thread(|| {
            for _ in 0..9 {
                for ((_, f), (wall, cpu)) in backends.iter().zip(&mut res) {
                    let (t, u) = time(
                        || f(m, k, n, &a, sa, &b, sb, &mut c),
                        Duration::from_millis(15),
                    );
                    wall.push(t);
                    cpu.push(u);
                }
            }
        });
        let flop = 2.0 * (m * k * n) as f64;
        let med = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            flop / v[v.len() / 2] / 1e9
        };
        let cols: Vec<String> = backends
            .iter()
            .zip(&mut res)
            .map(|((name, _), (wall, cpu))| format!("{name} {:5.1} ({:5.1})", med(wall), med(cpu)))
            .collect();
        println!("{label:28} M={m:4} K={k:4} N={n:4}  {}", cols.join(" | "));
    }
}

fn bench_conv(rng: &mut StdRng, filter: &str) {
    println!("rayon threads: {}", rayon::current_num_threads());
    // (label, n, cin, cout, hw, k, stride, pad, groups)
    let cases = [
        ("pw 24→144 @56² N32", 32, 24, 144, 56, 1, 1, 0, 1),
        ("pw 144→24 @56² N32", 32, 144, 24, 56, 1, 1, 0, 1),
        ("pw 576→96 @14² N32", 32, 576, 96, 14, 1, 1, 0, 1),
        ("dense3 32→32 @56² N32", 32, 32, 32, 56, 3, 1, 1, 1),
        ("b1 stem 3→32 s2 @224²", 1, 3, 32, 224, 3, 2, 1, 1),
        ("b1 pw 32→192 @112²", 1, 32, 192, 112, 1, 1, 0, 1),
        ("b1 pw 96→24 @112²", 1, 96, 24, 112, 1, 1, 0, 1),
        ("b1 pw 320→1280 @7²", 1, 320, 1280, 7, 1, 1, 0, 1),
        ("b1 dense3 24→24 @56²", 1, 24, 24, 56, 3, 1, 1, 1),
        ("b1 dense3 32→64 s2 @56²", 1, 32, 64, 56, 3, 2, 1, 1),
        ("dense3 24→24 @56² N32", 32, 24, 24, 56, 3, 1, 1, 1),
        ("dense5 64→64 s2 @28² N32", 32, 64, 64, 28, 5, 2, 2, 1),
        ("grouped3 g4 64→64 @28² N32", 32, 64, 64, 28, 3, 1, 1, 4),
        ("cifar pw 80→480 @4² N128", 128, 80, 480, 4, 1, 1, 0, 1),
        ("cifar pw 480→80 @4² N128", 128, 480, 80, 4, 1, 1, 0, 1),
        ("cifar pw 32→192 @8² N128", 128, 32, 192, 8, 1, 1, 0, 1),
        ("cifar pw 192→32 @8² N128", 128, 192, 32, 8, 1, 1, 0, 1),
        ("cifar pw 16→96 @16² N128", 128, 16, 96, 16, 1, 1, 0, 1),
        ("dw3 144 @56² N32", 32, 144, 144, 56, 3, 1, 1, 144),
        ("dw3 144 s2 @56² N32", 32, 144, 144, 56, 3, 2, 1, 144),
        ("dw3 576 @7² N32", 32, 576, 576, 7, 3, 1, 1, 576),
    ];
    for (label, n, cin, cout, hw, k, stride, pad, groups) in cases {
        if !label.contains(filter) {
            continue;
        }
        let p = ConvParams::new(stride, pad, groups);
        let x = Tensor::from_vec(&[n, cin, hw, hw], rand_vec(rng, n * cin * hw * hw)).unwrap();
        let w_shape = [cout, cin / groups, k, k];
        let w = Tensor::from_vec(&w_shape, rand_vec(rng, w_shape.iter().product())).unwrap();
        let b = Tensor::from_vec(&[cout], rand_vec(rng, cout)).unwrap();
        let y = conv::conv2d(&x, &w, Some(&b), p).unwrap();
        let flops = 2.0 * (cout * cin / groups * k * k * y.numel() / cout) as f64;
        let min_run = Duration::from_millis(if n == 1 { 50 } else { 200 });
        // Tensor level (allocates the output, as autograd will), and slice level into reused
        // buffers: the kernels alone, without the page faults of a fresh multi-megabyte output.
        // `BENCH_ONLY=slice` (or `fwd`, `tensor bwd-w`, ...) times a subset, e.g. for perf.
        let only = std::env::var("BENCH_ONLY").unwrap_or_default();
        let g = conv::ConvGeom::new("bench", [n, cin, hw, hw], &w_shape, p).unwrap();
        let (mut yb, mut dxb, mut dwb) = (
            vec![0.0; y.numel()],
            vec![0.0; x.numel()],
            vec![0.0; w.numel()],
        );
        let x_shape = [n, cin, hw, hw];
        let mut passes: [Pass<'_>; 6] = [
            (
                "tensor",
                "fwd",
                Box::new(|| drop(conv::conv2d(&x, &w, Some(&b), p).unwrap())),
            ),
            (
                "tensor",
                "bwd-in",
                Box::new(|| drop(conv::conv2d_backward_input(&y, &w, x_shape, p).unwrap())),
            ),
            (
                "tensor",
                "bwd-w",
                Box::new(|| drop(conv::conv2d_backward_weight(&x, &y, k, p).unwrap())),
            ),
            (
                "slice",
                "fwd",
                Box::new(|| conv::forward(x.data(), w.data(), Some(b.data()), false, &mut yb, &g)),
            ),
            (
                "slice",
                "bwd-in",
                Box::new(|| conv::backward_input(y.data(), w.data(), &mut dxb, &g)),
            ),
            (
                "slice",
                "bwd-w",
                Box::new(|| conv::backward_weight(x.data(), y.data(), &mut dwb, &g)),
            ),
        ];
        let mut line = String::new();
        let mut level_shown = "";
        for (level, pass, f) in &mut passes {
            if !only.split_whitespace().all(|o| *level == o || *pass == o) {
                continue;
            }
            if *level != level_shown {
                line += &format!("\n{label:28} {level:6}");
                level_shown = level;
            }
            let (t, cpu) = time(f, min_run);
            line += &format!(
                " {pass} {:7.2} ms {:5.1} GF/s ({:5.1}/core) |",
                t * 1e3,
                flops / t / 1e9,
                flops / cpu / 1e9
            );
        }
        println!("{}", line.trim_start());
    }
}

/// Training batch norm on the CIFAR MobileNetV2-w0.5 shapes (batch 128): plane sizes 32² down
/// to 4², where per-plane reduction overhead competes with memory traffic.
fn bench_bn(rng: &mut StdRng, filter: &str) {
    use depthshrink_tensor::batchnorm::{self, BnOptions};
    println!("rayon threads: {}", rayon::current_num_threads());
    for (label, c, hw) in [
        ("48 @32²", 48, 32),
        ("72 @16²", 72, 16),
        ("192 @8²", 192, 8),
        ("480 @4²", 480, 4),
    ] {
        if !label.contains(filter) {
            continue;
        }
        let shape = [128, c, hw, hw];
        let numel: usize = shape.iter().product();
        let x = Tensor::from_vec(&shape, rand_vec(rng, numel)).unwrap();
        let dy = Tensor::from_vec(&shape, rand_vec(rng, numel)).unwrap();
        let (g, b) = (Tensor::full(&[c], 1.0), Tensor::zeros(&[c]));
        let (mut rm, mut rv) = (Tensor::zeros(&[c]), Tensor::full(&[c], 1.0));
        for relu6 in [false, true] {
            let opts = BnOptions {
                relu6,
                ..Default::default()
            };
            let (_, stats) = batchnorm::forward_train(&x, &g, &b, &mut rm, &mut rv, opts).unwrap();
            let (fw, fc) = time(
                || drop(batchnorm::forward_train(&x, &g, &b, &mut rm, &mut rv, opts)),
                Duration::from_millis(200),
            );
            let (bw, bc) = time(
                || drop(batchnorm::backward_train(&dy, &x, &g, &stats)),
                Duration::from_millis(200),
            );
            // Memory floor: forward reads x twice-ish (once from DRAM) and writes y; backward
            // reads dy and x for the sums and again for dx, and writes dx.
            let gb = |streams: usize, s: f64| (streams * numel * 4) as f64 / s / 1e9;
            println!(
                "bn {label} relu6={relu6}: forward {:.2} ms wall {:.2} ms cpu ({:.1} GB/s), \
                 backward {:.2} ms wall {:.2} ms cpu ({:.1} GB/s)",
                fw * 1e3,
                fc * 1e3,
                gb(3, fw),
                bw * 1e3,
                bc * 1e3,
                gb(5, bw)
            );
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let filter = args.get(1).map(String::as_str).unwrap_or("");
    let mut rng = StdRng::seed_from_u64(7);
    match args.first().map(String::as_str) {
        Some("gemm") => bench_gemm(&mut rng, filter),
        Some("conv") => bench_conv(&mut rng, filter),
        Some("bn") => bench_bn(&mut rng, filter),
        #[cfg(feature = "matrixmultiply")]
        Some("gemm-ab") => bench_gemm_ab(&mut rng, filter),
        _ => eprintln!("usage: kernel_bench gemm|conv|bn|gemm-ab [label filter]"),
    }
}
