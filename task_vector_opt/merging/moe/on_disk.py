"""The original's path, kept as a reference: compose a Mixtral checkpoint on disk from saved expert models.

Same rules as the in-memory MoE (and mergekit-moe): everything but the MLPs from the MoE base expert,
expert k's gate/up/down projections as ``block_sparse_moe.experts.k.w1/w3/w2``, one router per layer.
The tests compare the in-memory MoE against it tensor for tensor; the benchmark times it.
"""
from __future__ import annotations

from pathlib import Path

import torch

from task_vector_opt.merging.models import WeightFiles
from task_vector_opt.merging.moe.build import mixtral_config
from task_vector_opt.merging.moe.layout import mlp_location

ORIGINAL_NAMES = {"gate_proj": "w1", "down_proj": "w2", "up_proj": "w3"}


def compose_moe_on_disk(expert_dirs: list[Path], base_index: int, router_vectors: torch.Tensor,
                        experts_per_token: int, out_dir: Path, dtype: torch.dtype) -> Path:
    """Write a MixtralForCausalLM checkpoint (config, safetensors, tokenizer) to ``out_dir``."""
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoTokenizer

    out_dir.mkdir(parents=True, exist_ok=True)
    files = [WeightFiles(d) for d in expert_dirs]
    tensors: dict[str, torch.Tensor] = {}
    base = files[base_index]
    for key in base.keys():
        name = key if key.startswith(("model.", "lm_head.")) else f"model.{key}"
        location = mlp_location(name)
        if location is None:
            tensors[name] = base.get(key).to(dtype)
            continue
        layer, kind = location
        for expert, handle in enumerate(files):
            original = f"model.layers.{layer}.block_sparse_moe.experts.{expert}.{ORIGINAL_NAMES[kind]}.weight"
            tensors[original] = handle.get(key).to(dtype)
    for layer, vectors in enumerate(router_vectors):
        tensors[f"model.layers.{layer}.block_sparse_moe.gate.weight"] = vectors.to(dtype).contiguous()
    for handle in files:
        handle.close()
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out_dir / "model.safetensors"),
              metadata={"format": "pt"})
    config = mixtral_config(AutoConfig.from_pretrained(expert_dirs[base_index]), len(expert_dirs),
                            experts_per_token, dtype)
    config.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(expert_dirs[base_index]).save_pretrained(out_dir)
    generation = expert_dirs[base_index] / "generation_config.json"
    if generation.is_file():
        (out_dir / "generation_config.json").write_text(generation.read_text(encoding="utf-8"), encoding="utf-8")
    return out_dir


def checkpoint_bytes(directory: Path) -> int:
    return sum(f.stat().st_size for f in directory.rglob("*") if f.is_file())
