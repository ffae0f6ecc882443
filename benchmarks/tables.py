"""The benchmarks' output: a Markdown table printed and written beside its JSON, with the machine and the command."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from measure import machine

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(REPO, "benchmarks", "results")


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
        json.dump(
            {"title": title, "columns": list(columns), "rows": list(rows), "meta": meta}, f, indent=2, default=str
        )
    print(text, flush=True)
    return text


def command_line() -> str:
    return "python " + " ".join([os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]])
