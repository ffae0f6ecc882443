"""`OptunaTrainingArguments`: the search declared next to the training settings."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import optuna
from transformers import TrainingArguments

from .objective import normalize_direction
from .pruners import DEFAULT_PRUNER, build_pruner
from .samplers import DEFAULT_SAMPLER, build_sampler
from .search_space import SearchSpace
from .storage import DEFAULT_HEARTBEAT_INTERVAL, validate_storage

# The fields this class adds; everything else is `TrainingArguments`.
SEARCH_FIELDS = (
    "hp_space",
    "n_trials",
    "timeout",
    "direction",
    "objective_metric",
    "sampler",
    "pruner",
    "storage",
    "study_name",
    "heartbeat_interval",
    "save_best_model",
    "search_report",
    "continue_on_oom",
)


@dataclass
class OptunaTrainingArguments(TrainingArguments):
    r"""
    `TrainingArguments` with an Optuna hyperparameter search declared next to the training settings.

    Every field can be set from Python, from the command line through `HfArgumentParser`, and from a YAML or JSON
    config file (`HfArgumentParser.parse_yaml_file` / `parse_json_file`). Structured values (the search space, a
    sampler or pruner with arguments) are given on the command line as JSON strings.

    Parameters that define the search:

        hp_space (`dict`, `str` or `Callable`, *optional*):
            The search space: a mapping of name to spec (`{"learning_rate": {"type": "float", "low": 1e-5, "high":
            1e-3, "log": true}}`), a path to a YAML/JSON file holding it, or its JSON string; or, from Python, a
            callable `hp_space(trial) -> dict` (transformers' form). Keys are `TrainingArguments` fields or
            `model.<attribute>` of the model's config. Defaults to transformers' default space when a search starts
            without one.
        n_trials (`int`, *optional*, defaults to `20`):
            The number of trials of the search.
        timeout (`float`, *optional*):
            Stop starting new trials after this many seconds.
        direction (`str` or `list[str]`, *optional*):
            `"minimize"` or `"maximize"` (a list of them for several objectives). Defaults from `greater_is_better`
            for `metric_for_best_model`, else "minimize" for metrics whose name ends in "loss", "maximize" otherwise.
        objective_metric (`str`, *optional*):
            The evaluation metric to optimize (`accuracy` or `eval_accuracy`). Defaults to `metric_for_best_model`,
            then `eval_accuracy`.

    Parameters that control sampling and pruning:

        sampler (`str`, `dict` or `optuna.samplers.BaseSampler`, *optional*, defaults to `"tpe"`):
            One of tpe, random, grid, cmaes, bruteforce, gp, qmc, nsga2, or `{"name": ..., **kwargs}` with the
            keyword arguments of the Optuna sampler, or a sampler object.
        pruner (`str`, `dict` or `optuna.pruners.BasePruner`, *optional*, defaults to `"median"`):
            One of median, percentile, patient, hyperband, successive_halving, threshold, wilcoxon, none, or
            `{"name": ..., **kwargs}`, or a pruner object. The default is Optuna's `MedianPruner(n_startup_trials=5,
            n_warmup_steps=0)`; give `"none"` to turn pruning off.

    Parameters that control where the study lives:

        storage (`str`, *optional*):
            An Optuna storage URL (`sqlite:///...`, `postgresql+psycopg://...`, `mysql+pymysql://...`), a journal
            file path, a `redis://` URL (journal on Redis), or `memory` (nothing kept). Defaults to an SQLite file
            `optuna_study.db` under `output_dir`. Running the same command again continues the study; several
            workers with the same storage and study name share it (see docs/storage.md).
        study_name (`str`, *optional*):
            The study's name in the storage. Defaults to the base name of `output_dir`.
        heartbeat_interval (`int`, *optional*, defaults to `60`):
            Seconds between heartbeats of a running trial, for RDB storages (SQLite, PostgreSQL, MySQL). A trial
            whose heartbeat is older than twice this is taken as killed: it is marked failed and run again with the
            same parameters from its last checkpoint. `0` turns heartbeats off. Journal and memory storages have none.
        save_best_model (`bool`, *optional*, defaults to `True`):
            Save the best trial's model to `output_dir/best_model` at the end of the search.
        search_report (`bool`, *optional*, defaults to `True`):
            Write the end-of-search report under `output_dir/report/` (summary JSON, trials CSV, plots) and print its
            summary table; see `optuna_trainer.report.write_report`.

    Parameters that control faults inside trials:

        continue_on_oom (`bool`, *optional*, defaults to `True`):
            A trial that runs out of memory (CUDA/CPU OOM, `torch.OutOfMemoryError`) is marked FAIL with its reason in
            the user attribute `fail_reason`, its memory and checkpoints are released, and the search goes on with the
            next trial (searching batch sizes makes this the common case). With `False` the error stops the search,
            like any exception not listed in `catch`. See docs/errors.md.
    """

    # Parameters that define the search
    hp_space: dict | str | Callable[..., dict] | None = field(
        default=None,
        metadata={
            "help": "Search space: a YAML/JSON file path or a JSON string mapping name -> spec, e.g. "
            '\'{"learning_rate": {"type": "float", "low": 1e-5, "high": 1e-3, "log": true}}\'. Spec types: float, '
            "int (low, high, log, step), categorical (choices). Keys are TrainingArguments fields or "
            "model.<config attribute>. A callable hp_space(trial) is accepted from Python. Default: transformers' "
            "default space (learning_rate, num_train_epochs, seed, per_device_train_batch_size)."
        },
    )
    n_trials: int = field(default=20, metadata={"help": "Number of trials of the search (default 20)."})
    timeout: float | None = field(
        default=None, metadata={"help": "Seconds after which no new trial starts (default: no limit)."}
    )
    direction: list[str] | str | None = field(
        default=None,
        metadata={
            "help": "'minimize' or 'maximize', or a JSON list of them for several objectives. Default: from "
            "greater_is_better for metric_for_best_model; else 'minimize' for *loss metrics, 'maximize' otherwise."
        },
    )
    objective_metric: str | None = field(
        default=None,
        metadata={
            "help": "Evaluation metric to optimize, e.g. 'accuracy' (the eval_ prefix is optional). Default: "
            "metric_for_best_model, then eval_accuracy."
        },
    )

    # Parameters that control sampling and pruning
    sampler: dict | str | optuna.samplers.BaseSampler | None = field(
        default=DEFAULT_SAMPLER,
        metadata={
            "help": "Sampler: tpe (default), random, grid, cmaes, bruteforce, gp, qmc, nsga2, or a JSON object with "
            'its keyword arguments, e.g. \'{"name": "tpe", "seed": 0, "multivariate": true}\'. grid reads its grid '
            "from a declarative hp_space."
        },
    )
    pruner: dict | str | optuna.pruners.BasePruner | None = field(
        default=DEFAULT_PRUNER,
        metadata={
            "help": "Pruner: median (default: MedianPruner(n_startup_trials=5, n_warmup_steps=0)), percentile, "
            "patient, hyperband, successive_halving, threshold, wilcoxon, none (never prune), or a JSON object, e.g. "
            '\'{"name": "patient", "patience": 2, "wrapped": {"name": "median"}}\'.'
        },
    )

    # Parameters that control where the study lives
    storage: str | None = field(
        default=None,
        metadata={
            "help": "Optuna storage URL (sqlite:///..., postgresql+psycopg://..., mysql+pymysql://...) or 'memory'. "
            "Default: sqlite file optuna_study.db under output_dir."
        },
    )
    study_name: str | None = field(
        default=None, metadata={"help": "Study name in the storage. Default: the base name of output_dir."}
    )
    heartbeat_interval: int | None = field(
        default=DEFAULT_HEARTBEAT_INTERVAL,
        metadata={
            "help": "Seconds between heartbeats of a running trial on an RDB storage (sqlite, postgresql, mysql); a "
            "trial silent for twice this long is taken as killed, marked failed and retried with the same "
            "parameters from its last checkpoint (default 60; 0 turns heartbeats off; journal and memory storages "
            "have none)."
        },
    )
    save_best_model: bool = field(
        default=True, metadata={"help": "Save the best trial's model to output_dir/best_model (default true)."}
    )
    search_report: bool = field(
        default=True,
        metadata={
            "help": "Write the end-of-search report to output_dir/report/ (summary.json, trials.csv, PNG/HTML plots) "
            "and print its summary table (default true)."
        },
    )

    # Parameters that control faults inside trials
    continue_on_oom: bool = field(
        default=True,
        metadata={
            "help": "When a trial runs out of memory, mark it FAIL (reason in the trial's user attribute "
            "'fail_reason'), release its memory and checkpoints, and go on with the next trial (default true). "
            "false stops the search at the first out-of-memory error."
        },
    )

    def __post_init__(self) -> None:
        # The values as the user gave them, before TrainingArguments derives anything: each trial is rebuilt from
        # these plus its own values, so derived fields (warmup steps, greater_is_better, ...) are computed afresh.
        self._init_values = {f.name: copy.copy(getattr(self, f.name)) for f in dataclasses.fields(self) if f.init}
        super().__post_init__()

        # Validate: every problem is reported here, before a model is loaded.
        if isinstance(self.n_trials, bool) or not isinstance(self.n_trials, int) or self.n_trials < 1:
            raise ValueError(f"n_trials: must be a positive whole number, got {self.n_trials!r}")
        if self.timeout is not None and (isinstance(self.timeout, bool) or not self.timeout > 0):
            raise ValueError(f"timeout: must be a positive number of seconds or None, got {self.timeout!r}")
        self.direction = normalize_direction(self.direction)
        if self.objective_metric is not None and not str(self.objective_metric).strip():
            raise ValueError("objective_metric: must be a metric name such as 'accuracy', got an empty string")
        if self.study_name is not None and not str(self.study_name).strip():
            raise ValueError("study_name: must be a non-empty name or None")
        validate_storage(self.storage)
        if self.heartbeat_interval is not None and (
            isinstance(self.heartbeat_interval, bool)
            or not isinstance(self.heartbeat_interval, int)
            or self.heartbeat_interval < 0
        ):
            raise ValueError(
                f"heartbeat_interval: must be a whole number of seconds (e.g. 60), or 0 to turn heartbeats off, got "
                f"{self.heartbeat_interval!r}"
            )
        if not isinstance(self.search_report, bool):
            raise ValueError(f"search_report: must be true or false, got {self.search_report!r}")
        if not isinstance(self.continue_on_oom, bool):
            raise ValueError(f"continue_on_oom: must be true or false, got {self.continue_on_oom!r}")

        # Derive: the parsed space (None for a callable or no space), checked sampler and pruner.
        self.search_space = parse_hp_space(self.hp_space, type(self))
        build_sampler(self.sampler, self.search_space)
        build_pruner(self.pruner)

    def trial_arguments(self, values: dict[str, Any], output_dir: str) -> OptunaTrainingArguments:
        """A fresh copy of the user's arguments with one trial's values and its own output directory."""
        init = {**self._init_values, **values, "output_dir": output_dir}
        # The copy trains; it does not search. Plain values keep it picklable (Trainer saves args with torch.save).
        for name in ("hp_space", "sampler", "pruner"):
            init[name] = None
        init["direction"] = init["storage"] = None
        return type(self)(**init)

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        # Objects (a callable space, a sampler instance) are shown by name so that the args stay JSON-serializable.
        for name in ("hp_space", "sampler", "pruner"):
            value = d.get(name)
            if value is not None and not isinstance(value, (str, dict, int, float, bool, list)):
                d[name] = f"<{getattr(value, '__qualname__', type(value).__name__)}>"
        if d.get("storage"):
            from .storage import mask_url

            d["storage"] = mask_url(d["storage"])
        return d

    def __str__(self) -> str:
        # TrainingArguments prints every field (users log `args`): a password in the storage URL is masked.
        from .storage import mask_url

        return mask_url(super().__str__())

    __repr__ = __str__

    def __getstate__(self) -> dict[str, Any]:
        # Checkpoints pickle the arguments (training_args.bin): drop what may not pickle (a lambda space, a sampler).
        state = dict(self.__dict__)
        for name in ("hp_space", "sampler", "pruner"):
            if state.get(name) is not None and not isinstance(state[name], (str, dict)):
                state[name] = None
        state.pop("_init_values", None)
        return state


def parse_hp_space(hp_space: Any, args_class: type = OptunaTrainingArguments) -> SearchSpace | None:
    """A declarative space is parsed and checked; a callable or None is left for the search to handle."""
    if hp_space is None or isinstance(hp_space, SearchSpace):
        return hp_space
    if callable(hp_space):
        return None
    return SearchSpace.parse(hp_space, args_class)
