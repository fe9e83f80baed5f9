"""What the benchmark drivers share (scripts/bench_baselines.py, scripts/bench_vlm.py): how the Rust side is
built for a measurement, the machine's load, a process's CPU share, and medians and spreads over rounds."""
import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
# The test profile's dependencies are built at opt-level 2 (Cargo.toml); for a measurement our own crates are
# rebuilt optimized too (`--release` instead rebuilds every dependency: minutes more, the same libtorch and
# ONNX Runtime either way).
CRATE_OPT_LEVEL = 3


def workspace_crates():
    """The workspace's own packages, from `cargo metadata` (a hand-kept list missed one and left it at opt-level 0)."""
    out = subprocess.run(["cargo", "metadata", "--no-deps", "--format-version", "1", "--locked"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    return sorted(p["name"] for p in json.loads(out)["packages"])


def cargo_profile_args(release=False):
    """cargo arguments selecting the measurement build."""
    if release:
        return ["--release"]
    out = []
    for c in workspace_crates():
        out += ["--config", f"profile.dev.package.{c}.opt-level={CRATE_OPT_LEVEL}"]
    return out


def load_average():
    """The 1-minute load average (None where the platform has none)."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


class CpuShare:
    """Process CPU seconds over (wall seconds × threads) of a timed region: near 1 when the process's threads
    had the cores to themselves, lower when other processes took them (as src/encoders/bench.rs measures it)."""

    def __init__(self, threads):
        self.threads = threads
        self.cpu0, self.t0 = time.process_time(), time.perf_counter()

    def stop(self):
        wall = time.perf_counter() - self.t0
        return wall, (time.process_time() - self.cpu0) / (wall * self.threads)


def median_run(runs, key):
    """The round with the median rate, with the spread (slowest, fastest) of all rounds: these machines swing
    from run to run, so a figure comes with its spread (an even count takes the upper middle)."""
    ordered = sorted(runs, key=lambda r: r[key])
    out = dict(ordered[len(ordered) // 2])
    out["spread_per_s"] = [ordered[0][key], ordered[-1][key]]
    return out


def summarize(values):
    """Median and (min, max) of one figure over rounds."""
    return {"median": float(np.median(values)), "spread": [float(min(values)), float(max(values))]}


def summarize_ratios(per_round):
    """Each key's median and spread over rounds, from one dict of ratios per round (each ratio taken within
    its round: ours and the reference measured back to back)."""
    return {key: summarize([r[key] for r in per_round]) for key in per_round[0]}
