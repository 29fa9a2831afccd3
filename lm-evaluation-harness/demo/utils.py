"""Offline data loaders for the demo_skill, demo_target and demo_skill_steep lm-eval tasks (see their YAML files)."""
from __future__ import annotations

import json
from pathlib import Path

import datasets

DATA_FILE = Path(__file__).resolve().parent / "demo_skill_test.jsonl"
TARGET_DATA_FILE = Path(__file__).resolve().parent / "demo_target_test.jsonl"
STEEP_DATA_FILE = Path(__file__).resolve().parent / "demo_skill_steep_test.jsonl"


def _read(path: Path) -> dict[str, datasets.Dataset]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {"test": datasets.Dataset.from_list(rows)}


def load_dataset(**kwargs) -> dict[str, datasets.Dataset]:
    """Return {"test": Dataset} read from the JSONL beside this file, in file order.

    lm-eval calls this as ``custom_dataset(**metadata, **dataset_kwargs)``; the
    keyword arguments (e.g. ``version``) are not needed and are ignored.
    """
    return _read(DATA_FILE)


def load_target_dataset(**kwargs) -> dict[str, datasets.Dataset]:
    """The demo_target rows (prompt, four choices, label), in file order; keyword arguments are ignored."""
    return _read(TARGET_DATA_FILE)


def load_steep_dataset(**kwargs) -> dict[str, datasets.Dataset]:
    """The demo_skill_steep rows (word, category, label, prompt), in file order; keyword arguments are ignored."""
    return _read(STEEP_DATA_FILE)
