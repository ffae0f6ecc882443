"""Record dense learning curves of real fine-tuning, once, for the pruner replay (benchmarks/replay.py).

Every configuration of a discrete space (learning rate x batch size x weight decay x warm-up: 48) fine-tunes the
packaged MiniLM on the same seeded SST-2 subset to the end, with an evaluation on the same dev subset after every
`--eval-samples` training samples, whatever the batch size. Each configuration is trained by plain
`transformers.Trainer` with the training arguments a trial of that configuration gets, so a live search over the
same space reproduces these curves (checked by `replay.py --live`).

    python benchmarks/curves.py                      # 48 configurations, written to benchmarks/results/curves.json
    python benchmarks/curves.py --quick --out /tmp/c # CI: tiny BERT, 4 configurations
    python benchmarks/curves.py --n-train 1024 --seed 1  # a second table: curves_n1024_seed1.json
    OMP_NUM_THREADS=1 python benchmarks/curves.py --n-train 8192 --seed 3 --shard 1/2 &  # two recorders, one
    OMP_NUM_THREADS=1 python benchmarks/curves.py --n-train 8192 --seed 3 --shard 2/2    # core each, one file

The file is written after every configuration (by rename, so a kill loses at most the one in progress) and a rerun
records only what is missing; settings that differ from the file's are refused rather than mixed into it. Two
recorders of one table (`--shard K/N`: the K-th of every N configurations of the space, those on record skipped;
counted over the whole space, so the shards stay disjoint whenever each recorder starts) merge into the file under a
lock:
on 2 cores, two one-thread recorders record 10% (batch 32) to 43% (batch 8) more per hour than one two-thread
recorder (the 8192-sentence table: 665-715 s per configuration each, against 392-484 s one at a time). Each curve
records the threads that trained it.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import itertools
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

# benchmarks/ (its shared modules) and the repository root (tests.support: the tiny models and recorders)
sys.path[:0] = [
    os.path.dirname(os.path.abspath(__file__)),
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
]
import measure  # noqa: E402
import tables  # noqa: E402
import tasks  # noqa: E402

# The discrete space of the table; the replay's searches draw from it with suggest_categorical.
SPACE: dict[str, list[Any]] = {
    "learning_rate": [1e-5, 3e-5, 1e-4, 3e-4],
    "per_device_train_batch_size": [8, 16, 32],
    "weight_decay": [0.0, 0.1],
    "warmup_steps": [0, 0.1],  # transformers 5: a float below 1 is a fraction of the training steps
}
QUICK_SPACE: dict[str, list[Any]] = {
    "learning_rate": [1e-4, 1e-3],
    "per_device_train_batch_size": [8, 16],
    "weight_decay": [0.0],
    "warmup_steps": [0],
}


def settings(quick: bool, n_train: int | None = None, seed: int = 0) -> dict[str, Any]:
    """The table's settings: `n_train` and `seed` (the subsets drawn and the training seed) make another table of the
    same space, to check that a pruner setting chosen on one table holds on another."""
    if quick:
        return dict(
            model="tiny-bert",
            layers=None,
            n_train=n_train or 128,
            n_dev=64,
            eval_samples=32,
            seed=seed,
            space=QUICK_SPACE,
        )
    return dict(
        model="minilm", layers=None, n_train=n_train or 2048, n_dev=436, eval_samples=128, seed=seed, space=SPACE
    )


def table_suffix(n_train: int | None = None, seed: int = 0) -> str:
    """What names another table's files: "" for the default settings, `_n1024_seed1` for another."""
    return (f"_n{n_train}" if n_train is not None else "") + (f"_seed{seed}" if seed else "")


def table_file(quick: bool, n_train: int | None = None, seed: int = 0) -> str:
    """`curves.json` for the default settings (figure 10), `curves_n1024_seed1.json` for another table."""
    return f"curves{'_quick' if quick else ''}{table_suffix(n_train, seed)}.json"


def configurations(space: dict[str, list[Any]]) -> list[dict[str, Any]]:
    names = list(space)
    return [dict(zip(names, values, strict=True)) for values in itertools.product(*(space[n] for n in names))]


def config_key(config: dict[str, Any]) -> str:
    return json.dumps(config, sort_keys=True)


# What every recorded run and every live replay trial share besides the schedule: evaluation batch, nothing saved or
# logged, no bar, CPU.
QUIET: dict[str, Any] = dict(
    per_device_eval_batch_size=128,
    save_strategy="no",
    logging_strategy="no",
    report_to=[],
    disable_tqdm=True,
    use_cpu=True,
)


def training_arguments(s: dict[str, Any], config: dict[str, Any], output_dir: str) -> Any:
    """The arguments of one configuration: one epoch over the subset, an evaluation every `eval_samples` samples."""
    from transformers import TrainingArguments

    batch = config["per_device_train_batch_size"]
    if s["eval_samples"] % batch or s["n_train"] % batch:
        raise ValueError(f"eval_samples {s['eval_samples']} and n_train {s['n_train']} must be multiples of {batch}")
    return TrainingArguments(
        output_dir=output_dir,
        max_steps=s["n_train"] // batch,
        eval_strategy="steps",
        eval_steps=s["eval_samples"] // batch,
        seed=s["seed"],
        **QUIET,
        **config,
    )


def quiet_trainer(trainer_class: Any, task: tasks.Task, args: Any, **kwargs: Any) -> Any:
    """A trainer (`Trainer`, `OptunaTrainer`) of the table's task: its model, subsets, collator and accuracy, printing
    nothing per evaluation. The recorder, the live replay and transformers' live search all train through it."""
    from transformers import PrinterCallback

    kwargs.setdefault("compute_metrics", tasks.compute_metrics)
    trainer = trainer_class(
        args=args,
        model_init=task.model_init,
        train_dataset=task.train,
        eval_dataset=task.dev,
        data_collator=task.collator,
        **kwargs,
    )
    trainer.remove_callback(PrinterCallback)  # disable_tqdm's replacement prints every evaluation
    return trainer


def record_one(task: tasks.Task, s: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    from transformers import Trainer, TrainerCallback

    points: list[dict[str, float]] = []

    class Recorder(TrainerCallback):
        def on_evaluate(self, args: Any, state: Any, control: Any, metrics: Any = None, **kwargs: Any) -> None:
            samples = state.global_step * args.per_device_train_batch_size * args.gradient_accumulation_steps
            points.append(
                {
                    "samples": samples,
                    "step": state.global_step,
                    "accuracy": metrics["eval_accuracy"],
                    "loss": metrics["eval_loss"],
                }
            )

    import torch

    with tempfile.TemporaryDirectory() as out:
        args = training_arguments(s, config, out)
        trainer = quiet_trainer(Trainer, task, args, callbacks=[Recorder()])
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
    return {"config": config, "points": points, "seconds": round(seconds, 2), "threads": torch.get_num_threads()}


def load(path: str) -> dict[str, Any] | None:
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def save(path: str, table: dict[str, Any]) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(table, f, indent=1)
    os.replace(tmp, path)


@contextlib.contextmanager
def locked(path: str) -> Iterator[None]:
    """Hold the table's lock file: another recorder of the same table (`--shard`) waits to read and write it."""
    with open(f"{path}.lock", "w", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def add_curve(path: str, meta: dict[str, Any], curve: dict[str, Any]) -> int:
    """Add one configuration's curve to the file as it is now (another recorder may have added its own since this
    one read it); returns how many configurations the file holds."""
    with locked(path):
        table = load(path) or {"meta": meta, "curves": []}
        if all(config_key(c["config"]) != config_key(curve["config"]) for c in table["curves"]):
            table["curves"].append(curve)
            save(path, table)
        return len(table["curves"])


def parse_shard(text: str | None) -> tuple[int, int]:
    """`K/N` (1 <= K <= N): this recorder takes the K-th of every N configurations of the space (those on record
    skipped)."""
    if text is None:
        return 1, 1
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        k = n = 0
    if not 1 <= k <= n:
        raise SystemExit(f"--shard: expected K/N with 1 <= K <= N, e.g. 1/2, got {text!r}")
    return k, n


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--data", default=tasks.DEFAULT_DATA)
    parser.add_argument("--out", default=tables.DEFAULT_OUT)
    parser.add_argument("--limit", type=int, default=None, help="record at most this many new configurations")
    parser.add_argument("--n-train", type=int, default=None, help="training sentences (another table: 2048 default)")
    parser.add_argument("--seed", type=int, default=0, help="subsets and training seed (another table: 0 default)")
    parser.add_argument(
        "--shard", default=None, help="K/N: record the K-th of every N configurations (those on record skipped)"
    )
    a = parser.parse_args()
    shard, shards = parse_shard(a.shard)
    s = settings(a.quick, a.n_train, a.seed)
    os.makedirs(a.out, exist_ok=True)
    path = os.path.join(a.out, table_file(a.quick, a.n_train, a.seed))
    task = tasks.make_task(s["model"], a.data, s["n_train"], s["n_dev"], seed=s["seed"], layers=s["layers"])
    meta = {
        "settings": s,
        "data": task.source,
        "model": task.model_name,
        "command": tables.command_line(),
        "machine": measure.machine(),
    }
    with locked(path):
        table = load(path) or {"meta": meta, "curves": []}
    if table["meta"]["settings"] != s or table["meta"]["data"] != task.source:
        raise SystemExit(f"{path} was recorded with other settings or data; move it away to record these")
    done = {config_key(c["config"]) for c in table["curves"]}
    # The shard is cut from the whole space, not from what is missing: what is missing changes as the other shards
    # record, so a recorder started after another had written a curve would take a share that overlaps or leaves
    # a configuration to no one.
    mine = configurations(s["space"])[shard - 1 :: shards]
    todo = [c for c in mine if config_key(c) not in done][: a.limit]
    print(
        f"{len(done)} configurations on record, {len(todo)} to record ({task.source}; {task.model_name})", flush=True
    )
    held = len(done)
    for i, config in enumerate(todo, 1):
        curve = record_one(task, s, config)
        held = add_curve(path, meta, curve)
        final = curve["points"][-1]
        print(
            f"[{i}/{len(todo)}] {config}: final accuracy {final['accuracy']:.4f}, loss {final['loss']:.4f}, "
            f"{curve['seconds']:.1f} s",
            flush=True,
        )
    print(f"wrote {path}: {held} configurations")
    return 0


if __name__ == "__main__":
    sys.exit(main())
