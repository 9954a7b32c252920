"""CROWN bounds of a convolutional network with patches on and off, side by side (issue 21).

Run::

    .venv/bin/python benchmarks/bench_patches.py [--arch ResNet-S] [--shape 1x28x28] [--batch 2]

Each side runs in its own process (one torch thread; peak resident memory is its own): the
built-in architecture with random weights (seed 0), inputs uniform in [0, 1], eps = 2/255
clipped to [0, 1], margin rows of the predicted class; one bound under ``no_grad``, timed once
(a bound takes seconds to a minute). Printed: the time and peak memory of each side and the
largest difference of the lower bounds relative to the largest bound.
"""

import argparse
import json
import subprocess
import sys

CELL = r"""
import sys, time, json, resource, torch
torch.set_num_threads(1)
from torch import nn
import relaxlab
from relaxlab.architectures import BUILTIN_ARCHITECTURES
from relaxlab.engine.bounder import bounder
from relaxlab.engine.spec import margin_spec
arch, shape, batch, patches = sys.argv[1], tuple(int(v) for v in sys.argv[2].split("x")), int(sys.argv[3]), sys.argv[4] == "1"
torch.manual_seed(0)
model = nn.Sequential(*{a.name: a for a in BUILTIN_ARCHITECTURES}[arch].builder(shape, 10)).eval()
x = torch.rand(batch, *shape)
crown = relaxlab.get_relaxation("CROWN")
labels = model(x).argmax(1)
C = margin_spec(labels, 10)
def run():
    with torch.no_grad():
        b = bounder(model, (x - 2/255).clamp(0, 1), (x + 2/255).clamp(0, 1), crown, patches=patches)
        return b.bound(C, True)[0]
t = time.perf_counter(); lb = run(); best = time.perf_counter() - t
print(json.dumps({"s": best, "peak_MiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "lb": lb.flatten().tolist()}))
"""
parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--arch", default="ResNet-S")
parser.add_argument("--shape", default="1x28x28")
parser.add_argument("--batch", type=int, default=2)
args = parser.parse_args()
for arch, shape, batch in ((args.arch, args.shape, args.batch),):
    out = {}
    for p in ("1", "0"):
        r = subprocess.run(
            [sys.executable, "-c", CELL, arch, shape, str(batch), p], capture_output=True, text=True
        )
        if r.returncode:
            print(arch, p, r.stderr[-500:])
            continue
        out[p] = json.loads(r.stdout.strip().splitlines()[-1])
    if len(out) == 2:
        diff = max(abs(a - b) for a, b in zip(out["1"]["lb"], out["0"]["lb"], strict=True)) / max(
            abs(b) for b in out["0"]["lb"]
        )
        print(
            f"{arch} {shape} batch {batch}: patches {out['1']['s']:.2f} s, {out['1']['peak_MiB']:.0f} MiB; full maps {out['0']['s']:.2f} s, {out['0']['peak_MiB']:.0f} MiB; rel diff {diff:.1e}"
        )
