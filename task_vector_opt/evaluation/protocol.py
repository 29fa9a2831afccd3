"""What the engine calls on a scorer: the Evaluator base and the Score it returns.

Expensive set-up (tasks, questions, judge clients) happens in the constructor, once per run; ``score`` is
called once per trial on the live, merged model. Every hook the engine calls is declared here, so the engine
never asks an evaluator what it has.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna


@dataclass
class Score:
    value: float  # the number Optuna maximizes
    details: dict[str, float] = field(default_factory=dict)  # per-task metrics, stored as trial user attrs
    # Per item (a stable id such as "task/doc 17"): a value whose mean over items is ``value``. The held-out
    # verdict pairs them across merges; empty when the evaluator cannot split its score into items.
    item_values: dict[str, float] = field(default_factory=dict)
    items_scored: int = 0  # items this score cost (a pruned trial records its own count before it stops)
    # The parts ``value`` weighs together when there are several (JGLUE: each task's metric), so the summary can
    # show what a merge gains on one skill and costs on another; empty for a single part.
    parts: dict[str, float] = field(default_factory=dict)
    # More of the trial's user attrs (JSON values), e.g. what --item_subset fits on and what it estimated
    trial_attrs: dict[str, Any] = field(default_factory=dict)


class Evaluator(ABC):
    """A scorer the engine runs: subclasses define ``score`` and ``describe``; the other hooks have defaults."""

    # An Optuna pruner for the running scores ``score`` reports, or None: every trial runs to the end.
    pruner: optuna.pruners.BasePruner | None = None

    @abstractmethod
    def score(self, model: Any, tokenizer: Any, trial: Any | None = None) -> Score:
        """Score the live model on the search split; may report intermediate values to ``trial`` for pruning."""

    def holdout(self, model: Any, tokenizer: Any) -> Score | None:
        """Score the live model on held-out data, or None when the run has no holdout (the default)."""
        return None

    @abstractmethod
    def describe(self) -> str:
        """One line for the plan / summary: what is scored and how."""

    def follow(self, merger: Any) -> None:
        """Called once, after the workspace is ready and before the first trial, with the run's merger. A backend
        that holds its own copy of the weights (vLLM) keeps it in step with each merge; the default does nothing."""


class EvaluatorSettings:
    """The base of every evaluator's settings (dataclasses): what the other stages may ask of them."""

    def gpu_memory_share(self) -> float:
        """The share of the GPU's memory the evaluator's answering backend takes for itself (vLLM's
        --vllm_gpu_memory_utilization); memory placement leaves it free. 0 by default: no such backend."""
        return 0.0
