"""`optuna-trainer workers N -- <command>`: N copies of a training command on one shared study, on one machine.

    optuna-trainer workers 4 -- python train.py config.yaml
    optuna-trainer workers 2 --devices-per-worker 2 -- accelerate launch --num_processes 2 train.py config.yaml
    optuna-trainer workers 8 --storage postgresql+psycopg://user@db/optuna -- python train.py config.yaml

Each worker is the user's own command, unchanged, with an environment that the search reads (`LaunchEnv`):

- storage: the `--storage` given here; else the command's own `storage`; else, instead of the single-run default
  (an SQLite file), a journal file `output_dir/optuna_journal.log`, which takes concurrent writers;
- devices: `CUDA_VISIBLE_DEVICES` with K devices each (packed round-robin when N x K exceeds the devices); on CPU,
  `OMP_NUM_THREADS` so that N x threads <= cores; a port of its own for a worker that is itself `accelerate launch`
  or `torchrun` of K processes (`MASTER_PORT`, `PET_MASTER_PORT`);
- output: every trial has its own run folder already (`run-<number>`); `best_model/` is written under a file lock by
  whichever worker has the best trial (search.py); the workers print no report and no progress bar: this command
  prints their lines prefixed by `[worker i]`, shows one bar over the whole study and writes the report once.

A worker that dies is reported, its running trial is marked FAIL and queued again with its parameters (continued from
its checkpoint by whichever worker takes it), and the worker is started again. Ctrl-C is passed to every worker (each
marks its running trial FAIL and leaves), so the study is left consistent and the same command continues it. The
command exits once every worker has left: 0 when the study holds its `n_trials` finished trials (or a stop rule
ended it), 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import IO, Any

import optuna
from optuna.trial import TrialState

logger = logging.getLogger(__name__)

ENV_WORKER = "OPTUNA_TRAINER_WORKER"
ENV_WORKERS = "OPTUNA_TRAINER_WORKERS"
ENV_LAUNCH_DIR = "OPTUNA_TRAINER_LAUNCH_DIR"
ENV_STORAGE = "OPTUNA_TRAINER_STORAGE"
JOURNAL_NAME = "optuna_journal.log"
MAX_RESTARTS = 3  # per worker slot: a command that dies at once every time is not retried forever
STOP_GRACE = 60.0  # seconds the workers get to leave after Ctrl-C before they are killed


# ---- the worker's side -------------------------------------------------------------------------------------------


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


# ---- the launcher ------------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def with_port(command: list[str], port: int) -> list[str]:
    """The command with a rendezvous port of its own where it is an `accelerate launch` that names none.

    torchrun reads `PET_MASTER_PORT`; `accelerate launch` reads no variable and defaults to 29500, so that two
    workers of K processes each would collide: its `--main_process_port` is added to the command instead.
    """
    if any(arg == "--main_process_port" or arg.startswith("--main_process_port=") for arg in command):
        return command
    for i, arg in enumerate(command[:-1]):
        accelerate = os.path.basename(arg) == "accelerate" and command[i + 1] == "launch"
        if accelerate or (arg == "accelerate.commands.launch" and i > 0 and command[i - 1] == "-m"):
            at = i + 2 if accelerate else i + 1
            return [*command[:at], "--main_process_port", str(port), *command[at:]]
    return command


def visible_devices() -> list[str]:
    """The GPUs this machine shows (`CUDA_VISIBLE_DEVICES` when set), as the ids to hand out."""
    given = os.environ.get("CUDA_VISIBLE_DEVICES")
    if given is not None:
        return [d for d in given.split(",") if d.strip() and d.strip() != "-1"]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001 - no torch or no CUDA: a CPU machine
        return []


def split_devices(n_workers: int, per_worker: int, devices: list[str]) -> list[list[str]]:
    """K devices for each worker, round-robin: with more workers than devices they share (packed)."""
    if not devices or per_worker == 0:
        return [[] for _ in range(n_workers)]
    return [[devices[(i * per_worker + j) % len(devices)] for j in range(per_worker)] for i in range(n_workers)]


def cpu_threads(n_workers: int, processes_per_worker: int = 1) -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, n_workers * processes_per_worker))


@dataclass
class Worker:
    index: int
    devices: list[str]
    env: dict[str, str]
    command: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    last_code: int | None = None
    pids: set[int] = field(default_factory=set)  # the search processes it announced (rank 0 of each run)
    reader: threading.Thread | None = None


class Launcher:
    """Starts, watches and stops the workers of one study."""

    def __init__(
        self,
        command: list[str],
        n_workers: int,
        devices_per_worker: int | None = None,
        storage: str | None = None,
        out: IO[str] | None = None,
        progress: bool = True,
    ) -> None:
        if n_workers < 1:
            raise ValueError(f"workers: N must be at least 1, got {n_workers}")
        if not command:
            raise ValueError("workers: give the training command after --, e.g. -- python train.py config.yaml")
        self.command = command
        self.n_workers = n_workers
        self.storage = storage
        self.out = out or sys.stdout
        self.progress = progress
        self.launch_dir = tempfile.mkdtemp(prefix="optuna-trainer-workers-")
        devices = visible_devices()
        per_worker = devices_per_worker if devices_per_worker is not None else (1 if devices else 0)
        if per_worker < 0:
            raise ValueError(f"--devices-per-worker: must be 0 or more, got {per_worker}")
        if devices_per_worker and not devices:
            raise ValueError(f"--devices-per-worker {devices_per_worker}: this machine shows no CUDA device")
        self.packed = bool(devices) and n_workers * per_worker > len(devices)
        threads = cpu_threads(n_workers, max(1, per_worker))
        self.workers = []
        for i, worker_devices in enumerate(split_devices(n_workers, per_worker, devices)):
            env = dict(os.environ)
            port = str(_free_port())
            env.update(
                {
                    ENV_WORKER: str(i),
                    ENV_WORKERS: str(n_workers),
                    ENV_LAUNCH_DIR: self.launch_dir,
                    # A worker that is itself `accelerate launch` / `torchrun` of K processes: its own rendezvous.
                    "MASTER_PORT": port,
                    "PET_MASTER_PORT": port,
                    # Every bar of the worker (trials, steps) off: this command shows one bar for the study.
                    "TQDM_DISABLE": "1",
                    "PYTHONUNBUFFERED": "1",
                }
            )
            if storage:
                env[ENV_STORAGE] = storage
            if devices:
                env["CUDA_VISIBLE_DEVICES"] = ",".join(worker_devices)
            else:
                env.setdefault("OMP_NUM_THREADS", str(threads))
                env.setdefault("MKL_NUM_THREADS", env["OMP_NUM_THREADS"])
            self.workers.append(Worker(i, worker_devices, env, command=with_port(command, int(port))))
        self.threads = threads
        self.devices = devices
        self.stopping = False
        self._lock = threading.Lock()
        self.study: optuna.Study | None = None
        self.record: dict[str, Any] | None = None

    # ---- output ------------------------------------------------------------------------------------------------

    def say(self, line: str) -> None:
        with self._lock:
            if self._bar is not None:
                self._bar.write(line, file=self.out)
            else:
                print(line, file=self.out, flush=True)

    _bar: Any = None

    def _pump(self, worker: Worker, stream: IO[bytes]) -> None:
        prefix = f"[worker {worker.index}] "
        for raw in iter(stream.readline, b""):
            # A bar that escaped TQDM_DISABLE redraws with \r: keep its last state only.
            text = raw.decode("utf-8", errors="replace").rstrip("\n").split("\r")[-1]
            if text.strip():
                self.say(prefix + text)
        stream.close()

    # ---- workers -----------------------------------------------------------------------------------------------

    def start(self, worker: Worker) -> None:
        worker.proc = subprocess.Popen(
            worker.command,
            env=worker.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: Ctrl-C and kills reach every process of it
        )
        worker.reader = threading.Thread(target=self._pump, args=(worker, worker.proc.stdout), daemon=True)
        worker.reader.start()

    def describe(self) -> str:
        where = (
            f"devices {[w.devices for w in self.workers]}"
            + (" (packed: workers share devices)" if self.packed else "")
            if self.devices
            else f"CPU, {self.threads} thread(s) each"
        )
        storage = "the --storage given" if self.storage else "the command's storage (default: a journal file)"
        return f"{self.n_workers} worker(s) of {shlex.join(self.command)!r} on {where}; study in {storage}"

    def _read_record(self) -> None:
        """The study the workers announced (the first one that did), and each worker's search pids."""
        for worker in self.workers:
            path = os.path.join(self.launch_dir, f"worker-{worker.index}.json")
            try:
                with open(path, encoding="utf-8") as f:
                    record = json.load(f)
            except (OSError, ValueError):
                continue
            worker.pids.add(int(record["pid"]))
            if self.record is None:
                self.record = record
        if self.study is None and self.record is not None:
            from .storage import resolve_storage

            storage, description = resolve_storage(self.record["storage"], output_dir=self.record["output_dir"])
            if storage is None:
                raise RuntimeError(f"workers: the study's storage {description} cannot be shared")
            self.study = optuna.load_study(study_name=self.record["study_name"], storage=storage)

    def finished(self) -> int:
        if self.study is None:
            return 0
        return len(self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))

    def waiting(self) -> int:
        if self.study is None:
            return 0
        return len(self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))

    def requeue_trials_of(self, worker: Worker) -> list[int]:
        """Mark the RUNNING trials of a dead worker FAIL and queue each again with its parameters."""
        self._read_record()
        if self.study is None:
            return []
        from .storage import MAX_RETRY

        owners = {f"{socket.gethostname()}:{pid}" for pid in worker.pids}
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)
        numbers = []
        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if trial.user_attrs.get("worker") not in owners:
                continue
            # What a heartbeat storage does for a stale trial, done at once (a journal file has no heartbeat).
            self.study.tell(trial.number, state=TrialState.FAIL)
            retry(self.study, self.study.get_trials(deepcopy=False)[trial.number])
            numbers.append(trial.number)
        return numbers

    # ---- the run -----------------------------------------------------------------------------------------------

    def run(self) -> int:
        self.say(f"optuna-trainer workers: {self.describe()}")
        previous = signal.signal(signal.SIGINT, self._interrupt)
        try:
            for worker in self.workers:
                self.start(worker)
            return self._watch()
        finally:
            signal.signal(signal.SIGINT, previous)
            if self._bar is not None:
                self._bar.close()
            import shutil

            shutil.rmtree(self.launch_dir, ignore_errors=True)

    def _interrupt(self, signum: int, frame: Any) -> None:
        if self.stopping:
            return
        self.stopping = True
        self.say(
            "Interrupted: stopping every worker (each marks its running trial FAIL; run the command again to continue)"
        )
        for worker in self.workers:
            if worker.proc is not None and worker.proc.poll() is None:
                try:
                    os.killpg(worker.proc.pid, signal.SIGINT)
                except ProcessLookupError:
                    pass

    def _watch(self) -> int:
        stop_deadline: float | None = None
        while True:
            self._read_record()
            self._show_progress()
            alive = [w for w in self.workers if w.proc is not None and w.proc.poll() is None]
            for worker in self.workers:
                proc = worker.proc
                if proc is None or proc.poll() is None:
                    continue
                code = proc.returncode
                worker.last_code = code
                if worker.reader is not None:
                    worker.reader.join(timeout=5)
                worker.proc = None
                if self.stopping:
                    continue
                if code != 0:
                    numbers = self.requeue_trials_of(worker)
                    what = f"signal {-code}" if code < 0 else f"exit code {code}"
                    again = f"; trial(s) {numbers} marked FAIL and queued again" if numbers else ""
                    self.say(f"[launcher] worker {worker.index} died ({what}){again}")
                    if worker.restarts < MAX_RESTARTS and not self._done():
                        worker.restarts += 1
                        self.say(f"[launcher] worker {worker.index} started again ({worker.restarts}/{MAX_RESTARTS})")
                        self.start(worker)
                        alive.append(worker)
            if self.stopping:
                if stop_deadline is None:
                    stop_deadline = time.monotonic() + STOP_GRACE
                if not alive:
                    return 130
                if time.monotonic() > stop_deadline:
                    for worker in alive:
                        assert worker.proc is not None
                        os.killpg(worker.proc.pid, signal.SIGKILL)
                        self.requeue_trials_of(worker)
                time.sleep(0.2)
                continue
            if not alive:
                # Every worker left. Trials queued again after a death that no worker took: one more round.
                if not self._done() and self.waiting() and any(w.restarts < MAX_RESTARTS for w in self.workers):
                    for worker in self.workers:
                        if worker.restarts < MAX_RESTARTS:
                            worker.restarts += 1
                            self.start(worker)
                            break
                    continue
                return self._finish()
            time.sleep(0.5)

    def _done(self) -> bool:
        record = self.record
        return record is not None and self.finished() >= int(record["n_trials"])

    def _show_progress(self) -> None:
        """One bar over the study's finished trials on a terminal; one line per change in a log."""
        if not self.progress or self.record is None:
            return
        done, total = self.finished(), int(self.record["n_trials"])
        if not getattr(self.out, "isatty", lambda: False)():
            if done != self._shown:
                self._shown = done
                self.say(f"[launcher] {done}/{total} trials finished")
            return
        if self._bar is None:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc="trials", file=self.out, dynamic_ncols=True)
        if done != self._bar.n:
            self._bar.n = min(done, total)
            self._bar.refresh()

    _shown = -1

    def _finish(self) -> int:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self.study is None or self.record is None:
            self.say("[launcher] no worker started a search (see the workers' output above)")
            return 1
        from .report import write_report

        write_report(self.study, self.record["output_dir"], storage_url=self.record["storage"])
        n_trials = int(self.record["n_trials"])
        done = self.finished()
        if done < n_trials:
            self.say(f"[launcher] study {self.study.study_name!r}: {done} of n_trials={n_trials} finished")
        # A stop rule, a timeout or an exhausted grid ends a search early with every worker leaving normally.
        return 0 if done >= n_trials or all(w.last_code == 0 for w in self.workers) else 1


def main(argv: list[str]) -> int:
    if "--" in argv:
        split = argv.index("--")
        own, command = argv[:split], argv[split + 1 :]
    else:
        own, command = argv, []
    parser = argparse.ArgumentParser(
        prog="optuna-trainer workers",
        description="Run N copies of a training command on one shared study (one machine).",
        epilog="example: optuna-trainer workers 4 -- python train.py config.yaml",
    )
    parser.add_argument("n_workers", type=int, help="number of workers")
    parser.add_argument(
        "--devices-per-worker",
        type=int,
        default=None,
        help="GPUs per worker, handed out through CUDA_VISIBLE_DEVICES (default 1 where there are GPUs; packed "
        "round-robin when workers x K exceed them); a worker of K processes is an `accelerate launch`",
    )
    parser.add_argument(
        "--storage",
        default=None,
        help="the study's storage for every worker (e.g. postgresql+psycopg://...); default: the command's own "
        "storage, else a journal file optuna_journal.log under its output_dir",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(own)
    if not command:
        parser.error("give the training command after --, e.g. -- python train.py config.yaml")
    try:
        launcher = Launcher(
            command, args.n_workers, args.devices_per_worker, args.storage, progress=not args.no_progress
        )
    except ValueError as err:
        parser.error(str(err))
    return launcher.run()


__all__ = ["LaunchEnv", "Launcher", "launch_env", "main", "split_devices", "with_port"]
