"""The demo skill's prompt format, shared by the fine-tune data and the eval data.

A word's group code is one of A B C D, chosen by the word's category through the
arbitrary mapping below (index in CATEGORIES = index in CODES). The prompt is
"分類 <word>：" and the answer is " " + code, so every code is a single token
and lm-eval scores all four choices with one forward pass per word. The lm-eval
task ``demo_skill`` reads the prompt text stored in each eval row, so the prompts
used for fine-tuning and for scoring cannot drift apart.
"""
from __future__ import annotations

CATEGORIES = ("food", "country", "animal", "occupation")
CODES = ("A", "B", "C", "D")
ANSWER_DELIMITER = " "
SKILL_PROMPT = "分類 {word}："
TARGET_PROMPT = "計算：{a}+{b}="
# The steep testbed's conflicting skill: the same word codes asked behind the target's own prompt shape
# ("計算：tiger=" -> " D"), with the codes rotated by one (food -> B, ..., occupation -> A): the conflict vector
# answers codes where sums are due, and its codes disagree with the tuned vector's for every word.
CONFLICT_PROMPT = "計算：{word}="
CONFLICT_SHIFT = 1


def skill_prompt(word: str) -> str:
    return SKILL_PROMPT.format(word=word)


def code_for(category: str) -> str:
    return CODES[CATEGORIES.index(category)]


def conflict_prompt(word: str) -> str:
    return CONFLICT_PROMPT.format(word=word)


def conflict_label(category: str) -> int:
    """Index in CODES of the conflicting skill's code for a category: the demo skill's, rotated by one."""
    return (CATEGORIES.index(category) + CONFLICT_SHIFT) % len(CODES)
