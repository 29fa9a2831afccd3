"""Where each expert's tensors sit in the MoE, by name: the MLP weights, the slot keys and the searched groups.

Names only (no tensors), so the dry run plans the search without reading any weights.
"""
from __future__ import annotations

import re

from task_vector_opt.merging.grouping import group_names

MLP_PATTERN = re.compile(r"^(?:.*\.)?layers\.(?P<layer>\d+)\.mlp\.(?P<kind>gate_proj|up_proj|down_proj)\.weight$")


def mlp_location(name: str) -> tuple[int, str] | None:
    """(layer, gate_proj | up_proj | down_proj) for a dense MLP weight, None for anything else."""
    match = MLP_PATTERN.match(name)
    return (int(match.group("layer")), match.group("kind")) if match else None


def expert_label(index: int) -> str:
    return f"expert{index + 1}"


def moe_groups(dense_names: list[str], n_experts: int, base_index: int, mode: str) -> dict[str, str]:
    """{slot key: Optuna parameter name} for every tensor the MoE takes from an expert.

    The MoE base expert contributes every tensor (its groups as in a dense run); the other experts
    contribute only their MLP weights, so only groups holding MLP tensors are searched for them:
    a weight that could not change the MoE is never proposed.
    """
    mlp_names = [n for n in dense_names if mlp_location(n)]
    groups: dict[str, str] = {}
    for expert in range(n_experts):
        names = dense_names if expert == base_index else mlp_names
        for name, group in group_names(names, mode).items():
            groups[f"{expert_label(expert)}/{name}"] = f"{expert_label(expert)}/{group}"
    return groups


def split_slot_key(key: str) -> tuple[int, str]:
    label, name = key.split("/", 1)
    return int(label.removeprefix("expert")) - 1, name



def expert_weights(weights: dict[str, float], expert: int) -> dict[str, float]:
    """The weights of one expert, under the group names a dense run of that expert would use."""
    prefix = expert_label(expert) + "/"
    return {k.removeprefix(prefix): v for k, v in weights.items() if k.startswith(prefix)}
