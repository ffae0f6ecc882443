"""Figure 11: what a checkpoint in the artifact store costs, beside writing it locally.

A trial with `artifact_store` uploads each checkpoint as `Trainer` saves it (training/checkpoint_upload.py: a tar next
to the checkpoint, its SHA-256, Optuna's `upload_artifact`), and a retried trial downloads it (check, then unpack).
This measures, for a real checkpoint folder (a BERT's `save_pretrained` plus its AdamW state, as `Trainer` writes
them), the seconds of: the local write; the upload to a directory store and to an S3 server (moto's standalone server
on 127.0.0.1, the tests' stand-in for S3: it measures the client side and the local network path, not a cloud
link); the download with its check and unpack. Each is the median of `--repeats` runs; the downloaded folder is
compared byte for byte with the original.

    python benchmarks/artifact_store.py            # BERT 4 layers, hidden 512 (~30M parameters, ~330 MB checkpoint)
    python benchmarks/artifact_store.py --quick    # CI: hidden 64 (~1 MB checkpoint), 1 repeat
"""

from __future__ import annotations

import argparse
import filecmp
import os
import statistics
import sys
import tempfile
import time
from typing import Any

sys.path[:0] = [
    os.path.dirname(os.path.abspath(__file__)),
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
]
import tables  # noqa: E402

NAME = "artifact_store"
COLUMNS = ["store", "checkpoint MB", "local write s", "upload s", "upload MB/s", "download + check s", "identical"]


def checkpoint(folder: str, hidden: int) -> float:
    """Write a checkpoint as `Trainer` does (weights, config, AdamW state); return the seconds it took."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    model = BertForSequenceClassification(
        BertConfig(
            hidden_size=hidden,
            num_hidden_layers=4,
            num_attention_heads=4,
            intermediate_size=4 * hidden,
            vocab_size=8192,
            num_labels=2,
        )
    )
    optimizer = torch.optim.AdamW(model.parameters())
    model(input_ids=torch.ones(2, 8, dtype=torch.long), labels=torch.zeros(2, dtype=torch.long)).loss.backward()
    optimizer.step()
    started = time.perf_counter()
    model.save_pretrained(folder)
    torch.save(optimizer.state_dict(), os.path.join(folder, "optimizer.pt"))
    return time.perf_counter() - started


def size_mb(folder: str) -> float:
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, files in os.walk(folder) for f in files) / 1e6


def same_tree(a: str, b: str) -> bool:
    cmp = filecmp.dircmp(a, b)
    if cmp.left_only or cmp.right_only or cmp.diff_files or cmp.funny_files:
        return False
    files = [f for f in os.listdir(a) if os.path.isfile(os.path.join(a, f))]
    _, mismatch, errors = filecmp.cmpfiles(a, b, files, shallow=False)
    return not mismatch and not errors and all(same_tree(os.path.join(a, d), os.path.join(b, d)) for d in cmp.subdirs)


def measure(url: str, folder: str, work: str, repeats: int) -> dict[str, Any]:
    import optuna

    from optuna_trainer.study.artifacts import download_folder, open_artifact_store, remove_artifact, upload_folder

    opened = open_artifact_store(url)
    study = optuna.create_study()
    ups, downs, identical = [], [], True
    for i in range(repeats):
        started = time.perf_counter()
        record = upload_folder(opened, folder, study)
        ups.append(time.perf_counter() - started)
        dest = tempfile.mkdtemp(prefix=f"down-{i}-", dir=work) + "/checkpoint"
        started = time.perf_counter()
        download_folder(opened, dict(record), dest)
        downs.append(time.perf_counter() - started)
        identical = identical and same_tree(folder, dest)
        remove_artifact(opened, record["artifact_id"])
    up = statistics.median(ups)
    return {
        "upload s": up,
        "upload MB/s": size_mb(folder) / up,
        "download + check s": statistics.median(downs),
        "identical": identical,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--out", default=tables.DEFAULT_OUT)
    a = parser.parse_args(argv)
    hidden, repeats = (64, 1) if a.quick else (512, a.repeats or 3)
    from tests.support import s3_server

    rows = []
    with tempfile.TemporaryDirectory() as work:
        folder = os.path.join(work, "checkpoint-500")
        write_s = checkpoint(folder, hidden)
        mb = size_mb(folder)
        base = {"checkpoint MB": round(mb, 1), "local write s": write_s}
        rows.append({"store": "directory", **base, **measure(os.path.join(work, "store"), folder, work, repeats)})
        try:
            import boto3

            server = s3_server()
            env = server.__enter__()
        except BaseException as err:  # noqa: BLE001 - pytest's skip outside pytest: the row says why
            rows.append({"store": f"S3 (moto) unavailable: {err}", **base})
        else:
            try:
                os.environ.update(env)
                boto3.client("s3").create_bucket(Bucket="bench")
                rows.append(
                    {"store": "S3 (moto, 127.0.0.1)", **base, **measure("s3://bench/ckpt", folder, work, repeats)}
                )
            finally:
                server.__exit__(None, None, None)
    notes = [
        "upload: tar next to the checkpoint, SHA-256, Optuna's upload_artifact; download: the file, its SHA-256 and "
        "size checked, unpacked with tarfile's data filter, renamed into place",
        "a trial waits for the upload in on_save: the upload column is what each save adds to a trial",
    ]
    tables.write_table(
        a.out,
        NAME,
        "Figure 11: a checkpoint in the artifact store",
        COLUMNS,
        rows,
        {
            "command": "python benchmarks/artifact_store.py" + (" --quick" if a.quick else ""),
            "repeats": repeats,
            "hidden": hidden,
        },
        notes,
    )
    return {"rows": rows}


if __name__ == "__main__":
    main()
