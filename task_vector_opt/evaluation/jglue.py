"""The JGLUE evaluator: lm-eval tasks (JGLUE by default) scored on the live, merged model.

Settings come from the JGLUE flags (``jglue_settings_from_args``, every check before any model loads).
``JGLUEEvaluator`` builds lm-eval's task objects once; each trial wraps the live model in lm-eval's
``HFLM`` (no copy) and runs ``lm_eval.evaluator.evaluate`` on fixed documents of each task:

* search: documents ``[0, limit)`` of each task's evaluation split;
* holdout: documents ``[limit, limit + holdout)``, disjoint from the search ones.

The score of a task is its primary metric (``lm_eval_tasks.scoring.primary_metric``: acc, else exact_match,
else the task's first metric), the run's score is the weighted mean over tasks (``name:weight``).
With --prune the search documents are scored in chunks (chunk k: every N-th document of every task from
the k-th on); after each chunk but the last the running score goes to the pruner. The holdout is one chunk,
never pruned, and gives each document's value for the paired verdict.
With --item_subset F the first --item_subset_after trials score every search document and keep each document's
value; the next trial chooses a fraction F of each task's documents (evaluation/item_subset.py, kept in the study)
and every later trial scores only those and is given their estimate of the full score; a trial whose estimate beats
every full score so far is confirmed on the rest of the documents. The holdout always scores every held-out document.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from task_vector_opt.errors import UsageError, first_line
from task_vector_opt.evaluation.item_subset import ItemSubset, choose_subset
from task_vector_opt.evaluation.lm_eval_tasks.objectives import AUTO, OBJECTIVES, TASK_METRIC, check_objective, \
    choice_probability, task_objective
from task_vector_opt.evaluation.lm_eval_tasks.local_data import local_data_files, write_local_tasks
from task_vector_opt.evaluation.lm_eval_tasks.resolution import ResolvedTask, check_data_dir, check_search_path, \
    resolve_tasks, task_manager
from task_vector_opt.evaluation.lm_eval_tasks.scoring import higher_is_better, primary_metric, result_value, \
    weighted_mean
from task_vector_opt.evaluation.lm_eval_tasks.table import family_of_task
from task_vector_opt.evaluation.lm_eval_tasks.task_list import TASKS_FLAG, normalized_weights, parse_task_list, \
    per_task_ints
from task_vector_opt.evaluation.protocol import Evaluator, EvaluatorSettings, Score
from task_vector_opt.evaluation.scorers import DEFAULT_SCORER, parse_scorer
from task_vector_opt.identity import identity_when, outside_identity
from task_vector_opt.search.pruning import make_pruner, pruner_from_args, should_stop

if TYPE_CHECKING:
    from lm_eval.api.task import Task

log = logging.getLogger(__name__)

DEFAULT_LIMIT = 500  # documents per task during the search, as in the original
FEWSHOT_SEED = 1234  # lm-eval's default few-shot seed (simple_evaluate and the CLI's --seed 0,1234,1234,1234)
DEFAULT_SUBSET_AFTER = 6  # the baselines and the scale stage's first four design points
SEARCH_VALUES_ATTR = "search_item_values"  # trial user attr (--item_subset): task -> each search document's value
SUBSET_ATTR = "item_subset"  # study user attr: the chosen subset (ItemSubset.to_json), so a resumed run keeps it


# ---------------------------------------------------------------------------------------------- settings

@dataclass
class JGLUESettings(EvaluatorSettings):
    """Everything the JGLUE evaluator needs, as plain JSON-serializable data (dataclasses.asdict)."""

    tasks: list[str]  # as given in --jglue_tasks (display names)
    lm_eval_tasks: list[str]  # what lm-eval runs for each (ja_leaderboard_*, jglue_local_*, user tasks, ...)
    weights: list[float]  # normalized to sum to 1
    limits: list[int]  # search documents per task
    num_fewshot: list[int | None]  # None: the task's own default
    holdout_limits: list[int]  # held-out documents per task (0: none)
    data_dir: str | None  # local JGLUE repository copy (absolute)
    task_search_path: str | None  # folder of user task YAMLs (absolute)
    batch_size: int | str = outside_identity()  # an integer, "auto" or "auto:N"; the same scores
    # which backend scores log-likelihood requests (evaluation/scorers.py); the same scores, to float tolerance
    mc_scorer: str = outside_identity(default=DEFAULT_SCORER)
    pruner: str | None = None  # --prune with this pruner; None: every trial scores all its documents
    # search chunks (more than 1 only with --prune): the pruner reads the running score after each
    chunks: int = identity_when(lambda settings: settings.pruner is not None, default=1)
    # --search_objective: what the search maximizes (the held-out verdict always uses the task's own metric)
    objective: str = identity_when(lambda settings: settings.objective != TASK_METRIC, default=TASK_METRIC)
    # (auto: choice_prob for the multiple-choice tasks, each other task's own metric)
    # --item_subset: the fraction of each task's search documents later trials score (0: all of them), chosen after
    # --item_subset_after trials scored them all
    item_subset: float = identity_when(lambda settings: settings.item_subset > 0, default=0.0)
    item_subset_after: int = identity_when(lambda settings: settings.item_subset > 0, default=DEFAULT_SUBSET_AFTER)
    # a trial whose estimate beats every full score so far is scored on the rest of its documents (False: the estimate
    # only, an ablation the search benchmark measures; no flag)
    item_subset_confirm: bool = identity_when(lambda settings: settings.item_subset > 0, default=True)


def parse_batch_size(value: Any) -> int | str:
    text = str(value).strip().lower()
    if text == "auto" or (text.startswith("auto:") and text[5:].replace(".", "", 1).isdigit()
                          and float(text[5:]) > 0):
        return text
    if text.isdigit() and int(text) > 0:
        return int(text)
    raise UsageError("--batch_size", f"{value!r} is not a batch size; give a positive integer, 'auto' or 'auto:N'")


def jglue_settings_from_args(args: argparse.Namespace) -> JGLUESettings:
    """Validate the JGLUE flags (UsageError naming the flag) and build the settings; no model is touched.

    Quick: parsing, file checks and lm-eval's small task index (japanese_leaderboard + --task_search_path);
    lm-eval's full index is only built for a name found nowhere else.
    """
    requests = parse_task_list(args.jglue_tasks)
    names = [r.name for r in requests]
    search_path = check_search_path(args.task_search_path)
    limits = per_task_ints("--jglue_limit", args.jglue_limit, names, minimum=1)
    fewshot = per_task_ints("--jglue_num_fewshot", args.jglue_num_fewshot, names, minimum=0, allow_default=True)
    holdout = per_task_ints("--jglue_holdout_limit", args.jglue_holdout_limit, names, minimum=0)
    batch_size = parse_batch_size(args.batch_size)
    mc_scorer = parse_scorer(args.mc_scorer)
    pruner = pruner_from_args(args)
    chunks = args.jglue_chunks
    if chunks < 1:
        raise UsageError("--jglue_chunks", f"must be at least 1 (got {chunks})")
    if args.search_objective not in OBJECTIVES:
        raise UsageError("--search_objective", f"unknown objective {args.search_objective!r}; choose "
                                               f"{' or '.join(OBJECTIVES)}")
    subset = float(args.item_subset)
    # None: --item_subset_after not given (validation refuses it given without --item_subset)
    subset_after = DEFAULT_SUBSET_AFTER if args.item_subset_after is None else int(args.item_subset_after)
    if not 0 <= subset < 1:
        raise UsageError("--item_subset", f"must be a fraction of the search documents, at least 0 and below 1 "
                                          f"(got {subset:g}); e.g. 0.33, or 0 to score every document")
    if subset and subset_after < 2:
        raise UsageError("--item_subset_after", f"must be at least 2 (got {subset_after}): the subset is chosen from "
                                                "how the documents' values vary over the trials scored in full")
    if subset and pruner:
        raise UsageError("--item_subset", "cannot be combined with --prune: both cut the documents a trial scores; "
                                          "choose one")
    data_dir = check_data_dir(args.jglue_data_dir)
    resolved = resolve_tasks(requests, search_path=search_path, data_dir=data_dir)
    if data_dir:
        local_data_files(data_dir, resolved)  # names the first missing file
    return JGLUESettings(
        tasks=names,
        lm_eval_tasks=[r.lm_eval_task for r in resolved],
        weights=normalized_weights(requests),
        limits=[int(x) for x in limits] if limits else [DEFAULT_LIMIT] * len(names),
        num_fewshot=fewshot if fewshot else [None] * len(names),
        holdout_limits=[int(x) for x in holdout] if holdout else [0] * len(names),
        data_dir=data_dir,
        task_search_path=search_path,
        batch_size=batch_size,
        mc_scorer=mc_scorer,
        pruner=pruner,
        chunks=chunks if pruner else 1,
        objective=args.search_objective,
        item_subset=subset,
        item_subset_after=subset_after if subset else DEFAULT_SUBSET_AFTER,
    )


def best_full_score(study: Any) -> float:
    """The best search score of the study's finished trials that scored every search document (-inf: none)."""
    import optuna

    full = [t.value for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            if "subset_estimate" not in t.user_attrs or t.user_attrs.get("subset_confirmed")]
    return max(full, default=float("-inf"))


# ------------------------------------------------------------------------------------------- evaluator

@contextlib.contextmanager
def _logger_at_least(name: str, level: int) -> Iterator[None]:
    logger = logging.getLogger(name)
    previous = logger.level
    if logger.getEffectiveLevel() < level:
        logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(previous)


@contextlib.contextmanager
def _no_request_progress_bars() -> Iterator[None]:
    """lm-eval draws a progress bar while it builds each task's requests (``tqdm`` in lm_eval.api.task), with no
    option to turn it off: one bar per task and trial. Swap in a disabled bar for the call (kept at DEBUG)."""
    import lm_eval.api.task as task_module

    original = getattr(task_module, "tqdm", None)
    if original is None or log.isEnabledFor(logging.DEBUG):
        yield
        return
    task_module.tqdm = functools.partial(original, disable=True)
    try:
        yield
    finally:
        task_module.tqdm = original


@functools.cache
def _live_hflm_class() -> type:
    """lm-eval's HFLM, with its per-call progress bars off (one model call per task and trial; kept at DEBUG)."""
    from lm_eval.models.huggingface import HFLM

    def quiet() -> bool:
        return not log.isEnabledFor(logging.DEBUG)

    class LiveHFLM(HFLM):
        def loglikelihood(self, requests, disable_tqdm: bool = False):
            return super().loglikelihood(requests, disable_tqdm=disable_tqdm or quiet())

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            return super().loglikelihood_rolling(requests, disable_tqdm=disable_tqdm or quiet())

        def generate_until(self, requests, disable_tqdm: bool = False):
            return super().generate_until(requests, disable_tqdm=disable_tqdm or quiet())

    return LiveHFLM


@dataclass
class TaskRun:
    """One task as the evaluator runs it (built once, in the constructor)."""

    name: str  # display name (as given)
    lm_name: str
    weight: float
    task: Task
    metric: str
    result_key: str
    num_fewshot: int
    search_docs: list[int]
    holdout_docs: list[int] = field(default_factory=list)
    objective: str = TASK_METRIC  # what the search scores this task on (the holdout: always its metric)


class JGLUEEvaluator(Evaluator):
    """lm-eval tasks on the live model; see the module docstring."""

    def __init__(self, settings: JGLUESettings, work_dir: Path):
        """Build lm-eval's task objects once (data loaded, few-shot set, documents chosen).

        ``work_dir`` (e.g. ``<run_dir>/lm_eval_tasks``) receives the generated task YAMLs when
        ``settings.data_dir`` is set; it can be given to ``lm_eval --include_path`` as is.
        """
        started = time.perf_counter()
        self.settings = settings
        self.pruner = make_pruner(settings.pruner)  # the engine gives it to the study; None: no pruning
        self.work_dir = Path(work_dir)
        self._batch_sizes: dict[int, int] = {}  # batch sizes HFLM detected ("auto"), kept across trials
        self._subsets: dict[str, ItemSubset] = {}  # --item_subset: each study's subset, read from it once
        pairs = zip(settings.tasks, settings.lm_eval_tasks, strict=True)
        resolved = [ResolvedTask(name, task, family_of_task(task)) for name, task in pairs]
        local_yamls: dict[str, Path] = {}
        if settings.data_dir:
            local_yamls = write_local_tasks(self.work_dir, local_data_files(settings.data_dir, resolved),
                                            settings.data_dir)
        small = task_manager(settings.task_search_path)
        needs_full = any(t not in small.all_tasks and t not in local_yamls for t in settings.lm_eval_tasks)
        manager = task_manager(settings.task_search_path, full=needs_full)

        self.runs: list[TaskRun] = []
        for i, item in enumerate(resolved):
            task = self._load_task(manager, item, local_yamls.get(item.lm_eval_task))
            self.runs.append(self._plan_run(i, item, task))
        log.info("lm-eval tasks ready in %.1fs: %s", time.perf_counter() - started, self.describe())

    # ----------------------------------------------------------------------------------- construction

    def _load_task(self, manager, item: ResolvedTask, yaml_path: Path | None) -> Task:
        spec = str(yaml_path) if yaml_path else item.lm_eval_task
        try:
            loaded = manager.load([spec])["tasks"]
        except Exception as exc:  # noqa: BLE001 - data that cannot be loaded is reported as one line
            log.debug("loading %s failed", spec, exc_info=True)
            hint = ""
            if item.family is not None and item.family.local is not None and not yaml_path:
                hint = "; without hub access, pass --jglue_data_dir with a local copy of the JGLUE repository"
            first = first_line(exc)
            raise UsageError(TASKS_FLAG, f"could not load lm-eval task {item.lm_eval_task} (for {item.name!r}): "
                                         f"{type(exc).__name__}: {first}{hint}") from exc
        if item.lm_eval_task not in loaded:
            raise UsageError(TASKS_FLAG, f"{item.name!r} gave lm-eval tasks {sorted(loaded)}, not "
                                         f"{item.lm_eval_task}; name a single task")
        return loaded[item.lm_eval_task]

    def _plan_run(self, i: int, item: ResolvedTask, task: Task) -> TaskRun:
        s = self.settings
        # few-shot as lm_eval.simple_evaluate sets it: an explicit value wins unless the task is fixed to 0-shot
        default = task.get_config("num_fewshot")
        asked = s.num_fewshot[i]
        if asked is not None:
            if default == 0 and asked != 0:
                log.warning("%s: its config fixes num_fewshot to 0; --jglue_num_fewshot %d is ignored (as in lm-eval)",
                            item.name, asked)
            else:
                task.set_config(key="num_fewshot", value=asked)
        elif default is None:
            task.set_config(key="num_fewshot", value=0)
        task.set_fewshot_seed(seed=FEWSHOT_SEED)

        metric, key = primary_metric(task)
        if not higher_is_better(task, metric):
            raise UsageError(TASKS_FLAG, f"{item.name!r}: its main metric {metric} is lower-is-better, but the search "
                                         "maximizes the score; choose a task whose metric grows with quality")
        if s.objective not in (TASK_METRIC, AUTO) and (reason := check_objective(task, metric)) is not None:
            raise UsageError("--search_objective", f"{s.objective} cannot score {item.name!r}: {reason}; use "
                                                   f"--search_objective {TASK_METRIC} (its own metric, {metric})")
        if s.item_subset and task_objective(s.objective, task, metric) == TASK_METRIC and getattr(
                task.aggregation()[metric], "__name__", "") != "mean":
            raise UsageError("--item_subset", f"{item.name!r}: its metric {metric} is not a mean over documents, so a "
                                              "subset of them cannot estimate it; drop --item_subset")
        available = len(task.eval_docs)
        if available == 0:
            raise UsageError(TASKS_FLAG, f"{item.name!r}: lm-eval task {item.lm_eval_task} has no documents to score")
        limit, holdout = s.limits[i], s.holdout_limits[i]
        n_search = min(limit, available)
        if n_search < limit:
            log.info("%s: %d documents available, scoring all %d (--jglue_limit %d)", item.name, available,
                     n_search, limit)
        holdout_docs = list(range(n_search, max(min(limit + holdout, available), n_search)))
        if holdout and len(holdout_docs) < holdout:
            if holdout_docs:
                log.warning("%s: %d documents available; holdout clipped to %d of %d (documents %d-%d)", item.name,
                            available, len(holdout_docs), holdout, holdout_docs[0], holdout_docs[-1])
            else:
                log.warning("%s: all %d documents are search documents; no holdout for this task (asked %d)",
                            item.name, available, holdout)
        return TaskRun(name=item.name, lm_name=item.lm_eval_task, weight=s.weights[i], task=task, metric=metric,
                       result_key=key, num_fewshot=int(task.get_config("num_fewshot") or 0),
                       search_docs=list(range(n_search)), holdout_docs=holdout_docs,
                       objective=task_objective(s.objective, task, metric))

    # -------------------------------------------------------------------------------------- scoring

    def lm_for(self, model: Any, tokenizer: Any):
        """lm-eval's HFLM around the live model: it keeps a reference (no copy) and calls model.eval() and
        model.tie_weights(); it may set the tokenizer's pad token. Cheap, so it is built per call.
        With --mc_scorer context_once, HFLM's token scoring is swapped for the context-once one
        (evaluation/context_once.py); tokenisation, rolling log-likelihoods and generation stay HFLM's."""
        cls = _live_hflm_class()
        if self.settings.mc_scorer == "context_once":
            from task_vector_opt.evaluation.context_once import context_once_class

            cls = context_once_class(cls)
        # HFLM warns twice that a pre-built model skips its loading options: expected here, not news per trial
        with _logger_at_least("lm_eval.models.huggingface", logging.ERROR):
            lm = cls(pretrained=model, tokenizer=tokenizer, batch_size=self.settings.batch_size)
        lm.batch_sizes = self._batch_sizes
        return lm

    def _run(self, lm, run: TaskRun, docs: list[int], objective: str = TASK_METRIC) -> tuple[float, dict[int, Any]]:
        """lm-eval's score of ``docs`` and each document's value of the task's metric (or of ``objective``: then
        the score is the mean of the documents' values)."""
        from lm_eval.evaluator import evaluate

        # The few-shot sampler's RNG advances with every document: re-seed it so that each call (each trial)
        # sees the same few-shot examples, exactly as a fresh lm-eval run would.
        run.task.set_fewshot_seed(seed=FEWSHOT_SEED)
        task_dict = {"tasks": {run.lm_name: run.task}, "groups": {}, "group_map": {}}
        with _no_request_progress_bars():
            results = evaluate(lm=lm, task_dict=task_dict, samples={run.lm_name: list(docs)}, bootstrap_iters=0,
                               log_samples=True)
        samples = [s for s in results.get("samples", {}).get(run.lm_name, []) if run.metric in s]
        wanted = run.result_key.split(",", 1)[1]
        filters = {s["filter"] for s in samples}
        chosen = wanted if wanted in filters else min(filters, default=wanted)
        chosen_samples = [s for s in samples if s["filter"] == chosen]
        if objective != TASK_METRIC:
            per_doc = {int(s["doc_id"]): choice_probability(run.task, run.metric, s["doc"], s["filtered_resps"])
                       for s in chosen_samples}
            return self._aggregate(run, per_doc, objective), per_doc
        per_doc = {int(s["doc_id"]): s[run.metric] for s in chosen_samples}
        return result_value(results, run.lm_name, run.result_key), per_doc

    @staticmethod
    def _aggregate(run: TaskRun, per_doc: dict[int, Any], objective: str = TASK_METRIC) -> float:
        """The task's score over the documents scored so far, with lm-eval's own aggregation of its metric (the
        mean, for a smooth objective)."""
        if objective != TASK_METRIC:
            return sum(per_doc.values()) / len(per_doc)
        aggregate = run.task.aggregation()[run.metric]
        return float(aggregate([per_doc[d] for d in sorted(per_doc)]))

    @staticmethod
    def _item_values(runs: list[TaskRun], per_doc: dict[str, dict[int, Any]]) -> dict[str, float]:
        """Each document's share of the weighted mean, scaled so that their plain mean is the score: a document
        of task t counts weight_t / sum(weights) * N / n_t times its value. Empty when a task's metric is not
        a mean of per-document numbers (e.g. an F1 over the whole set), which cannot be split into items."""
        total_weight = sum(r.weight for r in runs)
        n_items = sum(len(per_doc[r.name]) for r in runs)
        values: dict[str, float] = {}
        for run in runs:
            aggregate = run.task.aggregation()[run.metric]
            docs = per_doc[run.name]
            if getattr(aggregate, "__name__", "") != "mean" or not all(
                    isinstance(v, (int, float)) for v in docs.values()):
                return {}
            scale = run.weight / total_weight * n_items / len(docs)
            values.update({f"{run.name}/{doc}": float(v) * scale for doc, v in docs.items()})
        return values

    def _score(self, model: Any, tokenizer: Any, split: str, trial: Any | None,
               subset: ItemSubset | None = None) -> Score | None:
        runs = [(r, r.search_docs if split == "search" else r.holdout_docs) for r in self.runs]
        if subset is not None:
            runs = [(r, subset.anchors[r.name]) for r, _ in runs]
        runs = [(r, docs) for r, docs in runs if docs]
        if not runs:
            return None
        n_chunks = self.settings.chunks if split == "search" else 1

        def objective(run: TaskRun) -> str:  # the held-out verdict: always the task's own metric
            return run.objective if split == "search" else TASK_METRIC
        details: dict[str, float] = {}
        per_doc: dict[str, dict[int, Any]] = {run.name: {} for run, _ in runs}
        items = 0
        with _logger_at_least("lm_eval", logging.WARNING):
            lm = self.lm_for(model, tokenizer)
            for step in range(n_chunks):
                for run, docs in runs:
                    # interleaved: every chunk spans the whole document range. Each call re-seeds the few-shot
                    # sampler, so a chunked score is the same in every trial (comparable), though its few-shot
                    # draws may differ from a single call's over all documents.
                    part = docs[step::n_chunks]
                    if not part:
                        continue
                    started = time.perf_counter()
                    value, scored = self._run(lm, run, part, objective(run))
                    per_doc[run.name].update(scored)
                    items += len(part)
                    details[run.name] = value if n_chunks == 1 else self._aggregate(run, per_doc[run.name],
                                                                                               objective(run))
                    log.debug("%s %s chunk %d: %s=%.4f on %d docs in %.1fs", split, run.name, step, run.metric,
                              details[run.name], len(part), time.perf_counter() - started)
                if trial is not None and step < n_chunks - 1:  # after the last chunk the trial is complete
                    done = [(run.weight, details[run.name]) for run, _ in runs if run.name in details]
                    running = weighted_mean([v for _, v in done], [w for w, _ in done])
                    trial.report(running, step=step)
                    if should_stop(trial):
                        import optuna

                        trial.set_user_attr("items_scored", items)  # what the pruned trial cost
                        raise optuna.TrialPruned(f"pruned after chunk {step + 1} of {n_chunks} ({items} documents): "
                                                 f"running score {running:.4f}")
        trial_attrs: dict[str, Any] = {}
        if subset is not None:  # each task's score is its anchors' estimate of the full one
            details.update({run.name: subset.task_estimate(run.name, per_doc[run.name]) for run, _ in runs})
        elif split == "search" and self.settings.item_subset:  # what the subset is fitted on
            trial_attrs[SEARCH_VALUES_ATTR] = {run.name: [float(per_doc[run.name][d]) for d in docs]
                                               for run, docs in runs}
        value = weighted_mean([details[run.name] for run, _ in runs], [run.weight for run, _ in runs])
        if subset is not None:
            trial_attrs.update(subset_estimate=value, subset_size=subset.size)
            if self.settings.item_subset_confirm and trial is not None and value > best_full_score(trial.study):
                # a new best by the estimate: confirmed on the rest of the documents, so the best trial's score is
                # never an estimate (the largest of many noisy estimates is biased upwards)
                with _logger_at_least("lm_eval", logging.WARNING):
                    lm = self.lm_for(model, tokenizer)
                    for run, _ in runs:
                        rest = [d for d in run.search_docs if d not in per_doc[run.name]]
                        if rest:
                            per_doc[run.name].update(self._run(lm, run, rest, objective(run))[1])
                            items += len(rest)
                        details[run.name] = self._aggregate(run, per_doc[run.name], objective(run))
                value = weighted_mean([details[run.name] for run, _ in runs], [run.weight for run, _ in runs])
                trial_attrs["subset_confirmed"] = True
        smooth = {run.name: objective(run) for run, _ in runs if objective(run) != TASK_METRIC}
        item_values = {} if smooth or subset is not None else self._item_values([run for run, _ in runs], per_doc)
        parts = dict(details) if len(runs) > 1 else {}
        # the trial records which number each task's is, beside the task's name
        details = {f"{name} ({smooth[name]})" if name in smooth else name: v for name, v in details.items()}
        return Score(value=value, details=details, item_values=item_values, items_scored=items, parts=parts,
                     trial_attrs=trial_attrs)

    def score(self, model: Any, tokenizer: Any, trial: Any | None = None) -> Score:
        """Search score: weighted mean of each task's primary metric on its search documents.

        With ``trial`` and --prune, the running weighted mean is reported after each chunk but the last
        (step = chunk index) and optuna.TrialPruned is raised when the study's pruner says so.

        With --item_subset, once the study has its subset (``subset_for``), only the subset's documents are scored
        and the score is their estimate of the full one."""
        result = self._score(model, tokenizer, "search", trial, self.subset_for(trial))
        assert result is not None  # every task has at least one search document
        return result

    def subset_for(self, trial: Any | None) -> ItemSubset | None:
        """The study's item subset: None without --item_subset, or while fewer than --item_subset_after trials have
        finished with every search document's value; chosen from the first of them once, then kept in the study
        (a resumed run, or another worker, reads the same one)."""
        if not self.settings.item_subset or trial is None:
            return None
        import optuna

        study = trial.study
        if study.study_name in self._subsets:
            return self._subsets[study.study_name]
        stored = study.user_attrs.get(SUBSET_ATTR)
        if stored:
            self._subsets[study.study_name] = ItemSubset.from_json(stored)
            return self._subsets[study.study_name]
        scored = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
                  if SEARCH_VALUES_ATTR in t.user_attrs]
        if len(scored) < self.settings.item_subset_after:
            return None
        fitted = sorted(scored, key=lambda t: t.number)[:self.settings.item_subset_after]
        values = {run.name: list(zip(*(t.user_attrs[SEARCH_VALUES_ATTR][run.name] for t in fitted)))
                  for run in self.runs}
        subset = choose_subset(values, {run.name: run.search_docs for run in self.runs}, self.settings.item_subset,
                               [t.number for t in fitted])
        study.set_user_attr(SUBSET_ATTR, subset.to_json())
        self._subsets[study.study_name] = subset
        log.info("item subset: %d of %d search documents, chosen from trials %s; later trials score only these",
                 subset.size, sum(len(run.search_docs) for run in self.runs), subset.fitted_on)
        return subset

    def holdout(self, model: Any, tokenizer: Any) -> Score | None:
        """Held-out score on documents [limit, limit + holdout) of each task; None without holdout documents.
        Tasks whose holdout came out empty (too few documents) are left out of the mean."""
        return self._score(model, tokenizer, "holdout", None)

    def describe(self) -> str:
        parts = []
        for r in self.runs:
            where = f"{r.lm_name}" if r.lm_name == r.name else f"{r.name} -> {r.lm_name}"
            hold = f", holdout {len(r.holdout_docs)}" if r.holdout_docs else ""
            parts.append(f"{where} ({r.metric}, {len(r.search_docs)} docs{hold}, {r.num_fewshot}-shot, "
                         f"w={r.weight:.3g})")
        extra = f"; data {self.settings.data_dir}" if self.settings.data_dir else ""
        smooth = [r.name for r in self.runs if r.objective != TASK_METRIC]
        objective = (f"; searched on choice_prob for {', '.join(smooth)} (held-out: each task's metric)"
                     if smooth else "")
        pruning = (f"; --prune ({self.settings.pruner}) after each of {self.settings.chunks} chunks"
                   if self.settings.pruner else "")
        subsets = (f"; --item_subset: {self.settings.item_subset:g} of the search documents after "
                   f"{self.settings.item_subset_after} full trials, with the anchors' estimate"
                   + (" (a new best confirmed on every document)" if self.settings.item_subset_confirm else "")
                   if self.settings.item_subset else "")
        return (f"lm-eval: {'; '.join(parts)}; weighted mean; batch size {self.settings.batch_size}; "
                f"{self.settings.mc_scorer} scorer{extra}{objective}{pruning}{subsets}")
