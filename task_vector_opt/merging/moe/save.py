"""Saving an MoE run: each expert as its target's own checkpoint, and with --save_moe the MoE itself."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from task_vector_opt.files import atomic_directory, write_json_atomic, write_side_files
from task_vector_opt.merging.models import DTYPES, WeightFiles
from task_vector_opt.merging.moe.build import InMemoryMoE
from task_vector_opt.merging.moe.config import MergekitMoEConfig, MoEExpertEntry, MoESettings, expert_output_dir
from task_vector_opt.merging.moe.layout import expert_label, expert_weights, mlp_location

log = logging.getLogger(__name__)


def write_expert(target_dir: Path, live_tensors: dict[str, torch.Tensor], dtype: torch.dtype, out_dir: Path,
                 overwrite: bool, side_files: dict[str, Any]) -> Path:
    """Save one expert as the target's own checkpoint with its merged tensors substituted, shard by shard.

    ``live_tensors`` maps the target's parameter names to their merged values; every other tensor is the
    target's own (cast to the run's dtype).
    """
    from safetensors.torch import save_file
    from transformers import AutoTokenizer

    files = WeightFiles(target_dir)
    by_file: dict[str, list[str]] = {}
    for key, file in files.weight_map.items():
        by_file.setdefault(file, []).append(key)
    live_by_key = {key: tensor for name, tensor in live_tensors.items() if (key := files.key_for(name)) is not None}
    total = 0
    with atomic_directory(out_dir, overwrite) as staging:
        for file, keys in by_file.items():
            shard = {}
            for key in keys:
                source = live_by_key.get(key)
                tensor = source if source is not None else files.get(key)
                shard[key] = tensor.detach().to("cpu", dtype).contiguous().clone()
                total += shard[key].numel() * shard[key].element_size()
            save_file(shard, str(staging / file), metadata={"format": "pt"})
            del shard
        files.close()
        if len(by_file) > 1:
            write_json_atomic(staging / "model.safetensors.index.json",
                              {"metadata": {"total_size": total}, "weight_map": files.weight_map})
        model_config = json.loads((target_dir / "config.json").read_text(encoding="utf-8"))
        model_config["dtype"] = str(dtype).removeprefix("torch.")
        model_config.pop("torch_dtype", None)
        write_json_atomic(staging / "config.json", model_config)
        if (target_dir / "generation_config.json").is_file():
            write_json_atomic(staging / "generation_config.json",
                              json.loads((target_dir / "generation_config.json").read_text(encoding="utf-8")))
        AutoTokenizer.from_pretrained(target_dir).save_pretrained(staging)
        write_side_files(staging, side_files)
    return out_dir


def expert_live_tensors(moe: InMemoryMoE, expert: int) -> dict[str, torch.Tensor]:
    """The dense parameter names of expert ``expert`` whose values live in the MoE."""
    if expert == moe.base_index:
        return {name: param for name, param in moe.dense.named_parameters()}
    names = [n for n, _ in moe.dense.named_parameters() if mlp_location(n)]
    return {name: moe.live(f"{expert_label(expert)}/{name}") for name in names}


def mergekit_yaml(settings: MoESettings, expert_paths: list[Path], dtype: str) -> str:
    """mergekit-moe's config for this MoE, through the same schema --moe_config is read with."""
    import yaml

    config = MergekitMoEConfig(
        base_model=str(expert_paths[settings.base_index]), gate_mode=settings.gate_mode, dtype=dtype,
        experts_per_token=settings.experts_per_token,
        experts=[MoEExpertEntry(source_model=str(path), positive_prompts=p.positive or None,
                                negative_prompts=p.negative or None)
                 for path, p in zip(expert_paths, settings.prompts)])
    note = ("# mergekit-moe config that rebuilds this MoE from the saved experts: mergekit-moe THIS_FILE OUT_DIR\n"
            + ("# gate_mode random: mergekit draws its own random routers; this MoE's routers came from "
               f"--gate_seed {settings.gate_seed}\n" if settings.gate_mode == "random" else ""))
    return note + yaml.safe_dump(config.model_dump(exclude_none=True), allow_unicode=True, sort_keys=False)


def save_outputs(config, base_recipe: dict[str, Any], moe: InMemoryMoE, expert_dirs: list[Path], tokenizer,
                 report_files: dict | None = None) -> Path:
    """Each expert's best merge (already applied to ``moe``) to <output_dir>-N; with --save_moe the MoE itself to
    --output_dir. ``config`` is the run config; ``base_recipe`` the run's merge_recipe.json, which each expert's
    recipe narrows to its own weights.

    ``report_files`` (report.html, plots, card) go beside the MoE, or beside expert 1 without --save_moe."""
    report_files = dict(report_files or {})
    settings: MoESettings = config.extra["moe"]
    dtype = DTYPES[config.dtype]
    best_weights = base_recipe["weights"]
    paths = []
    for expert in range(settings.n_experts):
        path = expert_output_dir(config.output_dir, expert)
        # this expert's weights under a dense run's names, and the densities every expert shares
        weights = {**expert_weights(best_weights, expert),
                   **{k: v for k, v in best_weights.items() if k.startswith("density/")}}
        merge = base_recipe["formula"]
        note = (f"MoE base expert: every tensor is {merge}" if expert == settings.base_index else
                f"only the MLP weights enter the MoE; they are {merge}, every other tensor is the target's own")
        side = {"merge_recipe.json": {**base_recipe, "expert": expert + 1, "target": config.targets[expert].name_or_path,
                                      "note": note, "weights": weights}}
        if expert == 0 and not settings.save_moe:
            side.update(report_files)
        write_expert(expert_dirs[expert], expert_live_tensors(moe, expert), dtype, path,
                     config.overwrite_output_dir, side)
        paths.append(path)
        log.info("saved expert %d to %s", expert + 1, path)
    if settings.save_moe:
        with atomic_directory(config.output_dir, config.overwrite_output_dir) as staging:
            moe.model.save_pretrained(staging, max_shard_size="5GB")
            tokenizer.save_pretrained(staging)
            write_json_atomic(staging / "merge_recipe.json", {**base_recipe, "moe": {
                "experts": [str(p) for p in paths], "base_expert": settings.base_index + 1,
                "gate_mode": settings.gate_mode, "gate_seed": settings.gate_seed,
                "experts_per_token": settings.experts_per_token}})
            (staging / "mergekit_moe.yaml").write_text(mergekit_yaml(settings, [p.resolve() for p in paths],
                                                                     config.dtype), encoding="utf-8")
            write_side_files(staging, report_files)
        log.info("saved the MoE to %s", config.output_dir)
        return config.output_dir
    return paths[0]


def summary_lines(config) -> str:
    settings: MoESettings = config.extra["moe"]
    lines = ["experts saved to : " + ", ".join(str(expert_output_dir(config.output_dir, i))
                                                 for i in range(settings.n_experts))]
    if settings.save_moe:
        lines.append(f"MoE saved to     : {config.output_dir} (mergekit_moe.yaml rebuilds it from the experts)")
    return "\n".join(lines)

