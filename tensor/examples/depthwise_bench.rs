//! Timing of the depthwise kernels (forward, input gradient, weight gradient).
//!
//! ```text
//! RAYON_NUM_THREADS=2 cargo run --release -p depthshrink-tensor --example depthwise_bench [torch.txt] [filter]
//! ```
//! Prints the median of `REPS` runs after warm-up: ms, GFLOP/s (2 flops per multiply-add) and
//! GB/s (bytes the pass must read plus write, the memory-bound limit), and a memcpy bandwidth line
//! for calibration. With the output of `depthwise_torch.py` as first argument it adds the speed-up
//! over PyTorch per pass.

use std::collections::HashMap;
use std::hint::black_box;
use std::time::Instant;

use depthshrink_tensor::conv::{ConvGeom, ConvParams};
use depthshrink_tensor::depthwise;
use rayon::prelude::*;

const REPS: usize = 11;

/// `DW_REPS` overrides the repetition count (e.g. 1 under cachegrind).
fn reps() -> usize {
    std::env::var("DW_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(REPS)
}

/// (name, N, C, H, k, stride) with pad = k / 2; names match `depthwise_torch.py`.
const CASES: [(&str, usize, usize, usize, usize, usize); 9] = [
    ("k3s1 32x144@56", 32, 144, 56, 3, 1),
    ("k3s2 32x144@56", 32, 144, 56, 3, 2),
    ("k5s1 32x144@56", 32, 144, 56, 5, 1),
    ("k5s2 32x144@56", 32, 144, 56, 5, 2),
    ("k3s1 128x96@8", 128, 96, 8, 3, 1),
    ("k3s1 128x384@8", 128, 384, 8, 3, 1),
    ("k3s2 128x192@8", 128, 192, 8, 3, 2),
    ("k3s1 128x576@4", 128, 576, 4, 3, 1),
    ("k3s1 128x960@4", 128, 960, 4, 3, 1),
];

fn fill(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// (median, min) in ms. The minimum is printed too: on a shared machine it is the run least
/// disturbed by other processes.
fn median_ms(f: impl FnMut()) -> f64 {
    times_ms(f).0
}

#[repr(C)]
struct Timespec {
    sec: i64,
    nsec: i64,
}

unsafe extern "C" {
    fn clock_gettime(clock: i32, ts: *mut Timespec) -> i32;
}

/// CPU time of the whole process (all threads) in ms: unlike wall time it doesn't count the
/// periods other processes hold the cores, which on this shared machine is most of the noise.
fn cpu_ms() -> f64 {
    const CLOCK_PROCESS_CPUTIME_ID: i32 = 2;
    let mut ts = Timespec { sec: 0, nsec: 0 };
    // SAFETY: clock_gettime writes one timespec (two i64 on x86-64 Linux) into `ts`.
    unsafe { clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.sec as f64 * 1e3 + ts.nsec as f64 * 1e-6
}

/// Minimum process CPU time of one call (all threads together), after warm-up.
fn cpu_min_ms(mut f: impl FnMut()) -> f64 {
    f();
    (0..reps())
        .map(|_| {
            let s = cpu_ms();
            f();
            cpu_ms() - s
        })
        .fold(f64::INFINITY, f64::min)
}

fn times_ms(mut f: impl FnMut()) -> (f64, f64) {
    for _ in 0..2 {
        f();
    }
    let reps = reps();
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(f64::total_cmp);
    (t[reps / 2], t[0])
}

/// `name -> [fwd, bwd_input, bwd_weight]` ms from the PyTorch script's output.
fn torch_times(path: &str) -> HashMap<String, [f64; 3]> {
    let text = std::fs::read_to_string(path).expect("read torch timings");
    let mut m = HashMap::new();
    for line in text.lines().filter(|l| l.starts_with("torch ")) {
        let f: Vec<&str> = line.split_whitespace().collect();
        // torch <k..> <shape> fwd X ms bwd_input X ms bwd_weight X ms
        let name = format!("{} {}", f[1], f[2]);
        let num = |i: usize| f[i].parse::<f64>().unwrap();
        m.insert(name, [num(4), num(7), num(10)]);
    }
    m
}

/// In-cache compute throughput (run with RAYON_NUM_THREADS=1): small tensors that stay in L2,
/// each timing covering `inner` calls, so DRAM and other processes' traffic matter less.
fn micro(filter: &str) {
    for (name, n, c, hw, k, s, inner) in [
        ("k3s1 4x16@56", 4, 16, 56, 3, 1, 20),
        ("k3s2 4x16@56", 4, 16, 56, 3, 2, 40),
        ("k5s1 4x16@56", 4, 16, 56, 5, 1, 10),
        ("k5s2 4x16@56", 4, 16, 56, 5, 2, 20),
        ("k3s1 16x96@8", 16, 96, 8, 3, 1, 40),
        ("k3s2 16x96@8", 16, 96, 8, 3, 2, 80),
        ("k3s1 16x192@4", 16, 192, 4, 3, 1, 40),
        ("k3s1 4x16@14", 4, 64, 14, 3, 1, 40),
        ("k3s1 4x16@7", 4, 64, 7, 3, 1, 80),
    ] {
        if !name.contains(filter) {
            continue;
        }
        let g = ConvGeom::new(
            "bench",
            [n, c, hw, hw],
            &[c, 1, k, k],
            ConvParams::new(s, k / 2, c),
        )
        .unwrap();
        let (xl, yl) = (n * c * hw * hw, n * c * g.out_h() * g.out_w());
        let x = fill(xl, 2);
        let w = fill(c * k * k, 3);
        let b = fill(c, 4);
        let dy = fill(yl, 5);
        let mut y = vec![0f32; yl];
        let mut dx = vec![0f32; xl];
        let mut dw = vec![0f32; c * k * k];
        let gflop = 2.0 * g.macs() as f64 * 1e-9 * inner as f64;
        let t = [
            cpu_min_ms(|| {
                (0..inner).for_each(|_| depthwise::forward(&x, &w, Some(&b), &mut y, &g))
            }),
            cpu_min_ms(|| (0..inner).for_each(|_| depthwise::backward_input(&dy, &w, &mut dx, &g))),
            cpu_min_ms(|| {
                (0..inner).for_each(|_| depthwise::backward_weight(&x, &dy, &mut dw, &g))
            }),
        ];
        black_box((&y, &dx, &dw));
        println!(
            "micro {name:14} GFLOP/s per CPU-s (best of {}): fwd {:6.2}  bwd_input {:6.2}  bwd_weight {:6.2}",
            reps(),
            gflop / (t[0] * 1e-3),
            gflop / (t[1] * 1e-3),
            gflop / (t[2] * 1e-3)
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).is_some_and(|a| a == "micro") {
        micro(args.get(2).map_or("", |s| s.as_str()));
        return;
    }
    let torch = args
        .get(1)
        .filter(|a| !a.is_empty())
        .map(|p| torch_times(p));
    let filter = args.get(2).cloned().unwrap_or_default();
    println!(
        "threads {} avx2+fma {}",
        rayon::current_num_threads(),
        depthshrink_tensor::simd::avx2_fma()
    );

    // Calibration: a parallel copy of 58 MB (the k3s1 input size), counted as read + write.
    let len = 32 * 144 * 56 * 56;
    let src = fill(len, 1);
    let mut dst = vec![0f32; len];
    let chunk = len.div_ceil(16);
    let ms = median_ms(|| {
        dst.par_chunks_mut(chunk)
            .zip(src.par_chunks(chunk))
            .for_each(|(d, s)| d.copy_from_slice(s));
        black_box(&dst);
    });
    println!(
        "memcpy {:.1} MB: {ms:.3} ms = {:.1} GB/s read+write",
        len as f64 * 4e-6,
        2.0 * len as f64 * 4e-6 / ms
    );

    for (name, n, c, hw, k, s) in CASES {
        if !name.contains(&filter) {
            continue;
        }
        let g = ConvGeom::new(
            "bench",
            [n, c, hw, hw],
            &[c, 1, k, k],
            ConvParams::new(s, k / 2, c),
        )
        .unwrap();
        let (xl, yl) = (n * c * hw * hw, n * c * g.out_h() * g.out_w());
        let x = fill(xl, 2);
        let w = fill(c * k * k, 3);
        let b = fill(c, 4);
        let dy = fill(yl, 5);
        let mut y = vec![0f32; yl];
        let mut dx = vec![0f32; xl];
        let mut dw = vec![0f32; c * k * k];
        let t = [
            times_ms(|| depthwise::forward(&x, &w, Some(&b), &mut y, &g)),
            times_ms(|| depthwise::backward_input(&dy, &w, &mut dx, &g)),
            times_ms(|| depthwise::backward_weight(&x, &dy, &mut dw, &g)),
        ];
        black_box((&y, &dx, &dw));
        let gflop = 2.0 * g.macs() as f64 * 1e-9;
        let bytes = (xl + yl) as f64 * 4.0 * 1e-9;
        for (pass, (ms, min)) in ["fwd", "bwd_input", "bwd_weight"]
            .iter()
            .zip(t)
            .enumerate()
            .map(|(i, (p, t))| ((i, p), t))
        {
            let ratio = torch
                .as_ref()
                .and_then(|m| m.get(name))
                .map_or(String::new(), |tt| {
                    format!("  {:6.1}x torch ({:.2} ms)", tt[pass.0] / ms, tt[pass.0])
                });
            println!(
                "{name:16} {:10} {ms:8.3} ms (min {min:8.3}) {:7.2} GFLOP/s {:6.2} GB/s{ratio}",
                pass.1,
                gflop / (ms * 1e-3),
                bytes / (ms * 1e-3)
            );
        }
    }
}
