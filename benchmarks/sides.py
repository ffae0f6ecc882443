"""The command line of the benchmarks, and each side of a side-by-side benchmark run in a fresh interpreter (so that
its peak resident memory is its own) under a hard timeout."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

from measure import loadavg
from tables import DEFAULT_OUT
from tasks import DEFAULT_DATA

from tests.support import kill_process_tree


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--out", default=DEFAULT_OUT, help="folder for the .md/.json tables (default benchmarks/results/)")
    p.add_argument("--quick", action="store_true", help="CI-sized smoke run (seconds): tiny model, few steps")
    p.add_argument("--data", default=DEFAULT_DATA, help="folder with SST-2 train.tsv/dev.tsv (fallback: generated)")
    p.add_argument("--model", choices=["minilm", "small-bert", "tiny-bert"], default=None, help="override the model")
    p.add_argument("--side", default=None, help=argparse.SUPPRESS)  # internal: run one side in this process
    p.add_argument("--side-out", default=None, help=argparse.SUPPRESS)
    return p


def quiet() -> None:
    """Keep the benchmarks' output to the tables: transformers/optuna INFO lines go to stderr at WARNING."""
    import optuna
    import transformers

    transformers.logging.set_verbosity_error()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("optuna_trainer").setLevel(logging.WARNING)


def run_both_sides(script: str, a: argparse.Namespace, timeout: float = 900) -> dict[str, dict]:
    """Run the "ours" and "transformers" sides of `script` each in a fresh process, with the parsed options `a`."""
    passthrough = [*(["--quick"] if a.quick else []), "--data", a.data, *(["--model", a.model] if a.model else [])]
    return {
        name: run_side(os.path.abspath(script), name, passthrough, timeout=timeout)
        for name in ("ours", "transformers")
    }


def two_sides(
    script: str,
    doc: str,
    settings: Callable[[bool, str | None], dict[str, Any]],
    side: Callable[[str, dict[str, Any], str], dict[str, Any]],
    argv: list[str] | None,
) -> tuple[argparse.Namespace, dict[str, Any], dict[str, dict], str, str] | None:
    """The command line of a two-sided benchmark: with --side, run that side here and return None; otherwise run
    both sides in fresh interpreters and return (options, settings, results per side, load before, load after)."""
    a = parser(doc.splitlines()[0]).parse_args(argv)
    s = settings(a.quick, a.model)
    if a.side:
        write_side(a.side_out, side(a.side, s, a.data))
        return None
    load_before = loadavg()
    results = run_both_sides(script, a)
    return a, s, results, load_before, loadavg()


def run_side(
    script: str,
    side: str,
    argv: Sequence[str],
    timeout: float,
    env: dict[str, str] | None = None,
    while_running: Callable[[int], AbstractContextManager[Any]] | None = None,
) -> dict:
    """Run `script --side side` in a fresh interpreter (its own peak RSS), return what it wrote as JSON.

    `while_running(pid)`: a context manager held while the side runs (figure 16 samples the process tree's memory)."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        side_out = f.name
    cmd = [sys.executable, script, "--side", side, "--side-out", side_out, *argv]
    proc = subprocess.Popen(cmd, env={**os.environ, **(env or {})}, start_new_session=True)
    try:
        with while_running(proc.pid) if while_running is not None else contextlib.nullcontext():
            rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_process_tree(proc)
        raise RuntimeError(f"side {side!r} did not finish within {timeout:.0f} s: {' '.join(cmd)}") from None
    if rc != 0:
        raise RuntimeError(f"side {side!r} exited with {rc}: {' '.join(cmd)}")
    with open(side_out, encoding="utf-8") as f:
        result = json.load(f)
    os.unlink(side_out)
    return result


def write_side(path: str, result: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(result, f, default=float)
