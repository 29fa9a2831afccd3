"""What the storages already hold for a run, read before any model loads: whether this study is finished (so a
saved model can be recognised), whether a study named on the command line was made with this run's inputs, and
which other study of the same models a rerun would have resumed.

A run is named here by its storage URL, study name and identity (the run config's ``study_identity()``), so this
stage does not depend on the command line's config."""
from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import optuna

from task_vector_opt.errors import UsageError
from task_vector_opt.identity import differences, flatten

log = logging.getLogger(__name__)

IDENTITY_ATTR = "identity"  # the study's user attr holding RunConfig.study_identity() (engine.search sets it)
INPUTS_ATTR = "inputs"  # RunConfig.recipe_inputs() (engine.search), which older studies hold without the identity
SAME_MODELS = ("pipeline", "targets", "base_model", "tuned_model")
MAX_SIBLINGS = 200  # default run directories looked at; a runs/ folder is not expected to hold more
MAX_NAMED = 5  # differences named in the note


def _exists(url: str) -> bool:
    """False for a file storage (SQLite, journal) whose file is not there yet: then it holds no study, and
    opening it would create it."""
    from task_vector_opt.search.study import is_journal

    if url.startswith("sqlite:///"):
        return Path(url.removeprefix("sqlite:///")).expanduser().is_file()
    if is_journal(url):
        return Path(url.removeprefix("journal:")).expanduser().is_file()
    return True


@contextmanager
def _opened(url: str) -> Iterator[optuna.storages.BaseStorage | None]:
    """The storage, or None when it is absent or cannot be opened (this is a look, not a check)."""
    from task_vector_opt.search.study import open_storage

    storage = None
    if _exists(url):
        try:
            storage = open_storage(url)
        except UsageError:
            storage = None
    try:
        yield storage
    finally:
        engine = getattr(storage, "engine", None)
        if engine is not None:
            engine.dispose()


def finished_best_trial(storage_url: str, study_name: str, n_trials: int) -> int | None:
    """The number of the study's best trial when the study has its ``n_trials`` finished, else None."""
    from task_vector_opt.search.study import finished_trials

    with _opened(storage_url) as storage:
        if storage is None:
            return None
        try:
            study = optuna.load_study(study_name=study_name, storage=storage)
            if finished_trials(study) < n_trials:
                return None
            from task_vector_opt.search.selection import chosen_trial

            return chosen_trial(study.get_trials(deepcopy=False)).number
        except (KeyError, ValueError):  # no such study; no completed trial
            return None


def _storages_to_look_in(storage_url: str, run_dir: Path | None) -> list[str]:
    """This run's storage; with the default run directory and storage (``run_dir``), also the other
    runs/<study>/study.db."""
    urls = [storage_url]
    if run_dir is not None:
        mine = (run_dir / "study.db").resolve()
        siblings = sorted(run_dir.parent.glob("*/study.db"), key=lambda p: p.stat().st_mtime, reverse=True)
        urls += [f"sqlite:///{path.resolve()}" for path in siblings[:MAX_SIBLINGS] if path.resolve() != mine]
    return urls


def _identity_of(attrs: dict[str, Any]) -> tuple[dict[str, Any] | None, bool]:
    """(what defined a study, from its user attrs; whether it is its full identity rather than the recipe inputs
    of an older run)"""
    if isinstance(attrs.get(IDENTITY_ATTR), dict):
        return attrs[IDENTITY_ATTR], True
    if isinstance(attrs.get(INPUTS_ATTR), dict):
        return attrs[INPUTS_ATTR], False
    return None, False


SHOWN_WIDTH = 40  # characters of a value shown in a difference
# Identity keys that are not the flag's name, with how the flag spells their values (scale_first counts only
# when on: a study without it had --scale_search off).
AS_FLAG = {"scale_first": ("scale_search", lambda on: "on" if on else "off")}


def _shown_pair(old: Any, new: Any) -> tuple[str, str]:
    """Both values, each cut to SHOWN_WIDTH characters around where they first differ (two paths with a long
    common prefix show their differing parts, not the same prefix twice)."""
    texts = [repr(old), repr(new)]
    if max(len(text) for text in texts) <= SHOWN_WIDTH:
        return texts[0], texts[1]
    first = next((i for i, (a, b) in enumerate(zip(*texts)) if a != b), min(len(text) for text in texts))
    start = max(0, first - 12) if first > SHOWN_WIDTH - 15 else 0
    shown = []
    for text in texts:
        part = text[start:start + SHOWN_WIDTH - 6]
        shown.append(("..." if start else "") + part + ("..." if start + len(part) < len(text) else ""))
    return shown[0], shown[1]


def _named(differing: list[tuple[str, Any, Any]]) -> str:
    """'optimize_mode ('layer' -> 'parameter'), ...': the first few differences, theirs -> this run's, by the
    flag's name."""
    parts = []
    for key, old, new in differing[:MAX_NAMED]:
        if key in AS_FLAG:
            key, spelled = AS_FLAG[key]
            old, new = spelled(old), spelled(new)
        parts.append("{} ({} -> {})".format(key, *_shown_pair(old, new)))
    named = ", ".join(parts)
    return named + (f" and {len(differing) - MAX_NAMED} more" if len(differing) > MAX_NAMED else "")


def _comparable(identity: dict[str, Any], theirs: dict[str, Any], full: bool) -> tuple[Any, Any]:
    """(this run's side, theirs) to compare: whole identities, or for an older study that holds only its recipe
    inputs, the leaves that both recorded."""
    identity = json.loads(json.dumps(identity, default=str))  # as the storage holds it: tuples are lists
    if full:
        return identity, theirs
    known = flatten(identity)
    theirs = {key: value for key, value in flatten(theirs).items() if key in known}
    return {key: value for key, value in known.items() if key in theirs}, theirs


def check_named_study(storage_url: str, study_name: str, identity: dict[str, Any]) -> None:
    """A study named with --study_name that exists must have been made with this run's inputs: resuming or
    joining it with others would mix two experiments (or fail on a weight it does not know). UsageError naming
    what differs otherwise. A study that recorded neither its identity nor its inputs cannot be checked."""
    from task_vector_opt.search.study import redact

    with _opened(storage_url) as storage:
        if storage is None:
            return
        try:
            attrs = storage.get_study_user_attrs(storage.get_study_id_from_name(study_name))
        except KeyError:  # no such study yet: this run creates it
            return
    theirs, full = _identity_of(attrs)
    if theirs is None:
        return
    differing = differences(*_comparable(identity, theirs, full))
    if differing:
        raise UsageError("--study_name", f"study {study_name!r} in {redact(storage_url)} was made with other "
                                         f"inputs: this run differs in {_named(differing)}; pass another "
                                         "--study_name for a new study, or rerun with the study's own values to "
                                         "resume it")


def related_study_note(storage_url: str, study_name: str, identity: dict[str, Any],
                       default_run_dir: Path | None = None) -> str | None:
    """One line when this run starts a new study while one for the same pipeline and models exists: the closest
    such study and the inputs that differ, so the user can rerun with its values to resume it. None otherwise.
    ``default_run_dir``: this run's directory when it is the default one, to look in its siblings too."""
    best: tuple[int, str, list[tuple[str, Any, Any]]] | None = None
    for url in _storages_to_look_in(storage_url, default_run_dir):
        with _opened(url) as storage:
            if storage is None:
                continue
            try:
                summaries = optuna.get_all_study_summaries(storage, include_best_trial=False)
            except Exception:  # a foreign or damaged file in runs/ is not this run's problem
                continue
            for summary in summaries:
                if summary.study_name == study_name:
                    if url == storage_url:
                        return None  # this run resumes its own study
                    continue
                theirs, full = _identity_of(summary.user_attrs)
                if theirs is None or any(theirs.get(key) != identity.get(key) for key in SAME_MODELS):
                    continue
                differing = differences(*_comparable(identity, theirs, full))
                if best is None or len(differing) < best[0]:
                    best = (len(differing), summary.study_name, differing)
    if best is None:
        return None
    _, name, differing = best
    if not differing:
        return (f"a study for the same models with the same inputs exists under another name ({name}); pass "
                f"--study_name {name} to resume it")
    return (f"a study for the same models exists ({name}): this run differs in {_named(differing)}; rerun with "
            "those values to resume it")
