"""The one answer-and-rate loop of judged benches (MT-Bench, the VLM bench): chunks, running means for the pruner,
records, the judged fraction, a Score with each item's value, and the holdout.

A bench keeps only what differs: how the live model answers a chunk of its items and how each answer is rated
(``rate_chunk``), and the words its messages and trial attrs use. Every trial's records are kept as JSONL under
<run_dir>/records/<trial>/. A rating that could not be obtained is excluded from the mean and counted; if too few
ratings succeed, the trial fails (and, with --on_judge_failure stop, the study stops).
"""
from __future__ import annotations

import argparse
import statistics
import time
from abc import abstractmethod
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import optuna

from task_vector_opt.errors import TrialFailure, UsageError
from task_vector_opt.evaluation.judges.judgment import JudgeTally
from task_vector_opt.evaluation.protocol import Evaluator, EvaluatorSettings, Score
from task_vector_opt.evaluation.vllm_backend import VLLMEngine, check_backend_flags
from task_vector_opt.files import write_jsonl_atomic
from task_vector_opt.identity import identity_when, outside_identity
from task_vector_opt.search.pruning import make_pruner, pruner_from_args, should_stop

FAILURE_POLICIES = ("fail_trial", "stop")


class JudgeFailure(TrialFailure):
    """Too few ratings succeeded: the trial fails with this reason (and may stop the study)."""

    def __init__(self, message: str, stops_study: bool):
        super().__init__(message)
        self.stops_study = stops_study


@dataclass(kw_only=True)
class JudgedLoopSettings(EvaluatorSettings):
    """The loop's settings, shared by every judged bench's settings (fields of the same names in the study)."""

    # items per chunk; the running mean is reported after each, so it matters only to the pruner
    chunk_size: int = identity_when(lambda settings: settings.prune, default=4)
    prune: bool = False
    pruner: str | None = None  # --pruner (None without --prune)
    on_judge_failure: str = outside_identity(default="fail_trial")  # what to do on a judge outage, like retries
    min_judged_fraction: float = outside_identity(default=0.5)  # when an outage fails a trial; never a score
    # hf (transformers generate) or vllm; the study counts it only when it is not hf (older studies resume)
    generation_backend: str = identity_when(lambda settings: settings.generation_backend != "hf", default="hf")
    vllm_gpu_memory_utilization: float = outside_identity(default=0.5)  # memory, never an answer

    def gpu_memory_share(self) -> float:
        return self.vllm_gpu_memory_utilization if self.generation_backend == "vllm" else 0.0


def loop_settings_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The loop's flags, validated: keyword arguments for a JudgedLoopSettings subclass."""
    if args.chunk_size < 1:
        raise UsageError("--chunk_size", f"must be at least 1 (got {args.chunk_size})")
    if not 0.0 < args.min_judged_fraction <= 1.0:
        raise UsageError("--min_judged_fraction", f"must be in (0, 1] (got {args.min_judged_fraction})")
    vllm_share = check_backend_flags(args.generation_backend, args.vllm_gpu_memory_utilization)
    return dict(chunk_size=args.chunk_size, prune=args.prune, pruner=pruner_from_args(args),
                on_judge_failure=args.on_judge_failure, min_judged_fraction=args.min_judged_fraction,
                generation_backend=args.generation_backend, vllm_gpu_memory_utilization=vllm_share)


@dataclass
class Rating:
    """One rated unit of a bench item (MT-Bench: a turn; the VLM bench: the item)."""

    item: Any  # the bench item; its ``category`` gives the per-category means
    key: str  # stable across merges (the held-out verdict pairs on it), e.g. "81/turn 2"
    value: float | None  # None: no rating (excluded from the mean, counted)
    missing_reason: str | None = None  # why ``value`` is None
    facets: tuple[str, ...] = ()  # more detail keys whose mean it counts towards, e.g. "turn_1"


@dataclass
class RatedChunk:
    """What a bench returns for a chunk of items: its ratings and the rows to record."""

    ratings: list[Rating]
    records: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # file name -> JSONL rows
    tally: JudgeTally | None = None  # what the judge calls cost (None: no judge, e.g. ROUGE-L)


class JudgedBenchEvaluator(Evaluator):
    """score / holdout / follow for a bench whose items are answered by the live model and rated one by one."""

    item_noun = "items"  # "... after 8 items"
    rating_noun = "ratings"  # "only 3 of 8 ratings succeeded"
    rated_attr = "rated"  # the trial attr counting the ratings in the mean
    time_attr = "answer_and_score_s"  # the trial attr of the seconds a score took

    def __init__(self, settings: JudgedLoopSettings, run_dir: Path, search_items: Sequence[Any],
                 holdout_items: Sequence[Any]):
        self.settings = settings
        self.search_items, self.holdout_items = list(search_items), list(holdout_items)
        self.records = run_dir / "records"
        self.pruner = make_pruner(settings.pruner)
        self.run_tally = JudgeTally()  # all judge calls of the run
        self._holdout_calls = 0
        # --generation_backend vllm: an engine with its own copy of the weights, started at the first answer
        self.vllm = (VLLMEngine(settings.vllm_gpu_memory_utilization)
                     if settings.generation_backend == "vllm" else None)

    @abstractmethod
    def rate_chunk(self, model: Any, tokenizer: Any, items: list[Any]) -> RatedChunk:
        """Answer ``items`` with the live model and rate each answer."""

    def follow(self, merger: Any) -> None:
        """The vLLM backend pushes the tensors each merge rewrites into its own copy of the weights."""
        if self.vllm is not None:
            self.vllm.follow(merger)

    def score(self, model: Any, tokenizer: Any, trial: optuna.Trial | None = None) -> Score:
        label = f"trial_{trial.number:04d}" if trial is not None else "search"
        return self._evaluate(model, tokenizer, self.search_items, label, trial)

    def holdout(self, model: Any, tokenizer: Any) -> Score | None:
        if not self.holdout_items:
            return None
        self._holdout_calls += 1
        return self._evaluate(model, tokenizer, self.holdout_items, f"holdout_{self._holdout_calls:02d}", None)

    def _evaluate(self, model: Any, tokenizer: Any, items: list[Any], label: str,
                  trial: optuna.Trial | None) -> Score:
        started = time.perf_counter()
        ratings: list[Rating] = []
        records: dict[str, list[dict[str, Any]]] = defaultdict(list)
        tally = JudgeTally()
        judged = False  # whether any chunk was rated by a judge (its costs then go into the details)
        chunk = self.settings.chunk_size
        for step, first in enumerate(range(0, len(items), chunk)):
            part = items[first:first + chunk]
            rated = self.rate_chunk(model, tokenizer, part)
            ratings.extend(rated.ratings)
            for name, rows in rated.records.items():
                records[name].extend(rows)
            if rated.tally is not None:
                tally.add(rated.tally)
                judged = True
            values = [r.value for r in ratings if r.value is not None]
            if trial is not None and values:
                running = statistics.fmean(values)
                trial.report(running, step)
                if should_stop(trial):
                    trial.set_user_attr("items_scored", first + len(part))  # what the pruned trial cost
                    self._write_records(label, records)
                    raise optuna.TrialPruned(f"running mean {running:.3f} after {first + len(part)} "
                                             f"{self.item_noun}")
        self.run_tally.add(tally)
        self._write_records(label, records)
        kept = [r for r in ratings if r.value is not None]
        if not ratings or len(kept) / len(ratings) < self.settings.min_judged_fraction:
            reasons = sorted({r.missing_reason or "no rating" for r in ratings if r.value is None})
            raise JudgeFailure(f"only {len(kept)} of {len(ratings)} {self.rating_noun} succeeded "
                               f"({'; '.join(reasons)[:300]})", stops_study=self.settings.on_judge_failure == "stop")
        details: dict[str, float] = {self.rated_attr: len(kept), "excluded": len(ratings) - len(kept),
                                     self.time_attr: round(time.perf_counter() - started, 2)}
        for facet in sorted({facet for r in kept for facet in r.facets}):
            details[facet] = statistics.fmean(r.value for r in kept if facet in r.facets)
        for category in sorted({r.item.category for r in kept}):
            details[f"category/{category}"] = statistics.fmean(r.value for r in kept if r.item.category == category)
        if judged:
            details.update({f"judge/{key}": value for key, value in tally.as_dict().items() if value is not None})
        item_values = {r.key: r.value for r in kept}  # their mean is the score: the verdict pairs them
        return Score(statistics.fmean(r.value for r in kept), details, item_values=item_values,
                     items_scored=len(items))

    def _write_records(self, label: str, records: dict[str, list[dict[str, Any]]]) -> None:
        for name, rows in records.items():
            write_jsonl_atomic(self.records / label / name, rows)
