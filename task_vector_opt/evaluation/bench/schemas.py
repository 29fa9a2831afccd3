"""The rows of the bench JSONL files, declared once: questions, reference answers (FastChat's answer
format) and judge prompts. Each schema also words its own errors, as one line about one field."""
from __future__ import annotations

import string
from typing import Annotated, Any, ClassVar, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, StrictInt, StrictStr, \
    StringConstraints, field_validator

MAX_TURNS = 2  # FastChat's single-answer judge prompts grade turn 1 and turn 2

NonEmptyText = Annotated[str, StringConstraints(min_length=1)]
QuestionIdValue = Union[StrictInt, NonEmptyText]  # StrictInt: true and false are not ids
Turns = Annotated[list[StrictStr], Field(min_length=1)]
AnyText = Annotated[str, BeforeValidator(str)]  # optional descriptive fields: whatever is there, as text


class Row(BaseModel):
    """A JSONL row: strict JSON types, extra fields ignored (FastChat's files carry more than we read)."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)
    kind: ClassVar[str] = "row"

    @classmethod
    def explain(cls, error: dict[str, Any], record: dict[str, Any]) -> str:
        """One line on the first thing wrong with ``record`` (``error``: pydantic's first error)."""
        raise NotImplementedError


def template_placeholders(template: str) -> set[str]:
    """The ``{name}`` fields of a judge prompt template (str.format syntax, as FastChat fills them)."""
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}


class QuestionRow(Row):
    """A line of question.jsonl."""

    kind: ClassVar[str] = "question"
    question_id: QuestionIdValue
    category: NonEmptyText
    turns: Annotated[list[StrictStr], Field(min_length=1, max_length=MAX_TURNS)]
    reference: Turns | None = None  # inline reference answer turns; they win over reference_answer/ files

    @classmethod
    def explain(cls, error: dict[str, Any], record: dict[str, Any]) -> str:
        field, problem = error["loc"][0], error["type"]
        qid = record.get("question_id")
        if field == "question_id":
            return "missing or invalid question_id (an integer or a non-empty string)"
        if field == "category":
            return f"question {qid!r} has no category (a non-empty string)"
        if field == "turns" and problem == "missing":
            return f"question {qid!r} has no 'turns' (a list of user messages)"
        if field == "turns" and problem == "too_long":
            return f"question {qid!r} has {len(record['turns'])} turns; the judge prompts grade at most {MAX_TURNS}"
        return f"question {qid!r}: {field!r} must be a non-empty list of strings"


class AnswerChoice(Row):
    turns: Turns


class ReferenceAnswerRow(Row):
    """A line of reference_answer/<model>.jsonl, FastChat's answer format (the first choice is the answer)."""

    kind: ClassVar[str] = "reference answer"
    question_id: QuestionIdValue
    choices: Annotated[list[AnswerChoice], Field(min_length=1)]

    @property
    def turns(self) -> list[str]:
        return list(self.choices[0].turns)

    @classmethod
    def explain(cls, error: dict[str, Any], record: dict[str, Any]) -> str:
        location = error["loc"]
        qid = record.get("question_id")
        if location[0] == "question_id":
            return "missing or invalid question_id"
        if len(location) >= 3 and location[2] == "turns":
            return f"answer to question {qid!r}: choices[{location[1]}].turns must be a non-empty list of strings"
        return f"answer to question {qid!r} has no 'choices' (FastChat answer format: choices=[{{index, turns}}])"


class JudgePromptRow(Row):
    """A line of judge_prompts.jsonl. Every prompt type loads (pairwise ones too, unused here)."""

    kind: ClassVar[str] = "judge prompt"
    name: StrictStr
    type: StrictStr
    system_prompt: StrictStr
    prompt_template: StrictStr
    description: AnyText = ""
    category: AnyText = ""
    output_format: AnyText = ""

    _line: int = PrivateAttr(default=0)  # where it was defined, for error messages

    @property
    def line(self) -> int:
        return self._line

    def at_line(self, number: int) -> "JudgePromptRow":
        """This row, remembering the line of the file it was read from."""
        self._line = number
        return self

    def placeholders(self) -> set[str]:
        """The ``{name}`` fields of the template (str.format syntax, as FastChat fills them)."""
        return template_placeholders(self.prompt_template)

    @field_validator("prompt_template")
    @classmethod
    def _fillable(cls, template: str) -> str:
        try:
            placeholders = template_placeholders(template)
        except ValueError as exc:
            raise ValueError(f"bad template ({exc}); write literal braces as {{{{ and }}}}") from None
        if any(not p or not p.isidentifier() for p in placeholders):
            raise ValueError("bad placeholder in the template; write literal braces as {{ and }}")
        return template

    @classmethod
    def explain(cls, error: dict[str, Any], record: dict[str, Any]) -> str:
        field = error["loc"][0]
        if error["type"] == "value_error":
            return f"judge prompt {record.get('name')!r}: {error['ctx']['error']}"
        return f"judge prompt lacks {field!r} (a string)"
