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
            data = json.loads(text, object_pairs_hook=_unique_pairs)
        else:
            check_unique_yaml_keys(yaml.compose(text, Loader=yaml.SafeLoader))
            data = yaml.safe_load(text)
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{prefix}: not valid JSON: {err.msg} at line {err.lineno} column {err.colno}; fix the JSON there"
        ) from None
    except DuplicateKeyError as err:
        raise ValueError(f"{prefix}: {err}; keep one of them") from None
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
    check_size(data, prefix)
    return data


def parse_json_text(text: str, where: str, hint: str) -> Any:
    """The value of an inline JSON setting (`--hp_space '{...}'`); `ValueError` starting with `where`, ending with
    `hint` (what to write instead), for text that is not JSON or is too large or deep to be a setting."""
    try:
        data = json.loads(text, object_pairs_hook=_unique_pairs)
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{where}: not valid JSON ({err.msg} at line {err.lineno} column {err.colno}); {hint}"
        ) from None
    except DuplicateKeyError as err:
        raise ValueError(f"{where}: {err}; keep one of them") from None
    except RecursionError:
        raise ValueError(f"{where}: nested too deeply to be a setting; {hint}") from None
    check_size(data, where)
    return data


class DuplicateKeyError(ValueError):
    """A key given twice in one mapping: YAML and JSON parsers keep the last one silently."""


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise DuplicateKeyError(f"the key {key!r} is given twice in one mapping")
        out[key] = value
    return out


def check_unique_yaml_keys(root: yaml.Node | None) -> None:
    """Raise `DuplicateKeyError` for a key given twice in one YAML mapping (with its line). Walks the composed node
    graph, each node once (aliases share nodes), so it costs what the file's size does."""
    seen: set[int] = set()
    stack = [root] if root is not None else []
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            keys: set[Any] = set()
            for key_node, value_node in node.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                    if key_node.value in keys:
                        raise DuplicateKeyError(
                            f"the key {key_node.value!r} is given twice in one mapping (again at line "
                            f"{key_node.start_mark.line + 1})"
                        )
                    keys.add(key_node.value)
                stack.extend((key_node, value_node))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)


# A settings file is small: a search space or a config holds tens of values, a grid a few thousand. YAML aliases let a
# few hundred bytes stand for billions of values ("billion laughs"), which anything that walks the value (a check, an
# error message, a copy) would then expand; such a file is refused after a bounded walk.
MAX_VALUES = 100_000
MAX_DEPTH = 32


def check_size(data: Any, where: str) -> None:
    """Raise `ValueError` if `data` holds more than `MAX_VALUES` values or nests deeper than `MAX_DEPTH`, counting a
    value shared through a YAML alias each time it appears; the walk stops at the bound, so it is cheap."""
    count = 0
    stack: list[tuple[Any, int]] = [(data, 0)]
    while stack:
        value, depth = stack.pop()
        count += 1
        if count > MAX_VALUES:
            raise ValueError(
                f"{where}: holds more than {MAX_VALUES} values (YAML aliases that repeat each other?); "
                "write the values out"
            )
        if depth > MAX_DEPTH:
            raise ValueError(f"{where}: nested deeper than {MAX_DEPTH} levels; flatten the file")
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
            stack.extend((k, depth + 1) for k in value)
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)
