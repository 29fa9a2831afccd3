"""The in-memory Mixtral-style MoE: built once from the experts' targets, rewritten in place each trial.

Expert i is target_i + w_i * (tuned - base). The MoE takes its embeddings, attention, norms and
lm_head from the MoE base expert and one MLP per expert, with a router per layer (Mixtral layout as
the installed transformers defines it: each layer's experts are two 3-D parameters,
``experts.gate_up_proj`` [E, 2I, H] and ``experts.down_proj`` [E, H, I]).

Nothing is copied twice: the MoE base expert stays loaded as a dense model whose parameters *are*
the MoE's (shared tensors by identity, its MLP weights as views of its expert slices), so the
``hidden`` routers can run it without a copy. A trial writes origin + w * delta into only the
tensors whose weight changed (the Merger's exact rule), then recomputes the routers if they depend
on a tensor that changed. A trial writes nothing to disk.
"""
from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from task_vector_opt.engine import HOST_RESERVE, RunResult, Workspace, recipe
from task_vector_opt.merging.grouping import group_names, ordered_groups
from task_vector_opt.files import atomic_directory, write_json_atomic, write_side_files
from task_vector_opt.merging.models import DTYPES, WeightFiles, load_model, resolve, resolve_config
from task_vector_opt.merging.moe.config import MoESettings, expert_output_dir
from task_vector_opt.merging.task_vector import VectorEntry, build_task_vector

log = logging.getLogger(__name__)

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


def mixtral_config(dense_config, n_experts: int, experts_per_token: int, dtype: torch.dtype):
    """A MixtralConfig with the dense model's shapes (sliding window off, as mergekit-moe writes it)."""
    from transformers import MixtralConfig

    fields = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "head_dim", "hidden_act", "max_position_embeddings", "initializer_range",
              "rms_norm_eps", "pad_token_id", "bos_token_id", "eos_token_id", "tie_word_embeddings",
              "attention_dropout", "rope_parameters")
    values = {f: getattr(dense_config, f) for f in fields if getattr(dense_config, f, None) is not None}
    config = MixtralConfig(**values, sliding_window=None, num_local_experts=n_experts,
                           num_experts_per_tok=experts_per_token)
    config.architectures = ["MixtralForCausalLM"]
    config.dtype = dtype
    return config


def _file_key(name: str, files: WeightFiles) -> str:
    for key in (name, name.removeprefix("model."), f"model.{name}"):
        if key in files:
            return key
    raise KeyError(f"{name} is missing from {files.directory}")


def _set_parameter(root: torch.nn.Module, name: str, param: torch.nn.Parameter) -> None:
    module_path, leaf = name.rsplit(".", 1)
    setattr(root.get_submodule(module_path), leaf, param)


class InMemoryMoE:
    """A MixtralForCausalLM that shares the MoE base expert's dense parameters, plus views of each expert slot."""

    def __init__(self, dense, expert_dirs: list[Path], base_index: int, experts_per_token: int):
        from transformers import MixtralForCausalLM

        self.dense = dense
        self.n_experts = len(expert_dirs)
        self.base_index = base_index
        params = dict(dense.named_parameters())
        device, dtype = params["model.embed_tokens.weight"].device, params["model.embed_tokens.weight"].dtype
        config = mixtral_config(dense.config, self.n_experts, experts_per_token, dtype)
        with torch.device("meta"):
            moe = MixtralForCausalLM(config)
        for name, param in params.items():  # shared tensors: the very same Parameter objects (ties survive)
            if mlp_location(name) is None:
                _set_parameter(moe, name, param)
        if config.tie_word_embeddings:
            moe.lm_head.weight = moe.model.embed_tokens.weight
        inter, hidden = config.intermediate_size, config.hidden_size
        files = [None if i == base_index else WeightFiles(d) for i, d in enumerate(expert_dirs)]
        try:
            for index, layer in enumerate(moe.model.layers):
                experts = layer.mlp.experts
                experts.gate_up_proj = torch.nn.Parameter(
                    torch.empty(self.n_experts, 2 * inter, hidden, device=device, dtype=dtype), requires_grad=False)
                experts.down_proj = torch.nn.Parameter(
                    torch.empty(self.n_experts, hidden, inter, device=device, dtype=dtype), requires_grad=False)
                layer.mlp.gate.weight = torch.nn.Parameter(
                    torch.zeros(self.n_experts, hidden, device=device, dtype=dtype), requires_grad=False)
                for expert in range(self.n_experts):
                    for kind in ("gate_proj", "up_proj", "down_proj"):
                        name = f"model.layers.{index}.mlp.{kind}.weight"
                        view = self.slot(moe, expert, index, kind)
                        if expert == base_index:  # the dense MLP moves into its slot and then reads from it
                            view.copy_(params[name].data)
                            _set_parameter(dense, name, torch.nn.Parameter(view, requires_grad=False))
                        else:
                            view.copy_(files[expert].get(_file_key(name, files[expert])))
        finally:
            for handle in files:
                if handle is not None:
                    handle.close()
        with torch.device(device):  # buffers are computed at construction; build them on the real device
            moe.model.rotary_emb = type(moe.model.rotary_emb)(config=config)
        leftovers = [n for n, t in [*moe.named_parameters(), *moe.named_buffers()] if t.is_meta]
        if leftovers:
            raise RuntimeError(f"MoE tensors left unset: {leftovers[:3]}")
        moe.generation_config = dense.generation_config
        moe.eval()
        moe.requires_grad_(False)
        self.model = moe

    @staticmethod
    def slot(moe, expert: int, layer: int, kind: str) -> torch.Tensor:
        """The view of expert ``expert``'s dense MLP weight ``kind`` inside the MoE's fused expert tensors."""
        experts = moe.model.layers[layer].mlp.experts
        inter = experts.down_proj.shape[-1]
        if kind == "gate_proj":  # Mixtral's gate_up_proj is [gate; up] along dim 1 (the forward chunks it in two)
            return experts.gate_up_proj.data[expert, :inter]
        if kind == "up_proj":
            return experts.gate_up_proj.data[expert, inter:]
        return experts.down_proj.data[expert]

    def live(self, key: str) -> torch.Tensor:
        """The live tensor behind a slot key ('expert2/model.layers.0.mlp.up_proj.weight')."""
        expert, name = split_slot_key(key)
        location = mlp_location(name)
        if location is not None:
            return self.slot(self.model, expert, *location)
        if expert != self.base_index:
            raise KeyError(f"{key}: only the MoE base expert contributes tensors outside the MLPs")
        return self.dense.get_parameter(name).data

    def set_routers(self, vectors: torch.Tensor) -> None:
        """vectors: [layers, experts, hidden] -> each layer's router weight, in the model's dtype."""
        for layer, gate_vectors in zip(self.model.model.layers, vectors):
            weight = layer.mlp.gate.weight
            weight.data.copy_(gate_vectors.to(device=weight.device, dtype=weight.dtype))


# ---------------------------------------------------------------------------------------------------------------
# Routers (mergekit-moe's definitions, reimplemented). Each returns float32 [layers, experts, hidden].

def random_router_vectors(n_layers: int, n_experts: int, hidden: int, seed: int) -> torch.Tensor:
    """Standard normal entries from a seeded CPU generator: the same seed gives the same routers anywhere."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn((n_layers, n_experts, hidden), generator=generator)


def _normalized(vectors: torch.Tensor) -> torch.Tensor:
    return vectors / vectors.norm(p=2, dim=-1, keepdim=True).clamp(min=1e-8)


def _prompt_ids(tokenizer, prompt: str) -> torch.Tensor:
    # mergekit-moe's tokenization: the BOS text prepended, no other special tokens
    return tokenizer((tokenizer.bos_token or "") + prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]


@torch.no_grad()
def _mean_layer_inputs(dense, tokenizer, prompts: list[str]) -> torch.Tensor:
    """Mean over prompts of the last token's hidden state at each decoder layer's input: [layers, hidden]."""
    device = dense.get_input_embeddings().weight.device
    total = None
    for prompt in prompts:
        out = dense(input_ids=_prompt_ids(tokenizer, prompt).to(device), output_hidden_states=True,
                    use_cache=False, return_dict=True)
        states = torch.stack([h[0, -1].float() for h in out.hidden_states[:-1]])  # hidden_states[l] enters layer l
        total = states if total is None else total + states
    return total / len(prompts)


def hidden_router_vectors(dense, tokenizer, prompts) -> torch.Tensor:
    """'hidden': per layer, mean input hidden state of the positive prompts minus that of the negative ones,
    normalized, computed on the MoE base expert as it is now."""
    per_expert = []
    for expert in prompts:
        vectors = _mean_layer_inputs(dense, tokenizer, expert.positive)
        if expert.negative:
            vectors = vectors - _mean_layer_inputs(dense, tokenizer, expert.negative)
        per_expert.append(_normalized(vectors))
    return torch.stack(per_expert, dim=1)


@torch.no_grad()
def _embedding_direction(embed: torch.Tensor, tokenizer, prompts: list[str]) -> torch.Tensor:
    ids = torch.cat([_prompt_ids(tokenizer, p)[0] for p in prompts]).to(embed.device)
    return _normalized(embed[ids].float().sum(dim=0))


def cheap_embed_router_vectors(embed: torch.Tensor, tokenizer, prompts, n_layers: int) -> torch.Tensor:
    """'cheap_embed': the normalized sum of the prompts' token embeddings (minus the negatives'), every layer alike."""
    per_expert = []
    for expert in prompts:
        vector = _embedding_direction(embed, tokenizer, expert.positive)
        if expert.negative:
            vector = vector - _embedding_direction(embed, tokenizer, expert.negative)
        per_expert.append(_normalized(vector).cpu())
    return torch.stack(per_expert).unsqueeze(0).expand(n_layers, -1, -1).contiguous()


def router_vectors(settings: MoESettings, dense, tokenizer) -> torch.Tensor:
    config = dense.config
    if settings.gate_mode == "random":
        return random_router_vectors(config.num_hidden_layers, settings.n_experts, config.hidden_size,
                                     settings.gate_seed)
    if settings.gate_mode == "hidden":
        return hidden_router_vectors(dense, tokenizer, settings.prompts)
    return cheap_embed_router_vectors(dense.get_input_embeddings().weight, tokenizer, settings.prompts,
                                      config.num_hidden_layers)


# ---------------------------------------------------------------------------------------------------------------
# The per-trial writer


@dataclass
class Slot:
    key: str  # "expert2/model.layers.3.mlp.up_proj.weight"
    group: str  # the Optuna parameter that weighs it
    live: torch.Tensor  # a view into the MoE
    origin: torch.Tensor  # the target's own values
    entry: VectorEntry  # shared by every expert: the task vector is built once


class MoEMerger:
    """Writes origin + w * delta into the MoE's slices (the Merger's exact rule), then refreshes the routers."""

    def __init__(self, moe: InMemoryMoE, slots: list[Slot], refresh_routers: Callable[[], None] | None,
                 router_inputs: set[str]):
        self.moe = moe
        self.slots = slots
        self.refresh_routers = refresh_routers
        self.router_inputs = router_inputs  # slot keys whose change moves the routers
        self.current = {slot.key: 0.0 for slot in slots}  # the live MoE starts from the unmodified targets
        self.router_refreshes = 0
        self.routers_stale = False  # a router input changed and the routers were not recomputed yet

    @property
    def groups(self) -> dict[str, str]:
        return {slot.key: slot.group for slot in self.slots}

    @torch.no_grad()
    def apply(self, weights: dict[str, float]) -> int:
        """Rewrite the tensors whose weight changed; return how many were rewritten."""
        missing = {slot.group for slot in self.slots} - weights.keys()
        if missing:
            raise KeyError(f"no weight given for group(s): {', '.join(sorted(missing))}")
        written: list[str] = []
        for slot in self.slots:
            w = float(weights[slot.group])
            if w == self.current[slot.key]:
                continue
            delta = slot.entry.delta
            if w == 0.0:  # restore exactly (origin + 0*delta would turn -0.0 into +0.0)
                slot.live.copy_(slot.origin, non_blocking=True)
            elif slot.origin.device == slot.live.device and delta.device == slot.live.device:
                torch.add(slot.origin, delta, alpha=w, out=slot.live)
            else:  # host-resident copies: stream to the device, then the same fused add
                slot.live.copy_(slot.origin, non_blocking=True)
                slot.live.add_(delta.to(slot.live.device, non_blocking=True), alpha=w)
            self.current[slot.key] = w
            written.append(slot.key)
            if slot.key in self.router_inputs:  # stays set if a later write fails: the next apply refreshes
                self.routers_stale = True
        if self.refresh_routers is not None and self.routers_stale:
            self.refresh_routers()
            self.router_refreshes += 1
            self.routers_stale = False
        return len(written)

    def stored_bytes(self) -> int:
        origins = sum(s.origin.numel() * s.origin.element_size() for s in self.slots)
        deltas = {id(s.entry.delta): s.entry.delta for s in self.slots}
        return origins + sum(d.numel() * d.element_size() for d in deltas.values())


def _live_view(moe: InMemoryMoE, key: str, entry: VectorEntry) -> torch.Tensor:
    live = moe.live(key)
    return live if entry.rows is None else live[:entry.rows]


def make_merger(moe: InMemoryMoE, vector: dict[str, VectorEntry], groups: dict[str, str], origin_device: str,
                settings: MoESettings, tokenizer) -> MoEMerger:
    """Keep each slot's original values on ``origin_device`` and wire the router refresh for the gate mode."""
    pin = torch.device(origin_device).type == "cpu" and moe.model.device.type == "cuda"
    if pin:  # page-locked memory lets the per-trial host-to-device copies run asynchronously
        for entry in vector.values():
            if entry.delta.device.type == "cpu":
                entry.delta = entry.delta.pin_memory()
    slots = []
    for key, group in groups.items():
        _, name = split_slot_key(key)
        if name not in vector:
            continue  # --skip_embed leaves the embeddings out of the task vector
        live = _live_view(moe, key, vector[name])
        origin = live.detach().to(origin_device, copy=True)
        slots.append(Slot(key, group, live, origin.pin_memory() if pin else origin, vector[name]))
    base = expert_label(moe.base_index)
    inputs: set[str] = set()
    if settings.gate_mode == "hidden":  # the base expert's every tensor shapes the hidden states
        inputs = {s.key for s in slots if s.key.startswith(base + "/")}
    elif settings.gate_mode == "cheap_embed":  # only its input embedding matters
        embed = moe.dense.get_input_embeddings().weight
        inputs = {f"{base}/{n}" for n, p in moe.dense.named_parameters() if p is embed} & {s.key for s in slots}

    def refresh() -> None:
        moe.set_routers(router_vectors(settings, moe.dense, tokenizer))

    return MoEMerger(moe, slots, refresh if inputs else None, inputs)


# ---------------------------------------------------------------------------------------------------------------
# Placement, preparation, saving


def choose_moe_placement(config, moe_bytes: int, origin_bytes: int, vector_bytes: int) -> tuple[str, str]:
    """(origin device, task vector device). See README, 'MoE memory placement'.

    auto on CUDA: everything on the GPU when it fits beside the MoE; else the task vector on the GPU (one
    model's size, shared by every expert) and the targets' originals in pinned host memory; else both on
    the host.
    """
    if config.vector_placement == "cpu" or not config.device.startswith("cuda"):
        return ("cpu", "cpu") if config.vector_placement == "cpu" else (config.device, config.device)
    if config.vector_placement == "device":
        return config.device, config.device
    free, _total = torch.cuda.mem_get_info(torch.device(config.device))
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


@dataclass
class MoEWorkspace(Workspace):
    moe: InMemoryMoE | None = None
    expert_dirs: list[Path] | None = None


def prepare(config) -> MoEWorkspace:
    """Load the MoE base expert, build the MoE around it, the task vector once, and the per-trial writer."""
    settings: MoESettings = config.extra["moe"]
    started = time.perf_counter()
    expert_dirs = [resolve(t, config.cache_dir, config.allow_pickle) for t in config.targets]
    base_dir = resolve(config.base, config.cache_dir, config.allow_pickle)
    tuned_dir = resolve(config.tuned, config.cache_dir, config.allow_pickle)
    dense, tokenizer = load_model(expert_dirs[settings.base_index], config.dtype, config.device,
                                  config.trust_remote_code, config.allow_pickle)
    moe = InMemoryMoE(dense, expert_dirs, settings.base_index, settings.experts_per_token)
    itemsize = DTYPES[config.dtype].itemsize
    dense_names = [n for n, _ in dense.named_parameters()]
    dense_bytes = sum(p.numel() for p in dense.parameters()) * itemsize
    mlp_bytes = sum(p.numel() for n, p in dense.named_parameters() if mlp_location(n)) * itemsize
    moe_bytes = sum(p.numel() for p in moe.model.parameters()) * itemsize
    origin_bytes = dense_bytes + (settings.n_experts - 1) * mlp_bytes
    origin_device, vector_device = choose_moe_placement(config, moe_bytes, origin_bytes, dense_bytes)
    vector = build_task_vector(dense, base_dir, tuned_dir, dtype=DTYPES[config.dtype], store_device=vector_device,
                               skip_embed=config.skip_embed)
    groups = moe_groups(dense_names, settings.n_experts, settings.base_index, config.optimize_mode)
    merger = make_merger(moe, vector, groups, origin_device, settings, tokenizer)
    moe.set_routers(router_vectors(settings, dense, tokenizer))
    group_order = ordered_groups(merger.groups)
    log.info("MoE of %d experts built in %.1fs: %d tensors, %d weights (%s mode), gate %s, originals on %s, "
             "task vector on %s (%.2f GiB)", settings.n_experts, time.perf_counter() - started, len(merger.slots),
             len(group_order), config.optimize_mode, settings.gate_mode, origin_device, vector_device,
             merger.stored_bytes() / 2**30)
    workspace = MoEWorkspace(moe.model, tokenizer, merger, group_order, len(merger.slots), moe=moe,
                             expert_dirs=expert_dirs)
    workspace.save = lambda cfg, result, report_files: save_outputs(cfg, result, workspace, report_files)
    return workspace


def expert_weights(weights: dict[str, float], expert: int) -> dict[str, float]:
    prefix = expert_label(expert) + "/"
    return {k.removeprefix(prefix): v for k, v in weights.items() if k.startswith(prefix)}


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
    live_by_key = {}
    for name, tensor in live_tensors.items():
        for key in (name, name.removeprefix("model."), f"model.{name}"):
            if key in files:
                live_by_key[key] = tensor
                break
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


def expert_live_tensors(ws: MoEWorkspace, expert: int) -> dict[str, torch.Tensor]:
    """The dense parameter names of expert ``expert`` whose values live in the MoE."""
    moe = ws.moe
    if expert == moe.base_index:
        return {name: param for name, param in moe.dense.named_parameters()}
    names = [n for n, _ in moe.dense.named_parameters() if mlp_location(n)]
    return {name: moe.live(f"{expert_label(expert)}/{name}") for name in names}


def mergekit_yaml(settings: MoESettings, expert_paths: list[Path], dtype: str) -> str:
    import yaml

    config = {
        "base_model": str(expert_paths[settings.base_index]),
        "gate_mode": settings.gate_mode,
        "dtype": dtype,
        "experts_per_token": settings.experts_per_token,
        "experts": [{"source_model": str(path),
                     **({"positive_prompts": p.positive} if p.positive else {}),
                     **({"negative_prompts": p.negative} if p.negative else {})}
                    for path, p in zip(expert_paths, settings.prompts)],
    }
    note = ("# mergekit-moe config that rebuilds this MoE from the saved experts: mergekit-moe THIS_FILE OUT_DIR\n"
            + ("# gate_mode random: mergekit draws its own random routers; this MoE's routers came from "
               f"--gate_seed {settings.gate_seed}\n" if settings.gate_mode == "random" else ""))
    return note + yaml.safe_dump(config, allow_unicode=True, sort_keys=False)


def save_outputs(config, result: RunResult, ws: MoEWorkspace, report_files: dict | None = None) -> Path:
    """Each expert's best merge to <output_dir>-N; with --save_moe the MoE itself to --output_dir.

    ``report_files`` (report.html, plots, card) go beside the MoE, or beside expert 1 without --save_moe."""
    report_files = dict(report_files or {})
    settings: MoESettings = config.extra["moe"]
    dtype = DTYPES[config.dtype]
    base_recipe = recipe(config, result, ws.n_tensors)
    paths = []
    for expert in range(settings.n_experts):
        path = expert_output_dir(config.output_dir, expert)
        weights = expert_weights(result.best_weights, expert)
        note = ("MoE base expert: every tensor is target + w * (tuned - base)" if expert == settings.base_index else
                "only the MLP weights enter the MoE; they are target + w * (tuned - base), every other tensor is "
                "the target's own")
        side = {"merge_recipe.json": {**base_recipe, "expert": expert + 1, "target": config.targets[expert].spec,
                                      "note": note, "weights": weights}}
        if expert == 0 and not settings.save_moe:
            side.update(report_files)
        write_expert(ws.expert_dirs[expert], expert_live_tensors(ws, expert), dtype, path,
                     config.overwrite_output_dir, side)
        paths.append(path)
        log.info("saved expert %d to %s", expert + 1, path)
    if settings.save_moe:
        with atomic_directory(config.output_dir, config.overwrite_output_dir) as staging:
            ws.model.save_pretrained(staging, max_shard_size="5GB")
            ws.tokenizer.save_pretrained(staging)
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


def summary_lines(config, result: RunResult) -> str:
    settings: MoESettings = config.extra["moe"]
    lines = ["experts saved to : " + ", ".join(str(expert_output_dir(config.output_dir, i))
                                                 for i in range(settings.n_experts))]
    if settings.save_moe:
        lines.append(f"MoE saved to     : {config.output_dir} (mergekit_moe.yaml rebuilds it from the experts)")
    return "\n".join(lines)


def dry_run_plan(config, evaluator_line: str) -> str:
    """The MoE plan from config files only: weights per expert, tensors, memory; no weights are read."""
    from transformers import AutoConfig, AutoModelForCausalLM

    settings: MoESettings = config.extra["moe"]
    config_dirs = [resolve_config(source, config.cache_dir)  # config.json alone; checks every model can be reached
                   for source in (*config.targets, config.base, config.tuned)]
    model_config = AutoConfig.from_pretrained(config_dirs[settings.base_index],
                                              trust_remote_code=config.trust_remote_code)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(model_config, trust_remote_code=config.trust_remote_code)
    params = dict(skeleton.named_parameters())
    names = list(params)
    if config.skip_embed:
        names = [n for n in names if n not in embedding_names(skeleton)]
    groups = moe_groups(names, settings.n_experts, settings.base_index, config.optimize_mode)
    per_expert = {expert_label(i): len(ordered_groups({k: g for k, g in groups.items()
                                                       if k.startswith(expert_label(i) + "/")}))
                  for i in range(settings.n_experts)}
    itemsize = DTYPES[config.dtype].itemsize
    dense = sum(p.numel() for p in params.values()) * itemsize
    mlp = sum(p.numel() for n, p in params.items() if mlp_location(n)) * itemsize
    moe = dense + (settings.n_experts - 1) * mlp
    gib = lambda b: round(b / 2**30, 2)  # noqa: E731
    return json.dumps({
        "study": config.study_name, "run_dir": str(config.run_dir), "experts": settings.n_experts,
        "moe_base_expert": settings.base_index + 1, "gate_mode": settings.gate_mode,
        "experts_per_token": settings.experts_per_token, "dtype": config.dtype, "optimize_mode": config.optimize_mode,
        "weights": len(ordered_groups(groups)), "weights_per_expert": per_expert, "tensors": len(groups),
        "sampler": config.sampler, "n_trials": config.n_trials,
        "memory_estimate_gib": {"moe (live)": gib(moe), "targets' originals": gib(moe), "task vector": gib(dense)},
        "evaluator": evaluator_line,
        "outputs": [str(expert_output_dir(config.output_dir, i)) for i in range(settings.n_experts)]
                   + ([str(config.output_dir)] if settings.save_moe else []),
    }, indent=2)


def embedding_names(model) -> set[str]:
    from task_vector_opt.merging.task_vector import embedding_parameter_names

    return embedding_parameter_names(model)
