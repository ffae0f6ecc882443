"""Private names of other libraries, in one place: each is read or set through one function here.

Every entry names the private name, the versions it is supported on (the ranges pinned in pyproject.toml), and the
test that fails when it disappears or changes meaning (tests/test_compat.py, unless named otherwise). Anything else the
search does to `Trainer` goes through public hooks (trainer.py's docstring lists them).

Behaviour mirrored without touching a private name: `Trainer._determine_best_metric` (transformers updates
`state.best_metric` only after the evaluation callbacks ran; training/callbacks.py `current_best_metric` applies the
same rule to an undone view, tested in tests/training/test_best_weights.py).
"""

from __future__ import annotations

import datetime
from typing import Any

import optuna


def study_stop_requested(study: optuna.Study) -> bool:
    """Whether `study.stop()` was called since its last `optimize` began.

    `Study._stop_flag` (optuna >=4.2,<6): `Study.stop()` only ends the `optimize` call it is made in, and the study
    loop starts one `optimize` per trial (search/loop.py); Optuna keeps the request there until the next `optimize`
    resets it and has no public accessor. Test: `test_study_stop_sets_the_flag_read_here`.
    """
    return bool(getattr(study, "_stop_flag", False))


def set_train_batch_size(trainer: Any, size: int) -> None:
    """Refresh the train batch size `Trainer` derived from its arguments in `__init__`.

    `Trainer._train_batch_size` (transformers >=5.24,<6): read by `Trainer` for the train dataloader, and refreshed
    the same way by transformers' own `_hp_search_setup`. Test: `test_trainer_reads_its_train_batch_size` (the
    dataloader's batch follows the value set here).
    """
    trainer._train_batch_size = size


def set_process_group_timeout(timeout: datetime.timedelta) -> bool:
    """Set the default process group's timeout; False where this torch cannot.

    `torch.distributed.distributed_c10d._set_pg_timeout` (torch >=2.4,<3; shipped since 2.2): torch has no public
    setter for an existing group's timeout, and with `use_cpu=True` transformers leaves gloo at torch's 30-minute
    default whatever `ddp_timeout` says. Test: `test_torch_can_set_a_group_timeout`.
    """
    import torch.distributed as dist

    setter = getattr(dist.distributed_c10d, "_set_pg_timeout", None)
    if setter is None:
        return False
    setter(timeout)
    return True


def storage_location(storage: Any) -> str | None:
    """The URL of an RDB storage, or the file of a journal file storage, that a user built as an object; None when it
    cannot be told (only the report's optuna-dashboard line is then left out).

    Optuna wraps an RDB storage in `_CachedStorage._backend` and a journal file in `JournalStorage._backend`
    (`JournalFileBackend._file_path`) (optuna >=4.2,<6); `RDBStorage.url` is public. Test:
    `test_storage_location_of_objects`.
    """
    for candidate in (storage, getattr(storage, "_backend", None)):
        url = getattr(candidate, "url", None)
        if isinstance(url, str):
            return url
        path = getattr(getattr(candidate, "_backend", None), "_file_path", None)
        if isinstance(path, str):
            return path
    return None


def study_storage(study: optuna.Study) -> Any:
    """`Study._storage` (optuna >=4.2,<6): the storage object of a study loaded by the report from a storage object.
    Test: `test_storage_location_of_objects`."""
    return getattr(study, "_storage", None)


def trl_skips_dataset_preparation(trainer: Any) -> bool:
    """Whether a TRL trainer left its datasets unprepared: its own flags `_skip_prepare_dataset` and
    `_is_vision_dataset` (trl >=1.16,<2), read, never written; absent in another TRL, they read as False and the data
    is prepared again as for text. Test: `test_trl_keeps_its_dataset_flags`."""
    return bool(getattr(trainer, "_skip_prepare_dataset", False) or getattr(trainer, "_is_vision_dataset", False))


def trl_sft_prepare_dataset(
    trainer: Any, dataset: Any, args: Any, *, packing: bool, formatting_func: Any, name: str
) -> Any:
    """`dataset` tokenized, truncated and packed by a TRL `SFTTrainer` as `args` say, as its `__init__` does.

    `SFTTrainer._prepare_dataset(dataset, processing_class, args, packing, formatting_func, dataset_name)`
    (trl >=1.16,<2): the only entry to TRL's preparation; integrations/trl.py prepares a trial's datasets again when
    the trial changes what it reads (`max_length`, `packing`, ...). Test: `test_trl_prepares_datasets_as_told`.
    """
    return trainer._prepare_dataset(dataset, trainer.processing_class, args, packing, formatting_func, name)


def trl_dpo_prepare_dataset(trainer: Any, dataset: Any, args: Any, *, name: str) -> Any:
    """`dataset` tokenized by a TRL `DPOTrainer` as `args` say (prompts that fill `max_length` dropped).

    `DPOTrainer._prepare_dataset(dataset, processing_class, args, dataset_name)` (trl >=1.16,<2), as
    `trl_sft_prepare_dataset`. Test: `test_trl_prepares_datasets_as_told`.
    """
    return trainer._prepare_dataset(dataset, trainer.processing_class, args, name)


__all__ = [
    "set_process_group_timeout",
    "set_train_batch_size",
    "storage_location",
    "study_storage",
    "study_stop_requested",
    "trl_dpo_prepare_dataset",
    "trl_sft_prepare_dataset",
    "trl_skips_dataset_preparation",
]
