"""lm-eval task YAMLs that run the ``ja_leaderboard_*`` JGLUE tasks (same prompts, metrics and few-shot)
on a local copy of the official JGLUE repository, for runs without hub access."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any, Sequence

import yaml

from task_vector_opt.errors import UsageError
from task_vector_opt.evaluation.lm_eval_tasks.resolution import DATA_DIR_FLAG, ResolvedTask, ja_leaderboard_dir
from task_vector_opt.evaluation.lm_eval_tasks.table import JGLUE_URL, TaskFamily
from task_vector_opt.files import write_atomic

# process_docs hooks of the generated tasks: a module of this package (not imported here: it needs `datasets`),
# copied next to the generated YAMLs, where lm-eval's `!function` finds it
HOOKS_FILE = Path(__file__).with_name("jglue_local_hooks.py")
HOOKS_MODULE = HOOKS_FILE.stem


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
