"""How the processes of one search agree: the coordinator interface, and its one-process implementation.

A search runs the same code in one process and in N (`accelerate launch`, torchrun). Every point where the processes
must agree goes through a coordinator: preparing the search (an error on any process stops all of them), values only
the main process can compute (it alone reads the study), each pruning decision, each trial's outcome, and the result.
In one process every exchange is the identity (`LocalCoordinator`); under DDP `DistributedCoordinator`
(processes/distributed.py) makes each one collective.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import optuna

T = TypeVar("T")
Objective = Callable[[optuna.trial.BaseTrial], Any]
Drive = Callable[[optuna.Study, Objective], Any]


class StopRequest:
    """A request to start no new trial, made by the search itself (an interrupt, processes that lost each other).

    The loop also stops on `study.stop()` (search/loop.py: `stop_requested`); this is the search's own request, which
    the coordinator of several processes makes when no further trial can run.
    """

    def __init__(self) -> None:
        self.requested = False

    def request(self) -> None:
        self.requested = True


class Coordinator(Protocol):
    """What a search asks of the processes that run it.

    Attributes:
        is_main: whether this process owns the study (opens the storage, samples, reports, writes records).
        world_size: the number of processes training each trial.
    """

    is_main: bool
    world_size: int

    def setup(self, prepare: Callable[[], T]) -> T:
        """Run `prepare()` on every process; if it fails on any, raise that error on all of them."""
        ...

    def share(self, value: Any = None) -> Any:
        """The main process's `value` on every process."""
        ...

    def decide(self, outcome: Any) -> Any:
        """One evaluation's outcome (a stop reason, None, or an error) agreed by every process."""
        ...

    def optimize(self, study: optuna.Study | None, objective: Objective, *, drive: Drive, stop: StopRequest) -> None:
        """Run the trials: the main process drives the study (`drive(study, objective)`); the others follow it."""
        ...

    def finish_search(self, compute: Callable[[], T]) -> T:
        """The main process's `compute()` (or its error) on every process: the search's last exchange, after which
        the coordinator ends what it made for the search (its process groups)."""
        ...


class LocalCoordinator:
    """The coordinator of a search in one process: every exchange is the identity."""

    is_main = True
    world_size = 1

    def setup(self, prepare: Callable[[], T]) -> T:
        return prepare()

    def share(self, value: Any = None) -> Any:
        return value

    def decide(self, outcome: Any) -> Any:
        return outcome

    def optimize(self, study: optuna.Study | None, objective: Objective, *, drive: Drive, stop: StopRequest) -> None:
        assert study is not None  # the one process owns the study
        drive(study, objective)

    def finish_search(self, compute: Callable[[], T]) -> T:
        return compute()


__all__ = ["Coordinator", "LocalCoordinator", "StopRequest"]
