"""The Optuna study: storage, sampler, baseline trials, and a resumable search loop.

Optuna owns storage, resume, heartbeats and retries; this module only decides
which study to open and how many trials are still missing.
"""
from __future__ import annotations

import gc
import logging
import math
import os
import re
import socket
import time
import warnings
from pathlib import Path
from typing import Callable, Sequence

import optuna
import psutil
import torch
from optuna.trial import TrialState
from tqdm.contrib.logging import logging_redirect_tqdm

from task_vector_opt.errors import SearchAborted, StudyStopped, TrialFailure, UsageError, first_line
from task_vector_opt.search.samplers import make_sampler

log = logging.getLogger(__name__)

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
BASELINES = (("w=1 (plain task vector)", 1.0), ("w=0 (target unchanged)", 0.0))
MAX_CONSECUTIVE_FAILURES = 5
HEARTBEAT_SECONDS = 60
MAX_RETRY = 2  # times a trial whose worker died is enqueued again
CREATE_ATTEMPTS = 4  # opens of a new database another process is creating at the same moment
CREATE_RACE_SIGNS = ("already exists", "alembic_version", "database is locked")


def retry_callback() -> optuna.storages.RetryHeartbeatStaleTrialCallback:
    """Optuna's callback that enqueues a copy of a trial whose worker died (up to MAX_RETRY times)."""
    with warnings.catch_warnings():  # marked experimental; it is what resume relies on
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)


def worker_id() -> str:
    """host:pid:start-time of this process; the start time tells a reused pid from the original."""
    return f"{socket.gethostname()}:{os.getpid()}:{_start_time(os.getpid())}"


def _start_time(pid: int) -> str:
    try:  # field 22 of /proc/<pid>/stat: start time in clock ticks since boot (Linux)
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return "?"


def _is_dead_here(worker: str) -> bool:
    """True only when ``worker`` ran on this host and that process is gone."""
    host, _, rest = worker.partition(":")
    pid_text, _, started = rest.partition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    # Not os.kill(pid, 0): on Windows signal 0 is CTRL_C_EVENT, so asking would interrupt the console.
    if not psutil.pid_exists(pid):
        return True
    return started not in ("?", "") and _start_time(pid) not in ("?", started)


def recover_dead_workers(study: optuna.Study) -> int:
    """Fail the RUNNING trials whose worker process on this host is dead, and enqueue each again.

    Optuna's heartbeat does this for RDB storages after its grace period; doing it at start-up means a
    rerun after kill -9 retries the interrupted trial at once, and it covers the journal storage, which
    has no heartbeat. Trials of workers on other hosts are left to the heartbeat.
    """
    recovered = 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get("worker", "")
        if not _is_dead_here(worker):
            continue
        try:
            # The reason belongs on the trial itself, and only a running trial takes attributes, so it goes
            # first; Optuna has no public setter for a trial this process did not ask for.
            study._storage.set_trial_user_attr(trial._trial_id, "fail_reason", f"worker {worker} died mid-trial")
            # Not skip_if_finished: the error is how a worker learns another one failed the trial first, so
            # that exactly one of them enqueues the retry.
            failed = study.tell(trial.number, state=TrialState.FAIL)
        except (ValueError, RuntimeError, optuna.exceptions.UpdateFinishedTrialError):  # another worker got there first
            continue
        retry_callback()(study, failed)
        log.warning("trial %d was running in a process that died (%s); marked failed and enqueued again",
                    trial.number, worker)
        recovered += 1
    return recovered


def redact(url: str) -> str:
    """Hide a password in a storage URL before it is logged or written."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def is_journal(url: str) -> bool:
    """A journal file (Optuna's file-based storage for shared filesystems), not a database URL."""
    return url.endswith((".log", ".journal")) or url.startswith("journal:")


def open_storage(url: str, heartbeat_interval: float = HEARTBEAT_SECONDS) -> optuna.storages.BaseStorage:
    """Open (and create if needed) the study storage; fail with one line if Optuna cannot.

    RDB storages (SQLite, PostgreSQL, MySQL) get Optuna's heartbeat: a trial whose worker stopped
    beating for ``3 * heartbeat_interval`` seconds is marked failed and enqueued again by
    RetryHeartbeatStaleTrialCallback. The journal storage has no heartbeat; for it (and at once,
    for any storage) ``recover_dead_workers`` does the same for workers on this host.
    """
    try:
        if is_journal(url):
            path = Path(url.removeprefix("journal:")).expanduser()
            path.parent.mkdir(parents=True, exist_ok=True)
            from optuna.storages.journal import JournalFileBackend

            return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
        sqlite = url.startswith("sqlite:///")
        if sqlite:
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        for attempt in range(CREATE_ATTEMPTS):
            try:
                with warnings.catch_warnings():  # heartbeats are marked experimental; they are what resume relies on
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    storage = optuna.storages.RDBStorage(
                        url, heartbeat_interval=heartbeat_interval, grace_period=3 * heartbeat_interval,
                        heartbeat_stale_trial_callback=retry_callback(),
                        # SQLite: a worker waits up to this long for another's transaction, not pysqlite's 5 s
                        engine_kwargs={"connect_args": {"timeout": SQLITE_WAIT_SECONDS}} if sqlite else None,
                    )
                if sqlite:
                    take_the_write_lock_first(storage.engine)
                return storage
            except Exception as exc:
                # Two processes creating a new database at once (workers started together, a dashboard opening
                # it): the one that loses the race finds a table, or the schema version row, the other has just
                # made. The database is complete a moment later, so opening again succeeds.
                if not any(sign in str(exc) for sign in CREATE_RACE_SIGNS) or attempt == CREATE_ATTEMPTS - 1:
                    raise
                log.debug("storage tables were being created by another process; opening again")
                time.sleep(0.2 * (attempt + 1))
    except Exception as exc:  # SQLAlchemy and drivers raise many types; the user needs the URL and the reason
        reason = first_line(exc)
        raise UsageError("--storage", f"Optuna cannot open {redact(url)!r} ({reason}); give a sqlite:///path, "
                                      "postgresql://user:pass@host/db, mysql://... URL or a journal file ending in "
                                      ".log") from None


SQLITE_WAIT_SECONDS = 60.0


def take_the_write_lock_first(engine) -> None:
    """Make every SQLite transaction of ``engine`` take the database's write lock when it begins (BEGIN
    IMMEDIATE), SQLAlchemy's recipe for pysqlite.

    Optuna takes an enqueued trial with SELECT ... FOR UPDATE, then marks it running. SQLite ignores FOR UPDATE
    and pysqlite opens no transaction for a SELECT, so two workers on one database file can both read the same
    waiting trial and both take it: the scale stage's points were scored twice and the later worker's tell
    failed. With the lock taken first, the second worker waits, then reads the trial as running and takes
    another. PostgreSQL and MySQL honour FOR UPDATE and need nothing."""
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _no_implicit_begin(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None  # pysqlite leaves BEGIN to the hook below

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections opened while the tables were created predate the hooks


SamplerFactory = Callable[[int], optuna.samplers.BaseSampler]  # seed -> sampler


def _sampler(sampler: str | SamplerFactory, seed: int) -> optuna.samplers.BaseSampler:
    if callable(sampler):
        return sampler(seed)
    return make_sampler(sampler, seed, [], 0.0, 2.0)


def open_study(storage: optuna.storages.BaseStorage, study_name: str, sampler: str | SamplerFactory, seed: int,
               pruner: optuna.pruners.BasePruner | None = None,
               baseline_groups: list[str] | None = None,
               baseline_fixed: dict[str, float] | None = None,
               on_create: Callable[[optuna.Study], None] | None = None) -> optuna.Study:
    """Create the study, or load it to resume (or to join it as one more worker).

    Only the process that creates the study enqueues the baselines (when ``baseline_groups`` is given):
    the storage lets exactly one create a name, so workers starting together enqueue them once.
    ``on_create``: what else a new study gets, by the same rule (the scale stage's trials).
    ``sampler`` is a --optuna_sampler name or a function of the seed (the engine's, which knows the searched
    parameters and range). A resumed or joined study gets the seed shifted by its trial count and the process id: the same seed
    would replay the proposals the interrupted run already evaluated, or those of a worker that joined at the
    same moment. A fresh study with one seed is reproducible.
    """
    pruner = pruner or optuna.pruners.NopPruner()
    try:
        study = optuna.create_study(storage=storage, study_name=study_name, direction="maximize",
                                    sampler=_sampler(sampler, seed), pruner=pruner)
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=study_name, storage=storage, pruner=pruner)
        existing = len(study.get_trials(deepcopy=False))
        # + pid: workers joining at the same moment see the same trial count and would propose the same weights
        study.sampler = _sampler(sampler, seed + existing + os.getpid())
        return study
    if baseline_groups:
        enqueue_baselines(study, baseline_groups, baseline_fixed)
    if on_create is not None:  # e.g. the scale stage's first trials: enqueued once, by the creator
        on_create(study)
    return study


def finished_trials(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def enqueue_baselines(study: optuna.Study, group_names: list[str], fixed: dict[str, float] | None = None) -> None:
    """w=1 everywhere (plain task-vector addition), then w=0 everywhere (the target), on a new study only.
    ``fixed``: other parameters both baselines share (e.g. the densities of a sparsifying merge)."""
    if study.get_trials(deepcopy=False):
        return
    for label, value in BASELINES:
        study.enqueue_trial({**{name: value for name in group_names}, **(fixed or {})},
                            user_attrs={"baseline": label})


class _FailureWatch:
    """Optuna callback: stop the study on a stop request or after too many failures in a row."""

    def __init__(self) -> None:
        self.streak = 0
        self.last_failure: optuna.trial.FrozenTrial | None = None
        self.stop_requested = False

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.state != TrialState.FAIL:
            self.streak = 0
            return
        self.streak += 1
        self.last_failure = trial
        self.stop_requested = bool(trial.user_attrs.get("stopped_study"))
        if self.stop_requested or self.streak >= MAX_CONSECUTIVE_FAILURES:
            study.stop()


class TrialProgress:
    """Optuna callback: one bar over the trials, the best score so far in its postfix.

    Nested bars (generation, judging, lm-eval) are opened with leave=False while this one is open, so tqdm
    gives them the next line and clears them when they close; log lines go above (logging_redirect_tqdm).
    """

    def __init__(self, study: optuna.Study, n_trials: int):
        from tqdm.auto import tqdm

        self.failed = 0
        self.bar = tqdm(total=n_trials, initial=min(finished_trials(study), n_trials), desc="trials", unit="trial",
                        dynamic_ncols=True)
        self._show(study)

    def _show(self, study: optuna.Study) -> None:
        postfix = {}
        try:
            postfix["best"] = f"{study.best_value:.4f}"
        except ValueError:  # no completed trial yet
            pass
        if self.failed:
            postfix["failed"] = self.failed
        self.bar.set_postfix(postfix, refresh=True)

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.state in FINISHED:
            self.bar.update(1)
        elif trial.state == TrialState.FAIL:
            self.failed += 1
        self._show(study)

    def close(self) -> None:
        self.bar.close()


def run_search(study: optuna.Study, n_trials: int, objective: Callable[[optuna.Trial], float],
               callbacks: Sequence[Callable[[optuna.Study, optuna.trial.FrozenTrial], None]] = (),
               done: Callable[[optuna.Study], bool] | None = None) -> None:
    """Run trials until ``n_trials`` have finished; failed trials are recorded and retried, not counted.
    ``done``: an extra end condition (a benchmark's budget in items), checked after each trial."""
    watch = _FailureWatch()
    with logging_redirect_tqdm():  # log lines print above the progress bar instead of breaking it
        progress = TrialProgress(study, n_trials)
        try:
            def stop_when_done(s: optuna.Study, _trial: optuna.trial.FrozenTrial) -> None:
                if done is not None and done(s):
                    s.stop()

            while (missing := n_trials - finished_trials(study)) > 0 and not (done is not None and done(study)):
                study.optimize(objective, n_trials=missing, catch=(Exception,), show_progress_bar=False,
                               callbacks=[optuna.study.MaxTrialsCallback(n_trials, states=FINISHED), watch, progress,
                                          lambda s, _: recover_dead_workers(s), *callbacks, stop_when_done])
                reason = watch.last_failure.user_attrs.get("fail_reason", "see the log") if watch.last_failure else ""
                if watch.stop_requested:
                    raise StudyStopped(f"the study was stopped by trial {watch.last_failure.number}: {reason}; "
                                       "rerun the same command to resume")
                if watch.streak >= MAX_CONSECUTIVE_FAILURES:
                    raise SearchAborted(f"{watch.streak} trials failed in a row; last reason: {reason}")
        finally:
            progress.close()


class TrialOutOfMemory(RuntimeError):
    """A trial ran out of (GPU) memory; its memory was freed and the trial failed."""


def free_accelerator_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def make_objective(param_names: list[str], weight_min: float, weight_max: float,
                   score: Callable[[dict[str, float], optuna.Trial], tuple[float, dict]],
                   to_weights: Callable[[dict[str, float]], dict[str, float]] | None = None,
                   stepped: dict[str, tuple[float, float, float]] | None = None,
                   ranges: dict[str, tuple[float, float]] | None = None) -> Callable[[optuna.Trial], float]:
    """Wrap ``score(weights, trial) -> (value, details)`` as an Optuna objective with timing and checks.

    ``to_weights`` turns the proposed parameters into the merger's weights (profile mode: knots -> layer
    weights); those weights are then kept on the trial as the user attr ``weights``, so the report shows them.
    ``stepped``: more parameters, each {name: (low, high, step)} (e.g. densities on their grid), passed on as
    proposed. ``ranges``: {name: (low, high)} of parameters whose range is not the weights' (the offsets of the
    scale-first search).
    """

    def objective(trial: optuna.Trial) -> float:
        bounds = ranges or {}
        proposed = {name: trial.suggest_float(name, *bounds.get(name, (weight_min, weight_max)))
                    for name in param_names}
        for name, (low, high, step) in (stepped or {}).items():
            proposed[name] = trial.suggest_float(name, low, high, step=step)
        weights = proposed if to_weights is None else to_weights(proposed)
        if to_weights is not None:
            trial.set_user_attr("weights", weights)
        trial.set_user_attr("worker", worker_id())  # after the proposals: a retry of this trial repeats them
        started = time.perf_counter()
        out_of_memory = None
        try:
            value, details = score(weights, trial)
        except optuna.TrialPruned:
            log.info("trial %d pruned after %.1fs", trial.number, time.perf_counter() - started)
            raise
        except torch.OutOfMemoryError as exc:
            message = exc.args[0] if exc.args and isinstance(exc.args[0], str) else str(exc)
            out_of_memory = f"out of memory: {message.splitlines()[0] if message else type(exc).__name__}"[:500]
        except Exception as exc:
            trial.set_user_attr("fail_reason", f"{type(exc).__name__}: {exc}"[:500])
            log.error("trial %d failed: %s: %s", trial.number, type(exc).__name__, exc)
            log.debug("trial %d traceback", trial.number, exc_info=True)  # --log_level DEBUG shows where
            if isinstance(exc, TrialFailure) and exc.stops_study:  # e.g. the judge is down and the user chose to stop
                trial.set_user_attr("stopped_study", True)
                trial.study.stop()
            raise
        if out_of_memory is not None:
            # Outside the except block: the OOM and its traceback (which holds the trial's activations) are
            # gone, and the exception raised here carries no link to them.
            free_accelerator_memory()
            trial.set_user_attr("fail_reason", out_of_memory)
            log.error("trial %d failed: %s; memory freed, the search goes on", trial.number, out_of_memory)
            raise TrialOutOfMemory(out_of_memory)
        elapsed = time.perf_counter() - started
        for key, metric in details.items():
            trial.set_user_attr(key, metric)
        trial.set_user_attr("elapsed_s", round(elapsed, 3))
        if not math.isfinite(value):
            trial.set_user_attr("fail_reason", f"score is {value}")
            raise ValueError(f"trial {trial.number}: the score is {value}, not a finite number")
        log.info("trial %d: score %.4f in %.1fs", trial.number, value, elapsed)
        return value

    return objective
