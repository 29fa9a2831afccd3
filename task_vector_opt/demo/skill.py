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


def skill_prompt(word: str) -> str:
    return SKILL_PROMPT.format(word=word)


def code_for(category: str) -> str:
    return CODES[CATEGORIES.index(category)]
