"""Offline data loader for the demo_skill lm-eval task (see demo_skill.yaml)."""
from __future__ import annotations

import json
from pathlib import Path

import datasets

DATA_FILE = Path(__file__).resolve().parent / "demo_skill_test.jsonl"


def load_dataset(**kwargs) -> dict[str, datasets.Dataset]:
    """Return {"test": Dataset} read from the JSONL beside this file, in file order.

    lm-eval calls this as ``custom_dataset(**metadata, **dataset_kwargs)``; the
    keyword arguments (e.g. ``version``) are not needed and are ignored.
    """
    rows = [json.loads(line) for line in DATA_FILE.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {"test": datasets.Dataset.from_list(rows)}
