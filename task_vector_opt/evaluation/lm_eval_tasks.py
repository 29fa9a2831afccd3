"""lm-eval task naming and data for the JGLUE evaluator: no model code here.

* ``parse_task_list`` reads ``--jglue_tasks`` (``name`` or ``name:weight``, comma-separated).
* ``TASK_FAMILIES`` is the one table that maps the original's Stability-style names
  (``jcommonsenseqa-1.1-0.3``, ``jnli-1.3-0.2``, ...) to lm-eval's ``ja_leaderboard_*`` tasks.
* ``resolve_tasks`` turns the names into lm-eval task names, raising UsageError with close matches.
* ``write_local_tasks`` generates lm-eval task YAMLs that run the ``ja_leaderboard_*`` JGLUE tasks
  (same prompts, metrics and few-shot) on a local copy of the official JGLUE repository.
* ``primary_metric`` / ``weighted_mean`` are the scoring rules.

Everything that validates flags here is quick: the task index used for names is a small one
(lm-eval's japanese_leaderboard folder plus --task_search_path); lm-eval's full index (about 14k
names, 7-15 s to build) is only built, once per process, for a name that is found nowhere else.
"""
from __future__ import annotations

import difflib
import functools
import math
import re
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import yaml

from task_vector_opt.errors import UsageError
from task_vector_opt.files import write_atomic

if TYPE_CHECKING:
    from lm_eval.api.task import Task
    from lm_eval.tasks import TaskManager

TASKS_FLAG = "--jglue_tasks"
DATA_DIR_FLAG = "--jglue_data_dir"
SEARCH_PATH_FLAG = "--task_search_path"

LOCAL_PREFIX = "jglue_local_"  # generated tasks: jglue_local_jcommonsenseqa, ...
# process_docs hooks of the generated tasks: a module of this package (not imported here: it needs `datasets`),
# copied next to the generated YAMLs, where lm-eval's `!function` finds it
HOOKS_FILE = Path(__file__).with_name("jglue_local_hooks.py")
HOOKS_MODULE = HOOKS_FILE.stem
JGLUE_URL = "https://github.com/yahoojapan/JGLUE"


# --------------------------------------------------------------------------------------------- the table

@dataclass(frozen=True)
class LocalData:
    """Where one JGLUE dataset sits in the official repository, and how its rows become hub-style docs."""

    folder: str  # datasets/<folder>-v<folder version>/{train,valid}-v<file version>.json
    versions: tuple[tuple[str, str], ...]  # (folder version, file version), tried in order; errors name the first
    process_docs: str | None  # function of the generated hooks module; None keeps lm-eval's own
    json_field: str | None = None  # SQuAD-style files keep their rows under this key
    missing_hint: str = ""

    def files(self, data_dir: Path, version: tuple[str, str]) -> dict[str, Path]:
        folder_version, file_version = version
        folder = data_dir / "datasets" / f"{self.folder}-v{folder_version}"
        return {"train": folder / f"train-v{file_version}.json", "validation": folder / f"valid-v{file_version}.json"}


@dataclass(frozen=True)
class TaskFamily:
    """One row of the name table: a family of the original's task names and the lm-eval task it runs."""

    stem: str  # the original's name without its "-<data version>-<prompt version>" suffix
    lm_eval_task: str
    original_names: tuple[str, ...]  # names the original's scripts used (help, docs and close-match suggestions)
    local: LocalData | None = None  # set for the JGLUE tasks that --jglue_data_dir can serve

    @property
    def local_task(self) -> str | None:
        return LOCAL_PREFIX + self.stem if self.local else None


TASK_FAMILIES: tuple[TaskFamily, ...] = (
    TaskFamily("jcommonsenseqa", "ja_leaderboard_jcommonsenseqa",
               ("jcommonsenseqa-1.1-0.3", "jcommonsenseqa-1.1-0.2", "jcommonsenseqa-1.1-0.6"),
               LocalData("jcommonsenseqa", (("1.3", "1.3"), ("1.1", "1.1")), None)),  # rows already match the hub's
    TaskFamily("jnli", "ja_leaderboard_jnli", ("jnli-1.3-0.2", "jnli-1.1-0.2", "jnli-1.3-0.6"),
               LocalData("jnli", (("1.3", "1.3"), ("1.1", "1.1")), "jnli_docs")),
    TaskFamily("marc_ja", "ja_leaderboard_marc_ja", ("marc_ja-1.1-0.2", "marc_ja-1.1-0.6"),
               LocalData("marc_ja", (("1.1", "1.1"), ("1.1", "1.0")), "marc_ja_docs",  # JGLUE's script writes v1.0
                         missing_hint="JGLUE does not ship MARC-ja's data: build it with the JGLUE repository's "
                                      "preprocessing scripts, or drop marc_ja from --jglue_tasks")),
    TaskFamily("jsquad", "ja_leaderboard_jsquad", ("jsquad-1.1-0.2", "jsquad-1.2-0.2", "jsquad-1.1-0.6"),
               LocalData("jsquad", (("1.3", "1.3"), ("1.1", "1.1")), "jsquad_docs", json_field="data")),
    TaskFamily("jaqket_v2", "ja_leaderboard_jaqket_v2", ("jaqket_v2-0.2-0.2", "jaqket_v2-0.1-0.2")),
    TaskFamily("xwinograd_ja", "ja_leaderboard_xwinograd", ("xwinograd_ja",)),
    TaskFamily("mgsm", "ja_leaderboard_mgsm", ("mgsm", "mgsm-1.0-0.6")),
    TaskFamily("xlsum_ja", "ja_leaderboard_xlsum", ("xlsum_ja", "xlsum_ja-1.0-0.6")),
)

_SUFFIX = r"(?:-\d+(?:\.\d+)*)*"  # "-1.1-0.3", "-1.0-0.2.1", or nothing
_FAMILY_PATTERNS = [(re.compile(rf"{re.escape(f.stem)}{_SUFFIX}", re.IGNORECASE), f) for f in TASK_FAMILIES]
_BY_LM_EVAL = {f.lm_eval_task: f for f in TASK_FAMILIES}
_BY_LOCAL = {f.local_task: f for f in TASK_FAMILIES if f.local_task}


def family_of_original(name: str) -> TaskFamily | None:
    """The table row for an original (Stability-style) name, e.g. ``jnli-1.3-0.2`` -> jnli; None if no row fits.

    The version numbers select prompt/data versions in the original harness; here every version of a
    family runs lm-eval's ja_leaderboard task (its prompts follow the original's Alpaca-style 0.2/0.3 ones).
    """
    for pattern, family in _FAMILY_PATTERNS:
        if pattern.fullmatch(name.strip()):
            return family
    return None


def family_of_task(lm_eval_task: str) -> TaskFamily | None:
    """The table row of a resolved lm-eval task name (ja_leaderboard_* or jglue_local_*)."""
    return _BY_LM_EVAL.get(lm_eval_task) or _BY_LOCAL.get(lm_eval_task)


# ------------------------------------------------------------------------------------------ --jglue_tasks

@dataclass(frozen=True)
class TaskRequest:
    name: str  # as the user wrote it; also the display name in details and logs
    weight: float = 1.0


def parse_task_list(value: str | None) -> list[TaskRequest]:
    """``--jglue_tasks``: ``name[:weight],...``; weights are positive numbers (default 1.0)."""
    if value is None or not value.strip():
        raise UsageError(TASKS_FLAG, "no task given; list lm-eval tasks, e.g. jcommonsenseqa-1.1-0.3,jnli-1.3-0.2")
    requests: list[TaskRequest] = []
    seen: set[str] = set()
    for raw in value.split(","):
        item = raw.strip()
        if not item:
            raise UsageError(TASKS_FLAG, f"empty entry in {value!r}; separate task names with single commas")
        name, weight = item, 1.0
        colon = item.rfind(":")
        if colon > 0 and item[colon - 1] != ":":  # "group::task" names of lm-eval carry no weight
            name, text = item[:colon].strip(), item[colon + 1:].strip()
            try:
                weight = float(text)
            except ValueError:
                weight = math.nan
            if not (math.isfinite(weight) and weight > 0):
                raise UsageError(TASKS_FLAG, f"bad weight {text!r} in {item!r}; write name:weight with a positive "
                                             "number, e.g. jnli-1.3-0.2:0.5")
        if not name:
            raise UsageError(TASKS_FLAG, f"missing task name in {item!r}; write name or name:weight")
        if name in seen:
            raise UsageError(TASKS_FLAG, f"task {name!r} is listed twice in {value!r}; list each task once "
                                         "(use name:weight to weigh it more)")
        seen.add(name)
        requests.append(TaskRequest(name, weight))
    return requests


def normalized_weights(requests: Sequence[TaskRequest]) -> list[float]:
    total = sum(r.weight for r in requests)
    return [r.weight / total for r in requests]


def per_task_ints(flag: str, value: str | None, names: Sequence[str], *, minimum: int,
                  allow_default: bool = False) -> list[int | None] | None:
    """One integer per task, comma-separated; a single value applies to every task. None when not given.

    With ``allow_default``, an entry ``default`` (or ``none``) keeps that task's own setting (returned as None).
    """
    if value is None:
        return None
    text = str(value).strip()
    items = [t.strip() for t in text.split(",")]
    n = len(names)
    if len(items) not in (1, n):
        raise UsageError(flag, f"got {len(items)} values ({text}) for {n} tasks ({', '.join(names)}); give one "
                               "value per task, in the order of --jglue_tasks, or a single value for all")
    kind = "a positive integer" if minimum >= 1 else "a non-negative integer"
    parsed: list[int | None] = []
    for item in items:
        if allow_default and item.lower() in ("default", "none"):
            parsed.append(None)
            continue
        if not re.fullmatch(r"[+-]?\d+", item):
            extra = " or 'default'" if allow_default else ""
            raise UsageError(flag, f"{item!r} in {text!r} is not an integer; each value must be {kind}{extra}")
        number = int(item)
        if number < minimum:
            raise UsageError(flag, f"{number} in {text!r} is out of range; each value must be {kind}")
        parsed.append(number)
    return parsed * n if len(parsed) == 1 else parsed


# ------------------------------------------------------------------------------------------ task indexes

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
    stem_match = re.fullmatch(rf"(.*?)({_SUFFIX})", name.strip())
    if stem_match:  # a misspelled family keeps its version suffix: jcommonsenseq-1.1-0.3 -> jcommonsenseqa-1.1-0.3
        stem, suffix = stem_match.groups()
        stems = {f.stem: f for f in TASK_FAMILIES}
        for close in difflib.get_close_matches(stem.lower(), list(stems), n=2, cutoff=0.75):
            found += [close + suffix, stems[close].lm_eval_task]
    found += difflib.get_close_matches(name, sorted(pool), n=5, cutoff=0.6)
    lowered = {c.lower(): c for c in pool}
    found += [lowered[c] for c in difflib.get_close_matches(name.lower(), sorted(lowered), n=3, cutoff=0.6)]
    return list(dict.fromkeys(found))[:5]


# ----------------------------------------------------------------------------------------- resolution

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
        elif name in _BY_LOCAL:  # a generated name typed directly: the same task, served by --jglue_data_dir
            if not data_dir:
                raise UsageError(TASKS_FLAG, f"{name!r} runs the JGLUE files of {DATA_DIR_FLAG}, which is not set; "
                                             f"pass {DATA_DIR_FLAG} or use {_BY_LOCAL[name].original_names[0]}")
            family = _BY_LOCAL[name]
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
            candidates = set(small.all_tasks) | set(_BY_LOCAL) | (set(full.all_tasks) if full else harvested)
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


# ------------------------------------------------------------------------------------ local JGLUE data

@dataclass(frozen=True)
class LocalTaskFiles:
    task: str  # jglue_local_<stem>
    family: TaskFamily
    folder: str  # datasets/<folder>, as found
    files: dict[str, Path]  # split -> absolute path


def local_data_files(data_dir: str, tasks: Sequence[ResolvedTask]) -> list[LocalTaskFiles]:
    """The files each local JGLUE task reads; UsageError naming the first missing file."""
    root = Path(data_dir)
    found: list[LocalTaskFiles] = []
    for task in tasks:
        family = task.family
        if family is None or family.local is None or task.lm_eval_task != family.local_task:
            continue
        local = family.local
        for version in local.versions:
            files = local.files(root, version)
            if all(p.is_file() for p in files.values()):
                resolved = {split: path.resolve() for split, path in files.items()}
                folder = files["train"].parent.name
                found.append(LocalTaskFiles(task.lm_eval_task, family, folder, resolved))
                break
        else:
            expected = local.files(root, local.versions[0])
            missing = [p for p in expected.values() if not p.is_file()]
            shown = ", ".join(str(p.relative_to(root)) for p in missing)
            hint = local.missing_hint or f"copy the datasets/ folder of {JGLUE_URL} there"
            alternatives = [str(p.relative_to(root)) for v in local.versions[1:] for p in local.files(root, v).values()]
            others = f" (or else {', '.join(alternatives)})" if alternatives else ""
            raise UsageError(DATA_DIR_FLAG, f"{data_dir!r} is missing {shown}{others}, needed by task "
                                            f"{task.name!r}; {hint}")
    return found


_UNFOLDED = 1 << 30  # a YAML line width that never folds a long path across lines


class FunctionRef(str):
    """A ``!function module.name`` value of an lm-eval task YAML (a hook lm-eval imports)."""


class TaskYamlDumper(yaml.SafeDumper):
    """``yaml.safe_dump``'s dumper plus the two values our task YAMLs hold beyond plain data: lm-eval's
    ``!function`` tag (its loader resolves it to the hook), and paths, written as double-quoted strings."""


TaskYamlDumper.add_representer(FunctionRef, lambda dumper, ref: dumper.represent_scalar("!function", str(ref)))
TaskYamlDumper.add_multi_representer(
    PurePath, lambda dumper, path: dumper.represent_scalar("tag:yaml.org,2002:str", str(path), style='"'))


def task_yaml(header: Sequence[str], config: dict[str, Any]) -> str:
    """An lm-eval task YAML: ``header`` as comment lines, then ``config`` in its own key order, on unfolded lines."""
    comments = "".join(f"# {line}\n" for line in header)
    return comments + yaml.dump(config, Dumper=TaskYamlDumper, allow_unicode=True, sort_keys=False,
                                default_flow_style=False, width=_UNFOLDED)


def write_local_tasks(out_dir: Path, files: Sequence[LocalTaskFiles], data_dir: str) -> dict[str, Path]:
    """Write one lm-eval task YAML per local JGLUE task (+ the hooks module) into ``out_dir``.

    Each YAML ``include:``s lm-eval's ja_leaderboard config (prompts, metric, few-shot, splits) and only
    swaps the data: ``dataset_path: json`` on the official files, plus a ``process_docs`` hook where the
    official rows differ from the hub's (JNLI/MARC-ja string labels, JSQuAD's nested SQuAD layout).
    The hooks are ``jglue_local_hooks.py`` of this package, copied beside the YAMLs, where lm-eval's
    ``!function`` looks first; so the folder works as is with
    ``lm_eval --include_path <out_dir> --tasks jglue_local_jnli,...``. Returns task name -> YAML path.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(out_dir / HOOKS_FILE.name, HOOKS_FILE.read_bytes())
    written: dict[str, Path] = {}
    for item in files:
        local = item.family.local
        assert local is not None
        dataset_kwargs: dict[str, Any] = {"data_files": dict(item.files)}
        if local.json_field:
            dataset_kwargs["field"] = local.json_field
        config: dict[str, Any] = {
            "include": ja_leaderboard_dir() / f"{item.family.lm_eval_task}.yaml",
            "task": item.task,
            "dataset_path": "json",
            "dataset_name": None,
            "dataset_kwargs": dataset_kwargs,
        }
        if local.process_docs:
            config["process_docs"] = FunctionRef(f"{HOOKS_MODULE}.{local.process_docs}")
        header = [f"Written by task_vector_opt: {item.family.lm_eval_task} on the local JGLUE copy {data_dir}",
                  f"(datasets/{item.folder}). Same prompts, metric and few-shot as the included task."]
        path = out_dir / f"{item.task}.yaml"
        write_atomic(path, task_yaml(header, config))
        written[item.task] = path
    return written


# --------------------------------------------------------------------------------------------- scoring

PREFERRED_METRICS = ("acc", "exact_match")


def primary_metric(task: Task) -> tuple[str, str]:
    """(metric, result key) that scores ``task``.

    The rule: ``acc`` if the task has it, else ``exact_match``, else the first metric of the task's
    ``metric_list`` (user tasks with their own process_results), else the first metric lm-eval aggregates.
    The result key adds the task's first filter, as lm-eval names results: ``"exact_match,whitespaces"``.

    Values are taken as lm-eval reports them, which is 0..1 for acc and exact_match (lm-eval 0.4's
    exact_match is already a fraction; the original's Stability harness reported JSQuAD exact_match on
    0..100 and divided it by 100 - not needed here). A user metric on another scale is used unscaled.
    """
    names: list[str] = []
    for item in task.config.metric_list or []:
        metric = item.get("metric") if isinstance(item, dict) else None
        names.append(metric if isinstance(metric, str) else getattr(metric, "__name__", str(metric)))
    names += [n for n in task.aggregation() if n not in names]
    if not names:
        raise ValueError(f"task {task.config.task} has no metric")
    metric = next((m for m in PREFERRED_METRICS if m in names), names[0])
    filters = [getattr(f, "name", None) for f in getattr(task, "_filters", [])] or ["none"]
    return metric, f"{metric},{filters[0]}"


def higher_is_better(task: Task, metric: str) -> bool:
    value = task.higher_is_better().get(metric, True)
    return value is not False


def weighted_mean(values: Sequence[float], weights: Sequence[float]) -> float:
    total = sum(weights)
    return sum(v * w for v, w in zip(values, weights, strict=True)) / total


def result_value(results: dict[str, Any], task_name: str, key: str) -> float:
    """The metric ``key`` of ``task_name`` in an lm-eval results dict, as a float."""
    task_results = results["results"][task_name]
    if key not in task_results:
        metric = key.split(",")[0]
        alternatives = [k for k in task_results if k.split(",")[0] == metric]
        if not alternatives:
            raise KeyError(f"lm-eval reported no {key!r} for {task_name}: {sorted(task_results)}")
        key = alternatives[0]
    return float(task_results[key])
