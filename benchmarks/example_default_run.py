"""Benchmark: the README's first command (`python examples/text_classification.py`, no arguments) on this machine.

Checks the promise of the README: it finishes in under 5 minutes on 2 CPU cores, prunes some trials, and reaches a
validation accuracy clearly above chance (0.5 on the balanced shipped reviews). Run it on an otherwise idle machine
(the load average before and after is printed, since other jobs on the same cores stretch the wall time):

    python benchmarks/example_default_run.py [--output_dir DIR] [--max_seconds 300] [--min_accuracy 0.8]

Prints one JSON line with the figures and exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default=None, help="Where the run writes (default: a temporary folder).")
    parser.add_argument("--max_seconds", type=float, default=300.0)
    parser.add_argument("--min_accuracy", type=float, default=0.8)
    opts = parser.parse_args()
    out = opts.output_dir or tempfile.mkdtemp(prefix="example_default_run_")
    shutil.rmtree(out, ignore_errors=True)

    load_before = os.getloadavg()
    start = time.monotonic()
    # The defaults, with only the output folder moved so that an earlier run's study is not resumed.
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", "text_classification.py"), "--output_dir", out],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    wall = time.monotonic() - start
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        print(result.stderr[-4000:], file=sys.stderr)
        return 1
    with open(os.path.join(out, "report", "summary.json"), encoding="utf-8") as f:
        summary = json.load(f)
    figures = {
        "wall_seconds": round(wall, 1),
        "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 1),
        "cpu_count": os.cpu_count(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "best_accuracy": summary["best_trial"]["value"],
        "best_params": summary["best_trial"]["params"],
        "states": summary["states"],
        "total_steps": summary["total_steps"],
        "steps_saved_by_pruning": summary["steps_saved_by_pruning"],
    }
    print(json.dumps(figures))
    missed = []
    if wall > opts.max_seconds:
        missed.append(f"wall time {wall:.0f} s > {opts.max_seconds:.0f} s")
    if summary["best_trial"]["value"] < opts.min_accuracy:
        missed.append(f"accuracy {summary['best_trial']['value']:.3f} < {opts.min_accuracy}")
    if summary["states"].get("PRUNED", 0) < 1:
        missed.append("no trial was pruned")
    if missed:
        print("missed: " + "; ".join(missed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
