"""What the storages already hold for a run, read before any model loads: whether this study is finished (so a
saved model can be recognised), and which other study of the same models a rerun would have resumed."""
from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import optuna

from task_vector_opt.cli.config import RunConfig
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


def finished_best_trial(config: RunConfig) -> int | None:
    """The number of the study's best trial when the study has its --n_trials finished, else None."""
    from task_vector_opt.search.study import finished_trials

    with _opened(config.storage) as storage:
        if storage is None:
            return None
        try:
            study = optuna.load_study(study_name=config.study_name, storage=storage)
            if finished_trials(study) < config.n_trials:
                return None
            return study.best_trial.number
        except (KeyError, ValueError):  # no such study; no completed trial
            return None


def _storages_to_look_in(config: RunConfig, beside_default_runs: bool) -> list[str]:
    """This run's storage; with the default run directory and storage, also the other runs/<study>/study.db."""
    urls = [config.storage]
    if beside_default_runs:
        mine = (config.run_dir / "study.db").resolve()
        siblings = sorted(config.run_dir.parent.glob("*/study.db"), key=lambda p: p.stat().st_mtime, reverse=True)
        urls += [f"sqlite:///{path.resolve()}" for path in siblings[:MAX_SIBLINGS] if path.resolve() != mine]
    return urls


def _identity_of(summary: optuna.study.StudySummary) -> tuple[dict[str, Any] | None, bool]:
    """(what defined that study, whether it is its full identity rather than the recipe inputs of an older run)"""
    attrs = summary.user_attrs
    if isinstance(attrs.get(IDENTITY_ATTR), dict):
        return attrs[IDENTITY_ATTR], True
    if isinstance(attrs.get(INPUTS_ATTR), dict):
        return attrs[INPUTS_ATTR], False
    return None, False


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def related_study_note(config: RunConfig, beside_default_runs: bool) -> str | None:
    """One line when this run starts a new study while one for the same pipeline and models exists: the closest
    such study and the inputs that differ, so the user can rerun with its values to resume it. None otherwise."""
    identity = config.study_identity()
    best: tuple[int, str, list[tuple[str, Any, Any]]] | None = None
    for url in _storages_to_look_in(config, beside_default_runs):
        with _opened(url) as storage:
            if storage is None:
                continue
            try:
                summaries = optuna.get_all_study_summaries(storage, include_best_trial=False)
            except Exception:  # a foreign or damaged file in runs/ is not this run's problem
                continue
            for summary in summaries:
                if summary.study_name == config.study_name:
                    if url == config.storage:
                        return None  # this run resumes its own study
                    continue
                theirs, full = _identity_of(summary)
                if theirs is None or any(theirs.get(key) != identity.get(key) for key in SAME_MODELS):
                    continue
                if not full:  # an older study: compare what both recorded
                    known = flatten(identity)
                    theirs = {key: value for key, value in flatten(theirs).items() if key in known}
                    mine = {key: value for key, value in known.items() if key in theirs}
                else:
                    mine = identity
                differing = differences(mine, theirs)
                if best is None or len(differing) < best[0]:
                    best = (len(differing), summary.study_name, differing)
    if best is None:
        return None
    _, name, differing = best
    if not differing:
        return (f"a study for the same models with the same inputs exists under another name ({name}); pass "
                f"--study_name {name} to resume it")
    named = ", ".join(f"{key} ({_shown(old)} -> {_shown(new)})" for key, old, new in differing[:MAX_NAMED])
    more = f" and {len(differing) - MAX_NAMED} more" if len(differing) > MAX_NAMED else ""
    return (f"a study for the same models exists ({name}): this run differs in {named}{more}; rerun with those "
            "values to resume it")
