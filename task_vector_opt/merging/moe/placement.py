"""Where the MoE's originals and the task vector live: the GPU when they fit, else pinned host memory."""
from __future__ import annotations

import logging

import torch

from task_vector_opt.merging.merger import HOST_RESERVE, gpu_share

log = logging.getLogger(__name__)


def choose_moe_placement(config, moe_bytes: int, origin_bytes: int, vector_bytes: int) -> tuple[str, str]:
    """(origin device, task vector device). See docs/en/hardware.md, 'MoE memory placement'.

    auto on CUDA: everything on the GPU when it fits beside the MoE; else the task vector on the GPU (one
    model's size, shared by every expert) and the targets' originals in pinned host memory; else both on
    the host.
    """
    if config.vector_placement == "cpu" or not config.device.startswith("cuda"):
        return ("cpu", "cpu") if config.vector_placement == "cpu" else (config.device, config.device)
    if config.vector_placement == "device":
        return config.device, config.device
    free, total = torch.cuda.mem_get_info(torch.device(config.device))
    free -= gpu_share(config.evaluator) * total  # --generation_backend vllm: the engine's share, taken later
    placement = auto_placement(free, moe_bytes, origin_bytes, vector_bytes, config.device)
    log.info("MoE placement auto: %.1f GiB free beside the MoE; originals %.1f GiB -> %s, task vector %.1f GiB -> %s",
             free / 2**30, origin_bytes / 2**30, placement[0], vector_bytes / 2**30, placement[1])
    return placement


def auto_placement(free: int, moe_bytes: int, origin_bytes: int, vector_bytes: int, device: str) -> tuple[str, str]:
    """The 'auto' rule, given the GPU memory left free once the MoE is built."""
    reserve = HOST_RESERVE * moe_bytes / 2  # room for activations and the KV cache
    if free > origin_bytes + vector_bytes + reserve:
        return device, device
    if free > vector_bytes + reserve:
        return "cpu", device
    return "cpu", "cpu"

