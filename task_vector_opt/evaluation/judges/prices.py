"""What a judge call costs: the price table (prices.json, data) and the lookup of a model's price in it.

A model name matches its own entry or that entry plus a snapshot suffix ("gpt-4o-2024-08-06",
"claude-3-5-sonnet-20241022", "gpt-4-0613", "-latest"). Unknown models have no cost (None).
"""
from __future__ import annotations

import functools
import json
import re
from pathlib import Path

PRICE_FILE = Path(__file__).with_name("prices.json")

_SNAPSHOT_SUFFIX = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{8}|\d{4}|latest|preview)$")


@functools.cache
def price_table() -> dict[str, tuple[float, float]]:
    """model -> (input, output) USD per 1M tokens, read once from prices.json."""
    models = json.loads(PRICE_FILE.read_text(encoding="utf-8"))["models"]
    return {name: (float(price["input"]), float(price["output"])) for name, price in models.items()}


def price_for(model: str) -> tuple[float, float] | None:
    """(input, output) USD per 1M tokens for ``model``, or None when the table does not know it."""
    table = price_table()
    if model in table:
        return table[model]
    base = _SNAPSHOT_SUFFIX.sub("", model)
    return table.get(base) if base != model else None
