"""A trial whose parameters repeat a finished trial's is not trained again (`skip_duplicates`).

On a discrete space (categorical choices, integer ranges) Optuna's samplers draw the same configuration again: TPE
concentrates on the best region, random search draws with replacement (30 trials over 48 configurations repeat about
a third). Every trial of a search trains from the same pristine state with the same seed (the first promise), so a
repeat would measure what its earlier twin measured, at the cost of a whole training. Here the repeat ends at once
with its twin's state, value and evaluations (so that samplers and pruners see the study they would have seen), and
its user attribute `duplicate_of` names the twin. Measured on the three recorded curve tables (figure 15), this
cut the samples of the default 30-trial TPE search from 49-62% of the no-pruning budget to 31-42% at the same regret.

Only a COMPLETE trial, or one PRUNED by the pruner, is a twin: a FAIL trial runs again (its failure may be
transient) and so does one recorded infeasible (out of memory: another machine may have more). A twin must have run
under the same training settings (its user attribute `training_digest`: `training_digest()`, a hash of the training
arguments other than where things are written and how the search is run): a rerun of the study with another `num_train_epochs`, say, trains again rather
than take an earlier setting's result.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection
from dataclasses import fields
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

# Training arguments that do not change what a trial measures: where it writes, what it logs, where it reports, how
# its progress shows. Every other argument (and every search field, which `search_fields` names) is part of the
# digest, so that a changed one makes a repeat train again.
_NOT_MEASURED = frozenset(
    {
        "output_dir",
        "logging_dir",
        "run_name",
        "report_to",
        "disable_tqdm",
        "logging_steps",
        "logging_strategy",
        "logging_first_step",
        "logging_nan_inf_filter",
        "push_to_hub",
        "hub_model_id",
        "hub_token",
        "hub_strategy",
        "hub_private_repo",
        "save_total_limit",
        "overwrite_output_dir",
        "dataloader_num_workers",
        "dataloader_pin_memory",
        "dataloader_persistent_workers",
        "dataloader_prefetch_factor",
        "log_level",
        "log_level_replica",
        "log_on_each_node",
    }
)


def training_digest(args: Any, search_fields: Collection[str] = ()) -> str:
    """A short hash of the training arguments a trial's result depends on (the search's own fields left out)."""
    values = {
        f.name: getattr(args, f.name, None)
        for f in fields(args)
        if f.name not in _NOT_MEASURED and f.name not in search_fields and not f.name.startswith("_")
    }
    text = json.dumps(values, sort_keys=True, default=_stable)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _stable(value: Any) -> str:
    """A value json cannot write, as text that is the same in every process (no memory address)."""
    text = repr(value)
    return type(value).__qualname__ if " at 0x" in text else text


def _is_twin(candidate: FrozenTrial, params: dict[str, Any], digest: str) -> bool:
    if candidate.params != params or candidate.user_attrs.get("training_digest") != digest:
        return False
    if candidate.state == TrialState.COMPLETE:
        return True
    # Pruned by the pruner (or a non-finite objective): the same training would be stopped the same way. Infeasible
    # (out of memory) is PRUNED too, but may fit elsewhere; it runs again.
    return candidate.state == TrialState.PRUNED and not candidate.user_attrs.get("infeasible")


def find_twin(study: optuna.Study, trial: optuna.trial.BaseTrial, digest: str) -> FrozenTrial | None:
    """The earliest finished trial of `study` with `trial`'s parameters and training settings, or None."""
    params = trial.params
    if not params:
        return None
    for candidate in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        if candidate.number != trial.number and _is_twin(candidate, params, digest):
            return candidate
    return None


__all__ = ["find_twin", "training_digest"]
