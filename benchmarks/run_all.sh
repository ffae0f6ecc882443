#!/usr/bin/env bash
# Every benchmark with its default settings, one after the other (each under 10 minutes on 2 CPU cores), tables under
# benchmarks/results/ (or the folder given as the first argument). Records the load average around each run.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-benchmarks/results}"
python="${PYTHON:-python}"
mkdir -p "$out"
run() {
  echo "== $* (loadavg $(cut -d' ' -f1-3 /proc/loadavg))"
  "$python" "benchmarks/$1.py" --out "$out" "${@:2}"
}
run overhead
run overhead --no-report
for name in head_to_head pruning memory multi_process parallel_workers adapters; do
  run "$name"
done
# What other pruner settings would have saved on the curves pruning.py just recorded (no training: seconds).
run pruning --replay "$out/pruning.json"
# Figure 9: the same workers through `optuna-trainer workers N`.
run parallel_workers --launcher
# Figure 10: pruners replayed on the recorded learning curves (benchmarks/results/curves.json; seconds), on 20 seeds
# and on 20 held-out seeds. Recording the curves again is `python benchmarks/curves.py` (about 75 min, not run here).
run replay
run replay --first-seed 20
# Figure 11: a checkpoint up to the artifact store and back; figure 14: many workers on one PostgreSQL study.
run artifact_store
run storage_scale
# Figures 12 and 13 print their tables (no --out): the out-of-memory constraint, and isolated trials.
"$python" benchmarks/oom_constraint.py --direct --seeds 0 1 2 3 4 5 6 7 8 9
"$python" benchmarks/oom_constraint.py
"$python" benchmarks/isolation.py
# Figures 15 and 16 (the `bench` extra): the peers on the recorded curves (seconds), and the live head-to-head against
# transformers' Ray Tune backend with ASHA (two rounds, about 15 min).
if "$python" -c "import syne_tune, ray.tune" 2>/dev/null; then
  run peers
  run ray_head_to_head
else
  echo "== peers and ray_head_to_head skipped: pip install -e '.[bench]'"
fi
