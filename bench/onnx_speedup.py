#!/usr/bin/env python3
"""Does the merge pay in ONNX Runtime? Merged vs original networks, exported and timed in ORT.

    python bench/onnx_speedup.py [--depthshrink target/release/depthshrink] [--threads 2]
                                 [--runs 21] [--runs-64 11]

Exports each network pair with `depthshrink export` and times both in ONNX Runtime (all graph
optimisations, `--threads` intra-op threads), interleaved run by run in one process (the order
alternating every round), after warm-up runs. Prints one JSON line per case and a Markdown
table: images/s from the median run time, and merged vs original as the ratio of the medians.

The pairs are those of BENCHMARKS.md's "merged vs original" table:
- the shipped CIFAR-10 network: the keep-10 network merged as `depthshrink merge` merges it,
  against the original it was finetuned from (`models/cifar10-mbv2-w0.5.safetensors`, the same
  architecture with every activation);
- MobileNetV2-1.4 config D at 224²: random weights, original against config D merged.
Needs only onnxruntime and numpy (e.g. `python3 -m venv V && V/bin/pip install onnxruntime numpy`).
"""
import argparse
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
CIFAR_KEEP10 = "models/cifar10-mbv2-w0.5-ds-keep10.safetensors"
CIFAR_ORIGINAL = "models/cifar10-mbv2-w0.5.safetensors"
CONFIG_D = "configs/mbv2-140-D.toml"

# (label, res, `depthshrink export` flags of the original, of the merged network)
CASES = [
    (
        "shipped CIFAR-10 keep-10 network, 32²",
        32,
        ["--weights", CIFAR_ORIGINAL],
        ["--weights", CIFAR_KEEP10, "--merged"],
    ),
    (
        "MobileNetV2-1.4 config D, 224²",
        224,
        ["--random-init", "--width", "1.4"],
        ["--random-init", "--width", "1.4", "--keep", CONFIG_D, "--merged"],
    ),
]


def export(binary, flags, out):
    """Runs `depthshrink export`; returns its summary line (which names the merged blocks)."""
    cmd = [binary, "export", *flags, "--out", str(out)]
    done = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True)
    return done.stdout.splitlines()[0]


def session(path, threads):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def time_pair(original, merged, x, runs, warmup=3):
    """Median seconds per run of each session, runs interleaved, order alternating."""
    feed = {"input": x}
    for s in (original, merged):
        for _ in range(warmup):
            s.run(["logits"], feed)
    times = {id(original): [], id(merged): []}
    for i in range(runs):
        for s in (original, merged) if i % 2 == 0 else (merged, original):
            start = time.perf_counter()
            s.run(["logits"], feed)
            times[id(s)].append(time.perf_counter() - start)
    return statistics.median(times[id(original)]), statistics.median(times[id(merged)])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depthshrink", default=str(ROOT / "target/release/depthshrink"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=21, help="timed runs per network at batch 1")
    ap.add_argument("--runs-64", type=int, default=11, help="timed runs per network at batch 64")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, res, original_flags, merged_flags in CASES:
            orig_path, merged_path = Path(tmp, "original.onnx"), Path(tmp, "merged.onnx")
            export(args.depthshrink, original_flags, orig_path)
            summary = export(args.depthshrink, merged_flags, merged_path)
            merged_blocks = summary.split(": ", 1)[1].split(" merged")[0]
            original, merged = session(orig_path, args.threads), session(merged_path, args.threads)
            for batch in (1, 64):
                x = np.random.default_rng(0).standard_normal((batch, 3, res, res), np.float32)
                runs = args.runs if batch == 1 else args.runs_64
                t_orig, t_merged = time_pair(original, merged, x, runs)
                record = {
                    "bench": "onnx_speedup",
                    "network": label,
                    "batch": batch,
                    "merged_blocks": int(merged_blocks),
                    "runs": runs,
                    "threads": args.threads,
                    "onnxruntime": ort.__version__,
                    "original_images_per_s": batch / t_orig,
                    "merged_images_per_s": batch / t_merged,
                    "speedup_vs_original": t_orig / t_merged,
                }
                print(json.dumps(record), flush=True)
                rows.append(record)
    print()
    print(f"ONNX Runtime {ort.__version__}, {args.threads} threads")
    print("| network | batch | original img/s | merged img/s | merged vs original |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['network']}, {r['merged_blocks']} blocks merged | {r['batch']} "
            f"| {r['original_images_per_s']:,.1f} | {r['merged_images_per_s']:,.1f} "
            f"| **{r['speedup_vs_original']:.2f}×** |"
        )


if __name__ == "__main__":
    main()
