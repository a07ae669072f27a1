#!/usr/bin/env bash
# Every figure in BENCHMARKS.md, depthshrink and PyTorch (and ONNX Runtime) in the same run.
#   PY=/path/to/venv/bin/python bash bench/run_all.sh [OUT_DIR]
# Needs a release build (cargo build --release) and PyTorch in a venv outside the repo.
# Model cases run REPEAT times (default 3), engines alternating, and are reported as medians:
# on a shared machine one run of each can land in different load.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:?set PY to a python with torch, torchvision and onnxruntime}
OUT=${1:-bench/results}
T=${THREADS:-2}
REPEAT=${REPEAT:-3}
# SECTIONS="models" (say) reruns only some of: kernels models merge onnx.
SECTIONS=" ${SECTIONS:-kernels models merge onnx} "
run() { [[ "$SECTIONS" == *" $1 "* ]]; }
B=./target/release/depthshrink
mkdir -p "$OUT"
if run kernels; then
: > "$OUT/kernels-rust.jsonl"; : > "$OUT/kernels-torch.jsonl"
for op in sgemm conv1x1 depthwise conv; do
  "$PY" bench/pytorch_kernels.py --threads "$T" --only "$op" >> "$OUT/kernels-torch.jsonl"
  "$B" --threads "$T" bench kernels --json --only "$op" >> "$OUT/kernels-rust.jsonl"
done
# Memory-copy bandwidth, the yardstick of the depthwise GB/s (ours only).
"$B" --threads "$T" bench kernels --json --only copy >> "$OUT/kernels-rust.jsonl"
python3 bench/compare.py "$OUT/kernels-rust.jsonl" "$OUT/kernels-torch.jsonl" > "$OUT/kernels.md"
fi

if run models; then
: > "$OUT/models-rust.jsonl"; : > "$OUT/models-torch.jsonl"; : > "$OUT/models-ort.jsonl"
for _ in $(seq "$REPEAT"); do
  for w in 0.5 1.0; do
    "$PY" bench/pytorch_models.py train --cifar --width "$w" --batch 128 --runs 5 --threads "$T" >> "$OUT/models-torch.jsonl"
    "$B" --threads "$T" bench train --cifar --width "$w" --batch 128 --runs 5 --json >> "$OUT/models-rust.jsonl"
  done
  for b in 1 32; do
    "$PY" bench/pytorch_models.py infer --width 1.0 --batch "$b" --threads "$T" >> "$OUT/models-torch.jsonl"
    "$PY" bench/pytorch_models.py infer --width 1.0 --batch "$b" --threads "$T" --onnx >> "$OUT/models-ort.jsonl"
    "$B" --threads "$T" bench infer --width 1.0 --batch "$b" --json >> "$OUT/models-rust.jsonl"
  done
done
python3 bench/compare.py "$OUT/models-rust.jsonl" "$OUT/models-torch.jsonl" --key images_per_s > "$OUT/models-torch.md"
python3 bench/compare.py "$OUT/models-rust.jsonl" "$OUT/models-ort.jsonl" --key images_per_s --names depthshrink,ONNXRuntime > "$OUT/models-ort.md"
fi

# The method's speed-up: original vs pad-first unmerged vs merged, interleaved in one process
# (this project's kernels): the shipped CIFAR-10 network and MobileNetV2-1.4 config D.
if run merge; then
D=configs/mbv2-140-D.toml
W=models/cifar10-mbv2-w0.5-ds-keep10.safetensors
: > "$OUT/merge.jsonl"
for args in "--weights $W --res 32 --batch 1" "--weights $W --res 32 --batch 64" "--width 1.4 --keep $D --batch 1" "--width 1.4 --keep $D --batch 64 --runs 5"; do
  "$B" --threads "$T" bench infer --compare $args --json >> "$OUT/merge.jsonl"
done
"$B" --threads "$T" latency --cifar --width 0.5 --batch 64 --out "$OUT/latency-cifar-w0.5-b64.json" > "$OUT/latency-cifar-w0.5-b64.txt"
"$B" --threads "$T" latency --width 1.4 --batch 1 --out "$OUT/latency-w1.4-b1.json" > "$OUT/latency-w1.4-b1.txt"
fi
# The same speed-up inside ONNX Runtime: the networks exported with `depthshrink export`.
if run onnx; then
"$PY" bench/onnx_speedup.py --depthshrink "$B" --threads "$T" > "$OUT/onnx-speedup.md"
fi
echo "results in $OUT"
