"""PyTorch CPU reference timings for the conv cases of kernel_bench.rs (same methodology:
median of 7 runs after warm-up; wall time and process CPU time).

    python tensor/examples/torch_conv_bench.py [filter]   # 2 threads
"""
import sys
import time

import torch

torch.set_num_threads(2)
RUNS = 7

CASES = [
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
]


def timed(f, min_run):
    f()
    t = time.perf_counter()
    f()
    once = max(time.perf_counter() - t, 1e-6)
    reps = max(1, int(min_run / once + 0.999))
    wall, cpu = [], []
    for _ in range(RUNS):
        t, c = time.perf_counter(), time.process_time()
        for _ in range(reps):
            f()
        wall.append((time.perf_counter() - t) / reps)
        cpu.append((time.process_time() - c) / reps)
    return sorted(wall)[RUNS // 2], sorted(cpu)[RUNS // 2]


def main():
    filt = sys.argv[1] if len(sys.argv) > 1 else ""
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    with torch.no_grad():
        for label, n, cin, cout, hw, k, s, p, g in CASES:
            if filt not in label:
                continue
            x = torch.rand(n, cin, hw, hw) * 2 - 1
            w = torch.rand(cout, cin // g, k, k) * 2 - 1
            b = torch.rand(cout) * 2 - 1
            y = torch.nn.functional.conv2d(x, w, b, s, p, 1, g)
            flops = 2.0 * cout * (cin // g) * k * k * y.numel() / cout
            args = ([cout], [s, s], [p, p], [1, 1], False, [0, 0], g)
            bwd = torch.ops.aten.convolution_backward
            min_run = 0.05 if n == 1 else 0.2
            res = [
                timed(lambda: torch.nn.functional.conv2d(x, w, b, s, p, 1, g), min_run),
                timed(lambda: bwd(y, x, w, *args, [True, False, False]), min_run),
                timed(lambda: bwd(y, x, w, *args, [False, True, False]), min_run),
            ]
            show = [
                f"{t * 1e3:7.2f} ms {flops / t / 1e9:5.1f} GF/s ({flops / c / 1e9:5.1f}/core)"
                for t, c in res
            ]
            print(f"{label:28} fwd {show[0]} | bwd-in {show[1]} | bwd-w {show[2]}")


main()
