"""What `optuna-trainer workers` (processes/launcher.py) tells each worker it starts, read on the worker's side.

The launcher passes everything through environment variables: the worker's index and count, a folder where each
worker announces its study, and the launcher's `--storage`. A search reads them once (`launch_env()`, when its
settings are resolved); nothing here starts a process, so the search never imports the launcher.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass

ENV_WORKER = "OPTUNA_TRAINER_WORKER"
ENV_WORKERS = "OPTUNA_TRAINER_WORKERS"
ENV_LAUNCH_DIR = "OPTUNA_TRAINER_LAUNCH_DIR"
ENV_STORAGE = "OPTUNA_TRAINER_STORAGE"
JOURNAL_NAME = "optuna_journal.log"


@dataclass
class LaunchEnv:
    """What the launcher told this process (None from `launch_env()` when it was not started by it)."""

    worker: int
    workers: int
    launch_dir: str
    storage: str | None

    def default_storage(self, output_dir: str) -> str:
        return os.path.abspath(os.path.join(output_dir, JOURNAL_NAME))

    def announce(self, *, storage: str, study_name: str, output_dir: str, n_trials: int) -> None:
        """Tell the launcher which study this worker runs (a file only the user can read: the URL may hold a
        password)."""
        path = os.path.join(self.launch_dir, f"worker-{self.worker}.json")
        record = {
            "storage": storage,
            "study_name": study_name,
            "output_dir": os.path.abspath(output_dir),
            "n_trials": n_trials,
            "pid": os.getpid(),
            "host": socket.gethostname(),
        }
        tmp = f"{path}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(record, f)
        os.replace(tmp, path)


def launch_env() -> LaunchEnv | None:
    if not os.environ.get(ENV_LAUNCH_DIR):
        return None
    return LaunchEnv(
        worker=int(os.environ.get(ENV_WORKER, "0")),
        workers=int(os.environ.get(ENV_WORKERS, "1")),
        launch_dir=os.environ[ENV_LAUNCH_DIR],
        storage=os.environ.get(ENV_STORAGE) or None,
    )


__all__ = ["ENV_LAUNCH_DIR", "ENV_STORAGE", "ENV_WORKER", "ENV_WORKERS", "JOURNAL_NAME", "LaunchEnv", "launch_env"]
