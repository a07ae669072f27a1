#!/usr/bin/env bash
# The CIFAR-10 figures of RESULTS.md, end to end: the baseline (issue #5), then DepthShrinker
# at keep ≈ 0.5 with its random-removal baseline (issue #6). Every stage writes a run directory
# under $RUNS and resumes from it, so the script can be stopped and run again at any point.
#
#   tools/cifar10.sh                # all stages
#   STAGES="train eval" tools/cifar10.sh
#
# Environment: DS (the binary, default target/release/depthshrink), DATA (CIFAR-10 as class
# folders, default ../shared/data/cifar10), RUNS (default runs/c10), THREADS (default 2),
# SEARCH_EPOCHS (2), FINETUNE_EPOCHS (10); for the longer finetune, FINAL_KEPT (10),
# FINAL_EPOCHS (30), FINAL_TEMPERATURE (4.0).
# Wall time on 2 cores of this shared host: ~3.8 h of training; the latency table, search and
# 10-epoch finetune ~1.1 h; the random baseline ~1 h; the longer finetune ~2.3 h.
set -euo pipefail
cd "$(dirname "$0")/.."

DS=${DS:-target/release/depthshrink}
DATA=${DATA:-../shared/data/cifar10}
RUNS=${RUNS:-runs/c10}
THREADS=${THREADS:-2}
SEARCH_EPOCHS=${SEARCH_EPOCHS:-2}
FINETUNE_EPOCHS=${FINETUNE_EPOCHS:-10}
FINAL_KEPT=${FINAL_KEPT:-10}
FINAL_EPOCHS=${FINAL_EPOCHS:-30}
FINAL_TEMPERATURE=${FINAL_TEMPERATURE:-4.0}
STAGES=${STAGES:-train latency demo random final eval plot}
CONFIG=configs/cifar10-mbv2-w0.5.toml
# The stages after pretraining learn at the config's lr / 5, as `demo` does by default.
STAGE_LR=0.02

ds() { echo "+ depthshrink $*" >&2; "$DS" --threads "$THREADS" "$@"; }
resume_flag() { [[ -f "$1/last.safetensors" ]] && echo --resume || true; }
wants() { [[ " $STAGES " == *" $1 "* ]]; }

[[ -x "$DS" ]] || cargo build --release
mkdir -p "$RUNS"
BASE=$RUNS/baseline

if wants train; then
    # shellcheck disable=SC2046
    ds train --config "$CONFIG" --data "$DATA" --out "$BASE" $(resume_flag "$BASE")
    # The shipped network is the last epoch (cosine to 0), not the best test epoch: choosing
    # an epoch by its test accuracy would report an optimistic figure.
    ds strip "$BASE/last.safetensors" --out "$RUNS/baseline.safetensors"
fi
PRETRAINED=${PRETRAINED:-$RUNS/baseline.safetensors}

if wants latency; then
    if [[ ! -f "$RUNS/latency.json" ]]; then
        ds latency --cifar --width 0.5 --batch 64 --out "$RUNS/latency.json"
    fi
fi

if wants demo; then
    # Search (latency-aware), finetune with self-distillation, merge, verify, benchmark.
    ds demo --config "$CONFIG" --data "$DATA" --pretrained "$PRETRAINED" \
        --latency "$RUNS/latency.json" --keep-ratio 0.5 --stage-lr "$STAGE_LR" \
        --search-epochs "$SEARCH_EPOCHS" --finetune-epochs "$FINETUNE_EPOCHS" --out "$RUNS/demo"
fi

if wants random; then
    # The random-removal baseline: as many activations kept, drawn at random, finetuned the
    # same way (same epochs, lr and distillation).
    if [[ ! -f "$RUNS/random/search.json" ]]; then
        ds search --config "$CONFIG" --data "$DATA" --random --keep-ratio 0.5 --out "$RUNS/random"
    fi
    # shellcheck disable=SC2046
    ds finetune --config "$CONFIG" --data "$DATA" --pretrained "$PRETRAINED" \
        --keep "$RUNS/random/search.json" --distill \
        --set epochs="$FINETUNE_EPOCHS" --set lr.lr="$STAGE_LR" \
        --out "$RUNS/random-ft" $(resume_flag "$RUNS/random-ft")
fi

FINAL=$RUNS/final
if wants final; then
    # The longer finetune: the demo search's keep list for FINAL_KEPT activations, softer
    # distillation targets, three times the epochs; then merged and verified.
    keep="$RUNS/demo/search/search.json:$FINAL_KEPT"
    # shellcheck disable=SC2046
    ds finetune --config "$CONFIG" --data "$DATA" --pretrained "$PRETRAINED" --keep "$keep" \
        --distill --set epochs="$FINAL_EPOCHS" --set lr.lr="$STAGE_LR" \
        --set distill.temperature="$FINAL_TEMPERATURE" --out "$FINAL" $(resume_flag "$FINAL")
    ds merge --weights "$FINAL/last.safetensors" --keep "$keep" --cifar --width 0.5 \
        --out "$FINAL/merged.safetensors"
fi

if wants eval; then
    # Finetuned checkpoints carry their keep list, so eval needs no --keep.
    ds eval --weights "$PRETRAINED" --data "$DATA" --confusion "$RUNS/baseline-confusion.csv"
    for weights in "$RUNS/demo/merged.safetensors" "$FINAL/merged.safetensors" \
        "$RUNS/random-ft/last.safetensors"; do
        if [[ -f "$weights" ]]; then ds eval --weights "$weights" --data "$DATA"; fi
    done
fi

if wants plot; then
    # The baseline's curves; DepthShrinker's finetuning against the random baseline's (the
    # demo's own figure, $RUNS/demo/plot.svg, adds its search and latency table).
    ds plot "$BASE" --out "$RUNS/baseline.svg"
    runs=()
    plot_args=()
    for run in "$FINAL:searched, $FINAL_KEPT kept, $FINAL_EPOCHS epochs, T = $FINAL_TEMPERATURE" \
        "$RUNS/demo/finetune:searched (demo), $FINETUNE_EPOCHS epochs" \
        "$RUNS/random-ft:random, ${FINETUNE_EPOCHS} epochs"; do
        if [[ -f "${run%%:*}/metrics.jsonl" ]]; then
            runs+=("${run%%:*}")
            plot_args+=(--label "${run#*:}")
        fi
    done
    # The pretrained network's last test top-1 as the reference line, when it was trained here.
    if [[ -f "$BASE/metrics.jsonl" ]]; then
        plot_args+=(--reference "$(tail -n 1 "$BASE/metrics.jsonl" |
            python3 -c 'import json, sys; print("%.2f" % (100 * json.load(sys.stdin)["val_acc"]))')")
    fi
    if (( ${#runs[@]} )); then ds plot "${runs[@]}" "${plot_args[@]}" --out "$RUNS/finetune.svg"; fi
fi
