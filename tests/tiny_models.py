"""Tiny random decoder-only models of several architectures, built and saved in milliseconds."""
from __future__ import annotations

from pathlib import Path

import torch

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "A merge adds a task vector to a target model.",
    "今日は良い天気です。明日は雨が降るでしょう。",
    "日本語の質問に答えてください。答えは次のうちどれですか。",
    "### 指示：\n### 入力：\n### 応答：",
    "0 1 2 3 4 5 6 7 8 9 yes no true false",
]


def make_tokenizer(vocab_size: int = 256):
    """A byte-level BPE tokenizer trained offline on a small corpus (English and Japanese)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE(unk_token=None))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    core.train_from_iterator(CORPUS * 4, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    tokenizer.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
                               "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    return tokenizer


def make_config(arch: str, vocab_size: int, tied: bool = False, layers: int = 2, hidden: int = 32):
    from transformers import Gemma2Config, LlamaConfig, MistralConfig, Qwen2Config

    common = dict(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                  tie_word_embeddings=tied)
    if arch == "mistral":
        return MistralConfig(**common, sliding_window=None)
    if arch == "llama":
        return LlamaConfig(**common)
    if arch == "qwen2":
        return Qwen2Config(**common)
    if arch == "gemma2":
        return Gemma2Config(**common, head_dim=hidden // 4)
    raise ValueError(arch)


def make_model(arch: str = "llama", vocab_size: int = 256, tied: bool = False, seed: int = 0, layers: int = 2,
               hidden: int = 32, dtype: torch.dtype = torch.float32):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(make_config(arch, vocab_size, tied, layers, hidden), dtype=dtype)
    with torch.no_grad():  # random norms too, so every tensor carries a non-trivial delta
        for param in model.parameters():
            param.normal_(0.0, 0.05)
    return model.eval()


def save(model, tokenizer, directory: Path) -> Path:
    model.save_pretrained(directory)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    return directory


def make_trio(root: Path, arch: str = "llama", tied: bool = False, vocab_size: int = 256, target_vocab: int | None = None,
              layers: int = 2, hidden: int = 32, tokenizer=None) -> dict[str, Path]:
    """Save base, tuned (= base + noise) and target (= base + other noise) models under ``root``."""
    tokenizer = tokenizer if tokenizer is not None else make_tokenizer(vocab_size)
    base = make_model(arch, vocab_size, tied, seed=0, layers=layers, hidden=hidden)
    out = {"base": save(base, tokenizer, root / "base")}
    for role, seed, size in (("tuned", 1, vocab_size), ("target", 2, target_vocab or vocab_size)):
        model = make_model(arch, size, tied, seed=0, layers=layers, hidden=hidden)
        torch.manual_seed(seed)
        with torch.no_grad():
            for param in model.parameters():
                param.add_(torch.randn_like(param) * 0.01)
        out[role] = save(model, tokenizer, root / role)
    return out


def make_moe_models(root: Path, arch: str, vocab_size: int, seed: int = 10) -> dict:
    """make_trio's base / tuned / target plus three more targets of the same shape (4 experts' targets), one
    tokenizer for all."""
    tokenizer = make_tokenizer()
    trio = make_trio(root, arch, tokenizer=tokenizer, vocab_size=vocab_size)
    more = [save(make_model(arch, vocab_size, seed=seed + i), tokenizer, root / f"target{i + 2}") for i in range(3)]
    return {**trio, "targets": [trio["target"], *more]}


def make_trio_and_second_target(root: Path) -> dict[str, Path]:
    """make_trio's Llama base / tuned / target, and a second target of the same shape ("target2")."""
    return {**make_trio(root, "llama"), "target2": save(make_model("llama", seed=3), None, root / "target2")}
