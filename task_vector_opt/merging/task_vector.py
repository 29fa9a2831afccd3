"""The task vector tuned - base, built tensor by tensor from safetensors and checked against the target.

Only one base tensor and one tuned tensor are in memory at a time, so base and
tuned are never both resident. Rules for the awkward cases:

- Vocabulary mismatch (a target that extends the vocabulary, common for Japanese
  models): embed_tokens / lm_head get the vector on the rows both share; the
  target's extra rows keep their values. Pass --skip_embed to leave both alone.
- VLM target: only its language model's tensors get the vector, their names mapped to the
  LLM checkpoint's (task_vector_opt.merging.vlm); the vision tower and projector are left alone.
- Tied embeddings: a target whose lm_head is tied to embed_tokens has one tensor,
  which gets the embed_tokens delta. An untied target with tied base/tuned gets
  the embed_tokens delta on lm_head too (that is what tuned - base means there).
- Inputs that lie: a tensor of base or tuned with NaN or infinite values is refused (one min/max reduction
  per stored delta as it streams), and so is a tuned model equal to the base (a vector of zeros); a base/tuned pair of another architecture than the target, with the
  target's names and shapes, is applied with one warning naming both.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from task_vector_opt.errors import TaskVectorMismatch, UsageError
from task_vector_opt.merging.models import WeightFiles, nonfinite_kinds, read_config, require_finite
from task_vector_opt.merging.vlm import log_left_alone, name_map_for

log = logging.getLogger(__name__)


@dataclass
class VectorEntry:
    delta: torch.Tensor  # tuned - base, in the storage dtype / device
    rows: int | None = None  # when set, the delta covers only the first ``rows`` rows (shared vocabulary)


def embedding_parameter_names(model) -> set[str]:
    """Names of the input embedding and output head parameters, found by identity, not by name."""
    wanted = {id(m.weight) for m in (model.get_input_embeddings(), model.get_output_embeddings())
              if m is not None and getattr(m, "weight", None) is not None}
    return {name for name, p in model.named_parameters() if id(p) in wanted}


def _tied_fallback(name: str, embed_names: set[str], model, files: WeightFiles,
                   to_checkpoint: Callable[[str], str | None] = str) -> str | None:
    """An untied target's lm_head, when base/tuned files store only the (tied) embedding."""
    output = model.get_output_embeddings()
    if output is None or id(output.weight) == id(model.get_input_embeddings().weight):
        return None
    output_names = {n for n, p in model.named_parameters() if p is output.weight}
    if name not in output_names:
        return None
    input_name = next(n for n in embed_names if n not in output_names)
    return files.key_for(to_checkpoint(input_name) or input_name)


def build_task_vector(model, base_dir: Path, tuned_dir: Path, *, dtype: torch.dtype, store_device: str | torch.device,
                      skip_embed: bool = False) -> dict[str, VectorEntry]:
    """Return {target parameter name: VectorEntry}, reading base and tuned one tensor at a time."""
    base, tuned = WeightFiles(base_dir, "--base_model"), WeightFiles(tuned_dir, "--tuned_model")
    embed_names = embedding_parameter_names(model)
    vector: dict[str, VectorEntry] = {}
    used_keys: set[str] = set()
    skipped_keys: set[str] = set()  # tuned tensors left out on purpose (--skip_embed), not for want of a match
    changes_anything = False  # a delta with a non-zero entry was seen (one reduction per tensor until then)
    to_checkpoint = name_map_for(model)  # identity for an LLM; a VLM's language model only
    params = [(name, p) for name, p in model.named_parameters() if to_checkpoint(name) is not None]
    log_left_alone([name for name, _ in model.named_parameters() if to_checkpoint(name) is None])
    try:
        for name, param in tqdm(params, desc="task vector", unit="tensor", leave=False):
            if skip_embed and name in embed_names:
                key = (tuned.key_for(to_checkpoint(name) or name)
                       or _tied_fallback(name, embed_names, model, tuned, to_checkpoint))
                skipped_keys.update([key] if key else [])
                continue
            keys = []
            for label, files in (("--base_model", base), ("--tuned_model", tuned)):
                key = (files.key_for(to_checkpoint(name) or name)
                       or _tied_fallback(name, embed_names, model, files, to_checkpoint))
                if key is None:
                    raise TaskVectorMismatch(f"tensor {name} (shape {tuple(param.shape)}) of the target is missing "
                                             f"from {label} ({files.directory}); the models must share an "
                                             "architecture")
                keys.append(key)
            base_shape, tuned_shape = base.shape(keys[0]), tuned.shape(keys[1])
            if base_shape != tuned_shape:
                raise TaskVectorMismatch(f"tensor {name}: --base_model has shape {base_shape} but --tuned_model has "
                                         f"{tuned_shape}; the task vector needs models of one architecture")
            rows = _rows_to_apply(name, tuple(param.shape), base_shape, name in embed_names)
            used_keys.update(keys)
            # A new tensor: an in-place op on the memory-mapped file tensor would keep a private copy of every
            # tuned tensor alive until the file closes, i.e. the whole tuned model.
            delta = tuned.get(keys[1]).to(torch.float32) - base.get(keys[0]).to(torch.float32)
            if rows is not None:
                if nonfinite_kinds(delta) is not None:  # the rows left out must not hide a damaged tensor
                    _explain_nonfinite_delta(name, keys, base, tuned, delta, torch.float32)
                delta = delta[:rows]
            changes_anything = changes_anything or bool(delta.any())
            stored = delta.to(device=store_device, dtype=dtype).contiguous()
            del delta
            if nonfinite_kinds(stored) is not None:  # NaN/inf in base or tuned propagate into the difference
                _explain_nonfinite_delta(name, keys, base, tuned, stored, dtype)
            vector[name] = VectorEntry(stored, rows)
    finally:
        base.close()
        tuned.close()
    if params and not changes_anything:
        skipped = " (--skip_embed leaves out the embeddings)" if skip_embed else ""
        raise UsageError("--tuned_model", f"{str(tuned_dir)!r} equals --base_model {str(base_dir)!r} on every tensor "
                                          f"the target gets{skipped}: the task vector tuned - base is zero, so no "
                                          "weight would change the target; give the fine-tuned model as --tuned_model")
    warn_if_other_architecture(model, base_dir, tuned_dir)  # after the names and shapes were found to match
    if skipped_keys:
        log.info("--skip_embed: the embeddings (%s) were skipped; they keep the target's values",
                 ", ".join(sorted(skipped_keys)))
    unused = sorted(set(tuned.keys()) - used_keys - skipped_keys)
    if unused:
        log.warning("%d tensor(s) of --tuned_model have no counterpart in the target and are not applied: %s",
                    len(unused), ", ".join(unused[:5]) + (" ..." if len(unused) > 5 else ""))
    return vector


def _explain_nonfinite_delta(name: str, keys: list[str], base: WeightFiles, tuned: WeightFiles,
                             stored: torch.Tensor, dtype: torch.dtype) -> None:
    """Raise the UsageError for a non-finite delta: it names the model whose tensor holds NaN/inf, or says the
    difference itself does not fit ``dtype`` (only reached on that failure, so reading the tensors again is fine)."""
    require_finite(base.get(keys[0]), keys[0], base.flag, base.directory)
    require_finite(tuned.get(keys[1]), keys[1], tuned.flag, tuned.directory)
    dtype_name = str(dtype).removeprefix("torch.")
    raise UsageError("--dtype", f"tensor {name}: tuned - base holds values too large for {dtype_name} "
                                f"({nonfinite_kinds(stored)}); use --dtype float32 or bfloat16")


def _architecture(config: dict) -> str:
    """'llama (LlamaForCausalLM)' from a config.json's model_type and architectures."""
    architectures = ", ".join(config.get("architectures") or [])
    return f"{config.get('model_type', 'unknown')}" + (f" ({architectures})" if architectures else "")


def warn_if_other_architecture(model, base_dir: Path, tuned_dir: Path) -> None:
    """One warning when base or tuned declare another model_type than the target (e.g. Llama into Mistral).

    Their tensors already had to match the target's names and shapes, so the vector can be applied; whether
    it means anything for another architecture is the user's call, so it is said once, naming both."""
    text_config = model.config.get_text_config()  # a VLM target: its language model is what is merged
    target = {"model_type": text_config.model_type,
              "architectures": model.config.architectures if text_config is model.config else None}
    pair = {}
    for flag, directory in (("--base_model", base_dir), ("--tuned_model", tuned_dir)):
        try:
            pair[flag] = read_config(Path(directory), flag=flag).to_dict()
        except UsageError:
            continue  # validation already required a config.json; nothing to compare against
    if any(config.get("model_type") != target["model_type"] for config in pair.values()):
        pair_text = "; ".join(f"{flag} is {_architecture(config)}" for flag, config in pair.items())
        log.warning("%s, but the target is %s: another architecture with the same tensor names "
                    "and shapes; the task vector is applied as is, check that this pair is the one you meant",
                    pair_text, _architecture(target))


def _rows_to_apply(name: str, target_shape: tuple[int, ...], vector_shape: tuple[int, ...],
                   is_embedding: bool) -> int | None:
    if target_shape == vector_shape:
        return None
    same_width = len(target_shape) == len(vector_shape) and target_shape[1:] == vector_shape[1:]
    if is_embedding and same_width:
        shared = min(target_shape[0], vector_shape[0])
        log.warning("vocabulary sizes differ for %s: target %d rows, task vector %d rows; applying the vector to the "
                    "%d shared rows (pass --skip_embed to leave embeddings unchanged)", name, target_shape[0],
                    vector_shape[0], shared)
        return shared
    raise TaskVectorMismatch(f"tensor {name}: the target has shape {target_shape} but the task vector has "
                             f"{vector_shape}; the models must share an architecture")
