"""Where a study lives: Optuna storage URLs, journal files, the embedded default, and masked passwords.

The default is an SQLite file under `output_dir`: one file, readable by `optuna-dashboard`, transactional, and it
supports Optuna's heartbeats (the journal storage does not), which is what lets a killed run be resumed.
"""

from __future__ import annotations

import os
import re
from typing import Any

import optuna

DEFAULT_DB_NAME = "optuna_study.db"
MEMORY = ("memory", ":memory:", "inmemory")
_RDB_SCHEMES = ("sqlite", "postgresql", "postgres", "mysql", "mariadb", "oracle", "mssql")
_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/@\s]*:)(?P<password>[^@\s]*)@")


def mask_url(text: str) -> str:
    """Replace the password of every URL in `text` with ***."""
    return _PASSWORD.sub(lambda m: f"{m.group('head')}***@", text)


def _scheme(url: str) -> str:
    return url.split("://", 1)[0].split("+", 1)[0].lower()


def validate_storage(storage: Any) -> None:
    """Check the form of a storage setting (not whether its server answers) before anything is trained."""
    if storage is None or isinstance(storage, optuna.storages.BaseStorage):
        return
    if not isinstance(storage, str) or not storage.strip():
        raise ValueError(f"storage: expected a storage URL, a journal file path or 'memory', got {storage!r}")
    if storage.lower() in MEMORY:
        return
    if "://" not in storage:
        head = storage.split(":", 1)[0].split("+", 1)[0].lower()
        if ":" in storage and head in (*_RDB_SCHEMES, "redis", "rediss"):
            raise ValueError(
                f"storage: malformed URL {mask_url(storage)!r}: a URL needs '://' after the scheme, e.g. "
                "postgresql+psycopg://user:pass@host:5432/db"
            )
        if storage.endswith((".db", ".sqlite", ".sqlite3")):
            raise ValueError(f"storage: {storage!r} looks like an SQLite file; write it as sqlite:///{storage}")
        return  # a journal file path
    scheme = _scheme(storage)
    if scheme == "redis" or scheme == "rediss":
        return
    if scheme not in _RDB_SCHEMES:
        raise ValueError(
            f"storage: unknown scheme {scheme!r} in {mask_url(storage)!r}; use sqlite:///path.db, "
            "postgresql+psycopg://user:pass@host/db, mysql+pymysql://..., redis://host:port, a journal file path, "
            "or 'memory'"
        )
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        make_url(storage)
    except (ArgumentError, ValueError) as err:
        raise ValueError(
            f"storage: malformed URL {mask_url(storage)!r}: {mask_url(str(err))}; write it as "
            "dialect+driver://user:password@host:port/database, e.g. postgresql+psycopg://user:pass@localhost:5432/db"
        ) from None


def default_storage_url(output_dir: str) -> str:
    return "sqlite:///" + os.path.abspath(os.path.join(output_dir, DEFAULT_DB_NAME))


def default_study_name(output_dir: str) -> str:
    return os.path.basename(os.path.normpath(os.path.abspath(output_dir))) or "optuna_trainer"


def resolve_storage(
    storage: str | optuna.storages.BaseStorage | None,
    output_dir: str,
    heartbeat_interval: int | None = None,
) -> tuple[optuna.storages.BaseStorage | None, str]:
    """Build the storage object and a printable (password-masked) description.

    Returns:
        `(storage, description)`; storage None means Optuna's in-memory storage.
    """
    if isinstance(storage, optuna.storages.BaseStorage):
        return storage, type(storage).__name__
    validate_storage(storage)
    if storage is not None and storage.lower() in MEMORY:
        return None, "memory (not persisted)"
    if storage is None:
        os.makedirs(output_dir, exist_ok=True)
        storage = default_storage_url(output_dir)
    try:
        if "://" not in storage:
            backend = optuna.storages.journal.JournalFileBackend(os.path.abspath(storage))
            return optuna.storages.JournalStorage(backend), f"journal file {os.path.abspath(storage)}"
        if _scheme(storage) in ("redis", "rediss"):
            backend = optuna.storages.journal.JournalRedisBackend(storage)
            return optuna.storages.JournalStorage(backend), mask_url(storage)
        kwargs: dict[str, Any] = {}
        if heartbeat_interval:
            kwargs = {
                "heartbeat_interval": heartbeat_interval,
                "grace_period": 2 * heartbeat_interval,
            }
        engine_kwargs = {"pool_pre_ping": True} if _scheme(storage) != "sqlite" else {}
        return optuna.storages.RDBStorage(storage, engine_kwargs=engine_kwargs, **kwargs), mask_url(storage)
    except Exception as err:  # noqa: BLE001 - any driver error becomes one clear, masked message
        raise ValueError(
            f"storage: cannot open {mask_url(storage)!r}: {type(err).__name__}: {mask_url(str(err)).splitlines()[0]}"
        ) from None
