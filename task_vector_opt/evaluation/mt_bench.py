"""The MT-Bench evaluator: the live model answers the bench, an LLM judge grades each turn, the score is the mean.

Questions, judge prompts and the judge client are set up once per run. The loop (chunks, running means for the
pruner, records, the judged fraction, the holdout) is evaluation.judged_bench's, shared with the VLM bench; this
module answers a chunk of questions and judges each turn. Every trial's answers and judgments are kept as JSONL in
FastChat's formats under <run_dir>/records/<trial>/; a judgment that could not be obtained is excluded from the
mean and counted (FastChat's score -1 in the file).
"""
from __future__ import annotations

import argparse
import logging
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from task_vector_opt.evaluation.bench.files import Question
from task_vector_opt.evaluation.bench.prompts import judge_prompt_for, render_judge_prompt
from task_vector_opt.evaluation.bench.settings import BenchSettings, bench_settings_from_args, load_bench
from task_vector_opt.evaluation.generation import AnswerGenerator
from task_vector_opt.evaluation.judged_bench import (FAILURE_POLICIES, JudgedBenchEvaluator, JudgedLoopSettings,
                                                     JudgeFailure, RatedChunk, Rating, loop_settings_from_args)
from task_vector_opt.evaluation.judges.base import Judge
from task_vector_opt.evaluation.judges.judgment import JudgeRequest
from task_vector_opt.evaluation.judges.registry import make_judge
from task_vector_opt.evaluation.judges.settings import JudgeSpec, judge_spec_from_args
from task_vector_opt.evaluation.vllm_backend import VLLMAnswerGenerator

log = logging.getLogger(__name__)

__all__ = ["FAILURE_POLICIES", "JudgeFailure", "MTBenchEvaluator", "MTBenchSettings", "mt_bench_settings_from_args"]


@dataclass(kw_only=True)
class MTBenchSettings(JudgedLoopSettings):
    bench: BenchSettings
    judge: JudgeSpec


def mt_bench_settings_from_args(args: argparse.Namespace) -> MTBenchSettings:
    loop = loop_settings_from_args(args)
    return MTBenchSettings(bench=bench_settings_from_args(args), judge=judge_spec_from_args(args), **loop)


class MTBenchEvaluator(JudgedBenchEvaluator):
    item_noun = "questions"
    rating_noun = "judgments"
    rated_attr = "judged"
    time_attr = "answer_and_judge_s"

    def __init__(self, settings: MTBenchSettings, run_dir: Path, model_id: str = "merged"):
        bench = load_bench(settings.bench)  # validated again: files may have changed since parsing
        judge: Judge = make_judge(settings.judge, probe=True)  # a bad key or model stops here, before loading
        super().__init__(settings, run_dir, bench.search, bench.holdout)
        self.settings: MTBenchSettings = settings
        self.bench, self.judge = bench, judge
        self.model_id = model_id
        self._generator: AnswerGenerator | None = None

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

    def rate_chunk(self, model, tokenizer, questions: list[Question]) -> RatedChunk:
        """Answer every turn of ``questions``, then judge each turn: FastChat's answer and judgment rows."""
        answers = self.generator(tokenizer).generate(model, questions)
        plan = [(q, turn, name, request) for q, a in zip(questions, answers)
                for turn, name, request in self.requests_for(q, a)]
        judgments, tally = self.judge.judge_many([request for *_, request in plan])
        now = time.time()
        answer_rows = [{"question_id": q.question_id, "answer_id": uuid.uuid4().hex, "model_id": self.model_id,
                        "choices": [{"index": 0, "turns": a}], "tstamp": now} for q, a in zip(questions, answers)]
        ratings: list[Rating] = []
        judgment_rows: list[dict[str, Any]] = []
        for (question, turn, name, request), judgment in zip(plan, judgments):
            row = {"question_id": question.question_id, "model": self.model_id,
                   "judge": [self.settings.judge.model, name], "user_prompt": request.user,
                   "judgment": judgment.text, "score": judgment.rating if judgment.rating is not None else -1,
                   "turn": turn, "tstamp": now}
            missing = None if judgment.rating is not None else (judgment.error or "no rating")
            if missing:
                row["excluded_reason"] = missing
            judgment_rows.append(row)
            ratings.append(Rating(question, f"{question.question_id}/turn {turn}", judgment.rating, missing,
                                  facets=(f"turn_{turn}",) if turn in (1, 2) else ()))
        return RatedChunk(ratings, {"answers.jsonl": answer_rows, "judgments.jsonl": judgment_rows}, tally)

    def settings_dict(self) -> dict[str, Any]:
        return asdict(self.settings)
