"""Resolve hub ids / local dirs, load the live target, read safetensors lazily, save atomically."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from task_vector_opt.sources import PICKLE_PATTERNS, WEIGHT_PATTERNS, ModelSource
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
    return _download(source, cache_dir, HUB_PATTERNS + (list(PICKLE_PATTERNS) if allow_pickle else []))


def resolve_config(source: ModelSource, cache_dir: str | None) -> Path:
    """Return a local directory holding ``source``'s config.json; from the hub, that one file only (--dry_run)."""
    if source.is_local:
        return Path(source.name_or_path).expanduser()
    return _download(source, cache_dir, ["config.json"])


def read_config(directory: Path, trust_remote_code: bool = False, flag: str = "--target_model"):
    """The one reader of a model's config.json: transformers' own (AutoConfig), so every field has its default
    and its aliases (``n_layer`` is ``num_hidden_layers``); ``.get_text_config()`` is a VLM's language model."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(directory, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as exc:
        raise UsageError(flag, f"transformers cannot read the config.json of {str(directory)!r} ({first_line(exc)}); "
                               "give a Hugging Face model directory, or pass --trust_remote_code for a model with "
                               "code of its own") from None


def config_of(source: ModelSource, cache_dir: str | None, trust_remote_code: bool = False):
    """``source``'s config (read_config); from the hub, its config.json alone is fetched."""
    return read_config(resolve_config(source, cache_dir), trust_remote_code, source.flag)


def check_model_source(source: ModelSource, allow_pickle: bool) -> None:
    """A local dir must hold a config and weights that open (each *.safetensors: its header, and that the file
    holds all the data the header declares); anything else must look like a hub id."""
    path = Path(source.name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UsageError(source.flag, f"directory {source.name_or_path!r} has no config.json; point it at a saved "
                                          "Hugging Face model directory")
        if any(any(path.glob(p)) for p in WEIGHT_PATTERNS):
            check_weight_files(path, source.flag)  # a truncated download or an HTML page, before any model loads
            return
        if any(any(path.glob(p)) for p in PICKLE_PATTERNS):
            if allow_pickle:
                return
            raise UsageError(source.flag, f"directory {source.name_or_path!r} holds only pickle weights (.bin/.pt); convert "
                                          "them to safetensors or pass --allow_pickle if you trust the file")
        raise UsageError(source.flag, f"directory {source.name_or_path!r} has no *.safetensors weights")
    if path.exists():
        raise UsageError(source.flag, f"{source.name_or_path!r} is a file, not a model directory or a hub id")
    if not source.is_hub_id:
        raise UsageError(source.flag, f"{source.name_or_path!r} is neither a directory with model weights nor a Hugging Face "
                                      "hub id (like mistralai/Mistral-7B-v0.1); check the path")


def _download(source: ModelSource, cache_dir: str | None, patterns: list[str]) -> Path:
    """snapshot_download with a bounded first look-up, and every failure turned into one line for the user."""
    from huggingface_hub import HfApi, constants, snapshot_download

    try:
        if not constants.is_offline_mode():
            # snapshot_download's own first request waits without a time limit; this look-up, without retries,
            # waits at most HF_HUB_ETAG_TIMEOUT seconds (10 by default), so a silent hub fails fast too.
            HfApi().model_info(source.name_or_path, timeout=constants.HF_HUB_ETAG_TIMEOUT)
        return Path(snapshot_download(source.name_or_path, cache_dir=cache_dir, allow_patterns=patterns))
    except Exception as exc:  # the hub client raises many types; the user needs one line and what to do
        raise UsageError(source.flag, f"could not get {source.name_or_path!r} from the Hugging Face hub: "
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


def safetensors_problem(file: Path) -> str | None:
    """Why ``file`` cannot be read as safetensors, as a phrase for an error line; None when it opens.

    The safetensors library checks the header and that the file holds exactly the data it declares; this only
    turns its reason into words a user can act on (a short file is a download or copy that was cut off).
    """
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(file), framework="pt"):
            return None
    except SafetensorError as exc:
        reason = first_line(exc).removeprefix("Error while deserializing header: ")
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    size = file.stat().st_size
    declared = _declared_size(file, size)
    if declared is None:
        return f"is not a safetensors file ({reason}); replace it with the model's real weights"
    if declared > size:
        return (f"is truncated: it holds {size} bytes but its header declares {declared}; download or copy the "
                "model again")
    return f"is damaged ({reason}); download or copy the model again"


def _declared_size(file: Path, size: int) -> int | None:
    """The size a safetensors header says its file has (8 + header + data), or None when there is no such header."""
    with file.open("rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            return None
        header_length = int.from_bytes(prefix, "little")
        if header_length > min(size - 8, 100 * 2**20):  # the library's own header limit is 100 MB
            return None
        try:
            header = json.loads(handle.read(header_length))
            data_end = max((int(entry["data_offsets"][1]) for key, entry in header.items() if key != "__metadata__"),
                           default=0)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            return None
    return 8 + header_length + data_end


def check_weight_files(directory: Path, flag: str | None) -> None:
    """Every *.safetensors file in ``directory`` must open; the first that does not is a UsageError naming it."""
    for file in sorted(directory.glob("*.safetensors")):
        problem = safetensors_problem(file)
        if problem is not None:
            raise UsageError(flag, f"weight file {file} {problem}")


def nonfinite_kinds(tensor: torch.Tensor) -> str | None:
    """'nan', 'inf' or 'nan and inf' when ``tensor`` holds such values; None when every value is finite.

    One min/max reduction on the happy path: NaN and infinities reach the minimum or the maximum, and unlike
    ``isfinite(t).all()`` or a sum in a wider dtype it allocates nothing tensor-sized (measured on CPU)."""
    if not tensor.is_floating_point() or tensor.numel() == 0:
        return None
    low, high = torch.aminmax(tensor)
    if bool(torch.isfinite(low) & torch.isfinite(high)):
        return None
    kinds = [kind for kind, present in (("nan", tensor.isnan().any()), ("inf", tensor.isinf().any())) if present]
    return " and ".join(kinds)


def require_finite(tensor: torch.Tensor, name: str, flag: str | None, directory: Path, note: str = "") -> None:
    """A UsageError naming the model (flag and path) and the tensor when ``tensor`` holds NaN or infinite values."""
    kinds = nonfinite_kinds(tensor)
    if kinds is not None:
        raise UsageError(flag, f"tensor {name} of {directory} holds non-finite values ({kinds}){note}; a model "
                               "with NaN or infinite weights cannot be merged: check the model or download it again")


class WeightFiles:
    """Lazy, tensor-by-tensor access to a model directory's safetensors (sharded or not).

    ``flag`` (e.g. --tuned_model) is named in the one-line error when a file cannot be read."""

    def __init__(self, directory: Path, flag: str | None = None):
        self.directory = directory
        self.flag = flag
        index = directory / "model.safetensors.index.json"
        if index.is_file():
            weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
        else:
            weight_map = {}
            for file in sorted(directory.glob("*.safetensors")):
                with self._open(file) as handle:
                    weight_map.update({key: file.name for key in handle.keys()})
        if not weight_map:
            raise UsageError(flag, f"{directory} has no safetensors weights")
        self.weight_map = weight_map
        self._handles: dict[str, Any] = {}

    def _open(self, file: Path):
        from safetensors import SafetensorError, safe_open

        try:
            return safe_open(str(file), framework="pt", device="cpu")
        except (SafetensorError, OSError):
            problem = safetensors_problem(file) if file.is_file() else "is missing"
            raise UsageError(self.flag, f"weight file {file} {problem or 'cannot be read'}") from None

    def keys(self) -> list[str]:
        return list(self.weight_map)

    def __contains__(self, key: str) -> bool:
        return key in self.weight_map

    def key_for(self, name: str) -> str | None:
        """The file key that holds parameter ``name``: checkpoints store names with or without the
        ``model.`` prefix the loaded model uses; None when the files hold neither."""
        return next((key for key in (name, name.removeprefix("model."), f"model.{name}") if key in self), None)

    def _handle(self, key: str):
        file = self.weight_map[key]
        if file not in self._handles:
            self._handles[file] = self._open(self.directory / file)
        return self._handles[file]

    def get(self, key: str) -> torch.Tensor:
        return self._handle(key).get_tensor(key)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._handle(key).get_slice(key).get_shape())

    def close(self) -> None:
        self._handles.clear()


def is_vlm_config(config: Any) -> bool:
    """A transformers config (or its dict) that has a vision tower."""
    if isinstance(config, dict):
        return config.get("vision_config") is not None
    return getattr(config, "vision_config", None) is not None


def is_vlm(model: Any) -> bool:
    return is_vlm_config(getattr(model, "config", None))


def auto_class_for(config):
    """AutoModelForImageTextToText for a vision-language model (its own class), AutoModelForCausalLM otherwise."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    return AutoModelForImageTextToText if is_vlm_config(config) else AutoModelForCausalLM


def load_model(directory: Path, dtype: str, device: str, trust_remote_code: bool, allow_pickle: bool,
               flag: str | None = None):
    """Load a causal LM (or a vision-language model, with its own class) for scoring and merging, with its
    tokenizer.

    A weight file that cannot be read, or a parameter with NaN or infinite values (also one that overflows
    ``dtype``), is a UsageError naming ``flag`` (e.g. --target_model), the file or the tensor."""
    from safetensors import SafetensorError
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(directory, trust_remote_code=trust_remote_code)
    try:
        model = auto_class_for(config).from_pretrained(
            directory, dtype=DTYPES[dtype], device_map=device, use_safetensors=not allow_pickle or None,
            trust_remote_code=trust_remote_code,
        )
    except (SafetensorError, OSError, ValueError, RuntimeError):
        check_weight_files(directory, flag)  # names the broken file when that is the cause
        raise
    model.eval()
    model.requires_grad_(False)
    for name, param in model.named_parameters():  # the target's originals: the merger keeps these values
        require_finite(param, name, flag, directory, f" (loaded as {dtype})")
    tokenizer = AutoTokenizer.from_pretrained(directory, trust_remote_code=trust_remote_code)
    return model, tokenizer


def save_model(model, tokenizer, output_dir: Path, overwrite: bool, extra_files: dict[str, Any]) -> Path:
    """Save model (sharded safetensors), tokenizer, generation config and side files atomically.

    A side file's content is written as is when it is str or bytes, as JSON otherwise."""
    with atomic_directory(output_dir, overwrite) as staging:
        model.save_pretrained(staging, max_shard_size="5GB")
        tokenizer.save_pretrained(staging)
        save_processor_of(model, tokenizer, staging)
        write_side_files(staging, extra_files)
    log.info("saved the merged model to %s", output_dir)
    return output_dir


def save_processor_of(model, tokenizer, directory: Path) -> None:
    """A VLM is saved whole: its processor (image processor, chat template) beside the tokenizer, from the
    target's directory unless the tokenizer given already is that processor."""
    if not is_vlm(model) or hasattr(tokenizer, "image_processor"):
        return
    from transformers import AutoProcessor

    AutoProcessor.from_pretrained(model.name_or_path).save_pretrained(directory)
