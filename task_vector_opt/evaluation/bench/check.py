"""A bench checked up front, before any model: its questions with their reference answers resolved, and
the judge prompts they need, each usable. Everything wrong is a UsageError naming the flag and the file."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from task_vector_opt.errors import UsageError
from task_vector_opt.evaluation.bench.files import BENCH_DIR_FLAG, BENCH_NAME_FLAG, HOLDOUT_FILE_FLAG, \
    JUDGE_FILE_FLAG, QUESTION_FILE, REFERENCE_DIR, JudgePrompt, Question, QuestionId, load_judge_prompts, \
    load_questions, load_reference_answers
from task_vector_opt.evaluation.bench.prompts import check_prompts

DEFAULT_REFERENCE_MODEL = "gpt-4"  # FastChat looks reference answers up under the judge model's name


@dataclass
class BenchData:
    """A checked bench: its questions (references resolved) and the judge prompts they need."""

    name: str
    question_file: Path
    questions: list[Question]
    judge_file: Path
    judge_prompts: dict[str, JudgePrompt]
    reference_files: list[Path] = field(default_factory=list)

    def subset(self, question_ids: Sequence[QuestionId]) -> "BenchData":
        by_id = {str(q.question_id): q for q in self.questions}
        return BenchData(self.name, self.question_file, [by_id[str(i)] for i in question_ids], self.judge_file,
                         self.judge_prompts, list(self.reference_files))


def _ordered_reference_models(found: dict[str, Any], preferred: str | None) -> list[str]:
    order = [m for m in (preferred, DEFAULT_REFERENCE_MODEL) if m and m in found]
    return list(dict.fromkeys(order + sorted(found)))


def _attach_references(questions: list[Question], reference_dir: Path, flag: str,
                       reference_model: str | None) -> list[Path]:
    found = load_reference_answers(reference_dir, flag)
    models = _ordered_reference_models(found, reference_model)
    lookup = [{str(qid): turns for qid, turns in found[m].items()} for m in models]
    for question in questions:
        if question.reference is None:  # the inline field wins
            for table in lookup:
                if str(question.question_id) in table:
                    question.reference = list(table[str(question.question_id)])
                    break
    return [reference_dir / f"{m}.jsonl" for m in models]


def check_bench(bench_dir: str | Path, bench_name: str, judge_file: str | Path, *,
                question_file: str | Path | None = None, reference_model: str | None = None) -> BenchData:
    """Load and check a bench up front (no model involved).

    ``question_file`` replaces ``<bench_dir>/<bench_name>/question.jsonl`` (a holdout file);
    its reference answers are then looked up in ``reference_answer/`` next to it.
    Reference files are tried in the order: ``reference_model``, ``gpt-4`` (FastChat's default
    judge), then by name.
    """
    judge_path = Path(judge_file)
    if question_file is None:
        root = Path(bench_dir)
        if not root.is_dir():
            raise UsageError(BENCH_DIR_FLAG, f"{root}: no such directory; expected FastChat's llm_judge data dir "
                                             f"holding <bench_name>/{QUESTION_FILE}")
        bench_path = root / bench_name
        if not bench_path.is_dir():
            available = sorted(p.name for p in root.iterdir() if (p / QUESTION_FILE).is_file())
            raise UsageError(BENCH_NAME_FLAG, f"no bench {bench_name!r}: expected {bench_path / QUESTION_FILE}"
                                              + (f" (benches in {root}: {', '.join(available)})" if available else ""))
        questions_path = bench_path / QUESTION_FILE
        if not questions_path.is_file():
            raise UsageError(BENCH_NAME_FLAG, f"bench {bench_name!r} has no question file: expected {questions_path}")
        flag = BENCH_NAME_FLAG
    else:
        questions_path = Path(question_file)
        flag = HOLDOUT_FILE_FLAG
        if not questions_path.is_file():
            raise UsageError(flag, f"{questions_path}: no such file (a FastChat {QUESTION_FILE})")
    if not judge_path.is_file():
        raise UsageError(JUDGE_FILE_FLAG, f"{judge_path}: no such file; expected FastChat's judge_prompts.jsonl")
    questions = load_questions(questions_path, flag)
    prompts = load_judge_prompts(judge_path)
    reference_dir = questions_path.parent / REFERENCE_DIR
    reference_files = _attach_references(questions, reference_dir, flag if question_file else BENCH_DIR_FLAG,
                                         reference_model)
    check_prompts(questions, prompts, judge_path, questions_path, reference_dir, flag)
    return BenchData(bench_name if question_file is None else questions_path.stem, questions_path, questions,
                     judge_path, prompts, reference_files)
