"""Resolve hub ids / local dirs, load the live target, read safetensors lazily, save atomically."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from task_vector_opt.cli.config import ModelSource, PICKLE_PATTERNS
from task_vector_opt.errors import UsageError, first_line
from task_vector_opt.files import atomic_directory, write_side_files

log = logging.getLogger(__name__)

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
# What a merge needs from a hub repo: config, tokenizer, safetensors weights (no pickles, no GGUF, no ONNX).
HUB_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken", "*.jinja"]


def resolve(source: ModelSource, cache_dir: str | None, allow_pickle: bool = False) -> Path:
    """Return a local directory for ``source``, downloading only what a merge needs from the hub."""
    if source.is_local:
        return Path(source.name_or_path).expanduser()
    from huggingface_hub import snapshot_download

    patterns = HUB_PATTERNS + (list(PICKLE_PATTERNS) if allow_pickle else [])
    try:
        return Path(snapshot_download(source.name_or_path, cache_dir=cache_dir, allow_patterns=patterns))
    except Exception as exc:  # the hub client raises many types; the user needs one line
        raise UsageError(source.flag, f"could not download {source.name_or_path!r} from the Hugging Face hub "
                                      f"({type(exc).__name__}: {first_line(exc)}); "
                                      "check the id, your network, or give a local directory") from None


class WeightFiles:
    """Lazy, tensor-by-tensor access to a model directory's safetensors (sharded or not)."""

    def __init__(self, directory: Path):
        from safetensors import safe_open

        self.directory = directory
        index = directory / "model.safetensors.index.json"
        if index.is_file():
            weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
        else:
            weight_map = {}
            for file in sorted(directory.glob("*.safetensors")):
                with safe_open(str(file), framework="pt") as handle:
                    weight_map.update({key: file.name for key in handle.keys()})
        if not weight_map:
            raise UsageError(None, f"{directory} has no safetensors weights")
        self.weight_map = weight_map
        self._handles: dict[str, Any] = {}

    def keys(self) -> list[str]:
        return list(self.weight_map)

    def __contains__(self, key: str) -> bool:
        return key in self.weight_map

    def key_for(self, name: str) -> str | None:
        """The file key that holds parameter ``name``: checkpoints store names with or without the
        ``model.`` prefix the loaded model uses; None when the files hold neither."""
        return next((key for key in (name, name.removeprefix("model."), f"model.{name}") if key in self), None)

    def _handle(self, key: str):
        from safetensors import safe_open

        file = self.weight_map[key]
        if file not in self._handles:
            self._handles[file] = safe_open(str(self.directory / file), framework="pt", device="cpu")
        return self._handles[file]

    def get(self, key: str) -> torch.Tensor:
        return self._handle(key).get_tensor(key)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._handle(key).get_slice(key).get_shape())

    def close(self) -> None:
        self._handles.clear()


def load_model(directory: Path, dtype: str, device: str, trust_remote_code: bool, allow_pickle: bool):
    """Load a causal LM for scoring and merging, with its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(
        directory, dtype=DTYPES[dtype], device_map=device, use_safetensors=not allow_pickle or None,
        trust_remote_code=trust_remote_code,
    )
    model.eval()
    model.requires_grad_(False)
    tokenizer = AutoTokenizer.from_pretrained(directory, trust_remote_code=trust_remote_code)
    return model, tokenizer


def save_model(model, tokenizer, output_dir: Path, overwrite: bool, extra_files: dict[str, Any]) -> Path:
    """Save model (sharded safetensors), tokenizer, generation config and side files atomically.

    A side file's content is written as is when it is str or bytes, as JSON otherwise."""
    with atomic_directory(output_dir, overwrite) as staging:
        model.save_pretrained(staging, max_shard_size="5GB")
        tokenizer.save_pretrained(staging)
        write_side_files(staging, extra_files)
    log.info("saved the merged model to %s", output_dir)
    return output_dir
