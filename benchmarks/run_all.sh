#!/usr/bin/env bash
# Every benchmark with its default settings, one after the other (each under 10 minutes on 2 CPU cores), tables under
# benchmarks/results/ (or the folder given as the first argument). Records the load average around each run.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-benchmarks/results}"
python="${PYTHON:-python}"
mkdir -p "$out"
for name in overhead head_to_head pruning memory multi_process parallel_workers; do
  echo "== $name (loadavg $(cut -d' ' -f1-3 /proc/loadavg))"
  "$python" "benchmarks/$name.py" --out "$out"
done
