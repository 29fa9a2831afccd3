"""The bench flags, checked into ``BenchSettings`` (plain JSON data), with the held-out questions chosen
once here; ``load_bench`` turns the settings back into the questions the evaluator asks."""
from __future__ import annotations

import argparse
import difflib
import hashlib
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from task_vector_opt.identity import outside_identity
from task_vector_opt.errors import UsageError
from task_vector_opt.evaluation.bench.check import check_bench
from task_vector_opt.evaluation.bench.files import BENCH_NAME_FLAG, DEFAULT_BENCH_DIR, DEFAULT_JUDGE_FILE, \
    HOLDOUT_FILE_FLAG, JudgePrompt, Question, QuestionId, packaged

HOLDOUT_SEED = 0  # the split is a property of the bench, not of the search's sampler seed


# ----------------------------------------------------------------------------------------------- holdout

def _seeded(seed: int, *parts: object) -> random.Random:
    digest = hashlib.sha256("\x00".join(map(str, (seed,) + parts)).encode("utf-8")).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def split_holdout(questions: Sequence[Question], fraction: float, seed: int = HOLDOUT_SEED
                  ) -> tuple[list[Question], list[Question]]:
    """(search, holdout): ``round(fraction * n)`` questions held out, stratified by category.

    Each category gives ``floor(fraction * size)`` questions; the remaining slots go to the
    categories with the largest remainders (ties broken by a seeded draw). Within a category
    the held-out questions are a seeded sample. Same questions + fraction + seed, same split;
    both lists keep the input order.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"holdout fraction must be in [0, 1), got {fraction}")
    questions = list(questions)
    total = round(fraction * len(questions))
    if total == 0:
        return questions, []
    by_category: dict[str, list[int]] = {}
    for index, question in enumerate(questions):
        by_category.setdefault(question.category, []).append(index)
    categories = sorted(by_category)
    quota = {c: int(fraction * len(by_category[c])) for c in categories}
    tie_break = _seeded(seed, "categories")
    order = sorted(categories, key=lambda c: (-(fraction * len(by_category[c]) - quota[c]), tie_break.random()))
    left = total - sum(quota.values())
    while left > 0:
        progressed = False
        for c in order:
            if left and quota[c] < len(by_category[c]):
                quota[c] += 1
                left -= 1
                progressed = True
        if not progressed:
            break
    held: set[int] = set()
    for c in categories:
        held.update(_seeded(seed, "category", c).sample(by_category[c], quota[c]))
    return ([q for i, q in enumerate(questions) if i not in held], [q for i, q in enumerate(questions) if i in held])


# ---------------------------------------------------------------------------------------------- settings

@dataclass
class BenchSettings:
    """The bench flags, checked; plain JSON-serializable data (dataclasses.asdict)."""

    bench_name: str
    bench_dir: str  # absolute
    question_file: str  # absolute
    judge_file: str  # absolute
    max_new_tokens: int
    gen_batch_size: int = outside_identity()  # batching changes the speed, not greedy answers
    conv_template: str | None
    holdout_fraction: float
    holdout_question_file: str | None  # absolute
    search_question_ids: list[QuestionId]
    holdout_question_ids: list[QuestionId]


@dataclass
class LoadedBench:
    """What the evaluator uses: the search questions, the holdout questions, the judge prompts."""

    search: list[Question]
    holdout: list[Question]
    judge_prompts: dict[str, JudgePrompt]

    def reference_for(self, question: Question) -> list[str] | None:
        """The question's reference answer turns (inline field, else the reference answer files)."""
        return question.reference


def load_bench(settings: BenchSettings) -> LoadedBench:
    """Check the bench again (files may have changed since the flags were parsed) and split it as recorded."""
    bench = check_bench(settings.bench_dir, settings.bench_name, settings.judge_file)
    known = {str(q.question_id) for q in bench.questions}
    recorded = [str(i) for i in settings.search_question_ids + (
        [] if settings.holdout_question_file else settings.holdout_question_ids)]
    missing = [i for i in recorded if i not in known]
    if missing:
        raise UsageError(BENCH_NAME_FLAG, f"{bench.question_file} changed: question(s) {', '.join(missing[:5])} "
                                          "are gone")
    search = bench.subset(settings.search_question_ids) if settings.search_question_ids else bench
    if settings.holdout_question_file:
        held = check_bench(settings.bench_dir, settings.bench_name, settings.judge_file,
                           question_file=settings.holdout_question_file)
    else:
        held = bench.subset(settings.holdout_question_ids) if settings.holdout_question_ids else None
    return LoadedBench(search=list(search.questions), holdout=list(held.questions) if held else [],
                       judge_prompts=bench.judge_prompts)


def _resolve_existing(text: str, default: str) -> Path:
    """A relative path as given, or, when it is the default and absent here, the package's own copy."""
    path = Path(text).expanduser()
    if not path.is_absolute() and not path.exists() and text == default and packaged(default).exists():
        path = packaged(default)
    return path.absolute()


def check_conv_template(name: str | None) -> str | None:
    """A FastChat conversation template name, checked against fastchat.conversation's registry."""
    if name is None:
        return None
    from fastchat.conversation import conv_templates

    if name not in conv_templates:
        close = difflib.get_close_matches(name, list(conv_templates), n=4, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see fastchat.conversation for the names"
        raise UsageError("--conv_template", f"unknown FastChat conversation template {name!r}{hint}")
    return name


def bench_settings_from_args(args: argparse.Namespace) -> BenchSettings:
    """Validate the bench flags (UsageError naming the flag) and build the settings; no model is touched."""
    bench_name = args.bench_name
    if not bench_name or "/" in bench_name or "\\" in bench_name or bench_name in (".", ".."):
        raise UsageError(BENCH_NAME_FLAG, f"{bench_name!r} is not a bench name (a folder under --bench_dir)")
    bench_dir = _resolve_existing(args.bench_dir, DEFAULT_BENCH_DIR)
    judge_file = _resolve_existing(args.judge_file, DEFAULT_JUDGE_FILE)
    if args.max_new_tokens < 1:
        raise UsageError("--max_new_tokens", f"{args.max_new_tokens} is too small; give at least 1")
    if args.gen_batch_size < 1:
        raise UsageError("--gen_batch_size", f"{args.gen_batch_size} is too small; give at least 1")
    conv_template = check_conv_template(args.conv_template or None)
    fraction = args.holdout_fraction
    if not 0.0 <= fraction < 1.0:
        raise UsageError("--holdout_fraction", f"{fraction} is outside [0, 1): give the share of questions held out "
                                               "of the search, e.g. 0.2")
    if args.holdout_question_file and fraction > 0:
        raise UsageError(HOLDOUT_FILE_FLAG, "give either --holdout_question_file or --holdout_fraction, not both")

    bench = check_bench(bench_dir, bench_name, judge_file)
    search_ids = [q.question_id for q in bench.questions]
    holdout_ids: list[QuestionId] = []
    holdout_file: str | None = None
    if args.holdout_question_file:
        holdout_path = Path(args.holdout_question_file).expanduser().absolute()
        if holdout_path.resolve() == bench.question_file.resolve():
            raise UsageError(HOLDOUT_FILE_FLAG, f"{holdout_path} is the bench's own question file; a holdout must "
                                                "hold other questions")
        holdout = check_bench(bench_dir, bench_name, judge_file, question_file=holdout_path)
        holdout_ids = [q.question_id for q in holdout.questions]
        holdout_file = str(holdout_path)
    elif fraction > 0:
        search, held = split_holdout(bench.questions, fraction, HOLDOUT_SEED)
        if not held or not search:
            raise UsageError("--holdout_fraction", f"{fraction} of {len(bench.questions)} questions leaves "
                                                   f"{len(search)} for the search and {len(held)} held out; both "
                                                   "need at least one")
        search_ids = [q.question_id for q in search]
        holdout_ids = [q.question_id for q in held]
    return BenchSettings(
        bench_name=bench_name, bench_dir=str(bench_dir), question_file=str(bench.question_file),
        judge_file=str(judge_file), max_new_tokens=int(args.max_new_tokens), gen_batch_size=int(args.gen_batch_size),
        conv_template=conv_template, holdout_fraction=float(fraction), holdout_question_file=holdout_file,
        search_question_ids=search_ids, holdout_question_ids=holdout_ids)
