#!/usr/bin/env python3
"""Times the cases of `depthshrink bench kernels` in PyTorch CPU, printing the same JSON lines.

Usage (PyTorch lives in a virtualenv outside the repo; the test suite never needs it):
    /path/to/venv/bin/python bench/pytorch_kernels.py --threads 2 > torch.jsonl
    cargo run --release -- --threads 2 bench kernels --json > rust.jsonl
    python3 bench/compare.py rust.jsonl torch.jsonl
"""
import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

CONV_CASES = [  # (op, n, cin, cout, hw, k, stride) — keep in sync with bin/src/bench.rs
    ("conv1x1", 32, 24, 144, 56, 1, 1),
    ("conv1x1", 32, 144, 24, 56, 1, 1),
    ("conv1x1", 32, 576, 96, 14, 1, 1),
    ("depthwise", 32, 144, 144, 56, 3, 1),
    ("depthwise", 32, 144, 144, 56, 3, 2),
    ("conv", 32, 32, 32, 56, 3, 1),
]


def median_ms(runs, f):
    f()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        f()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--only", default="")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    def emit(**record):
        print(json.dumps(record), flush=True)

    if args.only in ("", "sgemm"):
        d = 2048
        a, b = torch.randn(d, d), torch.randn(d, d)
        ms = median_ms(args.runs, lambda: torch.mm(a, b))
        emit(op="sgemm", **{"pass": "forward"}, n=1, cin=d, cout=d, h=d, w=1, k=1, stride=1,
             ms=ms, gflops=2 * d**3 / (ms * 1e6))

    for op, n, cin, cout, hw, k, stride in CONV_CASES:
        if args.only not in ("", op):
            continue
        groups = cin if op == "depthwise" else 1
        pad = k // 2
        x = torch.randn(n, cin, hw, hw)
        w = torch.randn(cout, cin // groups, k, k)
        y = F.conv2d(x, w, None, stride, pad, 1, groups)
        dy = torch.randn_like(y)
        macs = y.numel() * (cin // groups) * k * k
        grad = torch.ops.aten.convolution_backward
        passes = {
            "forward": lambda: F.conv2d(x, w, None, stride, pad, 1, groups),
            "backward_input": lambda: grad(dy, x, w, None, [stride] * 2, [pad] * 2, [1, 1],
                                           False, [0, 0], groups, [True, False, False]),
            "backward_weight": lambda: grad(dy, x, w, None, [stride] * 2, [pad] * 2, [1, 1],
                                            False, [0, 0], groups, [False, True, False]),
        }
        with torch.no_grad():
            for pass_name, f in passes.items():
                ms = median_ms(args.runs, f)
                emit(op=op, **{"pass": pass_name}, n=n, cin=cin, cout=cout, h=hw, w=hw, k=k,
                     stride=stride, ms=ms, gflops=2 * macs / (ms * 1e6))


if __name__ == "__main__":
    main()
