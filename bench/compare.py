#!/usr/bin/env python3
"""Joins two `bench ... --json` outputs (depthshrink first, then a baseline) into a Markdown table.

    python3 bench/compare.py rust.jsonl torch.jsonl [--key ms|images_per_s]

For times (`ms`), the ratio is baseline / ours (> 1 means depthshrink is faster); for rates
(`images_per_s`), ours / baseline. Rows are matched on every field that is not a measurement.
"""
import argparse
import json

MEASURED = {"ms", "gflops", "images_per_s", "ms_per_batch", "peak_rss_mb"}


def load(path):
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip().startswith("{")]
    return {tuple((k, v) for k, v in r.items() if k not in MEASURED): r for r in rows}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ours")
    ap.add_argument("baseline")
    ap.add_argument("--key", default="ms", choices=["ms", "ms_per_batch", "images_per_s"])
    ap.add_argument("--names", default="depthshrink,PyTorch")
    args = ap.parse_args()
    ours, base = load(args.ours), load(args.baseline)
    ours_name, base_name = args.names.split(",")
    higher_is_better = args.key == "images_per_s"
    print(f"| case | {ours_name} {args.key} | {base_name} {args.key} | ratio |")
    print("|---|---|---|---|")
    for key, row in ours.items():
        case = " ".join(f"{k}={v}" for k, v in key)
        other = base.get(key)
        if other is None:
            print(f"| {case} | {row[args.key]:.2f} | – | – |")
            continue
        a, b = row[args.key], other[args.key]
        ratio = a / b if higher_is_better else b / a
        print(f"| {case} | {a:.2f} | {b:.2f} | {ratio:.2f}× |")


if __name__ == "__main__":
    main()
