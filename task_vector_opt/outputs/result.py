"""What a run ends with: its result (scores, best weights, where the files went) and the console summary of it."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class RunResult:
    study_name: str
    best_value: float
    best_trial: int
    best_weights: dict[str, float]  # per merger group (profile mode: the interpolated layer weights)
    best_params: dict[str, float] = field(default_factory=dict)  # what the sampler proposed (profile: knots)
    holdout: dict[str, float | None] = field(default_factory=dict)
    holdout_parts: dict[str, dict[str, float]] = field(default_factory=dict)  # per candidate: each task's score
    verdict: dict[str, Any] = field(default_factory=dict)  # paired held-out differences vs w=1 and w=0
    items_scored: int = 0  # search items scored over all finished trials (pruned ones count what they scored)
    search_baselines: dict[str, float] = field(default_factory=dict)
    output_dir: Path | None = None
    n_trials: int = 0  # finished (complete + pruned)
    n_failed: int = 0
    files: list[str] = field(default_factory=list)  # side files saved beside the model


def summary_table(result: RunResult) -> str:
    """The scores of w=0, w=1 and the best trial side by side: search and held-out, and on held-out items each
    task's score when several are weighed together (what the vector gains on one skill and costs on another)."""
    rows = [(label, value, label.split(" ", 1)[0]) for label, value in sorted(result.search_baselines.items())]
    rows.append((f"best (trial {result.best_trial})", result.best_value, "best"))
    parts = list(dict.fromkeys(name for key in ("w=0", "w=1", "best")
                               for name in result.holdout_parts.get(key, {})))
    width = max(len(r[0]) for r in rows)
    columns = [max(8, len(name)) for name in parts]
    header = "".join(f"  {name:>{w}}" for name, w in zip(parts, columns))
    lines = [f"  {'merge':<{width}}  {'search':>8}  {'held-out':>8}{header}"]
    for label, search, key in rows:
        held = result.holdout.get(key)
        cells = "".join(f"  {_cell(result.holdout_parts.get(key, {}).get(name)):>{w}}"
                        for name, w in zip(parts, columns))
        lines.append(f"  {label:<{width}}  {search:>8.4f}  {_cell(held):>8}{cells}")
    if parts:
        lines.append(f"  ({', '.join(parts)}: each task's score on its held-out items)")
    return "\n".join(lines)


def _cell(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def print_summary(result: RunResult) -> None:
    lines = ["", "=== task vector optimization finished ===",
             f"study            : {result.study_name} ({result.n_trials} trials finished, {result.n_failed} failed)",
             f"best search score: {result.best_value:.4f} (trial {result.best_trial})",
             summary_table(result)]
    if result.holdout:
        lines.append("held-out scores  : " + ", ".join(f"{k} {v:.4f}" for k, v in result.holdout.items()))
    for sentence in result.verdict.get("sentences", []):
        lines.append(f"verdict          : {sentence}")
    if result.items_scored:
        lines.append(f"items scored     : {result.items_scored} in the search (pruned trials count the items "
                     "they scored)")
    weights = ", ".join(f"{k}={v:.3f}" for k, v in result.best_weights.items())
    lines.append(f"best weights     : {weights if len(weights) < 600 else weights[:600] + ' ...'}")
    if result.output_dir is None:
        lines.append("saved to         : nothing yet (--search_only); add --finalize to save the best model")
    else:
        lines.append(f"saved to         : {result.output_dir}")
    if result.files:
        lines.append(f"  beside the model: {', '.join(result.files)}")
    print("\n".join(lines))
