"""MT-Bench data in FastChat's llm_judge layout: questions, reference answers, judge prompts.

No model code lives here. Everything a user can get wrong is checked up front and raised
as a UsageError naming the flag and, for file contents, the file and line number.

Layout (as in FastChat's ``fastchat/llm_judge/data``)::

    <bench_dir>/judge_prompts.jsonl                          --judge_file (default)
    <bench_dir>/<bench_name>/question.jsonl                  the questions
    <bench_dir>/<bench_name>/reference_answer/<model>.jsonl  reference answers (FastChat answer format)

A question's inline ``reference`` field wins over the reference answer files.

Judge prompts are chosen as FastChat's ``gen_judgment`` does for single-answer grading:
``single-v1`` (turn 1), ``single-v1-multi-turn`` (turn 2), and their ``single-math-v1*``
counterparts, with the reference answer, for the categories in FastChat's ``NEED_REF_CATS``.
"""
from __future__ import annotations

import argparse
import ast
import difflib
import hashlib
import importlib.util
import json
import random
import string
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator, Sequence, Union

from task_vector_opt.errors import UsageError
from task_vector_opt.identity import outside_identity

QuestionId = Union[int, str]

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_BENCH_DIR = "FastChat/fastchat/llm_judge/data"
DEFAULT_BENCH_NAME = "example"
DEFAULT_JUDGE_FILE = "FastChat/fastchat/llm_judge/data/judge_prompts.jsonl"
DEFAULT_REFERENCE_MODEL = "gpt-4"  # FastChat looks reference answers up under the judge model's name
HOLDOUT_SEED = 0  # the split is a property of the bench, not of the search's sampler seed
MAX_TURNS = 2  # FastChat's single-answer judge prompts grade turn 1 and turn 2

PROMPT_FIRST_TURN = "single-v1"
PROMPT_MATH_FIRST_TURN = "single-math-v1"
PROMPT_MULTI_TURN = "single-v1-multi-turn"
PROMPT_MATH_MULTI_TURN = "single-math-v1-multi-turn"
RATING_FORMAT = "[[rating]]"

# What render_judge_prompt can fill in; anything else in a template is an error.
PLACEHOLDERS = ("question", "answer", "ref_answer_1", "question_1", "answer_1", "question_2", "answer_2",
                "ref_answer_2")
FIRST_TURN_PLACEHOLDERS = ("question", "answer", "ref_answer_1", "question_1", "answer_1")

BENCH_NAME_FLAG = "--bench_name"
BENCH_DIR_FLAG = "--bench_dir"
JUDGE_FILE_FLAG = "--judge_file"
HOLDOUT_FILE_FLAG = "--holdout_question_file"


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


def needs_reference(question: "Question") -> bool:
    return question.category in need_ref_categories()


# ---------------------------------------------------------------------------------------------- questions

@dataclass
class Question:
    question_id: QuestionId
    category: str
    turns: list[str]
    reference: list[str] | None = None


def _jsonl_records(path: Path, flag: str | None) -> Iterator[tuple[int, dict[str, Any]]]:
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


def _string_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(item, str) for item in value)


def _question_id(value: Any) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool)) or (isinstance(value, str) and value != "")


def load_questions(path: str | Path, flag: str | None = BENCH_NAME_FLAG) -> list[Question]:
    """Questions from a FastChat question.jsonl (question_id, category, turns[, reference]).

    UsageError names ``path:line`` for a malformed JSON line, a missing/invalid question_id,
    category or turns (a non-empty list of strings, at most two), a bad reference, or a
    duplicate question_id. Blank lines are skipped; extra fields are ignored.
    """
    path = Path(path)
    questions: list[Question] = []
    seen: dict[str, int] = {}
    for number, record in _jsonl_records(path, flag):
        where = f"{path}:{number}"
        qid = record.get("question_id")
        if not _question_id(qid):
            raise UsageError(flag, f"{where}: missing or invalid question_id (an integer or a non-empty string)")
        category = record.get("category")
        if not isinstance(category, str) or not category:
            raise UsageError(flag, f"{where}: question {qid!r} has no category (a non-empty string)")
        turns = record.get("turns")
        if turns is None:
            raise UsageError(flag, f"{where}: question {qid!r} has no 'turns' (a list of user messages)")
        if not _string_list(turns):
            raise UsageError(flag, f"{where}: question {qid!r}: 'turns' must be a non-empty list of strings")
        if len(turns) > MAX_TURNS:
            raise UsageError(flag, f"{where}: question {qid!r} has {len(turns)} turns; the judge prompts grade "
                                   f"at most {MAX_TURNS}")
        reference = record.get("reference")
        if reference is not None and not _string_list(reference):
            raise UsageError(flag, f"{where}: question {qid!r}: 'reference' must be a non-empty list of strings")
        key = str(qid)
        if key in seen:
            raise UsageError(flag, f"{where}: duplicate question_id {qid!r} (first on line {seen[key]})")
        seen[key] = number
        questions.append(Question(qid, category, list(turns), list(reference) if reference else None))
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
        per_question: dict[QuestionId, list[str]] = {}
        for number, record in _jsonl_records(path, flag):
            where = f"{path}:{number}"
            qid = record.get("question_id")
            if not _question_id(qid):
                raise UsageError(flag, f"{where}: missing or invalid question_id")
            choices = record.get("choices")
            if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
                raise UsageError(flag, f"{where}: answer to question {qid!r} has no 'choices' "
                                       "(FastChat answer format: choices=[{index, turns}])")
            turns = choices[0].get("turns")
            if not _string_list(turns):
                raise UsageError(flag, f"{where}: answer to question {qid!r}: choices[0].turns must be a non-empty "
                                       "list of strings")
            per_question[qid] = list(turns)
        answers[path.stem] = per_question
    return answers


# ------------------------------------------------------------------------------------------ judge prompts

@dataclass
class JudgePrompt:
    name: str
    type: str
    system_prompt: str
    prompt_template: str
    description: str = ""
    category: str = ""
    output_format: str = ""
    line: int = field(default=0, compare=False, repr=False)  # where it was defined, for error messages

    def placeholders(self) -> set[str]:
        """The ``{name}`` fields of the template (str.format syntax, as FastChat fills them)."""
        return _placeholders(self.prompt_template)


def _placeholders(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}


def load_judge_prompts(path: str | Path, flag: str | None = JUDGE_FILE_FLAG) -> dict[str, JudgePrompt]:
    """FastChat's judge_prompts.jsonl: one prompt per line, keyed by ``name``.

    Every prompt type loads (pairwise ones too, unused here); extra fields are ignored.
    Required per line: name, type, system_prompt, prompt_template (strings).
    """
    path = Path(path)
    prompts: dict[str, JudgePrompt] = {}
    for number, record in _jsonl_records(path, flag):
        where = f"{path}:{number}"
        for key in ("name", "type", "system_prompt", "prompt_template"):
            if not isinstance(record.get(key), str):
                raise UsageError(flag, f"{where}: judge prompt lacks {key!r} (a string)")
        name = record["name"]
        if name in prompts:
            raise UsageError(flag, f"{where}: duplicate judge prompt {name!r} (first on line {prompts[name].line})")
        try:
            placeholders = _placeholders(record["prompt_template"])
        except ValueError as exc:
            raise UsageError(flag, f"{where}: judge prompt {name!r}: bad template ({exc}); write literal braces "
                                   "as {{ and }}") from None
        if any(not p or not p.isidentifier() for p in placeholders):
            raise UsageError(flag, f"{where}: judge prompt {name!r}: bad placeholder in the template; write literal "
                                   "braces as {{ and }}")
        prompts[name] = JudgePrompt(
            name=name, type=record["type"], system_prompt=record["system_prompt"],
            prompt_template=record["prompt_template"], description=str(record.get("description", "")),
            category=str(record.get("category", "")), output_format=str(record.get("output_format", "")),
            line=number)
    return prompts


def judge_prompt_name(question: Question, multi_turn: bool) -> str:
    """The FastChat prompt for grading turn 1 (multi_turn=False) or turn 2 of ``question``."""
    if needs_reference(question):
        return PROMPT_MATH_MULTI_TURN if multi_turn else PROMPT_MATH_FIRST_TURN
    return PROMPT_MULTI_TURN if multi_turn else PROMPT_FIRST_TURN


def judge_prompt_for(question: Question, prompts: dict[str, JudgePrompt], multi_turn: bool) -> JudgePrompt:
    name = judge_prompt_name(question, multi_turn)
    if name not in prompts:
        raise UsageError(JUDGE_FILE_FLAG, f"no judge prompt named {name!r} (needed for question "
                                          f"{question.question_id!r}, category {question.category!r})")
    return prompts[name]


def render_judge_prompt(prompt: JudgePrompt, question: Question, answers: Sequence[str],
                        reference: Sequence[str] | None = None) -> tuple[str, str]:
    """(system prompt, user prompt) with FastChat's placeholders filled.

    ``answers`` are the model's answers, one per turn so far; ``reference`` the reference
    answer turns (defaults to ``question.reference``). Which turn is graded follows from the
    template: ``{question}``/``{answer}`` are turn 1, ``{question_2}``/``{answer_2}`` turn 2.
    """
    if reference is None:
        reference = question.reference
    values: dict[str, str] = {}
    for i, turn in enumerate(question.turns[:MAX_TURNS], start=1):
        values[f"question_{i}"] = turn
    for i, answer in enumerate(list(answers)[:MAX_TURNS], start=1):
        values[f"answer_{i}"] = answer
    for i, ref in enumerate(list(reference or [])[:MAX_TURNS], start=1):
        values[f"ref_answer_{i}"] = ref
    if "question_1" in values:
        values["question"] = values["question_1"]
    if "answer_1" in values:
        values["answer"] = values["answer_1"]
    missing = sorted(prompt.placeholders() - set(values))
    if missing:
        raise ValueError(f"judge prompt {prompt.name!r} needs {', '.join('{' + m + '}' for m in missing)}, which "
                         f"question {question.question_id!r} does not provide")
    return prompt.system_prompt, prompt.prompt_template.format(**values)


# ---------------------------------------------------------------------------------------------- checking

@dataclass
class BenchData:
    """A checked bench: its questions (references resolved) and the judge prompts they need."""

    name: str
    question_file: Path
    questions: list[Question]
    judge_file: Path
    judge_prompts: dict[str, JudgePrompt]
    reference_files: list[Path] = field(default_factory=list)

    def prompt_for(self, question: Question, multi_turn: bool) -> JudgePrompt:
        return judge_prompt_for(question, self.judge_prompts, multi_turn)

    def subset(self, question_ids: Sequence[QuestionId]) -> "BenchData":
        by_id = {str(q.question_id): q for q in self.questions}
        return BenchData(self.name, self.question_file, [by_id[str(i)] for i in question_ids], self.judge_file,
                         self.judge_prompts, list(self.reference_files))


def _resolve_existing(text: str | Path, default: str) -> Path:
    """A relative path as given, or, when it is the default and absent here, under the repository root."""
    path = Path(text).expanduser()
    if not path.is_absolute() and not path.exists() and str(text) == default and (REPO_ROOT / path).exists():
        path = REPO_ROOT / path
    return path.absolute()


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


def _check_prompts(questions: list[Question], prompts: dict[str, JudgePrompt], judge_file: Path,
                   question_file: Path, reference_dir: Path, flag: str) -> None:
    """Every prompt the questions need exists, is a single-answer [[rating]] prompt, and can be filled."""
    needed: dict[str, Question] = {}
    for question in questions:
        for multi_turn in ((False, True) if len(question.turns) > 1 else (False,)):
            needed.setdefault(judge_prompt_name(question, multi_turn), question)
    for name, example in needed.items():
        turn = "turn 2" if name in (PROMPT_MULTI_TURN, PROMPT_MATH_MULTI_TURN) else "turn 1"
        if name not in prompts:
            why = ("a reference-graded category " + repr(example.category) if needs_reference(example)
                   else "category " + repr(example.category))
            raise UsageError(JUDGE_FILE_FLAG, f"{judge_file} has no judge prompt {name!r}, needed to grade {turn} "
                                              f"of question {example.question_id!r} ({why})")
        prompt = prompts[name]
        where = f"{judge_file}:{prompt.line}: judge prompt {name!r}"
        if prompt.type != "single":
            raise UsageError(JUDGE_FILE_FLAG, f"{where} has type {prompt.type!r}; single-answer grading needs "
                                              "type 'single'")
        if prompt.output_format != RATING_FORMAT:
            raise UsageError(JUDGE_FILE_FLAG, f"{where} has output_format {prompt.output_format!r}; expected "
                                              f"{RATING_FORMAT!r}")
        allowed = PLACEHOLDERS if turn == "turn 2" else FIRST_TURN_PLACEHOLDERS
        unknown = sorted(prompt.placeholders() - set(allowed))
        if unknown:
            raise UsageError(JUDGE_FILE_FLAG, f"{where} grades {turn} but uses "
                                              f"{', '.join('{' + u + '}' for u in unknown)}; it can use "
                                              f"{', '.join('{' + p + '}' for p in allowed)}")
    for question in questions:
        ref_turns = 1 if needs_reference(question) else 0
        for multi_turn in ((False, True) if len(question.turns) > 1 else (False,)):
            used = prompts[judge_prompt_name(question, multi_turn)].placeholders()
            ref_turns = max(ref_turns, 2 if "ref_answer_2" in used else 1 if "ref_answer_1" in used else 0)
        have = len(question.reference or [])
        if have < ref_turns:
            if have == 0:
                raise UsageError(flag, f"question {question.question_id!r} (category {question.category!r}, in "
                                       f"{question_file}) needs a reference answer and has none: add a 'reference' "
                                       f"field to the question or an answer in {reference_dir}/<model>.jsonl")
            raise UsageError(flag, f"question {question.question_id!r} (in {question_file}) needs a reference answer "
                                   f"for each of its {ref_turns} turns, has {have}")


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
                                             f"holding <bench_name>/question.jsonl")
        bench_path = root / bench_name
        if not bench_path.is_dir():
            available = sorted(p.name for p in root.iterdir() if (p / "question.jsonl").is_file())
            raise UsageError(BENCH_NAME_FLAG, f"no bench {bench_name!r}: expected {bench_path / 'question.jsonl'}"
                                              + (f" (benches in {root}: {', '.join(available)})" if available else ""))
        questions_path = bench_path / "question.jsonl"
        if not questions_path.is_file():
            raise UsageError(BENCH_NAME_FLAG, f"bench {bench_name!r} has no question file: expected {questions_path}")
        flag = BENCH_NAME_FLAG
    else:
        questions_path = Path(question_file)
        flag = HOLDOUT_FILE_FLAG
        if not questions_path.is_file():
            raise UsageError(flag, f"{questions_path}: no such file (a FastChat question.jsonl)")
    if not judge_path.is_file():
        raise UsageError(JUDGE_FILE_FLAG, f"{judge_path}: no such file; expected FastChat's judge_prompts.jsonl")
    questions = load_questions(questions_path, flag)
    prompts = load_judge_prompts(judge_path)
    reference_dir = questions_path.parent / "reference_answer"
    reference_files = _attach_references(questions, reference_dir, flag if question_file else BENCH_DIR_FLAG,
                                         reference_model)
    _check_prompts(questions, prompts, judge_path, questions_path, reference_dir, flag)
    return BenchData(bench_name if question_file is None else questions_path.stem, questions_path, questions,
                     judge_path, prompts, reference_files)


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
    max_new_tokens: int = 512
    gen_batch_size: int = outside_identity(default=8)
    conv_template: str | None = None
    holdout_fraction: float = 0.0
    holdout_question_file: str | None = None  # absolute
    holdout_seed: int = HOLDOUT_SEED
    search_question_ids: list[QuestionId] = field(default_factory=list)
    holdout_question_ids: list[QuestionId] = field(default_factory=list)


@dataclass
class LoadedBench:
    """What the evaluator uses: the search questions, the holdout questions, the judge prompts."""

    search: list[Question]
    holdout: list[Question]
    judge_prompts: dict[str, JudgePrompt]
    search_data: BenchData
    holdout_data: BenchData | None = None

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
    if settings.holdout_question_file:
        held_data = check_bench(settings.bench_dir, settings.bench_name, settings.judge_file,
                                question_file=settings.holdout_question_file)
        search_data = bench.subset(settings.search_question_ids) if settings.search_question_ids else bench
    else:
        search_data = bench.subset(settings.search_question_ids) if settings.search_question_ids else bench
        held_data = bench.subset(settings.holdout_question_ids) if settings.holdout_question_ids else None
    return LoadedBench(search=list(search_data.questions), holdout=list(held_data.questions) if held_data else [],
                       judge_prompts=bench.judge_prompts, search_data=search_data, holdout_data=held_data)


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
    bench_name = getattr(args, "bench_name", DEFAULT_BENCH_NAME)
    if not bench_name or "/" in bench_name or "\\" in bench_name or bench_name in (".", ".."):
        raise UsageError(BENCH_NAME_FLAG, f"{bench_name!r} is not a bench name (a folder under --bench_dir)")
    bench_dir = _resolve_existing(getattr(args, "bench_dir", DEFAULT_BENCH_DIR), DEFAULT_BENCH_DIR)
    judge_file = _resolve_existing(getattr(args, "judge_file", DEFAULT_JUDGE_FILE), DEFAULT_JUDGE_FILE)
    max_new_tokens = getattr(args, "max_new_tokens", 512)
    if max_new_tokens < 1:
        raise UsageError("--max_new_tokens", f"{max_new_tokens} is too small; give at least 1")
    batch_size = getattr(args, "gen_batch_size", 8)
    if batch_size < 1:
        raise UsageError("--gen_batch_size", f"{batch_size} is too small; give at least 1")
    conv_template = check_conv_template(getattr(args, "conv_template", None) or None)
    fraction = getattr(args, "holdout_fraction", 0.0)
    if not 0.0 <= fraction < 1.0:
        raise UsageError("--holdout_fraction", f"{fraction} is outside [0, 1): give the share of questions held out "
                                               "of the search, e.g. 0.2")
    holdout_text = getattr(args, "holdout_question_file", None)
    if holdout_text and fraction > 0:
        raise UsageError(HOLDOUT_FILE_FLAG, "give either --holdout_question_file or --holdout_fraction, not both")

    bench = check_bench(bench_dir, bench_name, judge_file)
    search_ids = [q.question_id for q in bench.questions]
    holdout_ids: list[QuestionId] = []
    holdout_file: str | None = None
    if holdout_text:
        holdout_path = Path(holdout_text).expanduser().absolute()
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
        judge_file=str(judge_file), max_new_tokens=int(max_new_tokens), gen_batch_size=int(batch_size),
        conv_template=conv_template, holdout_fraction=float(fraction), holdout_question_file=holdout_file,
        holdout_seed=HOLDOUT_SEED, search_question_ids=search_ids, holdout_question_ids=holdout_ids)
