"""Locks that make "count the study's budget, then create a trial" one step across workers.

Several workers sharing one study each count its finished and running trials before starting one. Counting and
creating are two steps: without a lock, N workers that all see `n_trials - 1` finished trials all start one, and the
study ends with `n_trials + N - 1` (which is what Optuna's `MaxTrialsCallback` does). The lock is held only from the
count until the new trial is RUNNING in the storage (milliseconds), never while a trial trains, and it lives in the
storage's own server where there is one, so that it works across machines and is released when a worker dies:

- PostgreSQL: a session-level advisory lock (`pg_advisory_lock`), released by the server when the connection drops;
- MySQL/MariaDB: a named lock (`GET_LOCK`), same;
- Redis journal: a Redis lock with a timeout (redis-py's `Lock`);
- SQLite file and journal file (one machine): an OS file lock next to the file (`filelock`), released by the OS when
  the process dies;
- in-memory storage or a storage object we cannot see into: a lock within this process.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from collections.abc import Iterator
from typing import Any, Protocol

import sqlalchemy


class ClaimLock(Protocol):
    def acquire(self) -> None: ...

    def release(self) -> None: ...


@contextlib.contextmanager
def held(lock: ClaimLock) -> Iterator[None]:
    """`lock` held for the block (the `ClaimLock`s have no `with` of their own)."""
    lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _key(study_name: str) -> str:
    return f"optuna_trainer:claim:{study_name}"


class _LocalLock:
    def __init__(self) -> None:
        self._lock = threading.Lock()

    def acquire(self) -> None:
        self._lock.acquire()

    def release(self) -> None:
        self._lock.release()


def local_lock() -> ClaimLock:
    """A lock within this process (the in-memory storage is not shared with other processes anyway)."""
    return _LocalLock()


class _FileLock:
    def __init__(self, path: str) -> None:
        import filelock

        self._lock = filelock.FileLock(path)

    def acquire(self) -> None:
        self._lock.acquire()

    def release(self) -> None:
        self._lock.release()


def file_lock(path: str) -> ClaimLock:
    """An OS file lock at `path` (processes on one machine; released by the OS if the holder dies)."""
    return _FileLock(path)


class _SqlLock:
    """A lock held by one connection of `engine`: the server releases it if the connection (or its process) dies."""

    def __init__(self, engine: sqlalchemy.engine.Engine, lock_sql: str, unlock_sql: str, params: dict[str, Any]):
        self._engine = engine
        self._lock_sql = sqlalchemy.text(lock_sql)
        self._unlock_sql = sqlalchemy.text(unlock_sql)
        self._params = params
        self._conn: sqlalchemy.engine.Connection | None = None

    def acquire(self) -> None:
        conn = self._engine.connect()
        try:
            conn.execute(self._lock_sql, self._params)
            # Session-level locks outlive transactions; commit so that the connection holds no snapshot meanwhile.
            conn.commit()
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            conn.execute(self._unlock_sql, self._params)
            conn.commit()
        finally:
            conn.close()


def rdb_lock(storage: Any, study_name: str) -> ClaimLock:
    """The claim lock for an `optuna.storages.RDBStorage`, chosen by its database."""
    engine: sqlalchemy.engine.Engine = storage.engine
    dialect = engine.dialect.name
    if dialect == "postgresql":
        # pg_advisory_lock takes a 64-bit integer: a stable hash of the study's name.
        key = int.from_bytes(hashlib.blake2b(_key(study_name).encode(), digest_size=8).digest(), "big", signed=True)
        return _SqlLock(engine, "SELECT pg_advisory_lock(:key)", "SELECT pg_advisory_unlock(:key)", {"key": key})
    if dialect in ("mysql", "mariadb"):
        # MySQL lock names are at most 64 characters.
        name = "optuna_trainer:" + hashlib.sha1(study_name.encode()).hexdigest()[:40]
        return _SqlLock(engine, "SELECT GET_LOCK(:name, -1)", "SELECT RELEASE_LOCK(:name)", {"name": name})
    if dialect == "sqlite":
        database = engine.url.database
        if database and database != ":memory:":
            return file_lock(os.path.abspath(database) + ".claim.lock")
    return local_lock()


class _RedisLock:
    def __init__(self, url: str, study_name: str) -> None:
        import redis

        # A timeout, so that the lock of a worker killed while holding it (for milliseconds) expires by itself.
        self._lock = redis.Redis.from_url(url).lock(_key(study_name), timeout=60, sleep=0.05)

    def acquire(self) -> None:
        self._lock.acquire(blocking=True)

    def release(self) -> None:
        self._lock.release()


def redis_lock(url: str, study_name: str) -> ClaimLock:
    """A Redis lock on the journal's own server (works across machines)."""
    return _RedisLock(url, study_name)
