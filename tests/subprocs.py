"""Search workers as subprocesses under a hard wall-clock bound: a test fails (and kills them), it never hangs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent


def start_worker(spec: dict[str, Any], log: Path) -> subprocess.Popen:
    """Start `python -m tests.search_worker <spec>` in its own process group, output to `log`."""
    env = dict(os.environ)
    env.update(
        PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""),
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
    )
    out = open(log, "wb")  # noqa: SIM115 - closed with the process
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "tests.search_worker", json.dumps(spec)],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    finally:
        out.close()


def kill(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-4000:] if log.exists() else "(no output)"


def wait_all(procs: list[tuple[subprocess.Popen, Path]], timeout: float) -> list[dict[str, Any]]:
    """Wait for every worker; on a timeout or a non-zero exit kill them all and fail with their output."""
    deadline = time.monotonic() + timeout
    try:
        for proc, log in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pytest.fail(f"worker {proc.pid} still running after {timeout} s; its output:\n{_tail(log)}")
            if proc.returncode != 0:
                pytest.fail(f"worker {proc.pid} exited with {proc.returncode}; its output:\n{_tail(log)}")
    finally:
        for proc, _ in procs:
            if proc.poll() is None:
                kill(proc)
                proc.wait(timeout=30)
    results = []
    for _, log in procs:
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.startswith("RESULT ")]
        assert lines, f"no RESULT line in:\n{_tail(log)}"
        results.append(json.loads(lines[-1][len("RESULT ") :]))
    return results


def wait_for_file(path: Path, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    """Wait until `path` exists; fail (killing `proc`) if the worker exits or the time runs out first."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            kill(proc)
            proc.wait(timeout=30)
            pytest.fail(f"{path.name} not written (worker exit code {proc.returncode}); its output:\n{_tail(log)}")
        time.sleep(0.2)
