#!/usr/bin/env python3
"""Joins two `bench ... --json` outputs (depthshrink first, then a baseline) into a Markdown table.

    python3 bench/compare.py rust.jsonl torch.jsonl [--key ms|images_per_s]

For times (`ms`), the ratio is baseline / ours (> 1 means depthshrink is faster); for rates
(`images_per_s`), ours / baseline. A case run several times (e.g. alternating engines) is
reported as the median of its runs, and the ratio as the median of the per-round ratios when
both sides ran it equally often. Rows are matched on every field that is not a measurement (or the `engine` name).
"""
import argparse
import json
import statistics

MEASURED = {"ms", "gflops", "gbps", "images_per_s", "ms_per_batch", "peak_rss_mb"}
# Fields that say who measured, not what: ignored when matching rows.
NOT_MATCHED = MEASURED | {"engine"}


def load(path):
    """Rows grouped by case: {case key: [row, ...]} (repeated runs of a case share a key)."""
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip().startswith("{")]
    cases = {}
    for r in rows:
        cases.setdefault(tuple((k, v) for k, v in r.items() if k not in NOT_MATCHED), []).append(r)
    return cases


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
    for key, rows in ours.items():
        case = " ".join(f"{k}={v}" for k, v in key)
        a = statistics.median(r[args.key] for r in rows)
        runs = f" (median of {len(rows)})" if len(rows) > 1 else ""
        others = base.get(key)
        if others is None:
            print(f"| {case}{runs} | {a:.2f} | – | – |")
            continue
        b = statistics.median(r[args.key] for r in others)
        ratio = lambda x, y: x / y if higher_is_better else y / x
        if len(rows) == len(others) > 1:
            # Alternating runs: the i-th of each ran under about the same load, so the median of
            # the per-round ratios is steadier than the ratio of the medians.
            r = statistics.median(ratio(x[args.key], y[args.key]) for x, y in zip(rows, others))
        else:
            r = ratio(a, b)
        print(f"| {case}{runs} | {a:.2f} | {b:.2f} | {r:.2f}× |")


if __name__ == "__main__":
    main()
