"""Figure 8: LoRA search, per-trial setup time and peak memory: peft.<field> keys vs the workaround users have.

The workaround (transformers' issue 29391): `Trainer.hyperparameter_search` with a `model_init(trial)` that suggests
the adapter's rank, alpha and dropout itself, loads the base model and wraps it with `peft.get_peft_model`, every
trial. Ours: `OptunaTrainer` with `peft.r`, `peft.lora_alpha`, `peft.lora_dropout` keys: the base model is built once
(by transformers, at construction) and each trial wraps it with a fresh adapter. Same base model, data, trials
(`GridSampler` over the same points, in the same order on both sides), steps and evaluation schedule. Each side runs
in a fresh interpreter, so that its peak resident memory (ru_maxrss) is its own. "Setup" is the time to build one
trial's model: the workaround's `model_init`, ours' adapter wrap (timed by wrapping `Adapters.wrap`).

    python benchmarks/adapters.py            # default: the packaged MiniLM-L6-H384 (pretrained), SST-2 subset
    python benchmarks/adapters.py --quick    # CI: tiny BERT from a config
"""

from __future__ import annotations

import os
import statistics
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
import tasks  # noqa: E402

NAME = "adapters"
COLUMNS = [
    "side",
    "trials",
    "median setup s",
    "setup s per trial",
    "RSS before the search MiB",
    "peak RSS MiB",
    "peak growth during the search MiB",
    "base model MiB",
    "adapter MiB (largest)",
    "best accuracy",
]
GRID = {"r": [4, 8], "lora_alpha": [8, 16], "lora_dropout": [0.0, 0.1]}
TARGET_SPEEDUP = 3.0


def settings(quick: bool, model: str | None) -> dict[str, Any]:
    if quick:
        return dict(model=model or "tiny-bert", n_train=64, n_dev=32, steps=4, eval_steps=2, batch=16)
    return dict(model=model or "minilm", n_train=256, n_dev=128, steps=8, eval_steps=4, batch=16)


def _mib(tensors: Any) -> float:
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


def side(name: str, s: dict[str, Any], data: str) -> dict[str, Any]:
    import optuna
    import peft
    from transformers import TrainerCallback

    sides.quiet()
    task = tasks.make_task(s["model"], data, s["n_train"], s["n_dev"])
    setups: list[float] = []
    sizes: dict[str, float] = {}

    class Sizes(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
            params = dict(model.named_parameters())
            adapter = [p for n, p in params.items() if "lora_" in n]
            sizes["base"] = _mib(p for n, p in params.items() if "lora_" not in n and "modules_to_save" not in n)
            sizes["adapter"] = max(sizes.get("adapter", 0.0), _mib(adapter))

    train = dict(
        max_steps=s["steps"], per_device_train_batch_size=s["batch"], eval_strategy="steps", eval_steps=s["eval_steps"]
    )
    out = tempfile.mkdtemp(prefix=f"adapters-{name}-")
    grid = {f"peft.{k}": v for k, v in GRID.items()}
    if name == "ours":
        from optuna_trainer import OptunaTrainer, OptunaTrainingArguments
        from optuna_trainer.training.adapters import Adapters

        wrap = Adapters.wrap

        def timed_wrap(self: Any, values: dict[str, Any], trial: Any = None) -> Any:
            started = time.perf_counter()
            model = wrap(self, values, trial)
            setups.append(time.perf_counter() - started)
            return model

        Adapters.wrap = timed_wrap  # type: ignore[method-assign]
        args = OptunaTrainingArguments(
            **tasks.train_args(out, **train),
            hp_space={k: {"type": "categorical", "choices": v} for k, v in grid.items()},
            n_trials=len(_points()),
            sampler=optuna.samplers.GridSampler(grid, seed=0),
            pruner="none",
            storage="memory",
            objective_metric="accuracy",
            save_best_model=False,
        )
        trainer = OptunaTrainer(
            model_init=task.model_init,
            args=args,
            train_dataset=task.train,
            eval_dataset=task.dev,
            compute_metrics=tasks.compute_metrics,
            data_collator=task.collator,
            callbacks=[Sizes()],
        )
        before = measure.current_rss_mib()
        best = trainer.hyperparameter_search()
    else:
        from transformers import Trainer, TrainingArguments

        def model_init(trial: Any = None) -> Any:
            started = time.perf_counter()
            model = task.model_init(None)
            if trial is not None:  # transformers calls it once at construction without a trial
                config = peft.LoraConfig(
                    task_type="SEQ_CLS",
                    **{k: trial.suggest_categorical(f"peft.{k}", v) for k, v in GRID.items()},
                )
                model = peft.get_peft_model(model, config)
                setups.append(time.perf_counter() - started)
            return model

        trainer = Trainer(
            model_init=model_init,
            args=TrainingArguments(**tasks.train_args(out, **train)),
            train_dataset=task.train,
            eval_dataset=task.dev,
            compute_metrics=tasks.compute_metrics,
            data_collator=task.collator,
            callbacks=[Sizes()],
        )
        before = measure.current_rss_mib()
        best = trainer.hyperparameter_search(
            hp_space=lambda trial: {},
            compute_objective=lambda m: m["eval_accuracy"],
            n_trials=len(_points()),
            direction="maximize",
            backend="optuna",
            sampler=optuna.samplers.GridSampler(grid, seed=0),
            pruner=optuna.pruners.NopPruner(),
        )
    return {
        "setups": setups,
        "peak": measure.peak_rss_mib(),
        "before": before,
        "sizes": sizes,
        "best": float(best.objective),
        "data": task.source,
        "model": task.model_name,
    }


def _points() -> list[tuple[Any, ...]]:
    import itertools

    return list(itertools.product(*GRID.values()))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ran = sides.two_sides(__file__, __doc__, settings, side, argv)
    if ran is None:
        return {}
    a, s, results, load_before, load_after = ran
    rows = []
    for name, label in (
        ("ours", "OptunaTrainer, peft.* keys"),
        ("transformers", "workaround: model_init loads + wraps"),
    ):
        r = results[name]
        rows.append(
            {
                "side": label,
                "trials": len(r["setups"]),
                "median setup s": statistics.median(r["setups"]),
                "setup s per trial": [round(x, 3) for x in r["setups"]],
                "RSS before the search MiB": r["before"],
                "peak RSS MiB": r["peak"],
                "peak growth during the search MiB": r["peak"] - r["before"],
                "base model MiB": r["sizes"].get("base"),
                "adapter MiB (largest)": r["sizes"].get("adapter"),
                "best accuracy": r["best"],
            }
        )
    speedup = rows[1]["median setup s"] / rows[0]["median setup s"]
    growth = [row["peak growth during the search MiB"] for row in rows]
    one_model = (rows[0]["base model MiB"] or 0.0) + (rows[0]["adapter MiB (largest)"] or 0.0)
    meta = {
        "command": tables.command_line(),
        "model": results["ours"]["model"],
        "data": results["ours"]["data"],
        "settings": {**s, "grid": GRID, "sampler": "GridSampler(seed=0), the same 8 points on both sides"},
        "setup speedup (workaround / ours, medians)": round(speedup, 2),
        "peak RSS ours - workaround MiB": round(rows[0]["peak RSS MiB"] - rows[1]["peak RSS MiB"], 1),
        "peak growth during the search, ours - workaround MiB": round(growth[0] - growth[1], 1),
        "one base model plus one adapter MiB": round(one_model, 1),
        "target": (
            f"setup at least {TARGET_SPEEDUP:.0f}x faster; the search's peak growth no higher than the workaround's "
            "(one base model plus one adapter held, not one per trial)"
        ),
        "target met": speedup >= TARGET_SPEEDUP and growth[0] <= growth[1],
        "GPU": "not measured: no GPU lent to this task",
        "loadavg before": load_before,
        "loadavg after": load_after,
    }
    tables.write_table(a.out, NAME, "LoRA search: per-trial setup and peak memory", COLUMNS, rows, meta)
    return {"rows": rows, "speedup": speedup}


if __name__ == "__main__":
    main()
