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
  whichever worker has the best trial (search/search.py); the workers print no report and no progress bar: this command
  prints their lines prefixed by `[worker i]`, shows one bar over the whole study and writes the report once.

A worker that dies is reported, its running trial is marked FAIL and queued again with its parameters (continued from
its checkpoint by whichever worker takes it), and the worker is started again. Ctrl-C is passed to every worker (each
marks its running trial FAIL, queues it again and leaves), so the study is left consistent and the same command
continues it; SIGTERM (what Slurm, Kubernetes and spot preemption send) is handled the same way and passed on as
SIGTERM, which the search turns into the same interrupt (processes/signals.py). The launcher keeps reading the workers'
output until every process of every worker has left (a worker writing to a closed pipe would fail its trial with a
`BrokenPipeError` instead), and queues again any trial a worker left RUNNING. The command exits once every worker has
left: 0 when the study holds its `n_trials` finished trials (or a stop rule ended it), 1 otherwise, 130 after Ctrl-C,
143 after SIGTERM; 127 when the command does not exist.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import shutil
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

from optuna_trainer.processes.worker_env import (
    ENV_LAUNCH_DIR,
    ENV_STORAGE,
    ENV_WORKER,
    ENV_WORKERS,
)
from optuna_trainer.study.attrs import read
from optuna_trainer.study.bookkeeping import count_finished, requeue

logger = logging.getLogger(__name__)

MAX_RESTARTS = 3  # per worker slot: a command that dies at once every time is not retried forever
STOP_GRACE = 60.0  # seconds the workers get to leave after Ctrl-C before they are killed
# After the kill at the end of STOP_GRACE: how long to wait for the killed groups to be gone (a zombie that nobody
# reaps, in a container without an init, would otherwise keep the launcher waiting forever).
KILL_GRACE = 10.0
# Exit codes as shells report them: 128 + the signal that stopped the launcher; 126/127 for a command that cannot run.
EXIT_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143}
EXIT_NOT_EXECUTABLE = 126
EXIT_NOT_FOUND = 127


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


def available_cores() -> int:
    """The cores this process may run on (its affinity mask: what Slurm and containers grant, not the machine's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def cpu_threads(n_workers: int, processes_per_worker: int = 1) -> int:
    return max(1, available_cores() // max(1, n_workers * processes_per_worker))


class CommandError(ValueError):
    """The worker command cannot be started (not found, or not executable); `exit_code` as a shell would give."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def check_command(command: list[str]) -> None:
    """Raise `CommandError` naming the program when `command[0]` cannot be run, before any worker is started."""
    program = command[0]
    if shutil.which(program) is not None:
        return
    if os.sep in program and os.path.exists(program):
        raise CommandError(
            f"workers: {program!r} is not an executable file; make it executable (chmod +x) or run it with its "
            "interpreter, e.g. -- python train.py",
            EXIT_NOT_EXECUTABLE,
        )
    where = "no such file" if os.sep in program else "not found on PATH"
    raise CommandError(
        f"workers: command {program!r} {where}; check the command after --, e.g. -- python train.py config.yaml",
        EXIT_NOT_FOUND,
    )


def _group_alive(pgid: int) -> bool:
    """Whether any process of the process group `pgid` is left (a worker's children may outlive its first process)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a process of the group that is not ours any more: it exists
        return True
    return True


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
    pgid: int | None = None  # its process group (its own session), kept after its first process has exited


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
        check_command(command)
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
        self.cores = available_cores()
        self.stopping = False
        self.stop_signal: int | None = None  # the signal that stopped the launcher (SIGINT or SIGTERM)
        # Reentrant: the signal handler says a line on the main thread, which may be inside say() already.
        self._lock = threading.RLock()
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
        try:
            worker.proc = subprocess.Popen(
                worker.command,
                env=worker.env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: Ctrl-C and kills reach every process of it
            )
        except OSError as err:  # checked at start; removed or made unreadable since
            worker.proc, worker.last_code = None, EXIT_NOT_FOUND
            self.say(f"[launcher] worker {worker.index}: cannot start {worker.command[0]!r}: {err.strerror}")
            return
        worker.pgid = worker.proc.pid  # a new session's process group has the id of its first process
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

    def oversubscribed(self) -> str | None:
        """A warning when the CPU workers' threads exceed the cores (None when they fit, or on GPUs)."""
        if self.devices:
            return None  # GPU workers: "packed" in describe() says when they share devices
        try:
            threads = max(1, int(self.workers[0].env["OMP_NUM_THREADS"]))  # the user's own value when set
        except (KeyError, ValueError):
            threads = self.threads
        if self.n_workers * threads <= self.cores:
            return None
        return (
            f"[launcher] warning: {self.n_workers} workers x {threads} thread(s) each = {self.n_workers * threads} "
            f"threads on {self.cores} core(s): the workers compete for the cores and each trial runs slower; "
            f"use at most {max(1, self.cores // threads)} worker(s) here"
        )

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
            from optuna_trainer.study.storage import resolve_storage

            storage, description = resolve_storage(self.record["storage"], output_dir=self.record["output_dir"])
            if storage is None:
                raise RuntimeError(f"workers: the study's storage {description} cannot be shared")
            self.study = optuna.load_study(study_name=self.record["study_name"], storage=storage)

    def finished(self) -> int:
        if self.study is None:
            return 0
        return count_finished(self.study)

    def waiting(self) -> int:
        if self.study is None:
            return 0
        return len(self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))

    def requeue_trials_of(self, worker: Worker) -> list[int]:
        """Mark the RUNNING trials of a dead worker FAIL and queue each again with its parameters."""
        self._read_record()
        if self.study is None:
            return []
        owners = {f"{socket.gethostname()}:{pid}" for pid in worker.pids}
        numbers = []
        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if read(trial).get("worker") not in owners:
                continue
            # What a heartbeat storage does for a stale trial, done at once (a journal file has no heartbeat).
            requeue(self.study, trial.number, fail=True)
            numbers.append(trial.number)
        return numbers

    # ---- the run -----------------------------------------------------------------------------------------------

    def run(self) -> int:
        self.say(f"optuna-trainer workers: {self.describe()}")
        warning = self.oversubscribed()
        if warning:
            self.say(warning)
        previous = {signum: signal.signal(signum, self._interrupt) for signum in EXIT_SIGNAL}
        try:
            for worker in self.workers:
                if not self.stopping:  # a signal during the start: the ones not started yet stay so
                    self.start(worker)
            return self._watch()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            if self._bar is not None:
                self._bar.close()
            shutil.rmtree(self.launch_dir, ignore_errors=True)

    def _interrupt(self, signum: int, frame: Any) -> None:
        """SIGINT or SIGTERM: pass it on to every process of every worker, and keep watching them until they leave.

        SIGTERM is passed on as SIGTERM: a cluster that stops a job sends it to every process of it as well, and the
        search takes a second SIGTERM as the same request (processes/signals.py), where a SIGTERM and a SIGINT would be
        two."""
        if self.stopping:
            return
        self.stopping = True
        self.stop_signal = signum
        name = "Interrupted" if signum == signal.SIGINT else signal.Signals(signum).name
        self.say(
            f"{name}: stopping every worker (each marks its running trial FAIL and queues it again; run the command "
            "again to continue)"
        )
        for worker in self.workers:
            if worker.proc is not None and worker.proc.poll() is None:
                try:
                    os.killpg(worker.proc.pid, signum)
                except ProcessLookupError:
                    pass

    def _watch(self) -> int:
        stop_deadline: float | None = None
        swept: set[int] = set()  # workers whose left-over RUNNING trials were queued again after the stop
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
                now = time.monotonic()
                # A worker has left once every process of its group has: its first process may be a shell or an
                # `accelerate launch` that exits before the search process under it is done queueing its trial.
                running = {w.index for w in alive}
                lingering = [
                    w for w in self.workers if w.index not in running and w.pgid is not None and _group_alive(w.pgid)
                ]
                for worker in self.workers:
                    if worker.index in running or worker in lingering or worker.index in swept:
                        continue
                    swept.add(worker.index)
                    numbers = self.requeue_trials_of(worker)  # none when the search left as on Ctrl-C
                    if numbers:
                        self.say(
                            f"[launcher] worker {worker.index} left trial(s) {numbers}: marked FAIL, queued again"
                        )
                if (not alive and not lingering) or now > stop_deadline + KILL_GRACE:
                    for worker in self.workers:
                        if worker.index not in swept:  # killed and not gone yet: nothing will finish its trial
                            self.requeue_trials_of(worker)
                        if worker.reader is not None:
                            worker.reader.join(timeout=5)  # the workers' last lines, up to their pipes' end
                    return EXIT_SIGNAL.get(signal.Signals(self.stop_signal or signal.SIGINT), 130)
                if now > stop_deadline:
                    for worker in [*alive, *lingering]:
                        assert worker.pgid is not None
                        try:
                            os.killpg(worker.pgid, signal.SIGKILL)
                        except ProcessLookupError:
                            pass
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
        from optuna_trainer.output.report import write_report

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
    except CommandError as err:
        # One line, as a shell says it: a usage text or a traceback would bury the name that is wrong.
        print(f"optuna-trainer {err}", file=sys.stderr)
        return err.exit_code
    except ValueError as err:
        parser.error(str(err))
    return launcher.run()


__all__ = [
    "CommandError",
    "Launcher",
    "check_command",
    "main",
    "split_devices",
    "with_port",
]
