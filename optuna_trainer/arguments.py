"""The search declared next to the training settings: `OptunaSearchArguments` on top of any arguments class.

The search fields live in one dataclass mixin. `OptunaTrainingArguments` is that mixin over `TrainingArguments`, and
`with_search_fields(Seq2SeqTrainingArguments)` (or TRL's `SFTConfig`, ...) builds the same for any other class, so
that `HfArgumentParser`, YAML/JSON config files and `--help` see one dataclass. Every trial's arguments are rebuilt
from the user's own arguments object (`trial_arguments`): the class and every field of it are kept, only the trial's
values change, and values never leak from one trial into the next.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import optuna
from transformers import TrainingArguments
from transformers.trainer_utils import SchedulerType

from optuna_trainer._classes import mixed_class
from optuna_trainer.space.budget import BUDGETS, DEFAULT_BUDGET
from optuna_trainer.space.objective import normalize_direction
from optuna_trainer.space.pruners import DEFAULT_PRUNER, build_pruner
from optuna_trainer.space.samplers import DEFAULT_SAMPLER, build_sampler
from optuna_trainer.space.search_space import SearchSpace
from optuna_trainer.study.storage import DEFAULT_HEARTBEAT_INTERVAL, mask_url
from optuna_trainer.validation import validate_search_fields as check_fields

# Search fields whose value may be an object (a callable space, a sampler or pruner instance): shown by name, never
# pickled into checkpoints, and dropped from a trial's arguments (a trial trains; it does not search).
_OBJECT_FIELDS = ("hp_space", "sampler", "pruner")


@dataclass(repr=False)
class OptunaSearchArguments:
    r"""
    The search fields, as a dataclass mixin for any `TrainingArguments` class.

    `OptunaTrainingArguments` is `OptunaSearchArguments` over `TrainingArguments`; `with_search_fields(cls)` puts
    the same fields on any other arguments class (`Seq2SeqTrainingArguments`, TRL's `SFTConfig`,
    `SentenceTransformerTrainingArguments`, ...). A trainer with `OptunaSearchMixin` also accepts an arguments object
    without these fields: the search then runs on the defaults below.

    Every field can be set from Python, from the command line through `HfArgumentParser`, and from a YAML or JSON
    config file (`HfArgumentParser.parse_yaml_file` / `parse_json_file`). Structured values (the search space, a
    sampler or pruner with arguments) are given on the command line as JSON strings.

    Parameters that define the search:

        hp_space (`dict`, `str` or `Callable`, *optional*):
            The search space: a mapping of name to spec (`{"learning_rate": {"type": "float", "low": 1e-5, "high":
            1e-3, "log": true}}`), a path to a YAML/JSON file holding it, or its JSON string; or, from Python, a
            callable `hp_space(trial) -> dict` (transformers' form). Keys are fields of the arguments class or
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
            The evaluation metric to optimize (`accuracy` or `eval_accuracy`). Defaults to `metric_for_best_model`
            when the user set it, then `eval_accuracy` when the trainer has `compute_metrics`, else `eval_loss`.

    Parameters that control sampling and pruning:

        sampler (`str`, `dict` or `optuna.samplers.BaseSampler`, *optional*, defaults to `"tpe"`):
            One of tpe, random, grid, cmaes, bruteforce, gp, qmc, nsga2, or `{"name": ..., **kwargs}` with the
            keyword arguments of the Optuna sampler, or a sampler object.
        pruner (`str`, `dict` or `optuna.pruners.BasePruner`, *optional*, defaults to `"step_percentile"`):
            One of step_percentile, median, percentile, patient, hyperband, successive_halving, threshold,
            wilcoxon, none, or `{"name": ..., **kwargs}`, or a pruner object. The default is this package's
            `StepPercentilePruner(percentile=35.0, n_min_trials=2)`: a trial whose best value so far is below that
            percentile of what every other trial, pruned ones included, reported at the same step, once 2 did (see
            space/step_percentile.py; Optuna's default `MedianPruner(n_startup_trials=5)` runs 5 trials to the end
            before it prunes). Give `"none"` to turn pruning off.
        prune_metric (`str`, *optional*):
            The evaluation metric reported to the pruner, when it should differ from the objective: trials are then
            pruned on a finer signal (`loss`: it moves while accuracies tie on a plateau) and still selected by the
            objective. Names ending in "loss" are minimized, others maximized. Defaults to the objective itself.
        prune_budget (`str`, *optional*, defaults to `"samples"`):
            What the step of a reported value is. `"samples"`: the training samples seen (step x per-device batch x
            accumulation x processes), and with `eval_strategy="steps"` every trial evaluates at the same sample
            counts, so pruners compare trials at equal budget when the batch size is searched (then a pruner's
            `n_warmup_steps`, `interval_steps` and `min_resource` count samples). `"steps"`: the optimizer step, as
            transformers reports it.

    Parameters that end a search early:

        enqueue_arguments (`bool`, *optional*, defaults to `False`):
            Run the arguments' own values of the searched keys as the first trial of a new study, so the search
            never returns worse than the starting point (keys whose value lies outside the space are sampled).
        target_value (`float`, *optional*):
            Start no new trial once a trial's value reaches this (at least it when maximizing, at most when
            minimizing).
        trials_without_improvement (`int`, *optional*):
            Start no new trial after this many finished trials in a row that did not improve the best value.

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
        artifact_store (`str`, *optional*):
            Where the study keeps what its trials write, beside the storage, as Optuna artifacts: a directory on a
            filesystem every machine mounts, or `s3://bucket/prefix` (any S3-compatible endpoint, configured through
            the AWS environment variables; needs `boto3`). Each trial's newest checkpoint is uploaded there (a trial
            killed on one machine resumes from it on another) and the best model too (`optuna-trainer best-model`
            fetches it anywhere). Defaults to none: everything stays under `output_dir`. See docs/multi_node.md.
        save_best_model (`bool`, *optional*, defaults to `True`):
            Save the best trial's model to `output_dir/best_model` at the end of the search.
        search_report (`bool`, *optional*, defaults to `True`):
            Write the end-of-search report under `output_dir/report/` (summary JSON, trials CSV, plots) and print its
            summary table; see `optuna_trainer.output.report.write_report`.

    Parameters that control faults inside trials:

        continue_on_oom (`bool`, *optional*, defaults to `True`):
            A trial that runs out of memory (CUDA/CPU OOM, `torch.OutOfMemoryError`) is marked FAIL with its reason in
            the user attribute `fail_reason`, its memory and checkpoints are released, and the search goes on with the
            next trial (searching batch sizes makes this the common case). With `False` the error stops the search,
            like any exception not listed in `catch`. See docs/errors.md.
        oom_infeasible (`bool`, *optional*, defaults to `True`):
            With `continue_on_oom`, an out-of-memory trial is recorded infeasible through Optuna's constraint API
            (state PRUNED, constraint `out_of_memory=1.0`, user attribute `infeasible`), so that constraint-aware
            samplers (TPE, GP, NSGA-II) avoid its region; `False` marks it FAIL, which no sampler learns from.
        isolate_trials (`bool`, *optional*, defaults to `False`):
            Run each trial in a fresh child process (from a fork server that has imported torch once; the parent keeps the study): a crash, a leak or the
            kernel's OOM killer costs one trial (FAIL, cause in `fail_reason`), never the search. Needs a picklable
            trainer (module-level `model_init`, `compute_metrics`, callbacks). See search/isolated.py.
        skip_duplicates (`bool`, *optional*, defaults to `True`):
            A trial whose parameters equal those of a finished (COMPLETE, or pruned) trial trained under the same
            training arguments is not trained again: it takes that trial's evaluations, state and value, and its
            user attribute `duplicate_of` names it. Samplers repeat configurations on discrete spaces; every trial
            starts from the same state with the same seed, so a repeat would measure the same thing. `False` trains
            every trial. See search/duplicates.py.
    """

    # Parameters that define the search
    hp_space: dict | str | Callable[..., dict] | None = field(
        default=None,
        metadata={
            "help": "Search space: a YAML/JSON file path or a JSON string mapping name -> spec, e.g. "
            '\'{"learning_rate": {"type": "float", "low": 1e-5, "high": 1e-3, "log": true}}\'. Spec types: float, '
            "int (low, high, log, step), categorical (choices). Keys are TrainingArguments fields or "
            "model.<config attribute>. A callable hp_space(trial) is accepted from Python. Unset: transformers' "
            "default space (learning_rate, num_train_epochs, seed, per_device_train_batch_size)."
        },
    )
    n_trials: int = field(default=20, metadata={"help": "Number of trials of the search."})
    timeout: float | None = field(
        default=None, metadata={"help": "Seconds after which no new trial starts; unset: no limit."}
    )
    direction: list[str] | str | None = field(
        default=None,
        metadata={
            "help": "'minimize' or 'maximize', or a JSON list of them for several objectives. Unset: from "
            "greater_is_better for metric_for_best_model; else 'minimize' for *loss metrics, 'maximize' otherwise."
        },
    )
    objective_metric: str | None = field(
        default=None,
        metadata={
            "help": "Evaluation metric to optimize, e.g. 'accuracy' (the eval_ prefix is optional). Unset: "
            "metric_for_best_model, then eval_accuracy with compute_metrics, else eval_loss."
        },
    )

    # Parameters that control sampling and pruning
    sampler: dict | str | optuna.samplers.BaseSampler | None = field(
        default=DEFAULT_SAMPLER,
        metadata={
            "help": "Sampler: tpe, random, grid, cmaes, bruteforce, gp, qmc, nsga2, or a JSON object with "
            'its keyword arguments, e.g. \'{"name": "tpe", "seed": 0, "multivariate": true}\'. grid reads its grid '
            "from a declarative hp_space."
        },
    )
    pruner: dict | str | optuna.pruners.BasePruner | None = field(
        default=DEFAULT_PRUNER,
        metadata={
            "help": "Pruner: step_percentile (StepPercentilePruner(percentile=35.0, n_min_trials=2): this package's, "
            "a trial below the 35th percentile of every other trial at the same step, pruned ones included, once 2 "
            "reported it), median (Optuna's MedianPruner), percentile, patient, hyperband, successive_halving, "
            "threshold, wilcoxon, none (never prune), or a JSON object, e.g. "
            '\'{"name": "patient", "patience": 2, "wrapped": {"name": "median"}}\'.'
        },
    )

    prune_metric: str | None = field(
        default=None,
        metadata={
            "help": "Evaluation metric reported to the pruner when it should differ from the objective, e.g. loss: "
            "trials are pruned on it and selected by the objective (names ending in 'loss' are minimized). "
            "Unset: the objective."
        },
    )
    prune_budget: str = field(
        default=DEFAULT_BUDGET,
        metadata={
            "help": "The step values are reported at: samples (training samples seen, evaluations at equal "
            "sample counts in every trial, so trials with other batch sizes are compared at equal budget) or steps "
            "(the optimizer step, as transformers).",
            "choices": list(BUDGETS),
        },
    )

    # Parameters that end a search early
    enqueue_arguments: bool = field(
        default=False,
        metadata={"help": "Run the arguments' own values of the searched keys as the first trial of a new study."},
    )
    target_value: float | None = field(
        default=None,
        metadata={"help": "Start no new trial once a trial's value reaches this (>= when maximizing, <= minimizing)."},
    )
    trials_without_improvement: int | None = field(
        default=None,
        metadata={
            "help": "Start no new trial after this many finished trials in a row without a better value than the "
            "best before them."
        },
    )

    # Parameters that control where the study lives
    storage: str | None = field(
        default=None,
        metadata={
            "help": "Optuna storage URL (sqlite:///..., postgresql+psycopg://..., mysql+pymysql://...) or 'memory'. "
            "Unset: sqlite file optuna_study.db under output_dir."
        },
    )
    study_name: str | None = field(
        default=None, metadata={"help": "Study name in the storage. Unset: the base name of output_dir."}
    )
    heartbeat_interval: int | None = field(
        default=DEFAULT_HEARTBEAT_INTERVAL,
        metadata={
            "help": "Seconds between heartbeats of a running trial on an RDB storage (sqlite, postgresql, mysql); a "
            "trial silent for twice this long is taken as killed, marked failed and retried with the same "
            "parameters from its last checkpoint (0 turns heartbeats off; journal and memory storages "
            "have none)."
        },
    )
    artifact_store: str | None = field(
        default=None,
        metadata={
            "help": "Keep each trial's newest checkpoint and the best model in an artifact store, so that a killed "
            "trial resumes on another machine and the best model can be fetched anywhere: a shared directory or "
            "s3://bucket/prefix (AWS environment variables; needs boto3). Unset: none (all stays under output_dir)."
        },
    )
    save_best_model: bool = field(
        default=True, metadata={"help": "Save the best trial's model to output_dir/best_model."}
    )
    search_report: bool = field(
        default=True,
        metadata={
            "help": "Write the end-of-search report to output_dir/report/ (index.html: one page with every plot, "
            "summary.json, trials.csv, PNG plots) and print its summary table."
        },
    )

    # Parameters that control faults inside trials
    continue_on_oom: bool = field(
        default=True,
        metadata={
            "help": "When a trial runs out of memory, mark it FAIL (reason in the trial's user attribute "
            "'fail_reason'), release its memory and checkpoints, and go on with the next trial. "
            "false stops the search at the first out-of-memory error."
        },
    )
    oom_infeasible: bool = field(
        default=True,
        metadata={
            "help": "With continue_on_oom: record an out-of-memory trial as infeasible (PRUNED with the Optuna "
            "constraint out_of_memory=1.0), so that TPE, GP and NSGA-II stop proposing its region. false: mark it "
            "FAIL, which no sampler learns from."
        },
    )
    isolate_trials: bool = field(
        default=False,
        metadata={
            "help": "Run each trial in a fresh child process (started by multiprocessing's fork server) while this "
            "process keeps the study: a trial whose process dies (segfault, os.abort(), the kernel's OOM killer) is marked FAIL with "
            "the cause and the search goes on, and no memory leaks from trial to trial. model_init, compute_metrics "
            "and callbacks must be picklable (defined at module level). Not under accelerate launch/torchrun."
        },
    )
    skip_duplicates: bool = field(
        default=True,
        metadata={
            "help": "Do not train a trial whose parameters equal a finished trial's (same training arguments): it "
            "takes that trial's evaluations, state and value (user attribute duplicate_of). false: train every trial."
        },
    )

    def __post_init__(self) -> None:
        # The values as the user gave them, before TrainingArguments derives anything: each trial is rebuilt from
        # these plus its own values, so derived fields (greater_is_better, ...) are computed afresh, and a
        # metric_for_best_model that transformers filled in itself is not taken for the user's choice.
        self._given_values = {f.name: copy.copy(getattr(self, f.name)) for f in dataclasses.fields(self) if f.init}
        parent = super()
        if hasattr(parent, "__post_init__"):
            parent.__post_init__()
        # Validate: every problem is reported here, before a model is loaded.
        validate_search_fields(self)
        self.direction = normalize_direction(self.direction)
        # Derive: the parsed space (None for a callable or no space); sampler and pruner are built once to check them.
        self.search_space = parse_hp_space(self.hp_space, type(self))
        build_sampler(self.sampler, self.search_space)
        build_pruner(self.pruner)
        # What __post_init__ left, to tell a field the user changed afterwards (honoured) from a derived one.
        self._derived_values = {f.name: copy.copy(getattr(self, f.name)) for f in dataclasses.fields(self) if f.init}

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = super().to_dict()  # type: ignore[misc]
        # Objects (a callable space, a sampler instance) are shown by name so that the args stay JSON-serializable.
        for name in _OBJECT_FIELDS:
            value = d.get(name)
            if value is not None and not isinstance(value, (str, dict, int, float, bool, list)):
                d[name] = f"<{getattr(value, '__qualname__', type(value).__name__)}>"
        if d.get("storage"):
            d["storage"] = mask_url(d["storage"])
        return d

    def __str__(self) -> str:
        # TrainingArguments prints every field (users log `args`): a password in the storage URL is masked.
        return mask_url(super().__str__())

    __repr__ = __str__

    def __getstate__(self) -> dict[str, Any]:
        # Checkpoints and save_model() pickle the arguments (training_args.bin): drop what may not pickle (a lambda
        # space, a sampler), and the storage URL's password, which must never reach a file.
        state = dict(self.__dict__)
        for name in _OBJECT_FIELDS:
            if state.get(name) is not None and not isinstance(state[name], (str, dict)):
                state[name] = None
        if isinstance(state.get("storage"), str):
            state["storage"] = mask_url(state["storage"])
        state.pop("_given_values", None)
        state.pop("_derived_values", None)
        return state

    def __copy__(self) -> Any:
        # A copy is no file: it keeps everything, the password and a callable space included (pickling masks them).
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        return clone

    def __deepcopy__(self, memo: dict[int, Any]) -> Any:
        clone = object.__new__(type(self))
        memo[id(self)] = clone
        for key, value in self.__dict__.items():
            clone.__dict__[key] = value if key in _OBJECT_FIELDS else copy.deepcopy(value, memo)
        return clone


SEARCH_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(OptunaSearchArguments))
SEARCH_DEFAULTS: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(OptunaSearchArguments)}


@dataclass(repr=False)
class OptunaTrainingArguments(OptunaSearchArguments, TrainingArguments):
    """`TrainingArguments` with an Optuna hyperparameter search declared next to the training settings.

    Every field of `TrainingArguments`, plus the search fields of `OptunaSearchArguments` (see its docstring):
    `hp_space`, `n_trials`, `timeout`, `direction`, `objective_metric`, `sampler`, `pruner`, `storage`, `study_name`,
    `prune_metric`, `prune_budget`, `enqueue_arguments`, `target_value`, `trials_without_improvement`,
    `heartbeat_interval`, `artifact_store`, `save_best_model`, `search_report`, `continue_on_oom`, `oom_infeasible`,
    `isolate_trials`, `skip_duplicates`.
    """


_SEARCH_CLASSES: dict[type, type] = {TrainingArguments: OptunaTrainingArguments}


def with_search_fields(args_class: type[TrainingArguments]) -> type:
    """The arguments class `args_class` with the search fields of `OptunaSearchArguments` added.

    The result is a dataclass that `HfArgumentParser` and YAML/JSON config files read like any other; calling this
    twice with the same class returns the same class. Example::

        Seq2SeqSearchArguments = with_search_fields(Seq2SeqTrainingArguments)
        (args,) = HfArgumentParser(Seq2SeqSearchArguments).parse_args_into_dataclasses()
    """
    if not (isinstance(args_class, type) and issubclass(args_class, TrainingArguments)):
        raise TypeError(f"with_search_fields: expected a TrainingArguments subclass, got {args_class!r}")
    if issubclass(args_class, OptunaSearchArguments):
        return args_class
    return mixed_class(
        OptunaSearchArguments,
        args_class,
        _SEARCH_CLASSES,
        __name__,
        f"`{args_class.__name__}` with the search fields of `OptunaSearchArguments`.",
        finish=dataclass(repr=False),
    )


def validate_search_fields(args: Any) -> None:
    """Check the search fields of `args` (an arguments object with or without them) and raise a `ValueError`: the same
    validators as `hyperparameter_search(...)`'s values (validation.py)."""
    check_fields(search_values(args))


def search_values(args: Any) -> dict[str, Any]:
    """The search fields of `args`; an arguments object without them (a plain `TrainingArguments`) gets the
    defaults."""
    return {name: getattr(args, name, default) for name, default in SEARCH_DEFAULTS.items()}


def given_values(args: TrainingArguments) -> dict[str, Any]:
    """The values each trial's arguments are rebuilt from: the user's, as they are when the search starts.

    For a class with the search fields, the values given to the constructor (before `__post_init__` derived others
    from them), with every field the user changed since then; for any other class, the object's current values.
    """
    current = {f.name: getattr(args, f.name) for f in dataclasses.fields(args) if f.init}
    given = getattr(args, "_given_values", None)
    derived = getattr(args, "_derived_values", None)
    if given is None or derived is None:
        return current
    return {
        name: value if _changed(value, derived.get(name)) else given.get(name, value)
        for name, value in current.items()
    }


def _changed(value: Any, before: Any) -> bool:
    try:
        return bool(value != before) if value is not before else False
    except Exception:  # noqa: BLE001 - an object without a usable ==: compare identity
        return value is not before


def user_metric_for_best_model(args: TrainingArguments) -> str | None:
    """`metric_for_best_model` if the user chose it, None if transformers filled it in.

    `load_best_model_at_end=True` (or a plateau scheduler) makes `TrainingArguments` set it to "loss" itself. With the
    search fields the given value is known; for another class "loss" with those settings counts as transformers'
    (set `objective_metric="loss"` to optimize the loss).
    """
    given = getattr(args, "_given_values", None)
    if given is not None:
        return given.get("metric_for_best_model")
    metric = args.metric_for_best_model
    auto = args.load_best_model_at_end or args.lr_scheduler_type in (
        SchedulerType.REDUCE_ON_PLATEAU,
        SchedulerType.GREEDY,
    )
    if metric == "loss" and auto:
        return None
    return metric


def output_dir_of(args: TrainingArguments) -> str:
    """`args.output_dir`: typed optional, always set by `TrainingArguments.__post_init__` ("trainer_output" by
    default)."""
    if args.output_dir is None:
        raise ValueError("output_dir: the search writes its study and runs there; give a folder")
    return args.output_dir


def trial_arguments(args: TrainingArguments, values: dict[str, Any], output_dir: str) -> TrainingArguments:
    """A fresh arguments object of the user's class with one trial's values and its own output directory."""
    init = {**given_values(args), **values, "output_dir": output_dir}
    if isinstance(args, OptunaSearchArguments):
        # The copy trains; it does not search. Plain values keep it picklable (Trainer saves args with torch.save).
        for name in _OBJECT_FIELDS:
            init[name] = None
        init["direction"] = init["storage"] = None
    return type(args)(**init)


def parse_hp_space(hp_space: Any, args_class: type = OptunaTrainingArguments) -> SearchSpace | None:
    """A declarative space is parsed and checked; a callable or None is left for the search to handle."""
    if hp_space is None or isinstance(hp_space, SearchSpace):
        return hp_space
    if callable(hp_space):
        return None
    return SearchSpace.parse(hp_space, args_class)
