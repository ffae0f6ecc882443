"""The test tree mirrors the package: every subpackage `optuna_trainer/<sub>/` has its `tests/<sub>/` folder (with an
`__init__.py`, so that two test files of one name in two folders do not collide), and no test file sits in a folder
the package has no counterpart for. The top level holds the tests of the top-level modules and the cross-cutting
ones; EXTRA_FOLDERS names the only folders allowed beyond the mirror."""

from __future__ import annotations

from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "optuna_trainer"
TESTS = Path(__file__).resolve().parent

# Test folders with no package counterpart, and why each may exist.
EXTRA_FOLDERS = {
    # The real multi-process groups (accelerate launch / torchrun) and the scripts they launch, apart from the
    # single-process tests of optuna_trainer/processes/.
    "processes/distributed": "multi-process group tests and their launched scripts",
}


def _relative_folders(root: Path, has: str) -> set[str]:
    """Every folder below `root` (not `root` itself, no `__pycache__`) holding a file matching `has`, as a POSIX path
    relative to `root`."""
    return {
        path.parent.relative_to(root).as_posix()
        for path in root.rglob(has)
        if path.parent != root and "__pycache__" not in path.parts
    }


def layout_problems(package: Path, tests: Path, extra: dict[str, str] | None = None) -> list[str]:
    """What breaks the mirror between `package` and `tests`, one line each (empty when the layout holds)."""
    extra = EXTRA_FOLDERS if extra is None else extra
    subpackages = {
        path.parent.relative_to(package).as_posix()
        for path in package.rglob("__init__.py")
        if path.parent != package and "__pycache__" not in path.parts
    }
    problems = [
        f"optuna_trainer/{sub}/ has no tests/{sub}/__init__.py: create the folder and an empty __init__.py"
        for sub in sorted(subpackages)
        if not (tests / sub / "__init__.py").is_file()
    ]
    for folder in sorted(_relative_folders(tests, "*.py")):
        if folder not in subpackages and folder not in extra:
            files = sorted(p.name for p in (tests / folder).glob("*.py"))
            problems.append(
                f"tests/{folder}/ ({', '.join(files)}) has no optuna_trainer/{folder}/ counterpart: move its tests "
                "to the folder of the module they test, or to tests/ for the top-level modules"
            )
        elif not (tests / folder / "__init__.py").is_file():
            problems.append(f"tests/{folder}/ has no __init__.py: add an empty one")
    return problems


def test_the_tests_mirror_the_package():
    problems = layout_problems(PACKAGE, TESTS)
    assert problems == [], "the test tree does not mirror optuna_trainer/:\n" + "\n".join(problems)


def test_every_extra_folder_exists():
    # A stale entry would let a folder of that name come back unnoticed.
    missing = sorted(folder for folder in EXTRA_FOLDERS if not (TESTS / folder / "__init__.py").is_file())
    assert missing == [], f"EXTRA_FOLDERS names folders that are gone: {missing}"


# ---- the check itself, on small trees ---------------------------------------------------------------------------


def _tree(root: Path, files: list[str]) -> Path:
    for name in files:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("")
    return root


@pytest.fixture
def package(tmp_path) -> Path:
    return _tree(tmp_path / "pkg", ["__init__.py", "top.py", "search/__init__.py", "search/loop.py"])


def test_a_mirrored_tree_has_no_problem(tmp_path, package):
    tests = _tree(tmp_path / "tests", ["__init__.py", "test_top.py", "search/__init__.py", "search/test_loop.py"])
    assert layout_problems(package, tests, extra={}) == []


def test_a_subpackage_without_its_test_folder_is_named(tmp_path, package):
    tests = _tree(tmp_path / "tests", ["__init__.py", "test_top.py"])
    assert layout_problems(package, tests, extra={}) == [
        "optuna_trainer/search/ has no tests/search/__init__.py: create the folder and an empty __init__.py"
    ]


def test_a_test_folder_without_init_is_named(tmp_path, package):
    tests = _tree(tmp_path / "tests", ["__init__.py", "search/test_loop.py"])
    assert layout_problems(package, tests, extra={}) == [
        "optuna_trainer/search/ has no tests/search/__init__.py: create the folder and an empty __init__.py",
        "tests/search/ has no __init__.py: add an empty one",
    ]


def test_a_test_file_in_a_folder_with_no_counterpart_is_named(tmp_path, package):
    files = ["__init__.py", "search/__init__.py", "searching/__init__.py", "searching/test_x.py", "search/deep/t.py"]
    tests = _tree(tmp_path / "tests", files)
    problems = layout_problems(package, tests, extra={})
    assert problems == [
        "tests/search/deep/ (t.py) has no optuna_trainer/search/deep/ counterpart: move its tests to the folder of "
        "the module they test, or to tests/ for the top-level modules",
        "tests/searching/ (__init__.py, test_x.py) has no optuna_trainer/searching/ counterpart: move its tests to "
        "the folder of the module they test, or to tests/ for the top-level modules",
    ]
    # An extra folder is allowed (an __init__.py it still needs), and only that one.
    assert layout_problems(package, tests, extra={"search/deep": "why"}) == [
        "tests/search/deep/ has no __init__.py: add an empty one",
        problems[1],
    ]


def test_folders_without_python_files_are_not_test_folders(tmp_path, package):
    tests = _tree(
        tmp_path / "tests", ["__init__.py", "search/__init__.py", "data/rows.csv", "search/__pycache__/x.py"]
    )
    assert layout_problems(package, tests, extra={}) == []
