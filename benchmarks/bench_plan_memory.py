"""The planner's memory estimate of one training step (cohortseg.plans.step_bytes) against the memory one
step really takes, measured on the CPU: for each family and window, a fresh process builds the network with
the default training settings, runs one forward/backward/Adam step at the planned batch, and reports the
growth of its peak resident memory (ru_maxrss) over the step; the estimate is computed for the same
network, window and batch. On a GPU the allocator's peak would be the figure to compare; none is used here.

Prints key=value per case (estimate_mb, measured_mb, ratio = measured / estimate) and, last, the headline
``worst_underestimate`` = the largest measured / estimate (above 1: the plan would put more in memory than
it thinks).

Usage: .venv/bin/python benchmarks/bench_plan_memory.py [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CASES = [("unet", 64, 2), ("unet", 96, 2), ("segresnet", 64, 2), ("unetr", 64, 2)]

STEP = r"""
import json, resource, sys, torch
from cohortseg.config import load
from cohortseg.model import build_loss, build_model, target
from cohortseg.plans import step_bytes
from cohortseg.settings import TrainSettings

family, size, batch, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(threads)
ts = TrainSettings.from_dict(load(None, {"train": {"model": family}})["train"])
estimate = step_bytes(ts, 2, [size] * 3, batch)
net = build_model(ts, 2, [size] * 3)
opt = torch.optim.Adam(net.parameters())
loss_fn = build_loss(0.5, 2)
x = torch.randn(batch, 1, size, size, size)
y = torch.randint(0, 3, (batch, 1, size, size, size))
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
loss = loss_fn(net(x), target(y, 2))
loss.backward()
opt.step()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"estimate_mb": estimate / 2**20, "measured_mb": (peak - base) / 1024}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    ratios = []
    for family, size, batch in CASES:
        out = subprocess.run([sys.executable, "-c", STEP, family, str(size), str(batch), str(args.threads)],
                             cwd=REPO, check=True, capture_output=True, text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        ratio = r["measured_mb"] / r["estimate_mb"]
        ratios.append(ratio)
        print(f"{family}_{size}_b{batch}_estimate_mb={r['estimate_mb']:.0f} {family}_{size}_b{batch}_measured_mb="
              f"{r['measured_mb']:.0f} {family}_{size}_b{batch}_ratio={ratio:.2f}")
    print(f"worst_underestimate={max(ratios):.2f}")


if __name__ == "__main__":
    main()
