"""A finished trial's host memory goes back to the operating system (optuna_trainer/memory.py)."""

from __future__ import annotations

import os

import pytest

import optuna_trainer.training.memory as memory_module
from optuna_trainer.training.memory import release_host_memory
from tests.test_trainer import LR_SPACE, SeenArgs, make_trainer


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads the resident size from /proc (Linux)")
def test_freed_heap_pages_are_returned():
    if not release_host_memory():
        pytest.skip("this C library has no malloc_trim (not glibc)")
    # 200 MiB in 100 KiB blocks (below glibc's mmap threshold, so on the heap); the last block stays alive and pins
    # the top of the heap, so free() alone cannot shrink it: the freed pages stay resident until trimmed.
    blocks = [bytearray(100 * 1024) for _ in range(2048)]
    for block in blocks:
        block[::4096] = b"\x01" * len(block[::4096])  # touch every page
    keep = blocks[-1]
    del blocks
    before = rss_mib()
    assert release_host_memory() is True
    after = rss_mib()
    assert before - after > 100, (before, after)
    assert keep[0] == 1


def test_each_trial_returns_its_memory_after_dropping_its_model(out_dir, monkeypatch):
    seen = SeenArgs()
    calls: list[bool] = []  # per call: was the trial's model already freed?
    monkeypatch.setattr(memory_module, "release_host_memory", lambda: calls.append(seen.models[-1]() is None))
    trainer = make_trainer(out_dir, callbacks=[seen], hp_space=LR_SPACE, pruner="none", n_trials=3)
    trainer.hyperparameter_search()
    assert calls == [True, True, True]
