"""Test support shared by the project's tests and benchmarks (as `transformers.testing_utils` is for transformers).

What is here, by concern:
    models and data: `tiny_config`, `tiny_model`, `make_dataset`, `compute_metrics`, `base_args` -- a one-layer BERT
        built from a config and a learnable synthetic task, so that a trial trains in well under a second on a CPU;
    recording: `RecordingPruner` (which trials a pruner pruned), `TrialRecorder` (steps and evaluations per trial),
        `capture_logs` (what the package logger said, whatever stream its handler holds);
    services: `require_service` (skip, or fail under OPTUNA_TRAINER_REQUIRE_SERVICES=1, where a server does not answer),
        `s3_server` (moto's S3 server, started for a test);
    processes: `kill_process_tree` (the one process-tree killer), `start_worker` / `wait_all` / `wait_for_file`
        (search workers as subprocesses under a hard wall-clock bound: a test fails, it never hangs).

Nothing here downloads anything, and nothing here is imported by the library itself. `pytest` is imported only by
`require_service`, so the benchmarks run without it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna
from transformers import TrainerCallback

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import BertConfig, BertForSequenceClassification

VOCAB = 64
SEQ_LEN = 8

# ---- models and data -------------------------------------------------------------------------------------------


def tiny_config(**overrides: Any) -> BertConfig:
    """A one-layer BERT configuration (hidden 16) for two labels; `overrides` replace any of its values."""
    from transformers import BertConfig

    values: dict[str, Any] = dict(
        vocab_size=VOCAB,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=SEQ_LEN + 2,
        num_labels=2,
    )
    values.update(overrides)
    return BertConfig(**values)


def tiny_model(trial: Any = None) -> BertForSequenceClassification:
    """A `model_init` with transformers' signature: a fresh `tiny_config()` BERT, randomly initialised."""
    from transformers import BertForSequenceClassification

    return BertForSequenceClassification(tiny_config())


class CountingModelInit:
    """`tiny_model`, counting the models it builds (`built`): the trainer's own call at construction, then one per
    trial that trains."""

    def __init__(self) -> None:
        self.built = 0

    def __call__(self, trial: Any = None) -> BertForSequenceClassification:
        self.built += 1
        return tiny_model(trial)


def make_dataset(n: int = 64, seed: int = 0) -> Dataset:
    """Label 1 iff the first token is in the upper half of the vocabulary: learnable in a few steps."""
    from datasets import Dataset

    rng = np.random.default_rng(seed)
    ids = rng.integers(4, VOCAB, size=(n, SEQ_LEN))
    labels = (ids[:, 0] >= VOCAB // 2 + 2).astype(np.int64)
    return Dataset.from_dict(
        {"input_ids": ids.tolist(), "attention_mask": np.ones_like(ids).tolist(), "labels": labels.tolist()}
    )


def compute_metrics(pred: Any) -> dict[str, float]:
    """Accuracy of the arg-max prediction (transformers' `EvalPrediction`)."""
    return {"accuracy": float((pred.predictions.argmax(-1) == pred.label_ids).mean())}


def base_args(output_dir: str | os.PathLike[str], **overrides: Any) -> dict[str, Any]:
    """Arguments for a CPU run of a few steps, evaluated often, with no files beyond what a test asks for."""
    values: dict[str, Any] = dict(
        output_dir=str(output_dir),
        use_cpu=True,
        report_to="none",
        disable_tqdm=True,
        max_steps=8,
        per_device_train_batch_size=8,
        per_device_eval_batch_size=32,
        eval_strategy="steps",
        eval_steps=2,
        logging_steps=2,
        save_strategy="no",
        learning_rate=1e-3,
        storage="memory",
        n_trials=3,
        seed=0,
    )
    values.update(overrides)
    return values


# ---- recording -------------------------------------------------------------------------------------------------


def weights_hash(model: Any, names: Callable[[str], bool] | None = None) -> str:
    """A sha256 over the model's state dict (every tensor's bytes, as float32, in order), or over the entries whose
    name `names` accepts: equal hashes mean bit-identical weights."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        if names is None or names(name):
            digest.update(name.encode())
            digest.update(tensor.detach().to("cpu", torch.float32).numpy().tobytes())
    return digest.hexdigest()


class RecordingPruner(optuna.pruners.BasePruner):
    """`pruner`, wrapped so that it remembers which trials it pruned: transformers returns no study to read the
    states from, and a trial pruned at its last evaluation trained every step, so its step count cannot tell."""

    def __init__(self, pruner: optuna.pruners.BasePruner) -> None:
        self.pruner = pruner
        self.pruned: set[int] = set()

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        decision = self.pruner.prune(study, trial)
        if decision:
            self.pruned.add(trial.number)
        return decision


class TrialRecorder(TrainerCallback):
    """Records, per `train()` call (one per trial, whichever search runs it), the optimizer steps taken, every
    evaluation's accuracy and loss, and the values of `keys` as the trainer applied them to its arguments."""

    def __init__(self, keys: Sequence[str] = ()) -> None:
        self.keys = tuple(keys)
        self.trials: list[dict[str, Any]] = []

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        values = {k: getattr(args, k) for k in self.keys}
        self.trials.append({"steps": 0, "accuracy": [], "loss": [], "values": values})

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.trials[-1]["steps"] += 1

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: Any = None, **kwargs: Any) -> None:
        if self.trials and metrics and "eval_accuracy" in metrics:
            self.trials[-1]["accuracy"].append(float(metrics["eval_accuracy"]))
        if self.trials and metrics and "eval_loss" in metrics:
            self.trials[-1]["loss"].append(float(metrics["eval_loss"]))

    @property
    def steps(self) -> int:
        return sum(t["steps"] for t in self.trials)

    @property
    def best_accuracy(self) -> float:
        return max((a for t in self.trials for a in t["accuracy"]), default=float("nan"))


class LogCollector(logging.Handler):
    """The messages a `capture_logs` block collected; `text` joins them with newlines."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    @property
    def text(self) -> str:
        return "\n".join(self.messages)


@contextmanager
def capture_logs(*names: str, level: int = logging.INFO) -> Iterator[LogCollector]:
    """Collect the messages of the named loggers (default: the package's) and their children at `level` and above.

    A handler on the logger itself, not `caplog`: the package logger keeps a handler of its own and does not
    propagate, as transformers' does not."""
    handler = LogCollector()
    loggers = [logging.getLogger(n) for n in (names or ("optuna_trainer",))]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(level)
    try:
        yield handler
    finally:
        for lg, old in zip(loggers, levels, strict=True):
            lg.removeHandler(handler)
            lg.setLevel(old)


# ---- services --------------------------------------------------------------------------------------------------


def service_answers(host: str, port: int, timeout: float = 2.0) -> bool:
    """Whether a TCP server accepts a connection at host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def require_service(name: str, host: str, port: int) -> None:
    """Skip with a clear reason where the server does not answer; fail instead under OPTUNA_TRAINER_REQUIRE_SERVICES=1."""
    import pytest

    if service_answers(host, port):
        return
    reason = f"{name} does not answer at {host}:{port}"
    if os.environ.get("OPTUNA_TRAINER_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{reason}, and OPTUNA_TRAINER_REQUIRE_SERVICES=1 requires it")
    pytest.skip(reason)


def _unavailable(reason: str) -> None:
    import pytest

    if os.environ.get("OPTUNA_TRAINER_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{reason}, and OPTUNA_TRAINER_REQUIRE_SERVICES=1 requires it")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


S3_TEST_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@contextmanager
def s3_server(auth: bool = False) -> Iterator[dict[str, str]]:
    """moto's standalone S3 server (PyPI `moto[server]`) on a free 127.0.0.1 port, the tests' stand-in for S3; yields
    the AWS environment (endpoint, test credentials, region) that points boto3 at it. `auth`: the server checks
    credentials (moto's INITIAL_NO_AUTH_ACTION_COUNT=0), so that unknown keys are refused as S3 refuses them. Skips
    with the reason (fails under OPTUNA_TRAINER_REQUIRE_SERVICES=1) where the server cannot start."""
    try:
        import boto3  # noqa: F401
        import moto.server  # noqa: F401
    except ImportError as err:
        _unavailable(f"moto's S3 server cannot start: {err} (pip install 'moto[server]' boto3)")
    port = free_port()
    env = {**os.environ, **({"INITIAL_NO_AUTH_ACTION_COUNT": "0"} if auth else {})}
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not service_answers("127.0.0.1", port, timeout=0.5):
            if proc.poll() is not None or time.monotonic() > deadline:
                _unavailable(f"moto's S3 server did not answer on 127.0.0.1:{port} (exit code {proc.poll()})")
            time.sleep(0.2)
        yield {**S3_TEST_ENV, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    finally:
        kill_process_tree(proc)


# ---- processes -------------------------------------------------------------------------------------------------

REPO = Path(__file__).resolve().parent.parent

# What every subprocess of a test or benchmark runs with: one thread per process (2 cores are shared), nothing
# fetched from a hub.
QUIET_ENV = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
}


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (read from /proc before anything is killed: orphans lose their parent link)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_process_tree(proc: subprocess.Popen[Any], sig: int = signal.SIGKILL) -> None:
    """Send `sig` to `proc` (started with start_new_session=True), its process group and every descendant, then
    reap it: the launcher of `accelerate launch`/torchrun starts each worker in a session of its own, out of reach of
    the launcher's group."""
    for pid in [*_descendants(proc.pid), proc.pid]:
        for send in (os.killpg, os.kill):
            try:
                send(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
    if sig == signal.SIGKILL:
        proc.wait()


def accelerate_launch(num_processes: int = 2, port: int | None = None) -> list[str]:
    """`accelerate launch` of a CPU process group (gloo), as the multi-process tests run it: the script and its
    arguments follow."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes"]
    command += [str(num_processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    return command + (["--main_process_port", str(port)] if port is not None else [])


def run_bounded(command: list[str], bound_s: float, **popen: Any) -> tuple[int, str]:
    """Run `command` in a session of its own, its output captured; past `bound_s` seconds its whole process tree is
    killed and the test fails (a hang fails, it never blocks the suite). Returns (exit code, output)."""
    import pytest

    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True, **popen
    )
    try:
        output, _ = proc.communicate(timeout=bound_s)
    except subprocess.TimeoutExpired:
        kill_process_tree(proc)
        output, _ = proc.communicate()
        pytest.fail(f"{shlex.join(command)}: still running after {bound_s:.0f}s, killed (a hang)\n{output[-4000:]}")
    finally:
        if proc.poll() is None:  # interrupted: leave nothing running
            kill_process_tree(proc)
    return proc.returncode, output


def start_worker(
    spec: dict[str, Any],
    log: Path,
    module: str = "tests.support_worker",
    extra_env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start `python -m <module> '<spec as JSON>'` from the repository root in its own session, output to `log`;
    `extra_env` on top of the test's environment (another machine's TMPDIR, an S3 endpoint)."""
    env = {**os.environ, **QUIET_ENV, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.update(extra_env or {})
    with open(log, "wb") as out:  # the child holds its own descriptor
        return subprocess.Popen(
            [sys.executable, "-m", module, json.dumps(spec)],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def log_tail(log: Path, chars: int = 4000) -> str:
    return log.read_text(errors="replace")[-chars:] if log.exists() else "(no output)"


def wait_all(procs: list[tuple[subprocess.Popen[bytes], Path]], timeout: float) -> list[dict[str, Any]]:
    """Wait for every worker and return the JSON of each one's last `RESULT {...}` line; on a timeout or a non-zero
    exit kill them all and fail (AssertionError) with that worker's output."""
    deadline = time.monotonic() + timeout
    try:
        for proc, log in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise AssertionError(
                    f"worker {proc.pid} still running after {timeout} s; its output:\n{log_tail(log)}"
                ) from None
            if proc.returncode != 0:
                raise AssertionError(f"worker {proc.pid} exited with {proc.returncode}; its output:\n{log_tail(log)}")
    finally:
        for proc, _ in procs:
            if proc.poll() is None:
                kill_process_tree(proc)
    results = []
    for _, log in procs:
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.startswith("RESULT ")]
        assert lines, f"no RESULT line in:\n{log_tail(log)}"
        results.append(json.loads(lines[-1][len("RESULT ") :]))
    return results


def wait_for_file(path: Path, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    """Wait until `path` exists; fail (killing `proc`) if the worker exits or the time runs out first."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            kill_process_tree(proc)
            raise AssertionError(
                f"{path.name} not written (worker exit code {proc.returncode}); its output:\n{log_tail(log)}"
            )
        time.sleep(0.2)


# ---- trackers --------------------------------------------------------------------------------------------------


def read_wandb_offline_run(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Name, group, history rows, summary and exit code of an offline W&B run file (`run-<id>.wandb`).

    The file is W&B's transaction log: a 7-byte header (`:W&B`, magic, version), then LevelDB log records (32 KiB
    blocks; each record a 4-byte checksum, 2-byte length, 1-byte type: full, first, middle, last) holding
    `wandb_internal_pb2.Record` protobufs. wandb 0.31 has no Python reader of its own any more.
    """
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B run file")
    pos, block, chunks, pending = 7, 32768, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        if left < 7 or kind == 0:  # a block's zero-filled tail
            pos += left
            continue
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 1:
            chunks.append(chunk)
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            chunks.append(pending + chunk)
            pending = b""
    run: dict[str, Any] = {"history": [], "summary": {}, "exit_code": None}
    for raw in chunks:
        record = pb.Record()  # type: ignore[attr-defined]  # generated protobuf module
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run["name"], run["group"] = record.run.display_name, record.run.run_group
        elif kind == "history":
            run["history"].append(
                {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
            )
        elif kind == "summary":
            for item in record.summary.update:
                run["summary"][item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
        elif kind == "exit":
            run["exit_code"] = record.exit.exit_code
    return run
