"""A vision-language target: which of its tensors are the language model's, and what they are called in an LLM.

The rules are data (the tables below), as the grouping rules are: a new VLM family whose language model
sits under another prefix needs one row here. The vision tower and projector match no row and stay untouched.
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from task_vector_opt.errors import UsageError
from task_vector_opt.merging.models import WeightFiles, is_vlm, is_vlm_config, read_config

log = logging.getLogger(__name__)

# (prefix of a VLM tensor name, the same tensor's prefix in a causal-LM checkpoint), first match wins.
LANGUAGE_MODEL_PREFIXES: tuple[tuple[str, str], ...] = (
    # transformers 5, in memory: LLaVA-1.5/NeXT, Qwen2-VL/Qwen2.5-VL, Gemma 3, Mistral 3
    ("model.language_model.", "model."),
    # the checkpoint layout LLaVA and Gemma 3 save (and transformers 4 kept in memory)
    ("language_model.model.", "model."),
    ("language_model.lm_head.", "lm_head."),
    # the output head: at the top level in memory (and in Qwen2-VL checkpoints)
    ("lm_head.", "lm_head."),
    # Qwen2-VL checkpoints keep the language model where an LLM keeps it; vision parts are "visual."
    ("model.layers.", "model.layers."),
    ("model.embed_tokens.", "model.embed_tokens."),
    ("model.norm.", "model.norm."),
)

# Language-model families of a VLM's text config -> the model_type a matching base/tuned LLM has.
LANGUAGE_MODEL_FAMILIES: dict[str, str] = {
    "llama": "llama",
    "mistral": "mistral",
    "qwen2": "qwen2",
    "qwen2_vl_text": "qwen2",
    "qwen2_5_vl_text": "qwen2",
    "gemma3_text": "gemma3_text",
    "gemma2": "gemma2",
}

# Fields that must agree between the VLM's language model and base/tuned (vocab_size may differ: image tokens).
SHAPE_FIELDS = ("hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads",
                "num_key_value_heads")


def checkpoint_name(name: str) -> str | None:
    """The causal-LM checkpoint name of a VLM tensor, or None when it is not the language model's."""
    for vlm_prefix, llm_prefix in LANGUAGE_MODEL_PREFIXES:
        if name.startswith(vlm_prefix):
            return llm_prefix + name[len(vlm_prefix):]
    return None


def name_map_for(model: Any) -> Callable[[str], str | None]:
    """Target parameter name -> the base/tuned checkpoint name it is merged with (None: left alone).

    An LLM target maps every name to itself; a VLM maps its language model and leaves the rest."""
    return checkpoint_name if is_vlm(model) else (lambda name: name)


def part_of(name: str) -> str:
    """The top-level part a tensor belongs to, for the log ("vision_tower", "multi_modal_projector", "visual")."""
    parts = name.split(".")
    return parts[1] if parts[0] == "model" and len(parts) > 2 else parts[0]


def log_left_alone(names: list[str]) -> None:
    """Say how many of a VLM's tensors the task vector does not touch, by part, and why."""
    if not names:
        return
    by_part = Counter(part_of(name) for name in names)
    log.info("VLM target: %d tensor(s) left exactly as the target's, because they are not the language model the "
             "task vector was taken from: %s", len(names),
             ", ".join(f"{count} {part}" for part, count in by_part.most_common()))


# ------------------------------------------------------------------ checks from config files and headers only

def _checkpoint_keys(directory: Path) -> list[str]:
    files = WeightFiles(directory)  # reads the index or the safetensors headers, not the tensors
    try:
        return files.keys()
    finally:
        files.close()


@dataclass(frozen=True)
class VLMTarget:
    """What validation learnt about a VLM target from its config and weight headers."""

    family: str  # the LLM model_type its language model matches
    language_tensors: int
    other_tensors: int


def check_vlm_target(flag: str, target_dir: Path, base_dir: Path) -> VLMTarget | None:
    """None for an LLM target; for a VLM, check that its language model is the architecture of --base_model.

    Reads config.json files and safetensors headers only, so every mistake is reported before weights load."""
    config = read_config(target_dir, flag=flag)
    if not is_vlm_config(config):
        return None
    text = config.get_text_config().to_dict()  # the language model's config (transformers' rule for each VLM)
    kind = text.get("model_type") or config.model_type
    family = LANGUAGE_MODEL_FAMILIES.get(kind or "")
    keys = _checkpoint_keys(target_dir)
    language = [k for k in keys if checkpoint_name(k) is not None]
    if family is None or not language or text.get("hidden_size") is None:
        known = ", ".join(sorted(LANGUAGE_MODEL_FAMILIES))
        raise UsageError(flag, f"{str(target_dir)!r} is a vision-language model ({config.model_type!r}) "
                               f"without a recognisable language model (text model type {kind!r}, "
                               f"{len(language)} language-model tensors); supported language models: {known}")
    base = read_config(base_dir, flag="--base_model").to_dict()
    base_kind = base.get("model_type")
    if is_vlm_config(base):
        raise UsageError("--base_model", f"{str(base_dir)!r} is itself a vision-language model; the task vector of a "
                                         "VLM target is taken from language models: give base/tuned LLM checkpoints "
                                         f"of the {family!r} family")
    if base_kind != family:
        raise UsageError(flag, f"the language model of {str(target_dir)!r} is {kind!r} (a {family!r} model) but "
                               f"--base_model is a {base_kind!r} model; give base/tuned models of the VLM's "
                               f"language-model architecture")
    for field_name in SHAPE_FIELDS:
        mine = text.get(field_name, text.get("num_attention_heads") if field_name == "num_key_value_heads" else None)
        theirs = base.get(field_name,
                          base.get("num_attention_heads") if field_name == "num_key_value_heads" else None)
        if mine != theirs:
            raise UsageError(flag, f"the language model of {str(target_dir)!r} has {field_name}={mine} but "
                                   f"--base_model has {theirs}; give base/tuned models of the VLM's language-model "
                                   "shape")
    return VLMTarget(family=family, language_tensors=len(language), other_tensors=len(keys) - len(language))


def check_local_vlm_target(target_spec: str, base_spec: str, flag: str = "--target_model") -> VLMTarget | None:
    """check_vlm_target for local directories; hub models are checked after download, before loading."""
    target_dir, base_dir = Path(target_spec).expanduser(), Path(base_spec).expanduser()
    if not ((target_dir / "config.json").is_file() and (base_dir / "config.json").is_file()):
        return None  # the common source checks report a missing directory or config
    if not any(target_dir.glob("*.safetensors")):
        return None  # pickle weights (--allow_pickle): checked from the loaded model instead
    return check_vlm_target(flag, target_dir, base_dir)


# ------------------------------------------------------------------------------------------------ memory

ACTIVATION_RESERVE = 0.25  # of the live model's size, kept free on the device for activations (as engine.py)


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes a run holds: the live model on the device, plus the merger's copies of the tensors it rewrites (the
    target's originals and the task vector) on the device or the host."""

    device_bytes: int
    host_bytes: int
    reserve_bytes: int  # activations, generation cache

    def fits(self, device_capacity_bytes: int) -> bool:
        return self.device_bytes + self.reserve_bytes <= device_capacity_bytes


def memory_plan(model_bytes: int, merged_bytes: int, copies_on_device: bool, n_vectors: int = 1) -> MemoryPlan:
    """The memory rule (docs/en/hardware.md, 'VLM memory'): the copies (the target's originals and each task vector) cover only
    ``merged_bytes``, the language model a VLM's vector touches; the vision tower and projector are live once and
    never copied."""
    copies = (1 + n_vectors) * merged_bytes
    return MemoryPlan(device_bytes=model_bytes + (copies if copies_on_device else 0),
                      host_bytes=0 if copies_on_device else copies,
                      reserve_bytes=int(ACTIVATION_RESERVE * model_bytes))
