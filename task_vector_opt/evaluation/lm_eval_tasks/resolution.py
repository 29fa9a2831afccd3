"""From the names the user gave to the tasks lm-eval runs: lm-eval's task indexes, the name table, the
user's own task folder, and close-match suggestions for a name found nowhere.

Everything here is quick: the task index used for names is a small one (lm-eval's japanese_leaderboard
folder plus --task_search_path); lm-eval's full index (about 14k names, 7-15 s to build) is only built,
once per process, for a name that is found nowhere else.
"""
from __future__ import annotations

import difflib
import functools
import re
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

from task_vector_opt.errors import UsageError
from task_vector_opt.evaluation.lm_eval_tasks.table import BY_LOCAL_TASK, JGLUE_URL, TASK_FAMILIES, VERSION_SUFFIX, \
    TaskFamily, family_of_original, family_of_task
from task_vector_opt.evaluation.lm_eval_tasks.task_list import TASKS_FLAG, TaskRequest

if TYPE_CHECKING:
    from lm_eval.tasks import TaskManager

DATA_DIR_FLAG = "--jglue_data_dir"
SEARCH_PATH_FLAG = "--task_search_path"


def lm_eval_tasks_dir() -> Path:
    """lm-eval's own task folder (found without importing lm-eval)."""
    spec = find_spec("lm_eval")
    if spec is None or not spec.submodule_search_locations:
        raise UsageError(TASKS_FLAG, "lm-eval is not installed; pip install 'lm_eval[japanese_leaderboard]'")
    return Path(list(spec.submodule_search_locations)[0]) / "tasks"


def ja_leaderboard_dir() -> Path:
    return lm_eval_tasks_dir() / "japanese_leaderboard"


@functools.cache
def task_manager(search_path: str | None, full: bool = False) -> TaskManager:
    """A TaskManager, built once per (search path, kind) per process; building one only indexes YAML files.

    ``full=False``: lm-eval's japanese_leaderboard folder plus ``search_path`` (fast, well under a second).
    ``full=True``: every lm-eval task plus ``search_path`` (7-15 s); only for names found nowhere else.
    """
    from lm_eval.tasks import TaskManager

    paths: list[str] = [] if full else [str(ja_leaderboard_dir())]
    if search_path:
        paths.append(search_path)
    return TaskManager(include_path=paths or None, include_defaults=full)


def _scan_builtin_yamls(names: Iterable[str]) -> tuple[set[str], set[str]]:
    """Which of ``names`` occur as a whole word in any YAML of lm-eval's task folder, and a rough list of the
    task/group/tag names written there (for suggestions). Reads the files as text: about 0.4 s, against 7-15 s
    for the full index. A name that occurs nowhere cannot be one of lm-eval's tasks."""
    patterns = {n: re.compile(rf"(?<![\w.\-]){re.escape(n)}(?![\w.\-])") for n in names}
    declared = re.compile(r"^\s*(?:task|group|tag):[ \t]*[\"']?([\w.\-:]+)", re.MULTILINE)
    present: set[str] = set()
    harvested: set[str] = set()
    for path in lm_eval_tasks_dir().rglob("*.yaml"):
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        harvested.update(declared.findall(text))
        for name, pattern in patterns.items():
            if name not in present and pattern.search(text):
                present.add(name)
    return present, harvested


def _unreadable_yamls(search_path: str) -> list[str]:
    from lm_eval.tasks._yaml_loader import load_yaml

    bad = []
    for path in sorted(Path(search_path).rglob("*.yaml")):
        try:
            cfg = load_yaml(path, resolve_func=False)
            if not isinstance(cfg, dict) or not ({"task", "group"} & set(cfg)):
                raise ValueError("no task/group key")
        except Exception:  # noqa: BLE001 - any failure means lm-eval skipped the file
            bad.append(str(path.relative_to(search_path)))
    return bad


def _suggestions(name: str, candidates: Iterable[str]) -> list[str]:
    pool = set(candidates)
    found = []
    stem_match = re.fullmatch(rf"(.*?)({VERSION_SUFFIX})", name.strip())
    if stem_match:  # a misspelled family keeps its version suffix: jcommonsenseq-1.1-0.3 -> jcommonsenseqa-1.1-0.3
        stem, suffix = stem_match.groups()
        stems = {f.stem: f for f in TASK_FAMILIES}
        for close in difflib.get_close_matches(stem.lower(), list(stems), n=2, cutoff=0.75):
            found += [close + suffix, stems[close].lm_eval_task]
    found += difflib.get_close_matches(name, sorted(pool), n=5, cutoff=0.6)
    lowered = {c.lower(): c for c in pool}
    found += [lowered[c] for c in difflib.get_close_matches(name.lower(), sorted(lowered), n=3, cutoff=0.6)]
    return list(dict.fromkeys(found))[:5]



@dataclass(frozen=True)
class ResolvedTask:
    name: str  # as given
    lm_eval_task: str  # what lm-eval runs: ja_leaderboard_*, jglue_local_*, or any other task name
    family: TaskFamily | None  # table row, for the JGLUE tasks


def check_search_path(value: str | None) -> str | None:
    if value is None:
        return None
    path = Path(value).expanduser()
    if not path.is_dir():
        what = "a file" if path.exists() else "missing"
        raise UsageError(SEARCH_PATH_FLAG, f"{value!r} is {what}, not a directory; give the directory that holds "
                                           "your lm-eval task YAML files")
    return str(path.resolve())


def check_data_dir(value: str | None) -> str | None:
    if value is None:
        return None
    path = Path(value).expanduser()
    if not path.is_dir():
        raise UsageError(DATA_DIR_FLAG, f"{value!r} is not a directory; give a local copy of the JGLUE repository "
                                        f"({JGLUE_URL}), the folder that holds datasets/")
    return str(path.resolve())


def resolve_tasks(requests: Sequence[TaskRequest], *, search_path: str | None = None,
                  data_dir: str | None = None) -> list[ResolvedTask]:
    """lm-eval task names for the requested names, in order.

    Precedence: a task defined under ``search_path`` (exact name) > a row of the name table (original names)
    > any task name lm-eval knows (ja_leaderboard_* directly, then lm-eval's full index). With ``data_dir``,
    the JGLUE tasks (however named) become their ``jglue_local_*`` twins. Groups and tags are refused:
    each entry must be one task with one score.
    """
    small = task_manager(search_path)
    user_names = set(task_manager_names_under(small, search_path))
    resolved: list[ResolvedTask | None] = []
    unknown: list[str] = []
    full: TaskManager | None = None
    for request in requests:
        name = request.name
        family = None
        if name in user_names:
            lm_name = name
        elif (family := family_of_original(name)) is not None:
            lm_name = family.lm_eval_task
        elif name in BY_LOCAL_TASK:  # a generated name typed directly: the same task, served by --jglue_data_dir
            if not data_dir:
                raise UsageError(TASKS_FLAG, f"{name!r} runs the JGLUE files of {DATA_DIR_FLAG}, which is not set; "
                                             f"pass {DATA_DIR_FLAG} or use {BY_LOCAL_TASK[name].original_names[0]}")
            family = BY_LOCAL_TASK[name]
            lm_name = family.lm_eval_task
        elif name in small.all_tasks:
            lm_name = name
            family = family_of_task(name)
        else:
            resolved.append(None)
            unknown.append(name)
            continue
        resolved.append(ResolvedTask(name, lm_name, family))

    if unknown:
        known_elsewhere, harvested = _scan_builtin_yamls(unknown)
        full = task_manager(search_path, full=True) if known_elsewhere else None
        for i, request in enumerate(requests):
            if resolved[i] is not None:
                continue
            if full is not None and request.name in full.all_tasks:
                resolved[i] = ResolvedTask(request.name, request.name, None)
                continue
            candidates = set(small.all_tasks) | set(BY_LOCAL_TASK) | (set(full.all_tasks) if full else harvested)
            candidates |= {n for f in TASK_FAMILIES for n in f.original_names}
            close = _suggestions(request.name, candidates)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            where = ("names: original ones like jcommonsenseqa-1.1-0.3, lm-eval task names like "
                     "ja_leaderboard_jnli" + (f", or tasks defined under {SEARCH_PATH_FLAG}" if search_path else ""))
            extra = ""
            if search_path and (bad := _unreadable_yamls(search_path)):
                extra = f"; lm-eval could not read these YAML files under {SEARCH_PATH_FLAG}: {', '.join(bad[:5])}"
            raise UsageError(TASKS_FLAG, f"unknown task {request.name!r}{hint} ({where}){extra}")

    manager_for_kinds = full if full is not None else small
    out: list[ResolvedTask] = []
    by_lm_name: dict[str, str] = {}
    for item in resolved:
        assert item is not None
        kind = _kind(manager_for_kinds, item.lm_eval_task)
        if kind in ("group", "tag"):
            raise UsageError(TASKS_FLAG, f"{item.name!r} is an lm-eval {kind}, not a single task; list its tasks "
                                         "instead (each task gets its own score and weight)")
        lm_name, family = item.lm_eval_task, item.family
        if data_dir and family is not None and family.local is not None and lm_name == family.lm_eval_task:
            lm_name = family.local_task
        if lm_name in by_lm_name:
            raise UsageError(TASKS_FLAG, f"{by_lm_name[lm_name]!r} and {item.name!r} both run lm-eval task {lm_name}; "
                                         "list it once (use name:weight to weigh it more)")
        by_lm_name[lm_name] = item.name
        out.append(ResolvedTask(item.name, lm_name, family))
    return out


def task_manager_names_under(manager: TaskManager, search_path: str | None) -> list[str]:
    """Names the manager indexed from files under ``search_path``."""
    if not search_path:
        return []
    root = Path(search_path)
    names = []
    for name, entry in manager.task_index.items():
        path = getattr(entry, "yaml_path", None)
        if path is not None and Path(path).resolve().is_relative_to(root):
            names.append(name)
    return names


def _kind(manager: TaskManager, name: str) -> str:
    if name in manager.all_groups:
        return "group"
    if name in manager.all_tags:
        return "tag"
    return "task"
