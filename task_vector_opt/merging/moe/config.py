"""MoE settings: the --target_model_N flags, a mergekit-moe YAML config, and every check on them.

Everything here reads flags, the YAML file and config.json files only (no weights), so a bad
input is one line and exit code 2 before any model loads.
"""
from __future__ import annotations

import argparse
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any, Callable

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from task_vector_opt.errors import UsageError, first_line
from task_vector_opt.files import check_output_dir
from task_vector_opt.identity import identity_when, outside_identity
from task_vector_opt.sources import ModelSource

log = logging.getLogger(__name__)

GATE_MODES = ("random", "hidden", "cheap_embed")
GATES_FROM_WEIGHTS = ("hidden", "cheap_embed")  # these routers follow the MoE base expert's weights
MIXTRAL_SOURCE_TYPES = ("llama", "mistral")  # what maps onto MixtralForCausalLM (as in mergekit-moe)
# config.json fields that must agree across experts: anything that changes a tensor's shape or the layer maths.
SHAPE_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "head_dim", "hidden_act")
YAML_DTYPES = {"bfloat16": "bfloat16", "bf16": "bfloat16", "float16": "float16", "fp16": "float16",
               "float32": "float32", "fp32": "float32"}


def target_flag(index: int) -> str:
    return f"--target_model_{index}"


@dataclass
class ExpertPrompts:
    positive: list[str] = field(default_factory=list)
    negative: list[str] = field(default_factory=list)


@dataclass
class MoESettings:
    n_experts: int
    base_index: int  # 0-based index of the expert whose embeddings, attention, norms and lm_head the MoE uses
    gate_mode: str
    experts_per_token: int
    gate_seed: int = identity_when(lambda settings: settings.gate_mode == "random")  # only random routers read it
    # one per expert, in expert order; only routers computed from the experts read them
    prompts: list[ExpertPrompts] = identity_when(lambda settings: settings.gate_mode in GATES_FROM_WEIGHTS)
    save_moe: bool = outside_identity()  # what is saved, not what is searched
    config_file: str | None = outside_identity(default=None)  # its contents count, through the fields above
    yaml_dtype: str | None = outside_identity(default=None)  # counts as the run's --dtype

    @property
    def gates_follow_weights(self) -> bool:
        return self.gate_mode in GATES_FROM_WEIGHTS

    def recipe_inputs(self) -> dict[str, Any]:
        """What merge_recipe.json shows of the MoE (the study's identity follows the field markers above)."""
        return {"n_experts": self.n_experts, "base_expert": self.base_index + 1, "gate_mode": self.gate_mode,
                "experts_per_token": self.experts_per_token,
                "gate_seed": self.gate_seed if self.gate_mode == "random" else None,
                "prompts": [asdict(p) for p in self.prompts] if self.gates_follow_weights else None}


def expert_output_dir(output_dir: Path, index: int) -> Path:
    """Expert i (0-based) is saved to <output_dir>-<i+1>, as the original scripts did."""
    return output_dir.with_name(f"{output_dir.name}-{index + 1}")


def targets_from_args(args: argparse.Namespace, max_experts: int) -> list[ModelSource]:
    """The experts' targets in order; gaps and fewer than two are errors."""
    given = [vars(args)[f"target_model_{i}"] for i in range(1, max_experts + 1)]  # flags made by moe_target_flags
    count = 0
    for index, name_or_path in enumerate(given, start=1):
        if name_or_path:
            if count != index - 1:
                raise UsageError(target_flag(index), f"is given but {target_flag(count + 1)} is not; number the "
                                                     "targets from 1 without gaps")
            count = index
    if count < 2:
        raise UsageError(target_flag(count + 1), f"a MoE needs at least 2 experts (got {count}); give "
                                                 f"{' and '.join(target_flag(i) for i in (1, 2))}")
    return [ModelSource(target_flag(i), given[i - 1]) for i in range(1, count + 1)]


class MoEExpertEntry(BaseModel):
    """One entry of mergekit-moe's ``experts`` list."""

    model_config = ConfigDict(extra="forbid")

    source_model: Annotated[str, BeforeValidator(str)]  # a path or id; YAML may read a bare name as a number
    positive_prompts: list[StrictStr] | None = None
    negative_prompts: list[StrictStr] | None = None
    noise_scale: float | None = None  # accepted only at its neutral value: this tool does not apply it
    residual_scale: float | None = None  # likewise


class MergekitMoEConfig(BaseModel):
    """mergekit-moe's YAML config, as mergekit declares it; read by --moe_config and written beside a saved MoE."""

    model_config = ConfigDict(extra="forbid")

    base_model: Annotated[str, BeforeValidator(str)] | None = None
    gate_mode: str | None = None  # checked against GATE_MODES with the flag that may override it
    dtype: str | None = None
    experts_per_token: StrictInt | None = None
    experts: list[MoEExpertEntry] = Field(min_length=1)
    architecture: str | None = None
    shared_experts: list[Any] | None = None


MIXTRAL_ARCHITECTURES = (None, "mixtral", "Mixtral", "MixtralForCausalLM")


def _schema_error(path: str, error: ValidationError) -> UsageError:
    """The first schema violation as one line, in the words of the keys the user wrote."""
    problems = error.errors()
    first = problems[0]
    loc = first["loc"]
    expert = f"expert {loc[1] + 1}" if len(loc) >= 2 and loc[0] == "experts" and isinstance(loc[1], int) else None
    if first["type"] == "extra_forbidden":
        unknown = sorted({str(p["loc"][-1]) for p in problems
                          if p["type"] == "extra_forbidden" and p["loc"][:-1] == loc[:-1]})
        if expert:
            return UsageError("--moe_config", f"{path!r}: {expert} has unknown key(s) {', '.join(unknown)}")
        keys = ", ".join(sorted(MergekitMoEConfig.model_fields))
        return UsageError("--moe_config", f"{path!r}: unknown key(s) {', '.join(unknown)}; mergekit-moe keys are "
                                          f"{keys}")
    if not loc or loc[0] == "experts" and len(loc) == 1:
        return UsageError("--moe_config", f"{path!r} must be a mapping with a non-empty 'experts' list "
                                          "(mergekit-moe's schema)")
    if expert and (len(loc) == 2 or loc[2] == "source_model" and first["type"] == "missing"):
        return UsageError("--moe_config", f"{path!r}: {expert} needs a source_model")
    if expert and loc[2] in ("positive_prompts", "negative_prompts"):
        return UsageError("--moe_config", f"{path!r}: {expert} {loc[2]} must be a list of strings")
    where = ".".join(str(part) for part in loc)
    return UsageError("--moe_config", f"{path!r}: {where}: {first['msg']}; fix the file")


def _read_yaml(path: str) -> MergekitMoEConfig:
    import yaml

    file = Path(path).expanduser()
    if not file.is_file():
        raise UsageError("--moe_config", f"{path!r} is not a file; give a mergekit-moe YAML config")
    try:
        text = file.read_text(encoding="utf-8")  # a BOM, as some editors write it, is skipped by YAML
    except UnicodeDecodeError as exc:  # e.g. Shift-JIS prompts saved by a Windows editor, or a binary file
        raise UsageError("--moe_config", f"{path!r}: not UTF-8 text ({exc.reason} at byte {exc.start}); save the "
                                         "file as UTF-8") from None
    except OSError as exc:
        raise UsageError("--moe_config", f"{path!r}: cannot read ({exc.strerror or exc})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        first = first_line(exc)
        raise UsageError("--moe_config", f"{path!r} is not valid YAML ({first}); fix the file") from None
    if not isinstance(data, dict):
        raise UsageError("--moe_config", f"{path!r} must be a mapping with a non-empty 'experts' list "
                                         "(mergekit-moe's schema)")
    try:
        config = MergekitMoEConfig.model_validate(data)
    except ValidationError as exc:
        raise _schema_error(path, exc) from None
    if config.shared_experts:
        raise UsageError("--moe_config", f"{path!r}: shared_experts are not supported by the Mixtral layout; "
                                         "remove them")
    if config.architecture not in MIXTRAL_ARCHITECTURES:
        raise UsageError("--moe_config", f"{path!r}: architecture {config.architecture!r} is not supported; this "
                                         "tool builds Mixtral MoEs (remove the key or set it to mixtral)")
    for number, expert in enumerate(config.experts, start=1):
        for key, value, neutral in (("noise_scale", expert.noise_scale, 0), ("residual_scale", expert.residual_scale, 1)):
            if value not in (None, neutral):
                raise UsageError("--moe_config", f"{path!r}: expert {number} sets {key}, which this tool does "
                                                 "not apply; remove it")
    return config


def _reference_index(reference: str, targets: list[ModelSource], source_models: list[str]) -> int | None:
    """Which target a YAML model reference means: 'target_model_N', the target's own path/id, or nothing."""
    text = str(reference).strip()
    for prefix in ("target_model_", "--target_model_", "target_"):
        if text.startswith(prefix) and text[len(prefix):].isdigit():
            number = int(text[len(prefix):])
            return number - 1 if 1 <= number <= len(targets) else -1
    for index, target in enumerate(targets):
        if text == target.name_or_path or text.rstrip("/") == target.name_or_path.rstrip("/"):
            return index
    return None


def _map_experts(data: MergekitMoEConfig, targets: list[ModelSource], path: str) -> tuple[list[int], int]:
    """Map the YAML's experts and base_model onto the targets.

    Each source_model names a target (target_model_N or the target's path / hub id). A config whose
    source_models name none of the targets (e.g. the expert dirs an earlier run saved) is taken in order:
    expert k is target k.
    """
    sources = [e.source_model for e in data.experts]
    found = [_reference_index(s, targets, sources) for s in sources]
    if any(i == -1 for i in found):
        bad = sources[found.index(-1)]
        raise UsageError("--moe_config", f"{path!r}: source_model {bad!r} names a target that was not given; there "
                                         f"are {len(targets)} targets")
    if all(i is None for i in found):
        order = list(range(len(sources)))
        log.info("moe config: source_model entries name no target; expert k is --target_model_k")
    elif any(i is None for i in found):
        bad = sources[found.index(None)]
        raise UsageError("--moe_config", f"{path!r}: source_model {bad!r} is not one of the targets; use "
                                         "target_model_N or the --target_model_N value")
    else:
        order = [int(i) for i in found]
        if sorted(order) != list(range(len(targets))):
            raise UsageError("--moe_config", f"{path!r}: each target must appear exactly once among the experts")
    base_ref = data.base_model
    if base_ref is None:
        return order, order[0]
    base = _reference_index(str(base_ref), targets, sources)
    if base is None and str(base_ref) in sources:
        base = order[sources.index(str(base_ref))]
    if base is None or base == -1:
        raise UsageError("--moe_config", f"{path!r}: base_model {base_ref!r} is not one of the experts; name a "
                                         "target (target_model_N or its path)")
    return order, base


def _check_prompts(gate_mode: str, prompts: list[ExpertPrompts], origin: str) -> None:
    if gate_mode not in GATES_FROM_WEIGHTS:
        return
    for number, expert in enumerate(prompts, start=1):
        if not expert.positive:
            raise UsageError("--gate_mode", f"{gate_mode!r} needs positive_prompts for every expert, and expert "
                                            f"{number} has none ({origin}); add them or use --gate_mode random")
    first = prompts[0]
    if all(p.positive == first.positive and p.negative == first.negative for p in prompts[1:]):
        raise UsageError("--moe_config", f"the prompts are identical for all experts ({origin}), so the routers "
                                         "could not tell them apart; give each expert prompts of its own")


def _read_model_config(source: ModelSource, cache_dir: str | None, trust_remote_code: bool) -> dict[str, Any]:
    from task_vector_opt.merging.models import config_of

    return config_of(source, cache_dir, trust_remote_code).to_dict()


def _shape_of(config: dict[str, Any]) -> dict[str, Any]:
    shape = {key: config.get(key) for key in SHAPE_FIELDS}
    if shape["head_dim"] is None and config.get("hidden_size") and config.get("num_attention_heads"):
        shape["head_dim"] = config["hidden_size"] // config["num_attention_heads"]
    return shape


def check_expert_architectures(targets: list[ModelSource], cache_dir: str | None, trust_remote_code: bool) -> None:
    """All experts must be Llama or Mistral models of one shape (config.json files only, no weights)."""
    configs = [_read_model_config(t, cache_dir, trust_remote_code) for t in targets]
    first = configs[0]
    for source, config in zip(targets, configs):
        kind = config.get("model_type")
        if kind not in MIXTRAL_SOURCE_TYPES:
            raise UsageError(source.flag, f"{source.name_or_path!r} is a {kind!r} model; MoE experts must be Llama or "
                                          "Mistral models (they map onto Mixtral)")
        if config.get("attention_bias") or config.get("mlp_bias"):
            raise UsageError(source.flag, f"{source.name_or_path!r} has attention or MLP biases, which Mixtral has not; "
                                          "choose targets without biases")
        if kind != first.get("model_type"):
            raise UsageError(source.flag, f"{source.name_or_path!r} is a {kind!r} model but {targets[0].flag} is a "
                                          f"{first.get('model_type')!r} model; all experts must share one "
                                          "architecture")
        mine, theirs = _shape_of(config), _shape_of(first)
        differing = [k for k in SHAPE_FIELDS if mine[k] != theirs[k]]
        if differing:
            key = differing[0]
            raise UsageError(source.flag, f"{source.name_or_path!r} has {key}={mine[key]} but {targets[0].flag} has "
                                          f"{theirs[key]}; all experts must have one shape")


def moe_settings_from_args(args: argparse.Namespace, targets: list[ModelSource]) -> MoESettings:
    """Validate the MoE flags and the YAML config against the targets; no weights are read."""
    from task_vector_opt.merging.models import check_model_source  # loads torch, which the YAML alone does not need

    for source in targets:  # the common checks first: a mistyped path must not reach the hub client
        check_model_source(source, args.allow_pickle)
    data = _read_yaml(args.moe_config) if args.moe_config else None
    n = len(targets)
    origin = f"--moe_config {args.moe_config}" if data else "no --moe_config"
    if data is not None:
        if len(data.experts) != n:
            raise UsageError("--moe_config", f"{args.moe_config!r} lists {len(data.experts)} experts but "
                                             f"{n} targets were given; give one expert per --target_model_N")
        order, base_index = _map_experts(data, targets, args.moe_config)
        prompts: list[ExpertPrompts] = [ExpertPrompts() for _ in range(n)]
        for expert, index in zip(data.experts, order):
            prompts[index] = ExpertPrompts(list(expert.positive_prompts or []), list(expert.negative_prompts or []))
    else:
        base_index, prompts = 0, [ExpertPrompts() for _ in range(n)]
    gate_mode = args.gate_mode or ((data.gate_mode or "hidden") if data is not None else "random")
    if gate_mode not in GATE_MODES:
        flag = "--gate_mode" if args.gate_mode else "--moe_config"
        raise UsageError(flag, f"unknown gate mode {gate_mode!r}; choose {', '.join(GATE_MODES)}")
    # None is "not given" (0 is a value, and refused below, not a fall-through to the default)
    from_file = data.experts_per_token if data is not None else None
    experts_per_token = next((value for value in (args.experts_per_token, from_file) if value is not None), 2)
    if not isinstance(experts_per_token, int) or not 1 <= experts_per_token <= n:
        flag = "--experts_per_token" if args.experts_per_token is not None else "--moe_config"
        raise UsageError(flag, f"experts per token must be between 1 and the number of experts ({n}); got "
                               f"{experts_per_token!r}")
    yaml_dtype = None
    if data is not None and data.dtype is not None:
        yaml_dtype = YAML_DTYPES.get(data.dtype)
        if yaml_dtype is None:
            raise UsageError("--moe_config", f"dtype {data.dtype!r} is not one of bfloat16, float16, float32")
    _check_prompts(gate_mode, prompts, origin)
    check_expert_architectures(targets, args.cache_dir, args.trust_remote_code)
    return MoESettings(n_experts=n, base_index=base_index, gate_mode=gate_mode, experts_per_token=experts_per_token,
                       gate_seed=args.gate_seed, prompts=prompts, save_moe=args.save_moe,
                       config_file=args.moe_config, yaml_dtype=yaml_dtype)


def check_expert_output_dirs(output_dir: str, n_experts: int, overwrite: bool,
                             holds_saved_model: Callable[[Path], bool] | None = None) -> list[bool]:
    """Each <output_dir>-N the experts are saved to; for each, whether it already holds this study's save."""
    saved = []
    for index in range(n_experts):
        path = expert_output_dir(Path(output_dir).expanduser(), index)
        try:
            saved.append(check_output_dir(str(path), overwrite, holds_saved_model))
        except UsageError as exc:
            raise UsageError("--output_dir", f"experts are saved to {path}: {str(exc).split(': ', 1)[-1]}") from None
    return saved


def check_moe_outputs(config: Any, holds_saved_model: Callable[[Path], bool]) -> list[Path] | None:
    """The experts' directories (and --output_dir for --save_moe). Returns them, in the order the save returns
    its folder first, when every one the save writes already holds this study's saved model; a save found in
    only some of them is refused, as it cannot be completed without --overwrite_output_dir."""
    settings: MoESettings = config.extra["moe"]
    moe_saved = check_output_dir(str(config.output_dir), config.overwrite_output_dir, holds_saved_model)
    experts_saved = check_expert_output_dirs(str(config.output_dir), settings.n_experts, config.overwrite_output_dir,
                                             holds_saved_model)
    written = [(expert_output_dir(config.output_dir, i), saved) for i, saved in enumerate(experts_saved)]
    if settings.save_moe:  # first: the folder the save returns (the one --push_to_hub uploads)
        written.insert(0, (config.output_dir, moe_saved))
    if all(saved for _, saved in written):
        return [path for path, _ in written]
    done = [path for path, saved in written if saved]
    if done:
        missing = next(path for path, saved in written if not saved)
        raise UsageError("--output_dir", f"{str(done[0])!r} holds this study's saved model but {str(missing)!r} "
                                         "does not; pass --overwrite_output_dir to save them all again or choose a "
                                         "new directory")
    return None
