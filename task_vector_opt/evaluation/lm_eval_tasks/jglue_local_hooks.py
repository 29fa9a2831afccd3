"""lm-eval ``process_docs`` hooks: rows of the official JGLUE files become the docs that lm-eval's
ja_leaderboard tasks expect (the layout of the hub's Rakuten/JGLUE).

This file is copied, as it is, next to the task YAMLs that ``lm_eval_tasks.write_local_tasks`` generates,
whose ``!function jglue_local_hooks.<name>`` lines lm-eval resolves to the file beside them. So it stays
self-contained: it imports nothing from task_vector_opt, and the lm-eval CLI can load it on its own.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import datasets

JNLI_LABELS = ("entailment", "contradiction", "neutral")  # doc_to_choice order: 含意, 矛盾, 中立
MARC_JA_LABELS = ("positive", "negative")  # doc_to_choice order: ポジティブ, ネガティブ

_done: dict[tuple[str, Any], datasets.Dataset] = {}  # lm-eval asks for the docs again on every run; the conversion is done once per dataset


def _once(kind: str, dataset: datasets.Dataset,
          convert: Callable[[datasets.Dataset], datasets.Dataset]) -> datasets.Dataset:
    key = (kind, getattr(dataset, "_fingerprint", None))
    if key[1] is None:
        return convert(dataset)
    if key not in _done:
        _done[key] = convert(dataset)
    return _done[key]


def _label_index(labels: Sequence[str], value: Any) -> int:
    if isinstance(value, int):
        return value
    text = str(value).strip().lower()
    if text.isdigit():
        return int(text)
    if text not in labels:
        raise ValueError(f"unexpected label {value!r}; expected one of {labels}")
    return labels.index(text)


def _with_int_labels(labels: Sequence[str]) -> Callable[[datasets.Dataset], datasets.Dataset]:
    def convert(dataset: datasets.Dataset) -> datasets.Dataset:
        converted = [_label_index(labels, v) for v in dataset["label"]]
        return dataset.remove_columns("label").add_column("label", converted)
    return convert


def jnli_docs(dataset: datasets.Dataset) -> datasets.Dataset:
    return _once("jnli", dataset, _with_int_labels(JNLI_LABELS))


def marc_ja_docs(dataset: datasets.Dataset) -> datasets.Dataset:
    return _once("marc_ja", dataset, _with_int_labels(MARC_JA_LABELS))


def _answers(raw: Any) -> dict[str, list]:
    if isinstance(raw, dict):  # already columnar
        return {"text": list(raw["text"]), "answer_start": [int(s) for s in raw["answer_start"]]}
    return {"text": [a["text"] for a in raw], "answer_start": [int(a["answer_start"]) for a in raw]}


def _flatten_squad(dataset: datasets.Dataset) -> datasets.Dataset:
    rows = []
    for article in dataset:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                rows.append({
                    "id": str(qa["id"]),
                    "title": article.get("title", ""),
                    "context": paragraph["context"],
                    "question": qa["question"],
                    "answers": _answers(qa["answers"]),
                    "is_impossible": bool(qa.get("is_impossible", False)),
                })
    return datasets.Dataset.from_list(rows)


def jsquad_docs(dataset: datasets.Dataset) -> datasets.Dataset:
    return _once("jsquad", dataset, _flatten_squad)
