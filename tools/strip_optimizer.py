#!/usr/bin/env python3
"""Copy a training checkpoint without its optimiser state, for shipping.

`depthshrink train` writes `last.safetensors` / `best.safetensors` with the model's tensors,
the optimiser's (named `optim.…`) and JSON metadata. A shipped network needs only the first
and the metadata; this halves the file. Standard library only (no torch, no safetensors).

    python3 tools/strip_optimizer.py runs/c10/last.safetensors models/cifar10-mbv2-w0.5.safetensors
"""

import json
import os
import struct
import sys


def strip(src: str, dst: str) -> None:
    with open(src, "rb") as f:
        raw = f.read()
    if len(raw) < 8:
        sys.exit(f"{src}: too short for a safetensors file")
    (n,) = struct.unpack("<Q", raw[:8])
    if 8 + n > len(raw):
        sys.exit(f"{src}: header length {n} runs past the end of the file")
    header = json.loads(raw[8 : 8 + n])
    data = raw[8 + n :]
    out_header, chunks, offset = {}, [], 0
    if "__metadata__" in header:
        out_header["__metadata__"] = header.pop("__metadata__")
    dropped = 0
    for name in sorted(header, key=lambda k: header[k]["data_offsets"][0]):
        if name.startswith("optim."):
            dropped += 1
            continue
        info = dict(header[name])
        begin, end = info["data_offsets"]
        chunks.append(data[begin:end])
        info["data_offsets"] = [offset, offset + end - begin]
        offset += end - begin
        out_header[name] = info
    text = json.dumps(out_header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # keep the data 8-byte aligned, as safetensors writers do
    tmp = dst + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for c in chunks:
            f.write(c)
    os.replace(tmp, dst)
    print(f"{dst}: {len(out_header) - ('__metadata__' in out_header)} tensors kept, {dropped} optimiser tensors dropped")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    strip(sys.argv[1], sys.argv[2])
