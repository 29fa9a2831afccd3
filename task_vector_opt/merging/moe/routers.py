"""The MoE's routers: mergekit-moe's gate modes (random, hidden, cheap_embed), reimplemented.

Each rule returns float32 router vectors [layers, experts, hidden].
"""
from __future__ import annotations

import torch

from task_vector_opt.merging.moe.config import MoESettings


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

