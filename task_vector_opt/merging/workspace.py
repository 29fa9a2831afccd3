"""The workspace a run's trials share. The engine's prepare makes one for a dense target; a variant (the MoE)
makes its own, with its own save step."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from task_vector_opt.merging.merger import Merger


@dataclass
class Workspace:
    """Everything a trial needs, loaded once per process: the live model and the merger that rewrites it."""

    model: Any
    tokenizer: Any
    merger: Merger
    group_order: list[str]  # the weights the sampler proposes, in a stable order
    n_tensors: int
    # Saves the best merge (already applied) with its merge_recipe.json and report files, and returns the folder;
    # default (None): the live model to --output_dir. The MoE saves its experts.
    save: Callable[[Any, dict[str, Any], dict[str, Any]], Path] | None = None  # (run config, recipe, report files)
    # Searched parameters besides the weights, {name: (low, high, step)}: the densities of TIES / DARE
    densities: dict[str, tuple[float, float, float]] = field(default_factory=dict)

    def baseline_fixed(self) -> dict[str, float]:
        """What the w=0 / w=1 baselines use besides the weights: the highest density searched."""
        return {name: high for name, (_low, high, _step) in self.densities.items()}
