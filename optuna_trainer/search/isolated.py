"""Isolated trials (`isolate_trials=True`): each trial runs in a fresh child process that the search starts and waits
for, while the parent keeps the study and the Optuna trial.

Why: every trial of an in-process search shares one process, so memory fragmentation, a reference leaked by user code,
or a hard crash (a segfault in a kernel, `os.abort()`, the kernel's OOM killer) slows or ends the whole search. A child
process gives each trial a fresh heap and device context, and its death costs one trial.

How:
- the parent pickles a `TrialRecipe` once, before the study exists (`check_isolatable`): the trainer's class, the
  user's arguments, `model_init` or `model`, datasets, collator, processing class, `compute_metrics`, the user's
  callbacks, and the search call. What cannot be pickled (a lambda, a closure over a live model) is refused there,
  naming the field and the fix;
- each trial starts a child from `multiprocessing`'s *forkserver* (*spawn* where there is none), never by forking
  the search's process: CUDA contexts and OpenMP thread pools do not survive a fork. The fork server is a clean
  process that has imported torch, transformers and this package once (`_PRELOAD`) and initialized nothing, so a
  trial's process starts in a fraction of a second instead of importing them again (seconds). The child rebuilds the trainer, resolves the same settings against an in-memory
  storage, and runs the in-process code path (`Search.run_trial`: `TrialRun`, the best model, checkpoint deletion)
  on a `TrialProxy`, which forwards every call on the trial (`suggest_*`, `report`, `should_prune`, `set_user_attr`,
  `set_constraint`, `number`, `params`, ...) over a `Pipe` to the parent's real trial: any storage works, even an
  in-memory one, and the pruner decides in the parent as it would in-process;
- a trial that repeats a finished trial's parameters (`skip_duplicates`) trains nothing: the parent, which holds the
  study, records the repeat itself (`TrialRun.repeat_only`) and starts no child for it;
- the child sends back the objective's value or the exception it raised (TrialPruned, an out-of-memory error
  recorded infeasible, a failure), and the best value and run directory it knows of (it may have written best_model/
  under the best-model file lock);
- the search process shows the progress: a child draws no step bar of its own (it would fight the trials bar for the
  terminal) and, where no bar is drawn, logs its trial's start line; the end line is the search process's. A search
  stopped by Ctrl-C or SIGTERM ends its trial's process (and the fork server with it) and queues the trial again;
- a child that dies without answering (a signal, or a non-zero exit) makes the trial FAIL with the cause in
  `fail_reason` (`TrialProcessDied: ... killed by SIGKILL ...`), and the search goes on (`TrialProcessDied` is added to
  the study's `catch`).

Not supported, refused before the study exists: a distributed run (`accelerate launch`/torchrun: the children would
need a process group of their own per trial; run several `optuna-trainer workers` instead, each a search whose trials
can be isolated), `artifact_store` (the child has no study to publish the best model to), `report_to` MLflow or W&B
(output/trackers.py opens each trial's run in the search process), and `peft.*` keys.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import multiprocessing.connection
import multiprocessing.context
import os
import pickle
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import optuna
from transformers import ProgressCallback, Trainer, TrainerCallback
from transformers.utils import logging as hf_logging

from optuna_trainer.output.progress import TrialLines, TrialProgress, bars_wanted
from optuna_trainer.processes.coordinator import LocalCoordinator
from optuna_trainer.study import attrs

if TYPE_CHECKING:
    from optuna_trainer.search.settings import SearchSettings

logger = logging.getLogger(__name__)

_POLL_S = 0.2
# What the fork server imports once for every trial's process (importing torch initializes no device).
_PRELOAD = ["torch", "transformers", "optuna", "optuna_trainer.search.isolated"]


def _context() -> multiprocessing.context.ForkServerContext | multiprocessing.context.SpawnContext:
    """The fork server, preloaded (it starts with the first trial and serves the rest); spawn where none exists."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(_PRELOAD)
    return context


# Exit code of a child that ended its trial normally (its answer was sent).
_DONE = 0


class TrialProcessDied(RuntimeError):
    """The process of an isolated trial died before it answered (a signal, `os.abort()`, the kernel's OOM killer)."""


@dataclass
class TrialRecipe:
    """What a child process needs to rebuild the trainer and run one trial of the search, pickled once.

    Attributes:
        trainer_class: the trainer's class (module level, importable in the child).
        args: the user's arguments object (each trial's arguments are rebuilt from it, as in-process).
        model_init: the user's `model_init`, or None with `model`.
        model: the model passed as `model=` (every trial starts from its weights), or None with `model_init`.
        train_dataset / eval_dataset / data_collator / processing_class / compute_metrics /
            preprocess_logits_for_metrics: as given to the trainer.
        callbacks: the user's `TrainerCallback`s (transformers' own defaults are added again by the child's trainer).
        call: the `hyperparameter_search` call, less what only the parent uses (storage, Optuna callbacks).
        search_class / settle: the search's class and its settings' resolver, pickled by reference: the child runs
            the in-process code path without this module importing search/search.py (which imports it).
    """

    trainer_class: type
    args: Any
    model_init: Callable[..., Any] | None
    model: Any
    train_dataset: Any
    eval_dataset: Any
    data_collator: Any
    processing_class: Any
    compute_metrics: Callable[..., Any] | None
    preprocess_logits_for_metrics: Callable[..., Any] | None
    callbacks: list[TrainerCallback]
    call: dict[str, Any]
    search_class: Any = None
    settle: Any = None

    def build(self) -> Trainer:
        """The trainer, built in the child as the user built it."""
        copied = {name: getattr(self, name) for name in _TRAINER_ATTRS}
        trainer: Trainer = self.trainer_class(
            model=self.model, model_init=self.model_init, args=self.args, callbacks=list(self.callbacks), **copied
        )
        return trainer


# The trainer's own attributes that the recipe carries as they are (model, model_init and callbacks are chosen).
_TRAINER_ATTRS = (
    "train_dataset",
    "eval_dataset",
    "data_collator",
    "processing_class",
    "compute_metrics",
    "preprocess_logits_for_metrics",
)


# Only the parent uses these: the child runs against an in-memory storage, and Optuna's callbacks run on the study.
_PARENT_ONLY = ("storage", "callbacks", "load_if_exists", "show_progress_bar", "gc_after_trial", "timeout", "n_jobs")


def _user_callbacks(trainer: Trainer) -> list[TrainerCallback]:
    """The callbacks the user added: those not defined by transformers itself (its defaults, printers, report_to
    integrations), which the child's trainer adds again from its arguments."""
    return [
        cb
        for cb in trainer.callback_handler.callbacks
        if not type(cb).__module__.startswith(("transformers.", "trl."))
    ]


def make_recipe(
    trainer: Trainer, call: dict[str, Any], settings: SearchSettings, search_class: Any = None, settle: Any = None
) -> TrialRecipe:
    """The recipe of `trainer` and the search `call`, for children that run trials with `search_class`."""
    user_model_init = trainer.model_init
    child_call = {k: v for k, v in call.items() if k not in _PARENT_ONLY}
    # The same study name, so that best_model/'s record (compared by study name) is the parent study's.
    child_call["study_name"] = settings.storage.study_name
    return TrialRecipe(
        trainer_class=type(trainer),
        args=trainer.args,
        model_init=user_model_init,
        model=trainer.model if user_model_init is None else None,
        callbacks=_user_callbacks(trainer),
        call=child_call,
        search_class=search_class,
        settle=settle,
        **{name: getattr(trainer, name) for name in _TRAINER_ATTRS},
    )


_FIXES = {
    "model_init": "define model_init as a function at module level (def model_init(trial=None): ...), not a lambda "
    "or a function nested in another",
    "model": "pass model_init= (a module-level function that builds the model) instead of model=",
    "compute_metrics": "define compute_metrics at module level",
    "preprocess_logits_for_metrics": "define preprocess_logits_for_metrics at module level",
    "callbacks": "define the callback classes at module level, holding no live model or open file",
    "call": "pass module-level functions to hyperparameter_search (hp_space, compute_objective, hp_name) and "
    "exception classes to catch",
}


def check_isolatable(trainer: Trainer, call: dict[str, Any], settings: SearchSettings) -> bytes:
    """Refuse, before the study exists, what isolated trials cannot run; return the pickled recipe.

    Raises:
        ValueError: a distributed run, an artifact store, `peft.*` keys, or a part of the trainer or the call that
            cannot be sent to a child process (naming it and the fix).
    """
    if trainer.args.world_size > 1:
        raise ValueError(
            f"isolate_trials: not under accelerate launch/torchrun (world size {trainer.args.world_size}): each "
            "trial's process would need a process group of its own. Run the search in one process per worker "
            "(optuna-trainer workers N script.py ...), each with isolate_trials=true, or set isolate_trials=false"
        )
    if settings.storage.artifacts is not None:
        raise ValueError(
            "isolate_trials: not with artifact_store (a trial's process has no study to publish the best model to); "
            "leave artifact_store unset or set isolate_trials=false"
        )
    trackers = sorted({"mlflow", "wandb"} & set(trainer.args.report_to or []))
    if trackers:
        raise ValueError(
            f"isolate_trials: not with report_to {trackers}: their per-trial runs under the study's run are opened "
            "and closed by the search process around the trial (output/trackers.py), which an isolated trial runs "
            "elsewhere. Use report_to tensorboard (each trial's process writes its own run directory), or set "
            "isolate_trials=false"
        )
    if settings.space.adapters:
        raise ValueError("isolate_trials: not with peft.* keys in hp_space; set isolate_trials=false")
    recipe = make_recipe(trainer, call, settings)
    try:
        return pickle.dumps(recipe)
    except Exception as err:  # pickling raises PicklingError, AttributeError, TypeError
        for field in dataclasses.fields(recipe):
            try:
                pickle.dumps(getattr(recipe, field.name))
            except Exception as field_err:
                what = "the hyperparameter_search call" if field.name == "call" else field.name
                raise ValueError(
                    f"isolate_trials: {what} cannot be sent to the trial's process "
                    f"({type(field_err).__name__}: {field_err}); {_FIXES.get(field.name, 'make it picklable')}, "
                    "or set isolate_trials=false"
                ) from None
        raise ValueError(f"isolate_trials: the trainer cannot be sent to the trial's process ({err})") from None


# ---- the child -----------------------------------------------------------------------------------------------------


class TrialProxy(optuna.trial.BaseTrial):
    """The trial as the child sees it: every attribute read or method call is answered by the parent's trial.

    A `BaseTrial` (transformers' `hp_params` accepts only those); its methods and properties are filled in below,
    each forwarding to the parent, and any other attribute (an extension such as DDP's `same_everywhere`) is asked
    for by name.
    """

    def __init__(self, conn: multiprocessing.connection.Connection) -> None:
        self._conn = conn

    def _ask(self, *message: Any) -> Any:
        self._conn.send(message)
        kind, payload = self._conn.recv()
        if kind == "error":
            raise payload
        return payload

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        if self._ask("kind", name) == "method":
            return lambda *args, **kwargs: self._ask("call", name, args, kwargs)
        return self._ask("get", name)


def _forward_call(name: str) -> Callable[..., Any]:
    def call(self: TrialProxy, *args: Any, **kwargs: Any) -> Any:
        return self._ask("call", name, args, kwargs)

    call.__name__ = name
    return call


def _forward_get(name: str) -> property:
    return property(lambda self: self._ask("get", name))


_BASE_PROPERTIES = ("number", "params", "distributions", "user_attrs", "datetime_start", "constraints")
for _name in sorted(optuna.trial.BaseTrial.__abstractmethods__ | {"number", "constraints"}):
    setattr(TrialProxy, _name, _forward_get(_name) if _name in _BASE_PROPERTIES else _forward_call(_name))
TrialProxy.__abstractmethods__ = frozenset()


def _picklable(err: BaseException) -> BaseException:
    try:
        pickle.loads(pickle.dumps(err))
        return err
    except Exception:
        return RuntimeError(f"{type(err).__name__}: {err}")


def child_main(conn: multiprocessing.connection.Connection, recipe_bytes: bytes, best: tuple[Any, Any]) -> None:
    """A trial's process: rebuild the trainer, run the trial on the proxy, answer (value or error, best so far)."""
    # The parent handles Ctrl-C (it ends the child); the child would otherwise raise KeyboardInterrupt mid-save.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    recipe: TrialRecipe = pickle.loads(recipe_bytes)
    trainer = recipe.build()
    # The search process shows the progress (its trials bar, or a line per trial start and end): a step bar of this
    # process would fight it for the terminal, or print transformers' redrawn bar and log dicts into a log file.
    # With disable_tqdm, transformers' PrinterCallback (not popped) still prints the dicts, as in-process.
    trainer.pop_callback(ProgressCallback)
    hf_logging.disable_progress_bar()
    if not bars_wanted():
        # The line a trial's start logs where no bar is drawn (output/progress.py) comes from the trainer that trains,
        # this one; the search process logs the end line.
        trainer.add_callback(TrialLines(TrialProgress(None, 0, trainer=trainer)))
    settings, _ = recipe.settle(trainer, False, recipe.call)  # not main: an in-memory storage, no study
    search = recipe.search_class(trainer, settings, None, LocalCoordinator())
    search.best = type(search.best)(*best)
    search.context = search._take_trainer()
    proxy = TrialProxy(conn)  # type: ignore[abstract]  # filled in after the class (see TrialProxy)
    try:
        value = search.run_trial(proxy)  # the proxy answers as the trial
        answer: tuple[Any, ...] = ("done", value, (search.best.value, search.best.run_dir))
    except BaseException as err:  # every outcome goes back to the parent
        answer = ("raised", _picklable(err), (search.best.value, search.best.run_dir))
    finally:
        search._give_trainer_back()
    try:
        conn.send(answer)
        conn.close()
    except OSError:  # BrokenPipeError: the search process stopped (Ctrl-C, SIGTERM) and ends this one; no one to tell
        pass


# ---- the parent ----------------------------------------------------------------------------------------------------


def _cause(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        name = signal.Signals(-exitcode).name
        hint = {
            "SIGKILL": " (a kill -9, or the kernel's OOM killer: see dmesg)",
            "SIGABRT": " (os.abort(), or a failed assertion in native code)",
            "SIGSEGV": " (a segmentation fault in native code)",
        }.get(name, "")
        return f"killed by {name}{hint}"
    return f"exited with code {exitcode} before it answered"


def _answer(trial: optuna.trial.BaseTrial, message: tuple[Any, ...]) -> tuple[str, Any]:
    """The parent's answer to one request of the child's proxy."""
    try:
        if message[0] == "kind":
            return "ok", "method" if callable(getattr(trial, message[1])) else "value"
        if message[0] == "get":
            return "ok", getattr(trial, message[1])
        _, name, args, kwargs = message
        if name == "set_user_attr" and args and args[0] == "worker":
            # The process that owns the trial is this one: the launcher requeues the trials of a worker that died by
            # this attribute (processes/launcher.py), and a dead child is this process's to record.
            args = ("worker", f"{socket.gethostname()}:{os.getpid()}")
        return "ok", getattr(trial, name)(*args, **kwargs)
    except Exception as err:  # raised again in the child, where the call was made
        return "error", _picklable(err)


def run_isolated(trial: optuna.trial.BaseTrial, recipe_bytes: bytes, best: tuple[Any, Any]) -> tuple[Any, Any]:
    """Run `trial` in a fresh child process and serve its proxy; returns (the objective's value, the best (value,
    run_dir) it knows of) or raises what the trial raised (`TrialProcessDied` when its process died)."""
    context = _context()
    parent_conn, child_conn = context.Pipe()
    process = context.Process(
        target=child_main, args=(child_conn, recipe_bytes, best), name=f"optuna-trial-{trial.number}"
    )
    started = time.monotonic()
    process.start()
    child_conn.close()  # the parent's copy: a dead child then reads as EOF
    try:
        while True:
            if parent_conn.poll(_POLL_S):
                try:
                    message = parent_conn.recv()
                except EOFError:
                    break
                if message[0] in ("done", "raised"):
                    process.join(timeout=60)
                    if message[0] == "raised":
                        raise message[1]
                    return message[1], message[2]
                parent_conn.send(_answer(trial, message))
            elif not process.is_alive():
                break
        process.join(timeout=10)
        cause = _cause(process.exitcode)
        reason = f"TrialProcessDied: the trial's process (pid {process.pid}) {cause}"
        attrs.write(trial, fail_reason=reason, fault="error", seconds=round(time.monotonic() - started, 3))
        logger.warning(f"Trial {trial.number}: its process {cause}; it is marked FAIL and the search goes on")
        raise TrialProcessDied(reason)
    finally:
        if process.is_alive():  # the parent was interrupted (Ctrl-C, SIGTERM) or failed while serving
            process.terminate()
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join()
        parent_conn.close()


__all__ = ["TrialProcessDied", "TrialProxy", "TrialRecipe", "check_isolatable", "make_recipe", "run_isolated"]
