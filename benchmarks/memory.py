"""Figure 4: resident memory across 20 trials, ours vs transformers', with some trials pruned and one failing.

Each side runs in a fresh interpreter: the same model_init, data, space, `TPESampler(seed=0)`,
`MedianPruner(n_startup_trials=3)` on eval_loss (continuous, so that the median rule prunes), and one trial (the 8th)
that raises at its 2nd step (caught with `catch=(InjectedFailure,)`). Both sides run N + 1 trials (21 by default): ours
counts finished trials in `n_trials=N` and replaces the failed one; transformers counts every trial, so it is given
`n_trials=N + 1`. "After trial k" is read when trial k+1 calls `model_init`, before it builds its model: the current
RSS (psutil, or /proc/self/statm) and the peak RSS so far (ru_maxrss); "after the search" when the search returns.
Target: growth under 2% for ours from trial 1 to trial N.

    python benchmarks/memory.py            # default: MiniLM (first 3 layers), SST-2 subset, 20 trials
    python benchmarks/memory.py --quick    # CI: tiny BERT from a config, 6 trials
"""

from __future__ import annotations

import os
import sys
import tempfile
from typing import Any

# benchmarks/ (its shared modules) and the repository root (tests.support: the tiny models and recorders)
sys.path[:0] = [
    os.path.dirname(os.path.abspath(__file__)),
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
]
import measure  # noqa: E402
import sides  # noqa: E402
import tables  # noqa: E402
import tasks  # noqa: E402

from tests.support import RecordingPruner, TrialRecorder  # noqa: E402

NAME = "memory"
COLUMNS = [
    "side",
    "trials",
    "completed/pruned/failed",
    "RSS after trial 1 MiB",
    "RSS after trial N MiB",
    "RSS growth %",
    "peak RSS after trial 1 MiB",
    "peak RSS after trial N MiB",
    "peak RSS growth %",
    "RSS after the search MiB",
    "target met",
]
TARGET_GROWTH = 2.0
FAILING_TRIAL = 7  # 0-based: the 8th trial raises


def settings(quick: bool, model: str | None) -> dict[str, Any]:
    if quick:
        return dict(
            model=model or "tiny-bert",
            layers=None,
            n_train=64,
            n_dev=32,
            steps=6,
            eval_steps=2,
            n_trials=6,
            batch=16,
            failing=3,
        )
    return dict(
        model=model or "minilm",
        layers=3,
        n_train=256,
        n_dev=32,
        steps=6,
        eval_steps=2,
        n_trials=20,
        batch=16,
        failing=FAILING_TRIAL,
    )


class InjectedFailure(RuntimeError):
    pass


def side(name: str, s: dict[str, Any], data: str) -> dict[str, Any]:
    import optuna
    from transformers import TrainerCallback

    sides.quiet()
    task = tasks.make_task(s["model"], data, s["n_train"], s["n_dev"], layers=s["layers"])
    snapshots: list[tuple[float, float]] = []  # (current, peak) after each trial
    searching = False

    def model_init(trial: Any = None) -> Any:
        if searching:
            snapshots.append((measure.current_rss_mib(), measure.peak_rss_mib()))
        return task.model_init(trial)

    class Fail(TrainerCallback):
        """Raises at the 2nd step of one trial (counted by train() calls, the same on both sides)."""

        def __init__(self) -> None:
            self.calls = 0

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.calls += 1

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if self.calls == s["failing"] + 1 and state.global_step == 2:
                raise InjectedFailure(f"injected failure in trial {s['failing']}")

    rec = TrialRecorder(tasks.SPACE)
    train = dict(
        max_steps=s["steps"], per_device_train_batch_size=s["batch"], eval_strategy="steps", eval_steps=s["eval_steps"]
    )
    out = tempfile.mkdtemp(prefix=f"mem-{name}-")
    pruner = RecordingPruner(optuna.pruners.MedianPruner(n_startup_trials=3))
    if name == "ours":
        from optuna_trainer import OptunaTrainer, OptunaTrainingArguments

        args = OptunaTrainingArguments(
            **tasks.train_args(out, **train),
            hp_space=tasks.SPACE,
            n_trials=s["n_trials"],
            sampler={"name": "tpe", "seed": 0},
            pruner=pruner,
            storage="memory",
            objective_metric="loss",
            save_best_model=False,
        )
        trainer = OptunaTrainer(
            model_init=model_init,
            args=args,
            train_dataset=task.train,
            eval_dataset=task.dev,
            compute_metrics=tasks.compute_metrics,
            data_collator=task.collator,
            callbacks=[rec, Fail()],
        )
        searching = True
        trainer.hyperparameter_search(catch=(InjectedFailure,))
        states = [t.state.name for t in trainer.study.trials]
    else:
        from transformers import Trainer, TrainingArguments

        trainer = Trainer(
            model_init=model_init,
            args=TrainingArguments(**tasks.train_args(out, **train)),
            train_dataset=task.train,
            eval_dataset=task.dev,
            compute_metrics=tasks.compute_metrics,
            data_collator=task.collator,
            callbacks=[rec, Fail()],
        )
        searching = True
        trainer.hyperparameter_search(  # n_trials + 1: it counts the failed trial, ours replaces it
            hp_space=tasks.hf_space(),
            compute_objective=lambda m: m["eval_loss"],
            n_trials=s["n_trials"] + 1,
            direction="minimize",
            backend="optuna",
            sampler=optuna.samplers.TPESampler(seed=0),
            pruner=pruner,
            catch=(InjectedFailure,),
        )
        # transformers returns no study: the states come from the pruner's own record.
        states = [
            "FAIL" if i == s["failing"] else "PRUNED" if i in pruner.pruned else "COMPLETE"
            for i in range(len(rec.trials))
        ]
    snapshots.append((measure.current_rss_mib(), measure.peak_rss_mib()))
    return {"snapshots": snapshots, "states": states, "data": task.source, "model": task.model_name}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ran = sides.two_sides(__file__, __doc__, settings, side, argv)
    if ran is None:
        return {}
    a, s, results, load_before, load_after = ran
    rows = []
    for name, label in (("ours", "OptunaTrainer"), ("transformers", "Trainer.hyperparameter_search (optuna)")):
        snaps, states = results[name]["snapshots"], results[name]["states"]
        # snaps[0] is read when trial 1 starts, snaps[k] when trial k+1 starts (after trial k), snaps[-1] at the end.
        n = s["n_trials"]
        (cur1, peak1), (cur_n, peak_n) = snaps[1], snaps[n]
        growth, peak_growth = 100 * (cur_n / cur1 - 1), 100 * (peak_n / peak1 - 1)
        rows.append(
            {
                "side": label,
                "trials": len(states),
                "completed/pruned/failed": "/".join(str(states.count(x)) for x in ("COMPLETE", "PRUNED", "FAIL")),
                "RSS after trial 1 MiB": cur1,
                "RSS after trial N MiB": cur_n,
                "RSS growth %": growth,
                "peak RSS after trial 1 MiB": peak1,
                "peak RSS after trial N MiB": peak_n,
                "peak RSS growth %": peak_growth,
                "RSS after the search MiB": snaps[-1][0],
                "target met": ("yes" if max(growth, peak_growth) < TARGET_GROWTH else "no")
                if name == "ours"
                else "n/a",
                "states": states,
                "RSS per trial MiB": [round(c, 1) for c, _ in snaps[1:]],
                "peak RSS per trial MiB": [round(pk, 1) for _, pk in snaps[1:]],
                "RSS before trial 1 MiB": round(snaps[0][0], 1),
            }
        )
    meta = {
        "command": tables.command_line(),
        "model": results["ours"]["model"],
        "data": results["ours"]["data"],
        "settings": {
            **s,
            "space": tasks.SPACE,
            "sampler": "TPESampler(seed=0)",
            "pruner": "MedianPruner(n_startup_trials=3)",
        },
        "N": s["n_trials"],
        "target": f"growth under {TARGET_GROWTH:.0f}% (current and peak RSS) for ours from trial 1 to trial N",
        "GPU memory": "not measured: no GPU on this machine",
        "RSS before trial 1 (ours, transformers)": [
            rows[0]["RSS before trial 1 MiB"],
            rows[1]["RSS before trial 1 MiB"],
        ],
        "RSS per trial (ours)": rows[0]["RSS per trial MiB"],
        "RSS per trial (transformers)": rows[1]["RSS per trial MiB"],
        "peak RSS per trial (ours)": rows[0]["peak RSS per trial MiB"],
        "peak RSS per trial (transformers)": rows[1]["peak RSS per trial MiB"],
        "trial states (ours)": rows[0]["states"],
        "trial states (transformers)": rows[1]["states"],
        "loadavg before": load_before,
        "loadavg after": load_after,
    }
    tables.write_table(a.out, NAME, "Memory across trials (pruned and failing trials included)", COLUMNS, rows, meta)
    return {"rows": rows}


if __name__ == "__main__":
    main()
