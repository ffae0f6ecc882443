from __future__ import annotations

import os
from collections.abc import Iterator

import optuna
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")


# The kinds of tests the quick tier (`pytest -m "not slow"`) leaves out: a test is marked by what it is, and is slow
# because of it (setup.cfg declares each marker).
SLOW_KINDS = ("distributed", "processes", "services", "benchmark", "data")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if any(item.get_closest_marker(kind) is not None for kind in SLOW_KINDS):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _optuna_verbosity() -> Iterator[None]:
    # Benchmarks and probes lower Optuna's verbosity in-process; a test that reads Optuna's log (a failed trial's
    # traceback) must not depend on which test ran before it.
    verbosity = optuna.logging.get_verbosity()
    yield
    optuna.logging.set_verbosity(verbosity)


@pytest.fixture
def out_dir(tmp_path):
    path = tmp_path / "out"
    path.mkdir()
    return path
