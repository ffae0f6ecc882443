"""What a pruning step is: the training a trial has consumed, so that pruners compare trials at equal budget.

transformers reports a trial's evaluations at its optimizer step. When the batch size (or gradient accumulation, or
the number of processes) is searched, step 5 of a batch-8 trial has seen 40 samples and step 5 of a batch-32 trial
160, and a pruner comparing them at "step 5" kills small-batch trials that are only less far along. Here the step an
intermediate value is reported at is, by default, the number of training samples seen:

    samples = optimizer step x per-device batch x gradient accumulation x processes

and with `eval_strategy="steps"` each trial's `eval_steps` (and `save_steps`) are moved so that its evaluations fall
at the same sample counts as with the arguments' own batch: `eval_steps` counts steps of the batch the arguments
give, as it would without a search. `prune_budget="steps"` keeps transformers' optimizer-step keys.

Tokens are not offered: token counts differ between trials at every evaluation, so pruners that compare trials at
the same step (median, percentile) would never find two trials to compare.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)

BUDGETS = ("samples", "steps")
DEFAULT_BUDGET = "samples"


def check_budget(value: Any) -> str:
    if value not in BUDGETS:
        raise ValueError(
            f"prune_budget: {value!r} is not one of {list(BUDGETS)}: 'samples' reports each evaluation at the training "
            "samples seen (equal budget across batch sizes), 'steps' at the optimizer step (transformers' keys)"
        )
    return str(value)


def samples_per_step(args: Any) -> int:
    """Training samples one optimizer step consumes: per-device batch x accumulation x processes."""
    world = int(getattr(args, "world_size", 1) or 1)
    return int(args.per_device_train_batch_size) * int(args.gradient_accumulation_steps) * world


def budget_at(args: Any, global_step: int, budget: str) -> int:
    """The pruning step of an evaluation after `global_step` optimizer steps."""
    return global_step * samples_per_step(args) if budget == "samples" else global_step


def describe_budget(args: Any, budget: str) -> str:
    """One line for the printed settings: what a pruning step is."""
    if budget == "steps":
        return "optimizer steps (transformers' keys: trials with other batch sizes are compared at other budgets)"
    return (
        f"training samples seen: step x {args.per_device_train_batch_size} (batch) x "
        f"{args.gradient_accumulation_steps} (accumulation) x {getattr(args, 'world_size', 1)} (processes) with the "
        "arguments' own values; a pruner's n_warmup_steps, interval_steps and min_resource count samples"
    )


def _scaled(steps: Any, base: int, trial: int) -> tuple[Any, bool]:
    """`steps` of the base batch, in steps of the trial's batch; and whether that is exact."""
    if not isinstance(steps, int) or isinstance(steps, bool) or steps <= 0:
        return steps, True  # a float below 1 is a fraction of the training steps: already the same budget
    samples = steps * base
    exact = samples % trial == 0
    return max(1, round(samples / trial)), exact


def align_evaluations(base_args: Any, trial_args: Any, budget: str) -> str | None:
    """Move the trial's `eval_steps`/`save_steps` so that it evaluates at the same sample counts as the base
    arguments' batch would; return a note when that cannot be exact (the nearest step is used)."""
    if budget != "samples":
        return None
    base, trial = samples_per_step(base_args), samples_per_step(trial_args)
    if base == trial:
        return None
    inexact = []
    for name in ("eval_steps", "save_steps"):
        if str(getattr(trial_args, f"{name.split('_')[0]}_strategy", "")).split(".")[-1].lower() != "steps":
            continue
        value, exact = _scaled(getattr(base_args, name), base, trial)
        setattr(trial_args, name, value)
        if not exact:
            inexact.append(f"{name}={getattr(base_args, name)}")
    if inexact:
        return (
            f"{', '.join(inexact)} at {base} samples per step is no whole number of steps at this trial's {trial} "
            "samples per step: the nearest step is used, so this trial's evaluations are reported at other sample "
            "counts than the others' (median and percentile pruners compare only equal counts)"
        )
    return None


__all__ = [
    "BUDGETS",
    "DEFAULT_BUDGET",
    "align_evaluations",
    "budget_at",
    "check_budget",
    "describe_budget",
    "samples_per_step",
]
