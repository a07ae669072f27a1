#!/usr/bin/env python3
"""Times `depthshrink bench train|infer` cases in PyTorch CPU (and inference in ONNX Runtime),
printing the same JSON lines (`images_per_s`, `ms_per_batch`, `peak_rss_mb`).

    VENV/bin/python bench/pytorch_models.py train --cifar --width 0.5 --batch 128 --threads 2
    VENV/bin/python bench/pytorch_models.py infer --width 1.0 --res 224 --batch 1 --threads 2 [--onnx]

The CIFAR layout is torchvision's mobilenet_v2 with the stem and the first stride-2 stage at
stride 1 (depthshrinker.md §2). Each case should run in its own process (peak RSS is per process).
"""
import argparse
import json
import resource
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F
import torchvision


def build(width, num_classes, cifar):
    model = torchvision.models.mobilenet_v2(width_mult=width, num_classes=num_classes)
    if cifar:
        model.features[0][0].stride = (1, 1)
        model.features[2].conv[1][0].stride = (1, 1)
    return model


def median_ms(runs, f):
    f()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        f()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bench", choices=["train", "infer"])
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--cifar", action="store_true")
    ap.add_argument("--num-classes", type=int, default=None)
    ap.add_argument("--res", type=int, default=None)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--onnx", action="store_true", help="time ONNX Runtime instead of PyTorch eager")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    num_classes = args.num_classes or (10 if args.cifar else 1000)
    res = args.res or (32 if args.cifar else 224)
    model = build(args.width, num_classes, args.cifar)
    x = torch.randn(args.batch, 3, res, res)
    engine = "pytorch"

    if args.bench == "train":
        model.train()
        labels = torch.randint(0, num_classes, (args.batch,))
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=4e-5)

        def step():
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), labels, label_smoothing=0.1)
            loss.backward()
            opt.step()

        ms = median_ms(args.runs, step)
    elif args.onnx:
        import onnxruntime as ort

        engine = "onnxruntime"
        model.eval()
        with tempfile.NamedTemporaryFile(suffix=".onnx") as f:
            torch.onnx.export(model, x, f.name, input_names=["input"], output_names=["logits"], dynamo=False)
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = args.threads
            opts.inter_op_num_threads = 1
            session = ort.InferenceSession(f.name, opts, providers=["CPUExecutionProvider"])
        feed = {"input": x.numpy()}
        ms = median_ms(args.runs, lambda: session.run(None, feed))
    else:
        model.eval()
        with torch.inference_mode():
            ms = median_ms(args.runs, lambda: model(x))

    print(json.dumps({"bench": args.bench, "engine": engine, "model": "mobilenet_v2", "width": args.width,
                      "res": res, "batch": args.batch, "images_per_s": args.batch / (ms / 1e3),
                      "ms_per_batch": ms, "peak_rss_mb": peak_rss_mb()}), flush=True)


if __name__ == "__main__":
    main()
