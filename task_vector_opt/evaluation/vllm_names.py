"""What the vLLM backend pushes: each live tensor under the name it has in a saved checkpoint.

vLLM's ``load_weights`` takes checkpoint names and does its own fusing (q/k/v into qkv_proj, gate/up into
gate_up_proj, the experts into its fused MoE) and its own prefix mapping (a VLM's language model), so the
push names tensors exactly as transformers saves them. For the dense models and the VLMs of transformers 5
that is the name in memory. The in-memory Mixtral is the one that differs: its experts are two fused 3-D
parameters per layer, while a Mixtral checkpoint has per-expert w1 (gate), w3 (up) and w2 (down), and the
router sits under ``block_sparse_moe``. Names only here, so tests can check them without vLLM.
"""
from __future__ import annotations

import re
from typing import Iterator

import torch

from task_vector_opt.merging.moe.layout import mlp_location, split_slot_key

# Mixtral checkpoints name an expert's MLP weights after the paper: w1 gate, w2 down, w3 up.
MIXTRAL_EXPERT_WEIGHT = {"gate_proj": "w1", "down_proj": "w2", "up_proj": "w3"}
FUSED_EXPERTS = re.compile(r"^(?P<prefix>.*\.layers\.\d+)\.mlp\.experts\.(?P<kind>gate_up_proj|down_proj)$")
MOE_ROUTER = re.compile(r"^(?P<prefix>.*\.layers\.\d+)\.mlp\.gate\.weight$")


def mixtral_expert_name(layer: int, expert: int, kind: str) -> str:
    """The checkpoint name of one expert's dense MLP weight ``kind`` (gate_proj, up_proj, down_proj)."""
    return f"model.layers.{layer}.block_sparse_moe.experts.{expert}.{MIXTRAL_EXPERT_WEIGHT[kind]}.weight"


def mixtral_router_name(layer: int) -> str:
    return f"model.layers.{layer}.block_sparse_moe.gate.weight"


def checkpoint_tensors(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """Every parameter of a live model as (checkpoint name, tensor): what a fresh vLLM engine is filled with.

    Tensors are views of the live parameters, never copies. A tied output head appears once (as
    ``named_parameters`` lists it), as in a checkpoint."""
    moe = getattr(getattr(model, "config", None), "model_type", None) == "mixtral"
    for name, param in model.named_parameters():
        if moe:
            fused = FUSED_EXPERTS.match(name)
            if fused:
                layer = int(fused.group("prefix").rsplit(".", 1)[1])
                data = param.data
                for expert in range(data.shape[0]):
                    if fused.group("kind") == "down_proj":
                        yield mixtral_expert_name(layer, expert, "down_proj"), data[expert]
                    else:  # [gate; up] along dim 1, as the forward chunks it
                        half = data.shape[1] // 2
                        yield mixtral_expert_name(layer, expert, "gate_proj"), data[expert, :half]
                        yield mixtral_expert_name(layer, expert, "up_proj"), data[expert, half:]
                continue
            router = MOE_ROUTER.match(name)
            if router:
                yield mixtral_router_name(int(router.group("prefix").rsplit(".", 1)[1])), param.data
                continue
        yield name, param.data


def slot_checkpoint_name(key: str) -> str:
    """The checkpoint name of an MoE slot ('expert2/model.layers.3.mlp.up_proj.weight'): an expert's MLP
    weight, or (the MoE base expert's other tensors) the dense name, which the Mixtral shares."""
    expert, name = split_slot_key(key)
    location = mlp_location(name)
    return name if location is None else mixtral_expert_name(location[0], expert, location[1])
