"""A search launched as a real process group by tests/processes/distributed/test_distributed_search.py (not a test itself).

Every rank writes what it saw to `<out>/rank<r>.json`: the values each trial trained with (floats as `float.hex`, so
that bit-identity is checked), the value `model_init(trial)` suggested, the global step each trial stopped at, the
returned `BestRun` or the error, and, on rank 0, the study's trials.

    accelerate launch --multi_gpu --num_processes 2 tests/processes/distributed/search_script.py --scenario prune --out DIR
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import sys
from typing import Any

# Launched as a script: import this worktree's package and test helpers, whatever is installed.
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, ROOT)

import optuna  # noqa: E402
import torch.distributed as dist  # noqa: E402
from transformers import BertForSequenceClassification, TrainerCallback  # noqa: E402

from optuna_trainer import OptunaTrainer, OptunaTrainingArguments  # noqa: E402
from tests.support import base_args, compute_metrics, make_dataset, tiny_config  # noqa: E402

FAIL_TRIAL = 1
FAIL_STEP = 3
EVAL_FAIL_TRIAL = 2


class Recorder(TrainerCallback):
    """Records, per trial, the values this rank trained with and the step it stopped at."""

    def __init__(self, record: dict[str, Any], rank: int, fail: bool) -> None:
        self.record = record
        self.rank = rank
        self.fail = fail

    @staticmethod
    def _trial(args: Any) -> str:
        return os.path.basename(args.output_dir).removeprefix("run-")

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        self.record["used"][self._trial(args)] = {
            "learning_rate": float(args.learning_rate).hex(),
            "weight_decay": float(args.weight_decay).hex(),
            "per_device_train_batch_size": args.per_device_train_batch_size,
            "model.attention_probs_dropout_prob": float(model.config.attention_probs_dropout_prob).hex(),
            "model.hidden_dropout_prob": float(model.config.hidden_dropout_prob).hex(),
        }

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # Rank 1 alone fails in the middle of training: rank 0 is then waiting in DDP's gradient all-reduce.
        if self.fail and self.rank == 1 and self._trial(args) == str(FAIL_TRIAL) and state.global_step == FAIL_STEP:
            raise ValueError(f"boom on rank 1 at step {FAIL_STEP}")

    def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # Rank 1 alone fails at an evaluation: rank 0 is then in the pruning exchange, not in a DDP collective.
        if self.fail and self.rank == 1 and self._trial(args) == str(EVAL_FAIL_TRIAL) and state.global_step == 4:
            raise ValueError("eval boom on rank 1 at step 4")

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.record["stopped_at"][self._trial(args)] = state.global_step


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--scenario",
        choices=["prune", "fail", "fail_nocatch", "timeout", "rank_mismatch", "launcher", "repeat"],
        required=True,
    )
    parser.add_argument("--out", required=True)
    cli = parser.parse_args()

    record: dict[str, Any] = {"used": {}, "stopped_at": {}, "model_init": {}}
    # Registered before the search, so it runs after every exit handler the search registers (atexit is LIFO): it
    # records which process groups outlived them, the ones that would otherwise end with the interpreter.
    atexit.register(_record_at_exit, cli.out, int(os.environ.get("RANK", "0")))

    def model_init(trial: Any = None) -> BertForSequenceClassification:
        dropout = 0.1
        # (a grid has no such key; a repeat must be drawn from the space alone)
        if trial is not None and cli.scenario not in ("launcher", "repeat"):
            # A parameter that only model_init suggests: every rank must get rank 0's value.
            dropout = trial.suggest_float("model_init_dropout", 0.0, 0.3)
            record["model_init"][str(trial.number)] = dropout.hex()
        return BertForSequenceClassification(tiny_config(hidden_dropout_prob=dropout))

    extra: dict[str, Any] = {}
    if cli.scenario == "prune":
        # Prunes any trial worse than the median of the earlier ones at the same step, from the second trial on.
        extra = dict(n_trials=6, pruner={"name": "median", "n_startup_trials": 1, "n_warmup_steps": 0})
    elif cli.scenario in ("fail", "fail_nocatch"):
        # A low process-group timeout: rank 0 waits this long in the all-reduce that rank 1 never joins.
        # n_trials counts finished trials: 2 finished + the 2 failed ones = trials 0-3.
        extra = dict(n_trials=2, pruner="none", ddp_timeout=5)
    elif cli.scenario == "timeout":
        extra = dict(n_trials=1000, timeout=6, pruner="none")
    elif cli.scenario == "rank_mismatch":
        # Trial 0: a value computed per process; trial 1: rank 1 asks for one parameter more; then a good trial.
        def per_process_space(trial: Any) -> dict[str, Any]:
            values = {"learning_rate": trial.suggest_float("learning_rate", 1e-4, 1e-1, log=True)}
            if trial.number == 0:
                values["weight_decay"] = 0.01 * (1 + int(os.environ.get("RANK", "0")))
            if trial.number == 1 and int(os.environ.get("RANK", "0")) == 1:
                values["weight_decay"] = trial.suggest_float("weight_decay", 0.0, 0.1)
            return values

        extra = dict(n_trials=1, pruner="none", hp_space=per_process_space)
    elif cli.scenario == "launcher":
        # One of the workers of `optuna-trainer workers`: the launcher's storage (a journal file under --out).
        grid = {"learning_rate": {"type": "categorical", "choices": [1e-3, 2e-3, 3e-3, 4e-3]}}
        extra = dict(n_trials=4, pruner="none", hp_space=grid, sampler="grid", storage=None)
    elif cli.scenario == "repeat":
        # 4 random draws from 2 learning rates: at least 2 repeat an earlier trial (skip_duplicates).
        lrs = {"learning_rate": {"type": "categorical", "choices": [1e-3, 2e-3]}}
        extra = dict(n_trials=4, pruner="none", hp_space=lrs, sampler={"name": "random", "seed": 0})
    args = OptunaTrainingArguments(
        **base_args(
            cli.out,
            objective_metric="loss",
            **{
                "hp_space": {
                    "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
                    "weight_decay": {"type": "float", "low": 0.0, "high": 0.1},
                    "per_device_train_batch_size": {"type": "categorical", "choices": [4, 8]},
                    "model.attention_probs_dropout_prob": {"type": "float", "low": 0.0, "high": 0.3},
                },
                **{k: v for k, v in extra.items() if k not in ("sampler", "storage")},
            },
            **{
                "sampler": {"name": "tpe", "seed": 0},
                "storage": "sqlite:///" + os.path.join(cli.out, "study.db"),
                **{k: v for k, v in extra.items() if k in ("sampler", "storage")},
            },
        )
    )
    rank = args.process_index
    trainer = OptunaTrainer(
        model_init=model_init,
        args=args,
        train_dataset=make_dataset(64, seed=0),
        eval_dataset=make_dataset(32, seed=1),
        compute_metrics=compute_metrics,
        callbacks=[Recorder(record, rank, fail=cli.scenario.startswith("fail"))],
    )
    catch = (ValueError,) if cli.scenario in ("fail", "rank_mismatch") else ()
    try:
        best = trainer.hyperparameter_search(catch=catch)
        record["best"] = [best.run_id, best.objective, best.hyperparameters]
    except Exception as err:
        record["error"] = f"{type(err).__name__}: {err}"
        raise
    finally:
        record["study_is_none"] = trainer.study is None
        record["groups_after_search"] = _groups_alive()
        if trainer.study is not None:
            record["trials"] = [
                {
                    "number": t.number,
                    "state": t.state.name,
                    "value": t.value,
                    "params": {k: _hex(v) for k, v in t.params.items()},
                    "user_attrs": t.user_attrs,
                    "intermediate": sorted(t.intermediate_values),
                }
                for t in trainer.study.trials
            ]
        with open(os.path.join(cli.out, f"rank{rank}.json"), "w", encoding="utf-8") as f:
            json.dump(record, f, indent=1, default=str)


def _groups_alive() -> int:
    """The process groups alive in this process (the default one included). torch has no public list of them;
    `_world.pg_map` is where `new_group` and `destroy_process_group` keep it."""
    return len(dist.distributed_c10d._world.pg_map) if dist.is_initialized() else 0


def _record_at_exit(out: str, rank: int) -> None:
    with open(os.path.join(out, f"rank{rank}.exit.json"), "w", encoding="utf-8") as f:
        json.dump({"initialized": dist.is_initialized(), "groups": _groups_alive()}, f)


def _hex(value: Any) -> Any:
    return value.hex() if isinstance(value, float) else value


if __name__ == "__main__":
    optuna.logging.set_verbosity(optuna.logging.INFO)
    main()
