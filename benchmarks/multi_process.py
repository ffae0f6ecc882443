"""Figure 5: a 2-process search with pruning (`accelerate launch --multi_gpu --num_processes 2`, gloo on the CPU).

Each side is one `accelerate launch` of this script (`--side worker-ours` / `--side worker-transformers`), run under a
hard wall-clock limit: on timeout the whole process group is killed and the row records what the run did. Every rank
appends its progress (trial starts, evaluations, trial ends) to a log, so that a hang is recorded with where each rank
was. The search: a tiny BERT from a config on the learnable synthetic task of the tests (`optuna_trainer/testing.py`), a
learning rate that either learns (1e-3) or does not (1e-7), `RandomSampler(seed=0)` and `MedianPruner(n_startup_trials=1)`:
a trial that does not learn after one that does is pruned at its first evaluation.

    python benchmarks/multi_process.py            # default: 6 trials; a side is killed after 60 s without progress
    python benchmarks/multi_process.py --quick    # CI: 4 trials; killed after 20 s without progress
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

# benchmarks/ (its shared modules) and the repository root (tests.support: the tiny models and recorders)
sys.path[:0] = [
    os.path.dirname(os.path.abspath(__file__)),
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
]
import measure  # noqa: E402
import sides  # noqa: E402
import tables  # noqa: E402

from tests.support import kill_process_tree  # noqa: E402

NAME = "multi_process"
COLUMNS = ["side", "processes", "outcome", "wall seconds", "completed/pruned", "best value", "command"]
SPACE = {"learning_rate": {"type": "categorical", "choices": [1e-3, 1e-7]}}


def settings(quick: bool) -> dict[str, Any]:
    if quick:
        return dict(n_trials=4, steps=8, eval_steps=2, n_train=128, timeout=120, stall=20)
    return dict(n_trials=6, steps=16, eval_steps=4, n_train=256, timeout=300, stall=60)


def worker(name: str, s: dict[str, Any], out_prefix: str) -> None:
    """One rank of one side (run by `accelerate launch`)."""
    import optuna
    import torch
    from transformers import TrainerCallback

    from tests.support import base_args, compute_metrics, make_dataset, tiny_model

    sides.quiet()
    rank = int(os.environ.get("RANK", "0"))
    log_path = f"{out_prefix}.rank{rank}.log"

    def log(event: str) -> None:
        with open(log_path, "a", encoding="utf-8") as f:
            f.write(f"{time.time():.3f} {event}\n")

    class Progress(TrainerCallback):
        def __init__(self) -> None:
            self.trials = 0

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.trials += 1
            log(f"trial {self.trials - 1} start lr={args.learning_rate}")

        def on_evaluate(self, args: Any, state: Any, control: Any, metrics: Any = None, **kwargs: Any) -> None:
            log(f"trial {self.trials - 1} eval step={state.global_step} accuracy={metrics.get('eval_accuracy')}")

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            log(f"trial {self.trials - 1} end step={state.global_step}")

    log("start")
    train, dev = make_dataset(s["n_train"], seed=0), make_dataset(64, seed=1)
    values = base_args(
        tempfile.mkdtemp(prefix=f"mp-{name}-"),
        max_steps=s["steps"],
        eval_steps=s["eval_steps"],
        logging_steps=1000,
        per_device_train_batch_size=16,
        n_trials=s["n_trials"],
    )
    progress = Progress()
    pruner = optuna.pruners.MedianPruner(n_startup_trials=1)
    sampler = optuna.samplers.RandomSampler(seed=0)
    result: dict[str, Any] = {}
    if name == "ours":
        from optuna_trainer import OptunaTrainer, OptunaTrainingArguments

        args = OptunaTrainingArguments(
            **{**values, "learning_rate": 1e-3}, hp_space=SPACE, sampler=sampler, pruner=pruner, save_best_model=False
        )
        trainer = OptunaTrainer(
            model_init=tiny_model,
            args=args,
            train_dataset=train,
            eval_dataset=dev,
            compute_metrics=compute_metrics,
            callbacks=[progress],
        )
        best = trainer.hyperparameter_search()
        if trainer.study is not None:
            states = [t.state.name for t in trainer.study.trials]
            result["completed/pruned"] = f"{states.count('COMPLETE')}/{states.count('PRUNED')}"
    else:
        from transformers import Trainer, TrainingArguments

        plain = {k: v for k, v in values.items() if k not in ("storage", "n_trials")}
        trainer = Trainer(
            model_init=tiny_model,
            args=TrainingArguments(**plain),
            train_dataset=train,
            eval_dataset=dev,
            compute_metrics=compute_metrics,
            callbacks=[progress],
        )

        def hp_space(trial: optuna.Trial) -> dict[str, Any]:
            return {"learning_rate": trial.suggest_categorical("learning_rate", SPACE["learning_rate"]["choices"])}

        best = trainer.hyperparameter_search(
            hp_space=hp_space,
            compute_objective=lambda m: m["eval_accuracy"],
            n_trials=s["n_trials"],
            direction="maximize",
            backend="optuna",
            sampler=sampler,
            pruner=pruner,
        )
    log("search returned")
    if rank == 0:
        result["best value"] = best.objective if best is not None else None
        result["world size"] = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        with open(f"{out_prefix}.json", "w", encoding="utf-8") as f:
            json.dump(result, f)


def launch_command(script: str, name: str, out_prefix: str, quick: bool) -> list[str]:
    port = str(29500 + (os.getpid() % 500) + (0 if name == "ours" else 500))
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_machines",
        "1",
        "--num_processes",
        "2",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        port,
        script,
        "--side",
        f"worker-{name}",
        "--side-out",
        out_prefix,
        *(["--quick"] if quick else []),
    ]


def read_logs(out_prefix: str) -> dict[int, list[str]]:
    logs = {}
    for rank in (0, 1):
        path = f"{out_prefix}.rank{rank}.log"
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                logs[rank] = [line.split(" ", 1)[1].strip() for line in f]
    return logs


def run_launch(name: str, s: dict[str, Any], quick: bool, tmp: str) -> dict[str, Any]:
    out_prefix = os.path.join(tmp, name)
    cmd = launch_command(os.path.abspath(__file__), name, out_prefix, quick)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": tables.REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    start = time.perf_counter()
    stalled = False
    with open(out_prefix + ".stderr", "w") as err:
        proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=err, stderr=subprocess.STDOUT)
        # A hang shows as ranks that stop writing progress: kill the group after `stall` seconds without any new
        # event (once both ranks have started) or at the hard limit, whichever comes first.
        while proc.poll() is None:
            time.sleep(0.5)
            now = time.time()
            mtimes = [
                os.path.getmtime(f"{out_prefix}.rank{r}.log")
                for r in (0, 1)
                if os.path.exists(f"{out_prefix}.rank{r}.log")
            ]
            stalled = len(mtimes) == 2 and now - max(mtimes) > s["stall"]
            if stalled or time.perf_counter() - start > s["timeout"]:
                kill_process_tree(proc)
                break
        rc = proc.returncode
        timed_out = stalled or rc is None or rc < 0
    seconds = time.perf_counter() - start
    logs = read_logs(out_prefix)
    result: dict[str, Any] = {}
    if os.path.exists(out_prefix + ".json"):
        with open(out_prefix + ".json", encoding="utf-8") as f:
            result = json.load(f)
    last = {rank: (lines[-1] if lines else "nothing") for rank, lines in logs.items()}
    if timed_out:
        why = f"no progress for {s['stall']} s" if stalled else f"still running at the {s['timeout']} s limit"
        outcome = f"hung ({why}; process group killed); last events: " + "; ".join(
            f"rank {r}: {e}" for r, e in sorted(last.items())
        )
    elif rc == 0:
        outcome = "completed"
    else:
        with open(out_prefix + ".stderr", encoding="utf-8", errors="replace") as f:
            tail = [ln for ln in f.read().splitlines() if "Error" in ln][-1:] or ["(no error line)"]
        outcome = f"failed (exit {rc}): {tail[0][:200]}"
    return {
        "outcome": outcome,
        "wall seconds": seconds,
        "completed/pruned": result.get("completed/pruned"),
        "best value": result.get("best value"),
        "timed out": timed_out,
        "rank logs": logs,
        "command": "OMP_NUM_THREADS=1 accelerate launch --multi_gpu --num_processes 2 benchmarks/multi_process.py "
        f"--side worker-{name}" + (" --quick" if quick else ""),
    }


def _has_distributed() -> bool:
    import importlib.util

    return importlib.util.find_spec("optuna_trainer.processes.distributed") is not None


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = sides.parser(__doc__.splitlines()[0])
    p.add_argument("--sides", default="ours,transformers", help="comma-separated sides to run")
    a = p.parse_args(argv)
    s = settings(a.quick)
    if a.side:
        worker(a.side.removeprefix("worker-"), s, a.side_out)
        return {}
    load_before = measure.loadavg()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.sides.split(","):
            result = run_launch(name, s, a.quick, tmp)
            label = "OptunaTrainer" if name == "ours" else "Trainer.hyperparameter_search (optuna)"
            rows.append({"side": label, "processes": 2, **result})
            print(f"{label}: {result['outcome']} ({result['wall seconds']:.1f} s)", flush=True)
    load_after = measure.loadavg()
    meta = {
        "command": tables.command_line(),
        "model": "BERT from a config, random init (tests.support.tiny_model: 1 layer, hidden 16)",
        "data": "synthetic learnable task of tests.support.make_dataset (label = first token in the upper half)",
        "settings": {
            **s,
            "space": SPACE,
            "sampler": "RandomSampler(seed=0)",
            "pruner": "MedianPruner(n_startup_trials=1)",
            "per_device_train_batch_size": 16,
            "OMP_NUM_THREADS": 1,
            "use_cpu": True,
        },
        "optuna_trainer has distributed coordination (issue-3 merged)": _has_distributed(),
        "loadavg before": load_before,
        "loadavg after": load_after,
    }
    for row in rows:
        meta[f"rank logs ({row['side']})"] = row.pop("rank logs")
    tables.write_table(
        a.out, NAME, "Multi-process search with pruning (2 processes, gloo on CPU)", COLUMNS, rows, meta
    )
    return {"rows": rows}


if __name__ == "__main__":
    main()
