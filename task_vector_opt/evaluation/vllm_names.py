"""What the vLLM backend pushes: each live tensor under the name it has in a saved checkpoint.

vLLM's ``load_weights`` takes checkpoint names and does its own fusing (q/k/v into qkv_proj, gate/up into
gate_up_proj, the experts into its fused MoE) and its own prefix mapping (a VLM's language model), so the
push names tensors exactly as transformers saves them. For a dense LLM that is the name in memory; a LLaVA
saves its language model under ``language_model.``; the in-memory Mixtral differs most: its experts are two
fused 3-D parameters per layer, while a Mixtral checkpoint has per-expert w1 (gate), w3 (up) and w2 (down),
and the router sits under ``block_sparse_moe``. No vLLM import here, so tests check the names without it.
"""
from __future__ import annotations

from typing import Iterable

import torch

from task_vector_opt.merging.moe.layout import mlp_location, split_slot_key

# Mixtral checkpoints name an expert's MLP weights after the paper: w1 gate, w2 down, w3 up.
MIXTRAL_EXPERT_WEIGHT = {"gate_proj": "w1", "down_proj": "w2", "up_proj": "w3"}


def mixtral_expert_name(layer: int, expert: int, kind: str) -> str:
    """The checkpoint name of one expert's dense MLP weight ``kind`` (gate_proj, up_proj, down_proj)."""
    return f"model.layers.{layer}.block_sparse_moe.experts.{expert}.{MIXTRAL_EXPERT_WEIGHT[kind]}.weight"


def mixtral_router_name(layer: int) -> str:
    return f"model.layers.{layer}.block_sparse_moe.gate.weight"


def checkpoint_tensors(model: torch.nn.Module, names: Iterable[str] | None = None
                       ) -> list[tuple[str, torch.Tensor]]:
    """Live parameters (all, or those in ``names``) as (checkpoint name, tensor): what save_pretrained would write.

    transformers' own reverse of its load-time conversions names them (revert_weight_conversion, which
    save_pretrained runs): LLaVA's language model goes back under ``language_model.``, a Mixtral's fused experts
    back to per-expert w1/w3/w2. A tied output head appears once, as in a checkpoint."""
    from transformers.core_model_loading import revert_weight_conversion

    wanted = None if names is None else set(names)
    state = {name: param.data for name, param in model.named_parameters() if wanted is None or name in wanted}
    return list(revert_weight_conversion(model, state).items())


def slot_checkpoint_name(key: str) -> str:
    """The checkpoint name of an MoE slot ('expert2/model.layers.3.mlp.up_proj.weight'): an expert's MLP
    weight, or (the MoE base expert's other tensors) the dense name, which the Mixtral shares."""
    expert, name = split_slot_key(key)
    location = mlp_location(name)
    return name if location is None else mixtral_expert_name(location[0], expert, location[1])
