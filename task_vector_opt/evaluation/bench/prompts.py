"""Judge prompts as FastChat's single-answer grading uses them: which prompt grades which turn, whether a
prompt can grade it, and filling its placeholders.

``single-v1`` grades turn 1 and ``single-v1-multi-turn`` turn 2; the categories in FastChat's
``NEED_REF_CATS`` use their ``single-math-v1*`` counterparts, with the reference answer.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from task_vector_opt.errors import UsageError
from task_vector_opt.evaluation.bench.files import JUDGE_FILE_FLAG, JudgePrompt, Question, needs_reference
from task_vector_opt.evaluation.bench.schemas import MAX_TURNS

PROMPT_FIRST_TURN = "single-v1"
PROMPT_MATH_FIRST_TURN = "single-math-v1"
PROMPT_MULTI_TURN = "single-v1-multi-turn"
PROMPT_MATH_MULTI_TURN = "single-math-v1-multi-turn"
RATING_FORMAT = "[[rating]]"

# What render_judge_prompt can fill in; anything else in a template is an error.
PLACEHOLDERS = ("question", "answer", "ref_answer_1", "question_1", "answer_1", "question_2", "answer_2",
                "ref_answer_2")
FIRST_TURN_PLACEHOLDERS = ("question", "answer", "ref_answer_1", "question_1", "answer_1")


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


def _graded_turns(question: Question) -> tuple[bool, ...]:
    """The ``multi_turn`` values whose prompts grade ``question``: turn 1, and turn 2 when it has one."""
    return (False, True) if len(question.turns) > 1 else (False,)


def check_prompts(questions: list[Question], prompts: dict[str, JudgePrompt], judge_file: Path,
                  question_file: Path, reference_dir: Path, flag: str) -> None:
    """Every prompt the questions need exists, is a single-answer [[rating]] prompt, and can be filled."""
    needed: dict[str, Question] = {}
    for question in questions:
        for multi_turn in _graded_turns(question):
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
        for multi_turn in _graded_turns(question):
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
