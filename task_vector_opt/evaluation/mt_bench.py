"""The MT-Bench evaluator: the live model answers the bench, an LLM judge grades each turn, the score is the mean.

Questions, judge prompts and the judge client are set up once per run. Each trial answers the
questions in chunks; after each chunk the running mean is reported to the trial, so a pruner can
stop a hopeless trial early. Every trial's answers and judgments are kept as JSONL in FastChat's
formats under <run_dir>/records/<trial>/. A judgment that could not be obtained is excluded from the
mean and counted (FastChat's score -1 in the file); if too few judgments succeed, the trial fails.
"""
from __future__ import annotations

import argparse
import logging
import statistics
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import optuna

from task_vector_opt.errors import TrialFailure, UsageError
from task_vector_opt.evaluation.bench.files import Question
from task_vector_opt.evaluation.bench.prompts import judge_prompt_for, render_judge_prompt
from task_vector_opt.evaluation.bench.settings import BenchSettings, bench_settings_from_args, load_bench
from task_vector_opt.evaluation.generation import AnswerGenerator
from task_vector_opt.evaluation.judges.base import Judge
from task_vector_opt.evaluation.judges.judgment import JudgeRequest, JudgeTally
from task_vector_opt.evaluation.judges.registry import make_judge
from task_vector_opt.evaluation.judges.settings import JudgeSpec, judge_spec_from_args
from task_vector_opt.evaluation.protocol import Score
from task_vector_opt.evaluation.vllm_backend import VLLMAnswerGenerator, VLLMEngine, check_backend_flags
from task_vector_opt.files import write_jsonl_atomic
from task_vector_opt.identity import identity_when, outside_identity
from task_vector_opt.search.pruning import make_pruner, pruner_from_args, should_stop

log = logging.getLogger(__name__)

FAILURE_POLICIES = ("fail_trial", "stop")


class JudgeFailure(TrialFailure):
    """Too few judgments succeeded: the trial fails with this reason (and may stop the study)."""

    def __init__(self, message: str, stops_study: bool):
        super().__init__(message)
        self.stops_study = stops_study


@dataclass
class MTBenchSettings:
    bench: BenchSettings
    judge: JudgeSpec
    # questions per chunk; the running mean is reported after each, so it matters only to the pruner
    chunk_size: int = identity_when(lambda settings: settings.prune)
    prune: bool
    on_judge_failure: str = outside_identity()  # what to do on a judge outage, like retries
    min_judged_fraction: float = outside_identity()  # when an outage fails a trial; never changes a score
    pruner: str | None = None  # --pruner (None without --prune)
    # hf (transformers generate) or vllm; the study counts it only when it is not hf (older studies resume)
    generation_backend: str = identity_when(lambda settings: settings.generation_backend != "hf", default="hf")
    vllm_gpu_memory_utilization: float = outside_identity(default=0.5)  # memory, never an answer


def mt_bench_settings_from_args(args: argparse.Namespace) -> MTBenchSettings:
    if args.chunk_size < 1:
        raise UsageError("--chunk_size", f"must be at least 1 (got {args.chunk_size})")
    if not 0.0 < args.min_judged_fraction <= 1.0:
        raise UsageError("--min_judged_fraction", f"must be in (0, 1] (got {args.min_judged_fraction})")
    vllm_share = check_backend_flags(args.generation_backend, args.vllm_gpu_memory_utilization)
    return MTBenchSettings(bench=bench_settings_from_args(args), judge=judge_spec_from_args(args),
                           chunk_size=args.chunk_size, prune=args.prune, on_judge_failure=args.on_judge_failure,
                           min_judged_fraction=args.min_judged_fraction, pruner=pruner_from_args(args),
                           generation_backend=args.generation_backend,
                           vllm_gpu_memory_utilization=vllm_share)


class MTBenchEvaluator:
    def __init__(self, settings: MTBenchSettings, run_dir: Path, model_id: str = "merged"):
        self.settings = settings
        self.bench = load_bench(settings.bench)  # validated again: files may have changed since parsing
        self.judge: Judge = make_judge(settings.judge, probe=True)  # a bad key or model stops here, before loading
        self.records = run_dir / "records"
        self.model_id = model_id
        self.run_tally = JudgeTally()
        self.pruner = make_pruner(settings.pruner)
        self._generator: AnswerGenerator | None = None
        self._holdout_calls = 0
        # --generation_backend vllm: an engine with its own copy of the weights, started at the first answer
        self.vllm = (VLLMEngine(settings.vllm_gpu_memory_utilization)
                     if settings.generation_backend == "vllm" else None)

    def follow(self, merger) -> None:
        """engine.run hands over the merger: the vLLM backend pushes the tensors each merge rewrites."""
        if self.vllm is not None:
            self.vllm.follow(merger)

    def describe(self) -> str:
        return (f"MT-Bench '{self.settings.bench.bench_name}': {len(self.bench.search)} questions "
                f"(+{len(self.bench.holdout)} holdout), judge {self.judge.name} "
                f"({self.settings.judge.rating_mode} ratings, {self.settings.judge.parallel} in parallel)"
                + (", answers by vLLM" if self.vllm is not None else ""))

    def generator(self, tokenizer) -> AnswerGenerator:
        if self._generator is None:
            bench = self.settings.bench
            options = dict(max_new_tokens=bench.max_new_tokens, batch_size=bench.gen_batch_size,
                           conv_template=bench.conv_template)
            self._generator = (AnswerGenerator(tokenizer, **options) if self.vllm is None
                               else VLLMAnswerGenerator(tokenizer, self.vllm, **options))
        return self._generator

    def requests_for(self, question: Question, answers: list[str]) -> list[tuple[int, str, JudgeRequest]]:
        """One judgment per turn, as FastChat's single-answer grading does: (turn, prompt name, request)."""
        reference = self.bench.reference_for(question)
        out = []
        for turn in range(1, len(question.turns) + 1):
            prompt = judge_prompt_for(question, self.bench.judge_prompts, multi_turn=turn == 2)
            system, user = render_judge_prompt(prompt, question, answers[:turn], reference)
            out.append((turn, prompt.name, JudgeRequest(system=system, user=user)))
        return out

    def _evaluate(self, model, tokenizer, questions: list[Question], label: str,
                  trial: optuna.Trial | None) -> Score:
        started = time.perf_counter()
        generator = self.generator(tokenizer)
        ratings: list[tuple[Question, int, float]] = []
        answer_rows: list[dict[str, Any]] = []
        judgment_rows: list[dict[str, Any]] = []
        tally = JudgeTally()
        expected = excluded = 0
        chunk = self.settings.chunk_size
        for step, first in enumerate(range(0, len(questions), chunk)):
            part = questions[first:first + chunk]
            answers = generator.generate(model, part)
            plan = [(q, turn, name, request) for q, a in zip(part, answers) for turn, name, request in
                    self.requests_for(q, a)]
            judgments, chunk_tally = self.judge.judge_many([p[3] for p in plan])
            tally.add(chunk_tally)
            now = time.time()
            for question, answer in zip(part, answers):
                answer_rows.append({"question_id": question.question_id, "answer_id": uuid.uuid4().hex,
                                    "model_id": self.model_id, "choices": [{"index": 0, "turns": answer}],
                                    "tstamp": now})
            for (question, turn, name, request), judgment in zip(plan, judgments):
                expected += 1
                row = {"question_id": question.question_id, "model": self.model_id,
                       "judge": [self.settings.judge.model, name], "user_prompt": request.user,
                       "judgment": judgment.text, "score": judgment.rating if judgment.rating is not None else -1,
                       "turn": turn, "tstamp": now}
                if judgment.rating is None:
                    excluded += 1
                    row["excluded_reason"] = judgment.error or "no rating"
                else:
                    ratings.append((question, turn, judgment.rating))
                judgment_rows.append(row)
            if trial is not None and ratings:
                trial.report(statistics.fmean(r for _, _, r in ratings), step)
                if should_stop(trial):
                    trial.set_user_attr("items_scored", first + len(part))  # questions the pruned trial cost
                    self._write_records(label, answer_rows, judgment_rows)
                    raise optuna.TrialPruned(f"running mean {statistics.fmean(r for _, _, r in ratings):.3f} "
                                             f"after {first + len(part)} questions")
        self.run_tally.add(tally)
        self._write_records(label, answer_rows, judgment_rows)
        judged = len(ratings)
        if expected == 0 or judged / expected < self.settings.min_judged_fraction:
            reasons = sorted({row.get("excluded_reason", "") for row in judgment_rows} - {""})
            raise JudgeFailure(f"only {judged} of {expected} judgments succeeded ({'; '.join(reasons)[:300]})",
                               stops_study=self.settings.on_judge_failure == "stop")
        value = statistics.fmean(r for _, _, r in ratings)
        details: dict[str, float] = {"judged": judged, "excluded": excluded,
                                     "answer_and_judge_s": round(time.perf_counter() - started, 2)}
        for turn in (1, 2):
            turn_ratings = [r for _, t, r in ratings if t == turn]
            if turn_ratings:
                details[f"turn_{turn}"] = statistics.fmean(turn_ratings)
        for category in sorted({q.category for q, _, _ in ratings}):
            details[f"category/{category}"] = statistics.fmean(r for q, _, r in ratings if q.category == category)
        details.update({f"judge/{key}": value for key, value in tally.as_dict().items() if value is not None})
        item_values = {f"{q.question_id}/turn {turn}": rating for q, turn, rating in ratings}  # for the verdict
        return Score(value, details, item_values=item_values, items_scored=len(questions))

    def _write_records(self, label: str, answers: list[dict], judgments: list[dict]) -> None:
        folder = self.records / label
        write_jsonl_atomic(folder / "answers.jsonl", answers)
        write_jsonl_atomic(folder / "judgments.jsonl", judgments)

    def score(self, model, tokenizer, trial: optuna.Trial | None = None) -> Score:
        label = f"trial_{trial.number:04d}" if trial is not None else "search"
        return self._evaluate(model, tokenizer, self.bench.search, label, trial)

    def holdout(self, model, tokenizer) -> Score | None:
        if not self.bench.holdout:
            return None
        self._holdout_calls += 1
        return self._evaluate(model, tokenizer, self.bench.holdout, f"holdout_{self._holdout_calls:02d}", None)

    def settings_dict(self) -> dict[str, Any]:
        return asdict(self.settings)
