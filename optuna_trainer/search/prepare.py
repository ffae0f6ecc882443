"""Prepare a search before any trial: resolve and check its settings, then create (or load) its study.

Everything a `hyperparameter_search(...)` could fail on without training is checked here, on every process, before
the study exists in the storage (search/checks.py); the main process then creates or loads the study, checks that
the settings can continue it (search/compatibility.py), and prints the settings.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import optuna
from transformers import Trainer, TrainingArguments

from optuna_trainer.arguments import output_dir_of
from optuna_trainer.processes.worker_env import LaunchEnv, launch_env
from optuna_trainer.search.checks import check_before_study, check_output_dir
from optuna_trainer.search.compatibility import check_continuation
from optuna_trainer.search.control import enqueue_arguments
from optuna_trainer.search.isolated import check_isolatable
from optuna_trainer.search.settings import SearchSettings, resolve_settings
from optuna_trainer.study.attrs import ARTIFACT_STORE_ATTR
from optuna_trainer.study.storage import default_storage_url
from optuna_trainer.training.adapters import has_adapter_keys


def settle(trainer: Trainer, is_main: bool, call: dict[str, Any]) -> tuple[SearchSettings, optuna.Study | None]:
    """Resolve and check the settings of a `hyperparameter_search(**call)`; on the main process, print them and
    create (or load) the study."""
    # First: the default storage is a file under output_dir, and every trial writes there whatever the storage.
    check_output_dir(trainer.args)
    launched = launch_env()  # read once: the settings carry it from here
    if not is_main:
        # Only the main process opens the storage; the others check everything else the same way.
        call = {**call, "storage": "memory"}
    elif launched is not None:
        call = {**call, "storage": launched_storage(trainer.args, call, launched)}
    settings = resolve_settings(
        trainer.args,
        has_compute_metrics=trainer.compute_metrics is not None,
        launched=launched,
        existing_trials=stored_trials,
        **call,
    )
    keys = check_before_study(trainer, settings)
    settings = dataclasses.replace(
        settings, space=dataclasses.replace(settings.space, adapters=has_adapter_keys(keys))
    )
    if not is_main:
        return settings, None
    if settings.control.isolate_trials:
        check_isolatable(trainer, call, settings)  # what a trial's process cannot get, refused before the study
    study = create_study(settings)
    check_continuation(study, settings)
    if settings.storage.artifacts is not None:
        # What `optuna-trainer best-model` opens when no --artifact-store is given.
        study.set_user_attr(ARTIFACT_STORE_ATTR, settings.storage.artifacts.url)
    if launched is not None and settings.storage.url is not None:
        launched.announce(
            storage=settings.storage.url or default_storage_url(output_dir_of(trainer.args)),
            study_name=settings.storage.study_name,
            output_dir=output_dir_of(trainer.args),
            n_trials=settings.control.n_trials,
        )
    if settings.control.enqueue_arguments:
        note = enqueue_arguments(study, settings.space.hp_space, keys, trainer.args, trainer.model)
        if note is not None:
            settings = settings.with_notes(note)
    settings.log()
    return settings, study


def stored_trials(study_name: str, storage: optuna.storages.BaseStorage | None) -> int:
    """How many trials study `study_name` already holds in `storage` (0 when it does not exist yet): a seeded
    sampler continuing it is built with its seed advanced past them (search/settings.py)."""
    if storage is None:
        return 0
    try:
        study_id = storage.get_study_id_from_name(study_name)
    except KeyError:
        return 0
    return len(storage.get_all_trials(study_id, deepcopy=False))


def launched_storage(args: TrainingArguments, call: dict[str, Any], launched: LaunchEnv) -> Any:
    """The storage of a worker of `optuna-trainer workers` (processes/launcher.py): the launcher's `--storage`, else
    the search's own, else a journal file under output_dir (it takes concurrent writers; the SQLite default does
    not)."""
    given = call.get("storage", getattr(args, "storage", None))
    storage = launched.storage or given or launched.default_storage(output_dir_of(args))
    if isinstance(storage, str) and storage.strip().lower() in ("memory", ":memory:"):
        raise ValueError(
            "storage: 'memory' cannot be shared by the workers of `optuna-trainer workers`; leave storage unset "
            "(a journal file under output_dir) or give a file or database URL"
        )
    return storage


def create_study(settings: SearchSettings) -> optuna.Study:
    """Create the study, or load it to continue it (unless `load_if_exists=False`)."""
    try:
        return optuna.create_study(
            storage=settings.storage.storage,
            sampler=settings.space.sampler,
            pruner=settings.pruning.pruner,
            study_name=settings.storage.study_name,
            directions=[optuna.study.StudyDirection[d.upper()] for d in settings.objective.directions],
            load_if_exists=settings.storage.load_if_exists,
        )
    except optuna.exceptions.DuplicatedStudyError:
        raise ValueError(
            f"load_if_exists=False: study {settings.storage.study_name!r} already exists in "
            f"{settings.storage.description}; "
            "give a new study_name or output_dir, or load_if_exists=True to continue it"
        ) from None
