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
        return Path(source.spec).expanduser()
    return _download(source, cache_dir, HUB_PATTERNS + (list(PICKLE_PATTERNS) if allow_pickle else []))


def resolve_config(source: ModelSource, cache_dir: str | None) -> Path:
    """Return a local directory holding ``source``'s config.json; from the hub, that one file only (--dry_run)."""
    if source.is_local:
        return Path(source.spec).expanduser()
    return _download(source, cache_dir, ["config.json"])


def _download(source: ModelSource, cache_dir: str | None, patterns: list[str]) -> Path:
    """snapshot_download with a bounded first look-up, and every failure turned into one line for the user."""
    from huggingface_hub import HfApi, constants, snapshot_download

    try:
        if not constants.is_offline_mode():
            # snapshot_download's own first request waits without a time limit; this look-up, without retries,
            # waits at most HF_HUB_ETAG_TIMEOUT seconds (10 by default), so a silent hub fails fast too.
            HfApi().model_info(source.spec, timeout=constants.HF_HUB_ETAG_TIMEOUT)
        return Path(snapshot_download(source.spec, cache_dir=cache_dir, allow_patterns=patterns))
    except Exception as exc:  # the hub client raises many types; the user needs one line and what to do
        raise UsageError(source.flag, f"could not get {source.spec!r} from the Hugging Face hub: "
                                      f"{hub_failure_reason(exc, cache_dir)}") from None


def hub_failure_reason(exc: BaseException, cache_dir: str | None) -> str:
    """Why a hub download failed and what to do, from huggingface_hub's exception (and what it wraps)."""
    import httpx2
    from huggingface_hub import constants
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, IncompleteSnapshotError,
                                        OfflineModeIsEnabled, RepositoryNotFoundError)

    chain = [exc]  # the hub client wraps the network error it gave up on (raise ... from error)
    while (cause := chain[-1].__cause__ or chain[-1].__context__) is not None and cause not in chain:
        chain.append(cause)

    def find(kind):
        return next((error for error in chain if isinstance(error, kind)), None)

    login = "log in with a token that may read it (HF_TOKEN or `hf auth login`)"
    cache = cache_dir or constants.HF_HUB_CACHE
    if find(GatedRepoError):
        return f"the repo is gated; accept its conditions on its hub page, then {login}"
    if find(RepositoryNotFoundError):
        return f"no such repo (check the id; if it is private, {login})"
    http_error = find(HfHubHTTPError)
    if http_error is not None and http_error.response is not None and http_error.response.status_code in (401, 403):
        return f"access refused (HTTP {http_error.response.status_code}); {login}"
    if find(IncompleteSnapshotError):
        return (f"its copy in {cache} is incomplete and the hub cannot be reached; "
                "download it once with network access, or give a local directory")
    if find(OfflineModeIsEnabled) or constants.is_offline_mode():
        return (f"HF_HUB_OFFLINE is set and it is not in {cache}; "
                "unset HF_HUB_OFFLINE once to download it, or give a local directory")
    if find(httpx2.TimeoutException):
        return (f"the hub at {constants.ENDPOINT} did not answer within {constants.HF_HUB_ETAG_TIMEOUT} s "
                "(HF_HUB_ETAG_TIMEOUT); check your network or HF_ENDPOINT, or give a local directory")
    if find(httpx2.NetworkError):
        return (f"the hub at {constants.ENDPOINT} cannot be reached ({first_line(find(httpx2.NetworkError))}); "
                "check your network or HF_ENDPOINT, or give a local directory")
    return f"{type(exc).__name__}: {first_line(exc)}; check the id, your network, or give a local directory"


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
