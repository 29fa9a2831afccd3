"""The run configuration: what every part of a run reads. validation.build_config makes it."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

if TYPE_CHECKING:  # the settings types live with their pipelines; importing them here would load those stages
    from task_vector_opt.evaluation.jglue import JGLUESettings
    from task_vector_opt.evaluation.mt_bench import MTBenchSettings
    from task_vector_opt.merging.moe.config import MoESettings

WEIGHT_PATTERNS = ("*.safetensors",)
PICKLE_PATTERNS = ("*.bin", "*.pt", "*.pth")


def is_hub_id(text: str) -> bool:
    """True when ``text`` names a Hugging Face hub repo (``org/name`` or ``name``) rather than a local path:
    nothing exists at that path, it is not written like a path, and the hub accepts it as a repo id."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if Path(text).expanduser().exists() or text.startswith((".", "/", "~")) or "\\" in text:
        return False
    try:
        validate_repo_id(text)
    except HFValidationError:
        return False
    return True


@dataclass(frozen=True)
class ModelSource:
    """A model given as a hub id or a local directory."""

    flag: str  # the flag it came from, for one-line errors
    name_or_path: str  # as given: a hub id or a local directory (transformers' pretrained_model_name_or_path)

    @property
    def is_local(self) -> bool:
        return Path(self.name_or_path).expanduser().is_dir()

    @property
    def is_hub_id(self) -> bool:
        return is_hub_id(self.name_or_path)


class PipelineExtras(TypedDict, total=False):
    """Settings only some pipelines have, validated by their ``extra_from_args``; part of the study's identity."""

    moe: MoESettings


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
    evaluator: JGLUESettings | MTBenchSettings | None = None  # the pipeline's own evaluator settings
    extra: PipelineExtras = field(default_factory=PipelineExtras)

    def recipe_inputs(self) -> dict[str, Any]:
        """The inputs that define the merge and the search (used in the recipe and the study name)."""
        evaluator = asdict(self.evaluator) if self.evaluator is not None else None
        extra = {k: v.recipe_inputs() if hasattr(v, "recipe_inputs") else asdict(v) if is_dataclass(v) else v
                 for k, v in self.extra.items()}
        return {
            "pipeline": self.pipeline,
            "targets": [t.name_or_path for t in self.targets],
            "base_model": self.base.name_or_path,
            "tuned_model": self.tuned.name_or_path,
            "dtype": self.dtype,
            "skip_embed": self.skip_embed,
            "optimize_mode": self.optimize_mode,
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
