"""The run configuration: what every part of a run reads. validation.build_config makes it."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any

WEIGHT_PATTERNS = ("*.safetensors",)
PICKLE_PATTERNS = ("*.bin", "*.pt", "*.pth")


@dataclass(frozen=True)
class ModelSource:
    """A model given as a hub id or a local directory."""

    flag: str
    spec: str

    @property
    def is_local(self) -> bool:
        return Path(self.spec).expanduser().is_dir()


@dataclass
class RunConfig:
    pipeline: str
    targets: list[ModelSource]
    base: ModelSource
    tuned: ModelSource
    cache_dir: str | None
    dtype: str
    device: str
    vector_placement: str
    skip_embed: bool
    trust_remote_code: bool
    allow_pickle: bool
    optimize_mode: str
    sampler: str
    seed: int
    n_trials: int
    weight_min: float
    weight_max: float
    storage: str
    study_name: str
    run_dir: Path
    baseline_trials: bool
    holdout_top_k: int
    output_dir: Path
    overwrite_output_dir: bool
    log_level: str
    dry_run: bool
    heartbeat_interval: float = 60.0
    search_only: bool = False  # a worker that searches and saves nothing
    finalize: bool = False  # no search: holdout and save
    save_on_interrupt: bool = False
    profile_knots: int = 0  # knots of --optimize_mode profile (0 in the other modes)
    evaluator: Any = None  # the pipeline's own evaluator settings (a dataclass)
    extra: dict[str, Any] = field(default_factory=dict)

    def recipe_inputs(self) -> dict[str, Any]:
        """The inputs that define the merge and the search (used in the recipe and the study name)."""
        evaluator = asdict(self.evaluator) if self.evaluator is not None else None
        extra = {k: v.recipe_inputs() if hasattr(v, "recipe_inputs") else asdict(v) if is_dataclass(v) else v
                 for k, v in self.extra.items()}
        return {
            "pipeline": self.pipeline,
            "targets": [t.spec for t in self.targets],
            "base_model": self.base.spec,
            "tuned_model": self.tuned.spec,
            "dtype": self.dtype,
            "skip_embed": self.skip_embed,
            "optimize_mode": self.optimize_mode,
            # only in profile mode, so the study names of the other modes stay what they were
            **({"profile_knots": self.profile_knots} if self.optimize_mode == "profile" else {}),
            "optuna_sampler": self.sampler,
            "optuna_seed": self.seed,
            "weight_min": self.weight_min,
            "weight_max": self.weight_max,
            "evaluator": evaluator,
            **extra,  # pipeline-specific inputs (the MoE's settings), part of the study's identity
        }


def default_study_name(pipeline: str, identity: dict[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return f"{pipeline}-{identity['optimize_mode']}-{digest}"
