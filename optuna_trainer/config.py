"""Read `OptunaTrainingArguments` (and any other dataclasses) from a YAML or JSON config file, safely and clearly.

`HfArgumentParser.parse_yaml_file` on a missing file raises a bare `FileNotFoundError`, on broken YAML a parser
trace, and on a misspelt key "Some keys are not used by the HfArgumentParser". This reads the file with
`yaml.safe_load` (data only: a ``!!python/object`` tag is refused, nothing is ever constructed from the file) or
`json.load`, and says which file, which key or line, what is wrong and what would be right; the values then go
through `HfArgumentParser.parse_dict`, so they are typed and validated exactly as from the command line.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, cast

from transformers import HfArgumentParser

from optuna_trainer._files import DATA_SUFFIXES, read_data_file
from optuna_trainer.arguments import OptunaTrainingArguments

_SUFFIXES = DATA_SUFFIXES


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """The mapping a YAML/JSON config file holds; `ValueError` naming the file for anything else."""
    file = Path(path).expanduser()
    where = f"config file {str(path)!r}"
    if not file.is_file():
        what = "is a directory" if file.is_dir() else "does not exist"
        raise ValueError(f"{where}: {what}; pass the path of an existing .yaml, .yml or .json file")
    if file.suffix.lower() not in _SUFFIXES:
        raise ValueError(f"{where}: unknown extension {file.suffix!r}; use one of {list(_SUFFIXES)}")
    data = read_data_file(
        file, where, plain_data="config files are plain data: write each value as a number, string, list or mapping"
    )
    if data is None:
        raise ValueError(f"{where}: the file is empty; write one 'name: value' line per argument, e.g. 'n_trials: 20'")
    if not isinstance(data, dict):
        raise ValueError(
            f"{where}: expected a mapping of argument name -> value at the top level, got {type(data).__name__}"
        )
    return data


def parse_config_file(
    path: str | os.PathLike,
    dataclass_types: type | Iterable[type] = OptunaTrainingArguments,
    allow_extra_keys: bool = False,
) -> tuple[Any, ...]:
    """Parse a YAML/JSON config file into one instance per dataclass type, as `HfArgumentParser.parse_yaml_file`.

    Args:
        path: the config file (.yaml, .yml or .json).
        dataclass_types: the dataclasses to fill (default `OptunaTrainingArguments`).
        allow_extra_keys: accept keys that no dataclass has (otherwise a `ValueError` names them).

    Returns:
        A tuple with one instance per dataclass type, in order.
    """
    types = [dataclass_types] if isinstance(dataclass_types, type) else list(dataclass_types)
    data = read_config_file(path)
    known = {f.name for t in types for f in dataclasses.fields(t) if f.init}
    unknown = [k for k in data if k not in known]
    if unknown and not allow_extra_keys:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(str(key), known, n=1)
            hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ValueError(
            f"config file {str(path)!r}: unknown key(s) {', '.join(hints)}; keys are the fields of "
            f"{', '.join(t.__name__ for t in types)}"
        )
    try:
        # HfArgumentParser is typed for dataclass types; `types` are (checked above).
        return HfArgumentParser(cast(Any, types)).parse_dict(data, allow_extra_keys=allow_extra_keys)
    except (ValueError, TypeError) as err:
        raise ValueError(f"config file {str(path)!r}: {err}") from None
