"""A guard around scoring: a merged model whose logits hold NaN or infinite values fails its trial, never scores.

A NaN model still produces *some* answer (argmax of NaN is token 0), so an evaluator would give it a finite,
meaningless score. The guard watches the output head's logits on every forward pass and raises at the first
non-finite one, which also stops a doomed trial early.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch

from task_vector_opt.merging.models import nonfinite_kinds


class NonFiniteLogits(RuntimeError):
    """The merged model produced NaN or infinite logits: the trial fails with this reason."""


def _logits_of(output: Any) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    return getattr(output, "logits", None)


@contextmanager
def finite_logits_guard(model: Any) -> Iterator[None]:
    """While open, any forward pass of ``model`` whose output head gives NaN/inf logits raises NonFiniteLogits.

    The hook sits on the output embedding (lm_head), before any logit soft-capping could hide an overflow.
    Its cost is one min/max reduction over the logits per forward pass (no logits-sized mask)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    target = head if head is not None else model

    def check(_module: torch.nn.Module, _inputs: Any, output: Any) -> None:
        logits = _logits_of(output)
        kinds = nonfinite_kinds(logits) if isinstance(logits, torch.Tensor) else None
        if kinds is not None:
            raise NonFiniteLogits(f"non-finite logits ({kinds}) in the merged model")

    handle = target.register_forward_hook(check)
    try:
        yield
    finally:
        handle.remove()
