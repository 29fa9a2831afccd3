"""Imports point down the stages only: the command line (cli/) may import any stage and the engine, but no stage
(merging/, search/, evaluation/, outputs/) and no shared module at the package root imports the command line,
and no stage imports the engine that drives it. Every import counts: at the top, inside a function, or for type
checking only."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "task_vector_opt"
STAGES = ("merging", "search", "evaluation", "outputs")
SHARED = ("errors.py", "files.py", "identity.py", "run_config.py", "sources.py")  # below the stages' users


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) for each import in the file; ``from a import b`` gives a.b too, as b may be a module."""
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the file's own package, up level - 1
                parent = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def reaches(module: str, target: str) -> bool:
    return module == target or module.startswith(target + ".")


def files_of(*places: str) -> list[Path]:
    files = []
    for place in places:
        path = PACKAGE / place
        files += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    return files


def upward_imports(files: list[Path], targets: tuple[str, ...]) -> list[str]:
    """'task_vector_opt/merging/models.py:11 imports task_vector_opt.cli.config', one per import statement."""
    found = {}
    for path in files:
        for line, module in imported_modules(path):
            if any(reaches(module, t) for t in targets):
                found.setdefault((path, line), f"{path.relative_to(PACKAGE.parent)}:{line} imports {module}")
    return list(found.values())


@pytest.mark.parametrize("place", STAGES + SHARED)
def test_no_stage_and_no_shared_module_imports_the_command_line(place):
    assert upward_imports(files_of(place), ("task_vector_opt.cli",)) == []


@pytest.mark.parametrize("place", STAGES + SHARED)
def test_no_stage_and_no_shared_module_imports_the_engine(place):
    assert upward_imports(files_of(place), ("task_vector_opt.engine",)) == []


def test_the_engine_does_not_import_the_command_line():
    assert upward_imports(files_of("engine.py"), ("task_vector_opt.cli",)) == []


def test_the_check_sees_an_import_inside_a_function_and_under_type_checking(tmp_path, monkeypatch):
    stage = tmp_path / "task_vector_opt" / "merging"
    stage.mkdir(parents=True)
    (stage / "lower.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                    "    from task_vector_opt.cli.config import RunConfig\n"
                                    "def f():\n    from ..cli import validation\n    import task_vector_opt.engine\n")
    monkeypatch.setitem(globals(), "PACKAGE", tmp_path / "task_vector_opt")
    found = upward_imports([stage / "lower.py"], ("task_vector_opt.cli", "task_vector_opt.engine"))
    assert [line.split(" imports ")[0].rsplit(":", 1)[1] for line in found] == ["3", "5", "6"]
