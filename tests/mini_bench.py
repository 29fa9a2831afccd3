"""A four-question bench and short judge prompts in FastChat's formats, small enough for CPU tests."""
import json
from pathlib import Path

MINI_QUESTIONS = [
    {"question_id": 1, "category": "writing", "turns": ["春の短い詩を書いて。", "それを一行にして。"]},
    {"question_id": 2, "category": "math", "turns": ["3+4は？", "その2倍は？"], "reference": ["7", "14"]},
    {"question_id": 3, "category": "roleplay", "turns": ["猫になって挨拶して。", "次は犬で。"]},
    {"question_id": 4, "category": "humanities", "turns": ["富士山はどこ？", "高さは？"]},
]
SHORT = "Rate the answer from 1 to 10 and reply with [[rating]]."
MINI_JUDGE_PROMPTS = [
    {"name": "single-v1", "type": "single", "system_prompt": "You grade answers.",
     "prompt_template": "Q: {question}\nA: {answer}\n" + SHORT, "description": "", "category": "general",
     "output_format": "[[rating]]"},
    {"name": "single-math-v1", "type": "single", "system_prompt": "You grade answers.",
     "prompt_template": "Q: {question}\nRef: {ref_answer_1}\nA: {answer}\n" + SHORT, "description": "",
     "category": "math", "output_format": "[[rating]]"},
    {"name": "single-v1-multi-turn", "type": "single", "system_prompt": "You grade the second answer.",
     "prompt_template": "Q1: {question_1}\nA1: {answer_1}\nQ2: {question_2}\nA2: {answer_2}\n" + SHORT,
     "description": "", "category": "general", "output_format": "[[rating]]"},
    {"name": "single-math-v1-multi-turn", "type": "single", "system_prompt": "You grade the second answer.",
     "prompt_template": "Q1: {question_1}\nRef1: {ref_answer_1}\nA1: {answer_1}\nQ2: {question_2}\n"
                        "Ref2: {ref_answer_2}\nA2: {answer_2}\n" + SHORT,
     "description": "", "category": "math", "output_format": "[[rating]]"},
]


def write_jsonl(path: Path, rows: list) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")


def write_mini_bench(data_dir: Path) -> Path:
    """Write <data_dir>/mini/question.jsonl and <data_dir>/judge_prompts.jsonl; return the judge file."""
    write_jsonl(data_dir / "mini" / "question.jsonl", MINI_QUESTIONS)
    write_jsonl(data_dir / "judge_prompts.jsonl", MINI_JUDGE_PROMPTS)
    return data_dir / "judge_prompts.jsonl"
