"""The task vector tuned - base, built tensor by tensor from safetensors and checked against the target.

Only one base tensor and one tuned tensor are in memory at a time, so base and
tuned are never both resident. Rules for the awkward cases:

- Vocabulary mismatch (a target that extends the vocabulary, common for Japanese
  models): embed_tokens / lm_head get the vector on the rows both share; the
  target's extra rows keep their values. Pass --skip_embed to leave both alone.
- Tied embeddings: a target whose lm_head is tied to embed_tokens has one tensor,
  which gets the embed_tokens delta. An untied target with tied base/tuned gets
  the embed_tokens delta on lm_head too (that is what tuned - base means there).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from task_vector_opt.errors import TaskVectorMismatch
from task_vector_opt.merging.models import WeightFiles

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


def _tied_fallback(name: str, embed_names: set[str], model, files: WeightFiles) -> str | None:
    """An untied target's lm_head, when base/tuned files store only the (tied) embedding."""
    output = model.get_output_embeddings()
    if output is None or id(output.weight) == id(model.get_input_embeddings().weight):
        return None
    output_names = {n for n, p in model.named_parameters() if p is output.weight}
    if name not in output_names:
        return None
    input_name = next(n for n in embed_names if n not in output_names)
    return files.key_for(input_name)


def build_task_vector(model, base_dir: Path, tuned_dir: Path, *, dtype: torch.dtype, store_device: str | torch.device,
                      skip_embed: bool = False) -> dict[str, VectorEntry]:
    """Return {target parameter name: VectorEntry}, reading base and tuned one tensor at a time."""
    base, tuned = WeightFiles(base_dir), WeightFiles(tuned_dir)
    embed_names = embedding_parameter_names(model)
    vector: dict[str, VectorEntry] = {}
    used_keys: set[str] = set()
    params = list(model.named_parameters())
    try:
        for name, param in tqdm(params, desc="task vector", unit="tensor", leave=False):
            if skip_embed and name in embed_names:
                continue
            keys = []
            for label, files in (("--base_model", base), ("--tuned_model", tuned)):
                key = files.key_for(name) or _tied_fallback(name, embed_names, model, files)
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
                delta = delta[:rows]
            vector[name] = VectorEntry(delta.to(device=store_device, dtype=dtype).contiguous(), rows)
            del delta
    finally:
        base.close()
        tuned.close()
    unused = sorted(set(tuned.keys()) - used_keys)
    if unused:
        log.warning("%d tensor(s) of --tuned_model have no counterpart in the target and are not applied: %s",
                    len(unused), ", ".join(unused[:5]) + (" ..." if len(unused) > 5 else ""))
    return vector


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
