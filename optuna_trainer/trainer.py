"""`OptunaSearchMixin`: an Optuna `hyperparameter_search()` for any `transformers.Trainer` subclass.

`OptunaTrainer` is the mixin over `Trainer`; `with_optuna_search(cls)` puts it over any other trainer class, and
optuna_trainer.integrations holds ready classes for `Seq2SeqTrainer`, TRL's `SFTTrainer`/`DPOTrainer` and
`SentenceTransformerTrainer`. The trainer keeps the user's arguments object (`trainer.args is args`, of any class);
the search rebuilds each trial's arguments from it.

Supported transformers: >=5.24,<6 (see pyproject.toml). The search drives `Trainer.train()` through public hooks only
(`model_init`, which `Trainer.train(trial=...)` calls through `call_model_init`; a `TrainerCallback` for report and
prune; `evaluate`; `save_model`; `create_accelerator_and_postprocess`); it never sets `hp_search_backend`, so
transformers' own Optuna code paths (`_hp_search_setup`, `_report_to_hp_search`) stay inactive. The one private name
it touches is the attribute `_train_batch_size`, through `_compat.set_train_batch_size` (training/binding.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import optuna
from transformers import Trainer, TrainingArguments
from transformers.trainer_utils import BestRun, HPSearchBackend

from optuna_trainer._classes import mixed_class
from optuna_trainer.processes.distributed import coordinator_for
from optuna_trainer.search.search import Search
from optuna_trainer.training.binding import use_arguments


class OptunaSearchMixin:
    """Gives a `Trainer` subclass a `hyperparameter_search()` that runs an Optuna study declared in its arguments.

    Put it first among the bases (`class MyTrainer(OptunaSearchMixin, Seq2SeqTrainer)`), or use
    `with_optuna_search(Seq2SeqTrainer)`. Everything else behaves as in the trainer it is mixed into. After a
    search, `trainer.study` is the Optuna study and `output_dir/best_model` holds the best trial's model.

    The search fields (`hp_space`, `n_trials`, `sampler`, `pruner`, ...) are read from the arguments when their
    class has them (`OptunaTrainingArguments`, or any class made by `with_search_fields`); with another arguments
    class the search runs on their defaults, and `hyperparameter_search(...)` arguments override either.
    """

    study: optuna.Study | None = None

    def hyperparameter_search(
        self,
        hp_space: Callable[[optuna.Trial], dict[str, Any]] | dict | str | None = None,
        compute_objective: Callable[[dict[str, float]], Any] | None = None,
        n_trials: int | None = None,
        direction: str | list[str] | None = None,
        backend: str | HPSearchBackend | None = None,
        hp_name: Callable[[optuna.Trial], str] | None = None,
        **kwargs: Any,
    ) -> BestRun | list[BestRun]:
        """Run the Optuna study declared by the arguments; anything passed here overrides them.

        Args:
            hp_space: a declarative space (dict, YAML/JSON path or JSON string) or `hp_space(trial) -> dict`.
                Defaults to `args.hp_space`, then transformers' default space.
            compute_objective: metrics -> value (or a tuple for several objectives). Defaults to
                `args.objective_metric`, then `metric_for_best_model`, then `eval_accuracy` (with `compute_metrics`)
                or `eval_loss` (without).
            n_trials: the study's number of finished trials. Defaults to `args.n_trials`.
            direction: "minimize", "maximize", or a list for several objectives. Defaults to `args.direction`.
            backend: only "optuna" (or None).
            hp_name: trial -> run directory name under `output_dir` (default `run-{number}`).
            kwargs: what transformers passes on to Optuna: `sampler`, `pruner`, `storage`, `study_name`,
                `directions`, `load_if_exists` (`optuna.create_study`); `timeout`, `catch`, `callbacks`,
                `gc_after_trial`, `show_progress_bar` (`Study.optimize`; `n_jobs` other than 1 is refused).

        Returns:
            transformers' `BestRun` of the best trial (a list of them, the Pareto front, for several objectives).
            Under `accelerate launch`/torchrun every process returns the same value; only the main process holds
            `trainer.study` (None on the others, see docs/distributed.md).
        """
        if backend is not None and HPSearchBackend(backend) != HPSearchBackend.OPTUNA:
            raise ValueError(f"backend: {type(self).__name__} searches with optuna only, got {backend!r}")
        if not isinstance(self, Trainer):
            raise TypeError(f"OptunaSearchMixin must be mixed into a transformers.Trainer subclass, not {type(self)}")
        search = Search.prepare(
            self,
            coordinator_for(self.args),
            hp_space=hp_space,
            compute_objective=compute_objective,
            n_trials=n_trials,
            direction=direction,
            hp_name=hp_name,
            **kwargs,
        )
        self.study = search.study
        return search.run()

    def use_trial_arguments(self, args: TrainingArguments) -> None:
        """Make `args` this trainer's arguments: called before each trial with the trial's arguments, and once when the
        search ends with the user's own.

        The default rebuilds what `Trainer` derives from its arguments (the accelerator, the train batch size) and sets
        again every attribute the trainer or its collator copied from a changed argument under the same name
        (training/binding.py: `use_arguments`). A trainer that prepares data from its arguments in `__init__` extends
        this to prepare it again (integrations/trl.py).
        """
        use_arguments(cast(Trainer, self), args)


class OptunaTrainer(OptunaSearchMixin, Trainer):
    """A `Trainer` whose `hyperparameter_search()` runs an Optuna study declared in `OptunaTrainingArguments`.

    `train()`, `evaluate()` and every other method behave as in `Trainer`; a plain `TrainingArguments` works too.
    After a search, `trainer.study` is the Optuna study and `output_dir/best_model` holds the best trial's model.
    """


_SEARCH_TRAINERS: dict[type, type] = {Trainer: OptunaTrainer}


def with_optuna_search(trainer_class: type[Trainer]) -> type:
    """`trainer_class` with `OptunaSearchMixin`: the same trainer, with the Optuna `hyperparameter_search()`.

    Calling this twice with the same class returns the same class. Example::

        SearchSeq2SeqTrainer = with_optuna_search(Seq2SeqTrainer)
        trainer = SearchSeq2SeqTrainer(model=model, args=with_search_fields(Seq2SeqTrainingArguments)(...), ...)
    """
    if not (isinstance(trainer_class, type) and issubclass(trainer_class, Trainer)):
        raise TypeError(f"with_optuna_search: expected a transformers.Trainer subclass, got {trainer_class!r}")
    if issubclass(trainer_class, OptunaSearchMixin):
        return trainer_class
    return mixed_class(
        OptunaSearchMixin,
        trainer_class,
        _SEARCH_TRAINERS,
        __name__,
        f"`{trainer_class.__name__}` with `OptunaSearchMixin`'s Optuna `hyperparameter_search()`.",
    )


__all__ = ["OptunaSearchMixin", "OptunaTrainer", "with_optuna_search"]
