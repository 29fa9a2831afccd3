"""The in-memory Mixtral-style MoE, built once from the experts' targets.

The MoE takes its embeddings, attention, norms and lm_head from the MoE base expert and one MLP per expert,
with a router per layer (Mixtral layout as the installed transformers defines it: each layer's experts are
two 3-D parameters, ``experts.gate_up_proj`` [E, 2I, H] and ``experts.down_proj`` [E, H, I]).

Nothing is copied twice: the MoE base expert stays loaded as a dense model whose parameters *are* the
MoE's (shared tensors by identity, its MLP weights as views of its expert slices), so the ``hidden``
routers can run it without a copy.
"""
from __future__ import annotations

from pathlib import Path

import torch

from task_vector_opt.merging.models import WeightFiles, require_finite
from task_vector_opt.merging.moe.layout import mlp_location, split_slot_key


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


def _expert_key(name: str, files: WeightFiles) -> str:
    key = files.key_for(name)
    if key is None:
        raise KeyError(f"{name} is missing from {files.directory}")
    return key


def _set_parameter(root: torch.nn.Module, name: str, param: torch.nn.Parameter) -> None:
    module_path, leaf = name.rsplit(".", 1)
    setattr(root.get_submodule(module_path), leaf, param)


class InMemoryMoE:
    """A MixtralForCausalLM that shares the MoE base expert's dense parameters, plus views of each expert slot."""

    def __init__(self, dense, expert_dirs: list[Path], base_index: int, experts_per_token: int,
                 expert_flags: list[str] | None = None):
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
        flags = expert_flags or [None] * len(expert_dirs)  # named in the error when a target's file lies
        files = [None if i == base_index else WeightFiles(d, flags[i]) for i, d in enumerate(expert_dirs)]
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
                            key = _expert_key(name, files[expert])
                            view.copy_(files[expert].get(key))
                            # in the run's dtype, as the merger keeps it: a value that overflows it counts too
                            require_finite(view, key, files[expert].flag, files[expert].directory,
                                           f" (loaded as {str(dtype).removeprefix('torch.')})")
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

