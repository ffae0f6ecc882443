"""The `optuna-trainer` command: `optuna-trainer report` writes the end-of-search report of a stored study;
`optuna-trainer best-model` writes its best model into a folder, on any machine (from the artifact store);
`optuna-trainer workers N -- <command>` runs N copies of a training command on one study (processes/launcher.py).

    optuna-trainer report --storage sqlite:///out/optuna_study.db --study-name out --output-dir out
    optuna-trainer workers 4 -- python train.py config.yaml
    optuna-trainer best-model --storage postgresql+psycopg://host/db --study-name sst2 --output best
    optuna-trainer storage-proxy --storage postgresql+psycopg://host/db --port 13000
    optuna-trainer simulate --storage sqlite:///out/optuna_study.db --pruners median hyperband --orders 20

The arguments are a dataclass parsed by `HfArgumentParser`, like the training arguments, so `--study_name` and
`--study-name` both work.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import warnings
from dataclasses import dataclass, field
from typing import Any, cast

import optuna
from transformers import HfArgumentParser

from optuna_trainer import log as _log  # noqa: F401  (the package logger prints INFO)
from optuna_trainer.output.best_model import fetch_best_model
from optuna_trainer.output.report import REPORT_DIR, write_report
from optuna_trainer.output.simulate import DEFAULT_PRUNERS, format_simulation
from optuna_trainer.output.simulate import simulate as run_simulation
from optuna_trainer.study.artifacts import open_artifact_store
from optuna_trainer.study.attrs import ARTIFACT_STORE_ATTR
from optuna_trainer.study.storage import mask_url, resolve_storage

# Named, not __name__: under `python -m optuna_trainer.cli` that is "__main__", outside the package's logger.
logger = logging.getLogger("optuna_trainer.cli")

COMMANDS = {
    "report": "write the report (summary.json, trials.csv, plots) of a stored study",
    "workers": "run N copies of a training command on one shared study (optuna-trainer workers N -- <command>)",
    "best-model": "write a stored study's best model (weights, config, tokenizer, trial.json) into a folder",
    "storage-proxy": "serve a study database to many workers through Optuna's gRPC proxy (workers: grpc://host:port)",
    "simulate": "replay a stored study's recorded curves under other pruners (and samplers): samples saved, best found",
}


@dataclass
class ReportArguments:
    """Arguments of `optuna-trainer report`."""

    storage: str = field(
        metadata={
            "help": "The study's storage: sqlite:///out/optuna_study.db, postgresql+psycopg://..., redis://..., or a "
            "journal file path."
        }
    )
    output_dir: str = field(metadata={"help": f"Where to write the report (into its {REPORT_DIR}/ folder)."})
    study_name: str | None = field(
        default=None, metadata={"help": "The study's name; may be left out when the storage holds a single study."}
    )
    plots: bool = field(default=True, metadata={"help": "Draw the plots (PNG files, and on the report page)."})


@dataclass
class BestModelArguments:
    """Arguments of `optuna-trainer best-model`."""

    storage: str = field(
        metadata={"help": "The study's storage: postgresql+psycopg://..., sqlite:///..., redis://..., a journal file."}
    )
    output: str = field(metadata={"help": "The folder to write the model into (new, or empty)."})
    study_name: str | None = field(
        default=None, metadata={"help": "The study's name; may be left out when the storage holds a single study."}
    )
    artifact_store: str | None = field(
        default=None,
        metadata={
            "help": "The search's artifact_store (a shared directory or s3://bucket/prefix). Unset: the one the "
            "study records."
        },
    )


@dataclass
class SimulateArguments:
    """Arguments of `optuna-trainer simulate`."""

    storage: str = field(
        metadata={"help": "The study's storage: sqlite:///out/optuna_study.db, postgresql+psycopg://..., ..."}
    )
    study_name: str | None = field(
        default=None, metadata={"help": "The study's name; may be left out when the storage holds a single study."}
    )
    pruners: list[str] | None = field(
        default=None,
        metadata={
            "help": "Pruners to replay, each a name or a JSON spec as in the pruner field, e.g. median "
            '\'{"name": "percentile", "percentile": 25}\'. When left out: none, median, median with 5 startup trials '
            "and 2 warm-up evaluations, percentile 25, step_percentile, successive_halving, hyperband."
        },
    )
    orders: int = field(
        default=0, metadata={"help": "Also replay this many random orders of the trials (the rows give the median)."}
    )
    samplers: list[str] | None = field(
        default=None,
        metadata={
            "help": "Samplers to replay as well (random, tpe, ...), on a study whose searched values are all "
            "categorical with full recorded curves."
        },
    )
    seeds: int = field(default=10, metadata={"help": "Seeds per sampler replay."})
    skip_duplicates: bool = field(
        default=True,
        metadata={
            "help": "In a sampler replay, a repeated configuration takes its earlier result at no cost, as a search "
            "with skip_duplicates does; false: it is replayed again in full."
        },
    )
    json: str | None = field(default=None, metadata={"help": "Also write the rows to this JSON file."})


@dataclass
class ProxyArguments:
    """Arguments of `optuna-trainer storage-proxy`."""

    storage: str = field(
        metadata={
            "help": "The database the proxy serves: postgresql+psycopg://..., mysql+pymysql://..., sqlite:///..."
        }
    )
    port: int = field(default=13000, metadata={"help": "The port to listen on."})
    host: str = field(default="0.0.0.0", metadata={"help": "The address to listen on (0.0.0.0: every interface)."})
    threads: int = field(
        default=32,
        metadata={
            "help": "Threads serving the workers' calls (Optuna's own default is 10); each may hold one database "
            "connection while it works, so this bounds the proxy's connections."
        },
    )


def _usage() -> str:
    lines = ["usage: optuna-trainer <command> [options]", "", "commands:"]
    lines += [f"  {name:<13} {help_}" for name, help_ in COMMANDS.items()]
    lines += ["", "optuna-trainer <command> --help shows a command's options."]
    return "\n".join(lines)


def load_study(storage_url: str, study_name: str | None) -> optuna.Study:
    """Load a study; without a name, the storage's only study. Errors name what exists."""
    if storage_url.startswith("sqlite:///") and not os.path.isfile(storage_url[len("sqlite:///") :]):
        # Opening a missing SQLite file would create an empty study database; say what is wrong instead.
        raise SystemExit(f"storage: no SQLite file at {storage_url[len('sqlite:///') :]!r}")
    storage, description = resolve_storage(storage_url, output_dir=".")
    if storage is None:
        raise SystemExit("storage: an in-memory study cannot be read back; give the storage the search used")
    names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
    if study_name is None:
        if len(names) != 1:
            raise SystemExit(f"study_name: {description} holds {len(names)} studies {names}; pass --study-name")
        study_name = names[0]
    elif study_name not in names:
        raise SystemExit(f"study_name: no study {study_name!r} in {description}; it holds {names}")
    return optuna.load_study(study_name=study_name, storage=storage)


def report(argv: list[str]) -> int:
    parser = HfArgumentParser(cast(Any, ReportArguments), prog="optuna-trainer report", description=COMMANDS["report"])
    (args,) = parser.parse_args_into_dataclasses(args=argv)
    study = load_study(args.storage, args.study_name)
    logger.info(f"Study {study.study_name!r} in {mask_url(args.storage)}: {len(study.trials)} trials")
    write_report(study, args.output_dir, storage_url=args.storage, plots=args.plots)
    return 0


def best_model(argv: list[str]) -> int:
    parser = HfArgumentParser(
        cast(Any, BestModelArguments), prog="optuna-trainer best-model", description=COMMANDS["best-model"]
    )
    (args,) = parser.parse_args_into_dataclasses(args=argv)
    study = load_study(args.storage, args.study_name)
    where = args.artifact_store or study.user_attrs.get(ARTIFACT_STORE_ATTR)
    try:
        artifacts = open_artifact_store(where) if where else None
        record = fetch_best_model(study, artifacts, args.output)
    except ValueError as err:
        raise SystemExit(f"optuna-trainer best-model: {err}") from None
    logger.info(
        f"Best model of study {study.study_name!r} (trial {record.get('number')}, value {record.get('value')}) "
        f"written to {args.output}"
    )
    return 0


def storage_proxy(argv: list[str]) -> int:
    parser = HfArgumentParser(
        cast(Any, ProxyArguments), prog="optuna-trainer storage-proxy", description=COMMANDS["storage-proxy"]
    )
    (args,) = parser.parse_args_into_dataclasses(args=argv)
    if args.threads < 1:
        raise SystemExit(f"threads: expected a positive number of threads, got {args.threads}")
    if args.storage.startswith("grpc://"):
        raise SystemExit("storage: the proxy serves a database URL, not another proxy (grpc://)")
    try:
        # Heartbeats off here: they are written by the workers, which the proxy cannot do for them.
        storage, description = resolve_storage(args.storage, output_dir=".", heartbeat_interval=None)
    except ValueError as err:
        raise SystemExit(str(err)) from None
    if storage is None:
        raise SystemExit("storage: an in-memory storage cannot be served; give a database URL")
    logger.info(
        f"Serving {description} on {args.host}:{args.port}; workers use storage='grpc://<this host>:{args.port}'"
    )
    from concurrent.futures import ThreadPoolExecutor

    # get_storage wraps an RDBStorage in Optuna's in-process cache (as create_study does for a worker); the proxy's
    # docs ask for it: without it every call of every worker is a database round trip.
    served = optuna.storages.get_storage(storage)
    pool = ThreadPoolExecutor(max_workers=args.threads, thread_name_prefix="optuna-proxy")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # GRPC_NOTE says what it lacks
        optuna.storages.run_grpc_proxy_server(served, host=args.host, port=args.port, thread_pool=pool)
    return 0


def simulate(argv: list[str]) -> int:
    parser = HfArgumentParser(
        cast(Any, SimulateArguments), prog="optuna-trainer simulate", description=COMMANDS["simulate"]
    )
    (args,) = parser.parse_args_into_dataclasses(args=argv)
    study = load_study(args.storage, args.study_name)
    if args.orders < 0 or args.seeds < 1:
        raise SystemExit("optuna-trainer simulate: --orders must be >= 0 and --seeds >= 1")
    try:
        result = run_simulation(
            study,
            pruners=args.pruners or DEFAULT_PRUNERS,
            orders=args.orders,
            samplers=args.samplers or (),
            seeds=args.seeds,
            skip_duplicates=args.skip_duplicates,
        )
    except (ValueError, TypeError) as err:
        raise SystemExit(f"optuna-trainer simulate: {err}") from None
    print(format_simulation(result))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2, default=str)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "report":
        return report(rest)
    if command == "storage-proxy":
        return storage_proxy(rest)
    if command == "simulate":
        return simulate(rest)
    if command == "best-model":
        return best_model(rest)
    if command == "workers":
        from optuna_trainer.processes.launcher import main as workers

        return workers(rest)
    print(
        f"optuna-trainer: unknown command {command!r}; commands: {', '.join(COMMANDS)}\n\n{_usage()}", file=sys.stderr
    )
    return 2


if __name__ == "__main__":
    sys.exit(main())
