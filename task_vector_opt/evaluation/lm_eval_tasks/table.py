"""The one table of task names: the original's Stability-style names (``jcommonsenseqa-1.1-0.3``,
``jnli-1.3-0.2``, ...), the lm-eval ``ja_leaderboard_*`` task each runs, and where the JGLUE tasks'
data sits in a local copy of the official JGLUE repository."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

LOCAL_PREFIX = "jglue_local_"  # generated tasks: jglue_local_jcommonsenseqa, ...
JGLUE_URL = "https://github.com/yahoojapan/JGLUE"


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

VERSION_SUFFIX = r"(?:-\d+(?:\.\d+)*)*"  # "-1.1-0.3", "-1.0-0.2.1", or nothing
_FAMILY_PATTERNS = [(re.compile(rf"{re.escape(f.stem)}{VERSION_SUFFIX}", re.IGNORECASE), f)
                    for f in TASK_FAMILIES]
_BY_LM_EVAL = {f.lm_eval_task: f for f in TASK_FAMILIES}
BY_LOCAL_TASK = {f.local_task: f for f in TASK_FAMILIES if f.local_task}  # jglue_local_<stem> -> its row


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
    return _BY_LM_EVAL.get(lm_eval_task) or BY_LOCAL_TASK.get(lm_eval_task)
