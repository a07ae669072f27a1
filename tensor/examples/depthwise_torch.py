"""PyTorch CPU baseline for the depthwise timing example (`depthwise_bench.rs`).

Run: RAYON_NUM_THREADS is irrelevant here; torch uses 2 threads.
    /work/torch-venv/bin/python tensor/examples/depthwise_torch.py
Prints one line per case and pass: median ms over REPS runs after warm-up.
"""
import statistics
import time

import torch
import torch.nn.functional as F

torch.set_num_threads(2)
REPS = 7

# (name, N, C, H, k, stride) with pad = k // 2, same list as the Rust example.
CASES = [
    ("k3s1 32x144@56", 32, 144, 56, 3, 1),
    ("k3s2 32x144@56", 32, 144, 56, 3, 2),
    ("k5s1 32x144@56", 32, 144, 56, 5, 1),
    ("k5s2 32x144@56", 32, 144, 56, 5, 2),
    ("k3s1 128x96@8", 128, 96, 8, 3, 1),
    ("k3s1 128x384@8", 128, 384, 8, 3, 1),
    ("k3s2 128x192@8", 128, 192, 8, 3, 2),
    ("k3s1 128x576@4", 128, 576, 4, 3, 1),
    ("k3s1 128x960@4", 128, 960, 4, 3, 1),
]


def timed(fn):
    for _ in range(2):
        fn()
    ts = []
    for _ in range(REPS):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1e3


def main():
    torch.manual_seed(0)
    for name, n, c, h, k, s in CASES:
        p = k // 2
        x = torch.randn(n, c, h, h)
        w = torch.randn(c, 1, k, k)
        b = torch.randn(c)
        y = F.conv2d(x, w, b, s, p, 1, c)
        gy = torch.randn_like(y)
        with torch.no_grad():
            fwd = timed(lambda: F.conv2d(x, w, b, s, p, 1, c))

        def bwd(mask):
            return lambda: torch.ops.aten.convolution_backward(
                gy, x, w, [c], [s, s], [p, p], [1, 1], False, [0, 0], c, mask
            )

        bx = timed(bwd([True, False, False]))
        bw = timed(bwd([False, True, False]))
        print(f"torch {name:16s} fwd {fwd:8.3f} ms  bwd_input {bx:8.3f} ms  bwd_weight {bw:8.3f} ms", flush=True)


if __name__ == "__main__":
    main()
