"""Where a study lives: Optuna storage URLs, journal files, the embedded default, heartbeats and masked passwords.

The default is an SQLite file under `output_dir`: one file, readable by `optuna-dashboard`, transactional, and it
supports Optuna's heartbeats (the journal storage does not), which is what lets a killed run be resumed: a trial whose
heartbeat stopped is marked failed and re-queued with the same parameters (see docs/storage.md).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import filelock
import optuna
import optuna.storages.journal

from optuna_trainer.study.claims import ClaimLock, file_lock, local_lock, rdb_lock, redis_lock

logger = logging.getLogger(__name__)

DEFAULT_DB_NAME = "optuna_study.db"
DEFAULT_HEARTBEAT_INTERVAL = 60
# How often a trial whose worker died is re-queued before it is left failed (a trial that kills its process every
# time, e.g. by running out of memory, must not be retried forever).
MAX_RETRY = 3
MEMORY = ("memory", ":memory:", "inmemory")
# A stale trial is one whose heartbeat is older than 2 intervals; Optuna computes that with timestamps, which overflow
# long before a large int does. A week is beyond any real trial's step.
MAX_HEARTBEAT_INTERVAL = 7 * 24 * 3600
# Optuna's RDB schema keeps study names in a VARCHAR(512) (optuna.storages._rdb.models.MAX_INDEXED_STRING_LENGTH).
MAX_STUDY_NAME_LENGTH = 512
_RDB_SCHEMES = ("sqlite", "postgresql", "postgres", "mysql", "mariadb", "oracle", "mssql")
# `scheme://user:password@host`: the password runs to the last '@' before the host, so that an unencoded '@' in it
# is masked too; and a password given as a query parameter (`?password=`, libpq's and SQLAlchemy's form).
_PASSWORD = re.compile(
    r"(?P<head>[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/@\s]*:)(?P<password>[^\s/?#]*)@(?=[^@\s/?#]*(?:[/?#\s]|$))"
)
_QUERY_PASSWORD = re.compile(r"(?P<key>[?&](?:password|passwd|pwd)=)[^&#\s]*", re.IGNORECASE)


def mask_url(text: str) -> str:
    """Replace the password of every URL in `text` with ***."""
    text = _PASSWORD.sub(lambda m: f"{m.group('head')}***@", text)
    return _QUERY_PASSWORD.sub(lambda m: f"{m.group('key')}***", text)


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
        if os.path.isdir(storage):
            raise ValueError(
                f"storage: {storage!r} is a directory; a journal storage is a file: give a file path in it, e.g. "
                f"{os.path.join(storage, 'journal.log')!r}"
            )
        return  # a journal file path
    scheme = _scheme(storage)
    if scheme == "sqlite" and _in_memory_sqlite(storage):
        raise ValueError(
            f"storage: {storage!r} is an in-memory SQLite database: it keeps nothing after this process and no other "
            "process sees it; use storage='memory' for a study that lives in this process only, or "
            "sqlite:///path/to/study.db to keep it"
        )
    authority = storage.split("://", 1)[1].split("/", 1)[0]
    if authority.count("@") > 1:
        raise ValueError(
            f"storage: the password in {mask_url(storage)!r} holds an unencoded '@', which makes the rest of it the "
            "host; percent-encode it (@ as %40, e.g. urllib.parse.quote_plus(password))"
        )
    if scheme == "redis" or scheme == "rediss":
        return
    if scheme == "grpc":
        _grpc_address(storage)
        return
    if scheme not in _RDB_SCHEMES:
        raise ValueError(
            f"storage: unknown scheme {scheme!r} in {mask_url(storage)!r}; use sqlite:///path.db, "
            "postgresql+psycopg://user:pass@host/db, mysql+pymysql://..., redis://host:port, grpc://host:port (an "
            "optuna-trainer storage-proxy), a journal file path, or 'memory'"
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


def _in_memory_sqlite(url: str) -> bool:
    database = url.split("://", 1)[1]
    database = database[1:] if database.startswith("/") else database
    return database.split("?", 1)[0] in ("", ":memory:") or "mode=memory" in url


def check_study_name(study_name: Any, storage: Any) -> None:
    """A study name the storage can hold: a string, and at most 512 characters in a database (SQLite by default)."""
    if study_name is None:
        return
    if not isinstance(study_name, str):
        raise ValueError(f"study_name: must be a string, got {study_name!r} ({type(study_name).__name__})")
    in_database = storage is None or (isinstance(storage, str) and _scheme(storage) in _RDB_SCHEMES)
    if in_database and len(study_name) > MAX_STUDY_NAME_LENGTH:
        raise ValueError(
            f"study_name: {len(study_name)} characters; a database storage holds at most {MAX_STUDY_NAME_LENGTH} "
            "(Optuna's schema); give a shorter name"
        )


def default_storage_url(output_dir: str) -> str:
    return "sqlite:///" + os.path.abspath(os.path.join(output_dir, DEFAULT_DB_NAME))


def default_study_name(output_dir: str) -> str:
    return os.path.basename(os.path.normpath(os.path.abspath(output_dir))) or "optuna_trainer"


def _grpc_address(url: str) -> tuple[str, int]:
    """`grpc://host:port` (Optuna's gRPC storage proxy, `optuna-trainer storage-proxy`) as (host, port)."""
    rest = url.split("://", 1)[1].rstrip("/")
    host, _, port = rest.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536 or "/" in rest:
        raise ValueError(
            f"storage: {mask_url(url)!r} is not a gRPC proxy address; write it as grpc://host:port, e.g. "
            "grpc://optuna-proxy.example:13000 (started with optuna-trainer storage-proxy)"
        )
    return host, int(port)


GRPC_READY_TIMEOUT_S = 10


def _open_proxy(url: str) -> OpenedStorage:
    host, port = _grpc_address(url)
    try:
        with warnings.catch_warnings():
            # Experimental since Optuna 4.2; docs/storage.md says what it lacks (GRPC_NOTE, logged at start).
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            proxy = optuna.storages.GrpcStorageProxy(host=host, port=port)
        proxy.wait_server_ready(timeout=GRPC_READY_TIMEOUT_S)
    except ImportError as err:
        raise ValueError(f"storage: {url!r} needs grpcio: pip install 'optuna-trainer[grpc]' ({err})") from None
    except Exception:  # noqa: BLE001 - grpc's timeout error: say what to start
        raise ValueError(
            f"storage: no storage proxy answers at {host}:{port} within {GRPC_READY_TIMEOUT_S} s; start one with "
            f"optuna-trainer storage-proxy --storage <database URL> --port {port} (and check host and port)"
        ) from None
    return OpenedStorage(proxy, f"gRPC storage proxy {host}:{port}", notes=[GRPC_NOTE], target=None)


# What a search through Optuna's gRPC proxy cannot do (docs/storage.md, "The storage proxy").
GRPC_NOTE = (
    "grpc:// (Optuna's GrpcStorageProxy) has no heartbeat: a trial of a killed worker stays RUNNING and is not "
    "retried; and the claim lock is this process's own: workers that start trials at the same moment may run up to "
    "one trial each beyond n_trials (docs/storage.md, 'The storage proxy')"
)


@dataclass
class OpenedStorage:
    """A storage ready for `optuna.create_study`, with what the search needs to know about it.

    Attributes:
        storage: the storage (None: Optuna's in-memory storage).
        description: printable, password-masked.
        heartbeat_interval: seconds between heartbeats, None when the storage has none (then a killed worker's
            trial cannot be told from a live one).
        notes: lines for the printed settings (e.g. that this storage has no heartbeat).
        make_lock: study name -> the lock that serializes "count the budget, then create a trial" across workers.
        target: what `optuna-dashboard` opens (the password-masked URL or the journal file), None in memory.
    """

    storage: optuna.storages.BaseStorage | None
    description: str
    heartbeat_interval: int | None = None
    notes: list[str] = field(default_factory=list)
    make_lock: Callable[[str], ClaimLock] = field(default=lambda name: local_lock(), repr=False)
    target: str | None = None


def _no_heartbeat_note(kind: str) -> str:
    return (
        f"{kind} has no heartbeat: a trial of a killed run stays RUNNING and is not retried; use an RDB storage "
        "(the default SQLite file, postgresql+psycopg://..., mysql+pymysql://...) for crash recovery"
    )


def _rdb_storage(url: str, heartbeat_interval: int | None) -> optuna.storages.RDBStorage:
    kwargs: dict[str, Any] = {}
    if heartbeat_interval:
        kwargs = {
            "heartbeat_interval": heartbeat_interval,
            "grace_period": 2 * heartbeat_interval,
            # A stale trial (its worker was killed) is re-queued as WAITING with the same parameters, user attributes
            # (its `run_dir`, where its checkpoints are) and grid point; the next trial any worker starts is that one.
            "heartbeat_stale_trial_callback": optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY),
        }
    engine_kwargs = {"pool_pre_ping": True} if _scheme(url) != "sqlite" else {}
    return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **kwargs)


def open_storage(
    storage: str | optuna.storages.BaseStorage | None,
    output_dir: str,
    heartbeat_interval: int | None = DEFAULT_HEARTBEAT_INTERVAL,
) -> OpenedStorage:
    """Open (and for a server, connect to) the storage; raise a clear, password-masked `ValueError` if it fails.

    Args:
        storage: a URL, a journal file path, "memory", None (the SQLite file under `output_dir`), or a storage.
        output_dir: where the default SQLite file goes.
        heartbeat_interval: seconds between heartbeats of a running trial (RDB storages); 0 or None turns them off.
    """
    if isinstance(storage, optuna.storages.BaseStorage):
        return _wrap_given(storage)
    validate_storage(storage)
    if storage is not None and storage.lower() in MEMORY:
        return OpenedStorage(None, "memory (not persisted)", notes=[_no_heartbeat_note("memory storage")])
    if storage is None:
        os.makedirs(output_dir, exist_ok=True)
        storage = default_storage_url(output_dir)
    if _scheme(storage) == "grpc":
        return _open_proxy(storage)
    try:
        with warnings.catch_warnings():
            # heartbeat_interval and the retry callback are marked experimental by Optuna; they are what crash
            # recovery is built on, so the warning says nothing the user can act on.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            if "://" not in storage:
                path = os.path.abspath(storage)
                backend = optuna.storages.journal.JournalFileBackend(path)
                return OpenedStorage(
                    optuna.storages.JournalStorage(backend),
                    f"journal file {path}",
                    notes=[_no_heartbeat_note("a journal file")],
                    make_lock=lambda name: file_lock(path + ".claim.lock"),
                    target=path,
                )
            if _scheme(storage) in ("redis", "rediss"):
                url = storage
                return OpenedStorage(
                    optuna.storages.JournalStorage(optuna.storages.journal.JournalRedisBackend(storage)),
                    mask_url(storage),
                    notes=[_no_heartbeat_note("a Redis journal")],
                    make_lock=lambda name: redis_lock(url, name),
                    target=mask_url(url),
                )
            with sqlite_creation_lock(storage):
                rdb = _rdb_storage(storage, heartbeat_interval)
    except Exception as err:  # noqa: BLE001 - any driver error becomes one clear, masked message
        raise ValueError(
            f"storage: cannot open {mask_url(storage)!r}: {type(err).__name__}: {mask_url(str(err)).splitlines()[0]}"
        ) from None
    return _wrap_rdb(rdb, mask_url(storage))


# How long a process waits for another one that is creating the same SQLite file's tables (a few seconds at most).
SQLITE_LOCK_TIMEOUT_S = 120


@contextlib.contextmanager
def sqlite_creation_lock(url: str, field: str = "storage", what: str = "") -> Iterator[None]:
    """Serialize the opening of one SQLite file across processes: Optuna (and MLflow's tracking store) create the
    tables of a new file on first open, and two processes opening the same new file at once (two workers of one
    command) fail with "table already exists", a UNIQUE constraint or an `OperationalError`. A file lock beside the
    database makes the second wait. Nothing for other URLs (a server, a folder) or an in-memory database.

    `field` and `what` name, in the timeout's error, the setting and the kind of file (`"the MLflow store "`).
    """
    if _scheme(url) != "sqlite":
        yield
        return
    from sqlalchemy.engine import make_url

    database = make_url(url).database
    if not database or database == ":memory:":
        yield
        return
    path = os.path.abspath(database) + ".lock"
    os.makedirs(os.path.dirname(path), exist_ok=True)
    lock = filelock.FileLock(path, timeout=SQLITE_LOCK_TIMEOUT_S)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise ValueError(
            f"{field}: another process has been creating {what}{database} for over {SQLITE_LOCK_TIMEOUT_S} s (it "
            f"holds {path}); wait for it, or remove that file if no search runs"
        ) from None
    try:
        yield
    finally:
        lock.release()


def _wrap_rdb(rdb: optuna.storages.RDBStorage, description: str) -> OpenedStorage:
    interval = rdb.get_heartbeat_interval()
    notes = [] if interval else ["heartbeat_interval is off: a trial of a killed run stays RUNNING and is not retried"]
    target = mask_url(rdb.url)
    if interval:
        description += f" (heartbeat every {interval} s)"
    return OpenedStorage(
        rdb, description, interval, notes=notes, make_lock=lambda name: rdb_lock(rdb, name), target=target
    )


def _wrap_given(storage: optuna.storages.BaseStorage) -> OpenedStorage:
    """A storage object built by the user: used as is, with what can be learned from it."""
    if isinstance(storage, optuna.storages.RDBStorage):
        return _wrap_rdb(storage, type(storage).__name__)
    return OpenedStorage(
        storage,
        type(storage).__name__,
        notes=[
            f"{type(storage).__name__} given as an object: trial claims are serialized within this process only; "
            "pass the storage as a URL or journal file path to coordinate several workers exactly"
        ],
    )


def resolve_storage(
    storage: str | optuna.storages.BaseStorage | None,
    output_dir: str,
    heartbeat_interval: int | None = DEFAULT_HEARTBEAT_INTERVAL,
) -> tuple[optuna.storages.BaseStorage | None, str]:
    """Build the storage object and a printable (password-masked) description (see `open_storage`).

    Returns:
        `(storage, description)`; storage None means Optuna's in-memory storage.
    """
    opened = open_storage(storage, output_dir, heartbeat_interval)
    return opened.storage, opened.description
