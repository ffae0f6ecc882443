"""The example scripts: argument parsing (config file == command line), data loading, and an end-to-end search."""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import json
import os
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

from optuna_trainer.output.report import REPORT_DIR, SUMMARY_FILE, TRIALS_FILE

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
SHIPPED = EXAMPLES / "data" / "reviews"
SST2 = Path(os.environ.get("SST2_DIR", "/work/shared/data/sst2"))


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tc():
    return _load("text_classification")


def _resolved(value):
    # The core keeps a structured value given on the command line (sampler, pruner) as its JSON string and reads it
    # when the search starts; compare what it resolves to.
    if isinstance(value, str) and value.lstrip().startswith(("{", "[")):
        return json.loads(value)
    return value


def _fields(obj) -> dict:
    """Every init field of a parsed dataclass (resolved), plus the parsed search space of the training arguments."""
    values = {f.name: _resolved(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
    if hasattr(obj, "search_space"):
        values["hp_space"] = obj.search_space.to_dict() if obj.search_space is not None else None
    return values


def _assert_same(a: tuple, b: tuple) -> None:
    for x, y in zip(a, b, strict=True):
        fx, fy = _fields(x), _fields(y)
        differing = {k: (fx[k], fy[k]) for k in fx if fx[k] != fy[k]}
        assert not differing, f"{type(x).__name__}: {differing}"


def _flags(config: dict) -> list[str]:
    flags = []
    for key, value in config.items():
        flags += [f"--{key}", json.dumps(value) if isinstance(value, (dict, list)) else str(value)]
    return flags


class TestArguments:
    def test_no_arguments_is_the_shipped_config(self, tc):
        # The built-in defaults are examples/configs/text_classification.yaml, read as a config file or as defaults.
        _assert_same(tc.parse_arguments([]), tc.parse_arguments([tc.DEFAULT_CONFIG]))
        model_args, data_args, args = tc.parse_arguments([])
        assert model_args.model_name_or_path is None  # the packaged MiniLM, resolved at run time
        assert data_args.train_file == str(SHIPPED / "train.tsv")
        assert data_args.validation_file == str(SHIPPED / "validation.tsv")
        space = args.search_space.to_dict()
        assert space["learning_rate"]["log"] is True
        assert space["per_device_train_batch_size"]["type"] == "categorical"
        assert "weight_decay" in space
        assert args.metric_for_best_model == "accuracy" and args.n_trials >= 5

    @pytest.mark.parametrize("suffix", [".yaml", ".json"])
    def test_config_file_equals_command_line(self, tc, tmp_path, suffix):
        config = yaml.safe_load(Path(tc.DEFAULT_CONFIG).read_text())
        config.update(
            output_dir=str(tmp_path / "out"),
            n_trials=3,
            max_train_samples=50,
            text_column="sentence",
            model_name_or_path="some/model",
            pruner={"name": "percentile", "percentile": 25.0, "n_startup_trials": 1},
            hp_space={
                "learning_rate": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True},
                "model.hidden_dropout_prob": {"type": "float", "low": 0.0, "high": 0.3},
            },
        )
        path = tmp_path / f"config{suffix}"
        path.write_text(yaml.safe_dump(config) if suffix == ".yaml" else json.dumps(config))
        from_file = tc.parse_arguments([str(path)])
        from_flags = tc.parse_arguments(_flags(config))
        _assert_same(from_file, from_flags)
        # and the values are the ones given, not defaults that happen to agree
        assert from_file[0].model_name_or_path == "some/model"
        assert from_file[1].max_train_samples == 50
        assert from_file[2].n_trials == 3 and from_file[2].pruner["name"] == "percentile"

    def test_flags_override_defaults(self, tc):
        _, _, args = tc.parse_arguments(["--n_trials", "4", "--learning_rate", "0.001"])
        assert args.n_trials == 4 and args.learning_rate == 0.001
        assert args.eval_strategy == "steps"  # still the built-in default

    def test_bad_data_arguments(self, tc, tmp_path):
        with pytest.raises(ValueError, match="train_file/validation_file: give both"):
            tc.DataArguments(train_file=str(SHIPPED / "train.tsv"))
        with pytest.raises(ValueError, match="train_file: no such file"):
            tc.DataArguments(train_file=str(tmp_path / "x.tsv"), validation_file=str(tmp_path / "y.tsv"))
        (tmp_path / "x.txt").write_text("a")
        with pytest.raises(ValueError, match=r"must end in \.csv, \.tsv, \.json or \.jsonl"):
            tc.DataArguments(train_file=str(tmp_path / "x.txt"), validation_file=str(tmp_path / "x.txt"))


class TestData:
    def test_shipped_data_set(self, tc):
        raw = tc.load_raw_data(tc.DataArguments())
        assert raw["train"].num_rows == 360 and raw["validation"].num_rows == 120
        assert sorted(set(raw["train"]["label"])) == [0, 1]
        assert abs(sum(raw["validation"]["label"]) - 60) <= 5  # balanced
        # Validation sentences are not copies of training sentences.
        assert not set(raw["train"]["sentence"]) & set(raw["validation"]["sentence"])

    @pytest.mark.parametrize("fmt", ["csv", "json"])
    def test_csv_and_json_files(self, tc, tmp_path, fmt):
        rows = [{"text": f"sentence number {i}", "label": ["neg", "pos"][i % 2]} for i in range(6)]
        paths = []
        for split in ("train", "validation"):
            path = tmp_path / f"{split}.{fmt}"
            if fmt == "csv":
                with open(path, "w", newline="") as f:
                    writer = csv.DictWriter(f, fieldnames=["text", "label"])
                    writer.writeheader()
                    writer.writerows(rows)
            else:
                path.write_text("\n".join(json.dumps(r) for r in rows))
            paths.append(str(path))
        data_args = tc.DataArguments(train_file=paths[0], validation_file=paths[1], max_train_samples=4)
        tokenizer = _tokenizer(tmp_path)
        data, names = tc.prepare(tc.load_raw_data(data_args), data_args, tokenizer)
        assert names == ["neg", "pos"]  # string labels mapped to ids in sorted order
        assert data["train"].num_rows == 4 and data["validation"].num_rows == 6
        assert data["train"]["labels"] == [0, 1, 0, 1]

    def test_unknown_column(self, tc, tmp_path):
        data_args = tc.DataArguments(text_column="body")
        with pytest.raises(ValueError, match="text_column: 'body' is not a column"):
            tc.prepare(tc.load_raw_data(data_args), data_args, _tokenizer(tmp_path))


def _tokenizer(folder: Path) -> BertTokenizerFast:
    """A WordPiece tokenizer over the shipped data's words: small, offline, and real."""
    words = set()
    for name in ("train.tsv", "validation.tsv"):
        for line in (SHIPPED / name).read_text().splitlines()[1:]:
            words.update(
                line.split("\t", 1)[1].lower().replace(",", " ,").replace(".", " .").replace("!", " !").split()
            )
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(words)]
    # transformers 5 ignores `vocab_file=` here (every word became [UNK]): the vocabulary goes in as a dict.
    return BertTokenizerFast(vocab={token: i for i, token in enumerate(tokens)})


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("tiny_bert")
    tokenizer = _tokenizer(folder)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=2,
    )
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def _run(tc, tiny_model_dir: str, out: Path, *extra: str):
    argv = [
        "--model_name_or_path",
        tiny_model_dir,
        "--output_dir",
        str(out),
        "--n_trials",
        "4",
        "--max_train_samples",
        "64",
        "--max_eval_samples",
        "32",
        "--max_seq_length",
        "32",
        "--eval_steps",
        "2",
        "--logging_steps",
        "2",
        "--num_train_epochs",
        "1",
        "--report_to",
        "none",
        "--use_cpu",
        "true",
        "--disable_tqdm",
        "true",
        "--hp_space",
        json.dumps(
            {
                "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
                "per_device_train_batch_size": {"type": "categorical", "choices": [8, 16]},
            }
        ),
        "--pruner",
        json.dumps({"name": "median", "n_startup_trials": 1, "n_warmup_steps": 0}),
        *extra,
    ]
    return tc.main(argv)


class TestEndToEnd:
    def test_search_and_report(self, tc, tiny_model_dir, tmp_path, capsys):
        out = tmp_path / "out"
        best = _run(tc, tiny_model_dir, out)
        study = optuna.load_study(study_name="out", storage=f"sqlite:///{out}/optuna_study.db")
        states = [t.state.name for t in study.trials]
        assert len(states) == 4 and "COMPLETE" in states

        with open(out / REPORT_DIR / TRIALS_FILE, newline="") as f:
            rows = list(csv.DictReader(f))
        assert [(int(r["number"]), r["state"]) for r in rows] == [(t.number, t.state.name) for t in study.trials]
        summary = json.loads((out / REPORT_DIR / SUMMARY_FILE).read_text())
        assert summary["best_trial"]["number"] == int(best.run_id) == study.best_trial.number
        assert summary["best_trial"]["value"] == pytest.approx(best.objective)
        assert sum(summary["states"].values()) == 4
        import matplotlib.image
        import numpy as np

        for name in ("optimization_history", "intermediate_values", "parallel_coordinate", "slice"):
            assert np.var(matplotlib.image.imread(out / REPORT_DIR / f"{name}.png")) > 0
        assert (out / "best_model" / "config.json").is_file()
        assert "Best trial" in capsys.readouterr().out

    def test_lora_config_searches_adapters(self, tc, tiny_model_dir, tmp_path):
        """examples/configs/lora.yaml's peft.* keys, on the tiny model: adapters searched, the best one saved."""
        pytest.importorskip("peft")
        space = yaml.safe_load((Path(tc.DEFAULT_CONFIG).parent / "lora.yaml").read_text())["hp_space"]
        assert {"peft.r", "peft.lora_alpha", "peft.lora_dropout", "learning_rate"} <= set(space)
        out = tmp_path / "out"
        best = _run(tc, tiny_model_dir, out, "--hp_space", json.dumps(space), "--n_trials", "2")
        assert set(best.hyperparameters) == set(space)
        assert (out / "best_model" / "adapter_config.json").is_file()
        assert json.loads((out / "best_model" / "trial.json").read_text())["number"] == int(best.run_id)

    def test_tensorboard_runs_per_trial(self, tc, tiny_model_dir, tmp_path):
        pytest.importorskip("tensorboard")
        out = tmp_path / "out"
        _run(tc, tiny_model_dir, out, "--report_to", "tensorboard", "--n_trials", "2", "--pruner", "none")
        for number in (0, 1):
            events = list((out / f"run-{number}").rglob("events.out.tfevents.*"))
            assert events, f"trial {number} has no TensorBoard events of its own"
            # Each trial's events sit in a directory named after that trial, never in another trial's.
            assert all(p.parent.name == f"run-{number}" for p in events), events

    @pytest.mark.data
    @pytest.mark.skipif(not (SST2 / "train.tsv").is_file(), reason=f"SST-2 TSV files not found under {SST2}")
    def test_sst2_files(self, tc, tiny_model_dir, tmp_path):
        out = tmp_path / "out"
        best = _run(
            tc,
            tiny_model_dir,
            out,
            "--train_file",
            str(SST2 / "train.tsv"),
            "--validation_file",
            str(SST2 / "dev.tsv"),
            "--n_trials",
            "2",
            "--search_report",
            "false",
            "--save_best_model",
            "false",
        )
        assert 0.0 <= best.objective <= 1.0
        assert not (out / REPORT_DIR).exists()


def test_readme_first_command_is_the_example():
    readme = (ROOT / "README.md").read_text()
    first_block = readme.split("```bash", 1)[1].split("```", 1)[0]
    first_command = next(line for line in first_block.splitlines() if line and not line.startswith("#"))
    assert first_command.rstrip().endswith("&& python examples/text_classification.py")


def test_ci_runs_the_readme_test_command():
    # CI (.ci/run) is the README's second command on a fresh machine: every gate and the test command, as written.
    readme = (ROOT / "README.md").read_text()
    first_block = readme.split("```bash", 1)[1].split("```", 1)[0]
    commands = [line for line in first_block.splitlines() if line and not line.startswith("#")]
    steps = commands[1].split(" && ")
    checks = steps[next(i for i, step in enumerate(steps) if step.startswith("ruff")) :]
    assert checks[-1] == "python -m pytest -n 2"
    ci_lines = {line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()}
    assert all(step in ci_lines for step in checks), (checks, sorted(ci_lines))


def test_quickstart_uses_the_seed_call():
    source = (EXAMPLES / "quickstart.py").read_text()
    compile(source, "quickstart.py", "exec")
    for needle in (
        'backend="optuna"',
        "n_trials=5",
        "hp_space=hyperparameter_space",
        "trainer.state.best_metric",
        'suggest_categorical("per_device_train_batch_size", [64, 128, 256])',
    ):
        assert needle in source
