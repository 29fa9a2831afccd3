"""The run configuration: what every part of a run reads. The command line (cli.validation.build_config) makes
it; the engine reads it."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

if TYPE_CHECKING:  # the settings types live with their pipelines; importing them here would load those stages
    from task_vector_opt.evaluation.jglue import JGLUESettings
    from task_vector_opt.evaluation.mt_bench import MTBenchSettings
    from task_vector_opt.evaluation.vlm_bench import VLMBenchSettings
    from task_vector_opt.merging.methods import MergeSettings
    from task_vector_opt.merging.moe.config import MoESettings

    EvaluatorSettings = JGLUESettings | MTBenchSettings | VLMBenchSettings

from task_vector_opt.identity import identity_named, identity_when, outside_identity, study_identity
from task_vector_opt.sources import ModelSource


class PipelineExtras(TypedDict, total=False):
    """Settings only some pipelines have, validated by their ``extra_from_args``; part of the study's identity."""

    moe: MoESettings


# search.scale_first's shape rule: weight = clip(scale + offset), after the block design (search.blocks)
SHAPE_RULE = "offsets+blocks"


@dataclass
class RunConfig:
    """Every input of a run. Fields that cannot change the merge or its score are marked outside_identity()
    (here and in the evaluator's and the MoE's settings): the default study name ignores them, so changing one
    resumes the same study."""

    pipeline: str
    targets: list[ModelSource]
    base: ModelSource = identity_named("base_model")
    tuned: ModelSource = identity_named("tuned_model")
    cache_dir: str | None = outside_identity()
    dtype: str
    device: str = outside_identity()
    vector_placement: str = outside_identity()
    skip_embed: bool
    trust_remote_code: bool = outside_identity()  # a permission; the model is the same
    allow_pickle: bool = outside_identity()  # a permission; the weights are the same
    optimize_mode: str
    sampler: str = identity_named("optuna_sampler")
    seed: int = identity_named("optuna_seed")
    n_trials: int = outside_identity()  # rerunning with more trials extends the study
    weight_min: float
    weight_max: float
    storage: str = outside_identity()
    study_name: str = outside_identity()
    run_dir: Path = outside_identity()
    baseline_trials: bool = outside_identity()  # read only when the study is created
    holdout_top_k: int = outside_identity()  # the end's held-out check, not the search
    output_dir: Path = outside_identity()
    overwrite_output_dir: bool = outside_identity()
    log_level: str = outside_identity()
    dry_run: bool = outside_identity()
    heartbeat_interval: float = outside_identity(default=60.0)
    search_only: bool = outside_identity(default=False)  # a worker that searches and saves nothing
    finalize: bool = outside_identity(default=False)  # no search: holdout and save
    save_on_interrupt: bool = outside_identity(default=False)
    # --scale_search: the scale stage first, the shape's parameters as offsets from its scale (off: as before)
    scale_first: bool = identity_when(lambda config: config.scale_first, default=False)
    # how the scale-first shape stage reads its parameters: a study searched under another rule (the factors of
    # earlier versions) is a different study, never resumed under this one
    shape_rule: str = identity_when(lambda config: config.scale_first, default=SHAPE_RULE)
    # knots of --optimize_mode profile (0 in the other modes, where it changes nothing)
    profile_knots: int = identity_when(lambda config: config.optimize_mode == "profile", default=0)
    evaluator: EvaluatorSettings | None = None  # the pipeline's own evaluator settings
    # every --tuned_model (``tuned`` is the first); with one, the study knows it as tuned_model alone
    tuned_models: list[ModelSource] = identity_when(lambda config: len(config.tuned_models) > 1,
                                                    default_factory=list)
    # how the vectors combine (method, densities); None or plain task arithmetic: not part of the study's identity
    merge: MergeSettings | None = identity_when(lambda config: config.merge is not None and not config.merge.is_plain,
                                                default=None)
    extra: PipelineExtras = identity_named("", default_factory=PipelineExtras)  # e.g. {"moe": MoESettings}, at the top level
    # Set by validation when --output_dir already holds this study's saved best model: nothing is left to do.
    saved_output: list[Path] | None = outside_identity(default=None)

    def recipe_inputs(self) -> dict[str, Any]:
        """The inputs that define the merge and the search, as merge_recipe.json shows them (settings that do not
        count for the study, like the batch size, included)."""
        evaluator = asdict(self.evaluator) if self.evaluator is not None else None
        extra = {k: v.recipe_inputs() if hasattr(v, "recipe_inputs") else asdict(v) if is_dataclass(v) else v
                 for k, v in self.extra.items()}
        tuned = [t.name_or_path for t in self.tuned_models] or [self.tuned.name_or_path]
        # One vector under plain task arithmetic writes exactly the inputs it always did, so the default study
        # name of an older command is unchanged and its study resumes.
        plain = len(tuned) == 1 and (self.merge is None or self.merge.is_plain)
        merge = {} if plain else {"merge": self.merge.recipe_inputs() if self.merge is not None else None}
        return {
            "pipeline": self.pipeline,
            "targets": [t.name_or_path for t in self.targets],
            "base_model": self.base.name_or_path,
            "tuned_model": tuned[0] if len(tuned) == 1 else tuned,
            **merge,
            "dtype": self.dtype,
            "skip_embed": self.skip_embed,
            "optimize_mode": self.optimize_mode,
            # only in profile mode, so the study names of the other modes stay what they were
            **({"profile_knots": self.profile_knots} if self.optimize_mode == "profile" else {}),
            **({"scale_search": "on"} if self.scale_first else {}),
            "optuna_sampler": self.sampler,
            "optuna_seed": self.seed,
            "weight_min": self.weight_min,
            "weight_max": self.weight_max,
            "evaluator": evaluator,
            **extra,  # pipeline-specific inputs (the MoE's settings)
        }

    def study_identity(self) -> dict[str, Any]:
        """What defines the study (and its default name): every setting not marked outside_identity()."""
        return study_identity(self)


def default_study_name(pipeline: str, identity: dict[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return f"{pipeline}-{identity['optimize_mode']}-{digest}"
