"""FastChat's llm_judge files: where they sit, FastChat's own tables, and reading the JSONL files into
questions, reference answers and judge prompts, each line checked against its schema (``schemas``).

Layout (as in FastChat's ``fastchat/llm_judge/data``)::

    <bench_dir>/judge_prompts.jsonl                          --judge_file (default)
    <bench_dir>/<bench_name>/question.jsonl                  the questions
    <bench_dir>/<bench_name>/reference_answer/<model>.jsonl  reference answers (FastChat answer format)
"""
from __future__ import annotations

import ast
import importlib.util
import json
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator, TypeVar, Union

from pydantic import ValidationError

from task_vector_opt.errors import UsageError
from task_vector_opt.evaluation.bench.schemas import JudgePromptRow, QuestionRow, ReferenceAnswerRow, Row

QuestionId = Union[int, str]

BENCH_NAME_FLAG = "--bench_name"
BENCH_DIR_FLAG = "--bench_dir"
JUDGE_FILE_FLAG = "--judge_file"
HOLDOUT_FILE_FLAG = "--holdout_question_file"

# FastChat's own layout: the defaults of --bench_dir and --judge_file (the flag table reads them here). When
# absent from the working directory, they are the package's own copy (settings._resolve_existing), which ships
# in the wheel; the repository's FastChat/fastchat/llm_judge/data is a link to it.
DEFAULT_BENCH_DIR = "FastChat/fastchat/llm_judge/data"
DEFAULT_JUDGE_FILE = f"{DEFAULT_BENCH_DIR}/judge_prompts.jsonl"
PACKAGED_BENCH_DIR = Path(__file__).resolve().parent / "data"  # the example bench and the judge prompts


def packaged(default: str) -> Path:
    """Where a default path under DEFAULT_BENCH_DIR lies in the installed package."""
    return PACKAGED_BENCH_DIR / Path(default).relative_to(DEFAULT_BENCH_DIR)
QUESTION_FILE = "question.jsonl"
REFERENCE_DIR = "reference_answer"


# ------------------------------------------------------------------------------------ FastChat's tables

def _read_fastchat_constants() -> dict[str, Any]:
    """NEED_REF_CATS and temperature_config from the installed ``fastchat.llm_judge.common``.

    Importing that module costs seconds (it pulls in openai, anthropic and FastChat's model
    adapters), too slow for input validation, so the two literals are read from its source
    with ``ast`` without running it. If the file's layout ever changes, the module is imported.
    """
    wanted = {"NEED_REF_CATS", "temperature_config"}
    try:
        spec = importlib.util.find_spec("fastchat.llm_judge.common")
        source = Path(spec.origin).read_text(encoding="utf-8")  # type: ignore[union-attr, arg-type]
        found: dict[str, Any] = {}
        with warnings.catch_warnings():  # its regex literals have invalid escapes; not our concern
            warnings.simplefilter("ignore")
            tree = ast.parse(source)
        for node in tree.body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                if node.targets[0].id in wanted:
                    found[node.targets[0].id] = ast.literal_eval(node.value)
        if set(found) == wanted:
            return found
    except Exception:  # noqa: BLE001 - fall back to the import below
        pass
    from fastchat.llm_judge import common

    return {name: getattr(common, name) for name in wanted}


@lru_cache(maxsize=1)
def _fastchat_constants() -> dict[str, Any]:
    return _read_fastchat_constants()


def need_ref_categories() -> frozenset[str]:
    """Categories whose judge prompt compares against a reference answer (FastChat's NEED_REF_CATS)."""
    return frozenset(_fastchat_constants()["NEED_REF_CATS"])


def temperature_table() -> dict[str, float]:
    """FastChat's per-category sampling temperatures (``temperature_config``)."""
    return dict(_fastchat_constants()["temperature_config"])


# ------------------------------------------------------------------------------------------- the types

@dataclass
class Question:
    question_id: QuestionId
    category: str
    turns: list[str]
    reference: list[str] | None = None


def needs_reference(question: Question) -> bool:
    return question.category in need_ref_categories()


JudgePrompt = JudgePromptRow  # a judge prompt as loaded: the validated row, with the line it came from


# ---------------------------------------------------------------------------------------------- reading

RowT = TypeVar("RowT", bound=Row)


def jsonl_records(path: Path, flag: str | None) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line; UsageError names file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(flag, f"{path}: file not found") from None
    except UnicodeDecodeError as exc:
        raise UsageError(flag, f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise UsageError(flag, f"{path}: cannot read ({exc.strerror or exc})") from None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UsageError(flag, f"{path}:{number}: malformed JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(record, dict):
            raise UsageError(flag, f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
        yield number, record


def read_rows(path: Path, schema: type[RowT], flag: str | None) -> Iterator[tuple[int, RowT]]:
    """(line number, checked row) for each non-blank line of a JSONL file; the first bad line is a
    UsageError naming ``flag``, ``path:line`` and what is wrong with it."""
    for number, record in jsonl_records(path, flag):
        try:
            yield number, schema.model_validate(record)
        except ValidationError as exc:
            raise UsageError(flag, f"{path}:{number}: {schema.explain(exc.errors()[0], record)}") from None


def load_questions(path: str | Path, flag: str | None = BENCH_NAME_FLAG) -> list[Question]:
    """Questions from a FastChat question.jsonl (question_id, category, turns[, reference]).

    UsageError names ``path:line`` for a malformed JSON line, a missing/invalid question_id,
    category or turns (a non-empty list of strings, at most two), a bad reference, or a
    duplicate question_id. Blank lines are skipped; extra fields are ignored.
    """
    path = Path(path)
    questions: list[Question] = []
    seen: dict[str, int] = {}
    for number, row in read_rows(path, QuestionRow, flag):
        key = str(row.question_id)
        if key in seen:
            raise UsageError(flag, f"{path}:{number}: duplicate question_id {row.question_id!r} (first on line "
                                   f"{seen[key]})")
        seen[key] = number
        questions.append(Question(row.question_id, row.category, list(row.turns),
                                  list(row.reference) if row.reference else None))
    if not questions:
        raise UsageError(flag, f"{path}: no questions in the file")
    return questions


def load_reference_answers(directory: str | Path, flag: str | None = BENCH_DIR_FLAG
                           ) -> dict[str, dict[QuestionId, list[str]]]:
    """Reference answers ``{model: {question_id: turns}}`` from ``<directory>/<model>.jsonl``.

    FastChat's answer format: ``{"question_id", "model_id", "choices": [{"index": 0, "turns": [...]}]}``;
    the model is the file's name, as in FastChat. A missing directory gives ``{}``.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return {}
    answers: dict[str, dict[QuestionId, list[str]]] = {}
    for path in sorted(directory.glob("*.jsonl")):
        answers[path.stem] = {row.question_id: row.turns for _, row in read_rows(path, ReferenceAnswerRow, flag)}
    return answers


def load_judge_prompts(path: str | Path, flag: str | None = JUDGE_FILE_FLAG) -> dict[str, JudgePrompt]:
    """FastChat's judge_prompts.jsonl: one prompt per line, keyed by ``name``.

    Every prompt type loads (pairwise ones too, unused here); extra fields are ignored.
    Required per line: name, type, system_prompt, prompt_template (strings).
    """
    path = Path(path)
    prompts: dict[str, JudgePrompt] = {}
    for number, row in read_rows(path, JudgePromptRow, flag):
        if row.name in prompts:
            raise UsageError(flag, f"{path}:{number}: duplicate judge prompt {row.name!r} (first on line "
                                   f"{prompts[row.name].line})")
        prompts[row.name] = row.at_line(number)
    return prompts
