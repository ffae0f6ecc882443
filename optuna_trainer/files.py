"""Reading the YAML/JSON files users hand over (config files, search spaces): data only, and errors that say where.

One reader for every such file, so that each gets the same safety (`yaml.safe_load`: a `!!python/object` tag is
refused and nothing is constructed from the file) and the same messages: which setting, which file, which line and
column, and what to write instead.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

DATA_SUFFIXES = (".yaml", ".yml", ".json")


def read_data_file(path: Path, where: str, plain_data: str) -> Any:
    """What the YAML or JSON file `path` holds (JSON for a `.json` suffix, YAML otherwise).

    Args:
        path: an existing file.
        where: what the file is for, first in every message and naming the file (`"hp_space: cannot parse s.yaml"`,
            `"config file 's.yaml'"`).
        plain_data: what the user should write instead when the file holds a YAML tag that builds an object.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{where}: not UTF-8 text (byte {err.start}); save the file as UTF-8") from None
    prefix = where
    try:
        if path.suffix.lower() == ".json":
            return json.loads(text)
        return yaml.safe_load(text)
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{prefix}: not valid JSON: {err.msg} at line {err.lineno} column {err.colno}; fix the JSON there"
        ) from None
    except yaml.constructor.ConstructorError as err:
        line = f" at line {err.problem_mark.line + 1}" if err.problem_mark is not None else ""
        raise ValueError(
            f"{prefix}: {err.problem}{line}; {plain_data} (YAML tags such as !!python/object are refused)"
        ) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ValueError(f"{prefix}: not valid YAML: {problem}{at}; fix the YAML there") from None
    except RecursionError:
        raise ValueError(f"{prefix}: nested too deeply to be a setting; flatten the file") from None
