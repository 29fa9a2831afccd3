"""The ``--judge_*`` flags, checked: which backend and model judge, and ``JudgeSpec``, the plain settings
that build it. Every problem is a UsageError naming its flag, raised before any model loads.
Defaults live in the flag table (task_vector_opt/cli/flags.py), not here."""
from __future__ import annotations

import argparse
import importlib.util
import math
import os
import re
from dataclasses import asdict, dataclass
from typing import Any

from task_vector_opt.identity import outside_identity
from task_vector_opt.errors import UsageError

BACKENDS = ("openai", "azure", "openai-compatible", "anthropic", "hf")
BACKEND_CHOICES = ("auto",) + BACKENDS
RATING_MODES = ("text", "logprob")
DEFAULT_AZURE_API_VERSION = "2024-10-21"
# The original scripts' "Cohere" judge: Command R+ quantized to 4 bits with bitsandbytes.
COHERE_ALIAS = "cohere"
COHERE_MODEL = "CohereForAI/c4ai-command-r-plus-4bit"
OPENAI_PREFIXES = ("gpt-", "o1", "o3", "o4", "chatgpt")


@dataclass(frozen=True)
class JudgeSpec:
    """Validated judge settings; JSON-serializable and free of secrets (keys stay in the environment)."""

    backend: str  # one of BACKENDS
    model: str  # model name, Azure deployment, or hf hub id / local dir
    requested: str = outside_identity()  # --judge_model_name as given (the backend and model count)
    base_url: str | None  # OpenAI-compatible server, Anthropic proxy, or Azure endpoint
    rating_mode: str  # one of RATING_MODES
    parallel: int = outside_identity()
    timeout_s: float = outside_identity()
    max_retries: int = outside_identity()
    cache_path: str | None = outside_identity()  # None: no cache
    load_in_4bit: bool
    api_version: str | None = outside_identity(default=None)  # azure only: the wire protocol, not the judge
    max_tokens: int = 1024  # API judges' output budget
    hf_max_new_tokens: int = 256  # hf text mode
    hf_batch_size: int = outside_identity(default=8)

    @property
    def name(self) -> str:
        return f"{self.backend}:{self.model}"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def missing_4bit_requirements() -> str | None:
    """What 4-bit loading lacks here ('the bitsandbytes package is not installed; no CUDA device is visible'),
    or None when bitsandbytes and a CUDA device are both present."""
    missing = []
    if importlib.util.find_spec("bitsandbytes") is None:
        missing.append("the bitsandbytes package is not installed")
    try:
        import torch

        if not torch.cuda.is_available():
            missing.append("no CUDA device is visible")
    except ImportError:
        missing.append("torch is not installed")
    return "; ".join(missing) or None


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or os.path.isdir(os.path.expanduser(name))


def _infer_backend(name: str, base_url: str | None) -> str:
    lower = name.lower()
    if lower.startswith("claude-"):
        return "anthropic"
    if lower.startswith("hf:") or _looks_like_path(name) or lower == COHERE_ALIAS:
        return "hf"
    if lower.startswith("azure:"):
        return "azure"
    if base_url:
        return "openai-compatible"
    if lower.startswith(OPENAI_PREFIXES):
        return "openai"
    raise UsageError("--judge_model_name", f"unknown judge {name!r}; pass --judge_backend "
                     f"{{{','.join(BACKENDS)}}} (auto knows gpt-*/o1/o3/o4/chatgpt-* = openai, claude-* = "
                     "anthropic, azure:<deployment>, hf:<hub id or dir> or a local dir = hf, Cohere; "
                     "--judge_base_url or OPENAI_BASE_URL = openai-compatible)")


def _need_env(var: str, judge: str) -> None:
    if not os.environ.get(var):
        raise UsageError("--judge_model_name", f"the judge {judge} needs the {var} environment variable, "
                         "which is not set")


def _check_url(url: str, flag: str) -> str:
    if not re.match(r"^https?://[^\s/]+", url):
        raise UsageError(flag, f"{url!r} is not an http(s) URL")
    return url.rstrip("/")


def _hf_model(requested: str) -> str:
    """The hub id or absolute local dir of an hf judge (``hf:`` prefix, the Cohere alias, a local dir)."""
    model = requested[3:].strip() if requested.lower().startswith("hf:") else requested
    if model.lower() == COHERE_ALIAS:
        model = COHERE_MODEL
        missing = missing_4bit_requirements()
        if missing:
            raise UsageError("--judge_model_name", f"the Cohere judge ({COHERE_MODEL}) is a bitsandbytes "
                             f"4-bit checkpoint and needs bitsandbytes and a CUDA GPU: {missing}")
    if not model:
        raise UsageError("--judge_model_name", "hf: needs a hub id or a local directory after it")
    expanded = os.path.expanduser(model)
    if _looks_like_path(model):
        if not os.path.isdir(expanded):
            raise UsageError("--judge_model_name", f"judge model directory {model} does not exist")
        if not os.path.isfile(os.path.join(expanded, "config.json")):
            raise UsageError("--judge_model_name", f"{model} has no config.json; is it a transformers model dir?")
        model = os.path.abspath(expanded)
    return model


def judge_spec_from_args(args: argparse.Namespace) -> JudgeSpec:
    """Validate the ``--judge_*`` / ``--parallel`` flags; every problem is a UsageError naming its flag."""
    requested = (args.judge_model_name or "").strip()
    if not requested:
        raise UsageError("--judge_model_name", "must not be empty")
    backend = args.judge_backend
    if backend not in BACKEND_CHOICES:
        raise UsageError("--judge_backend", f"{backend!r} is not one of {', '.join(BACKEND_CHOICES)}")
    parallel = args.parallel
    if not isinstance(parallel, int) or parallel < 1:
        raise UsageError("--parallel", f"must be at least 1 (got {parallel})")
    mode = args.judge_rating_mode
    if mode not in RATING_MODES:
        raise UsageError("--judge_rating_mode", f"{mode!r} is not one of {', '.join(RATING_MODES)}")
    timeout = args.judge_timeout
    if not isinstance(timeout, (int, float)) or not math.isfinite(timeout) or timeout <= 0:
        raise UsageError("--judge_timeout", f"must be a positive number of seconds (got {timeout})")
    retries = args.judge_max_retries
    if not isinstance(retries, int) or retries < 0:
        raise UsageError("--judge_max_retries", f"must be 0 or more (got {retries})")
    cache = args.judge_cache
    cache_path = None if cache is None or str(cache).strip().lower() in ("none", "") else str(cache)
    if cache_path is not None and os.path.isdir(cache_path):
        raise UsageError("--judge_cache", f"{cache_path} is a directory; give a file path (or 'none')")
    load_4bit = bool(args.judge_load_in_4bit)
    flag_url = _check_url(args.judge_base_url, "--judge_base_url") if args.judge_base_url else None
    env_url = os.environ.get("OPENAI_BASE_URL") or None

    if backend == "auto":
        backend = _infer_backend(requested, flag_url or env_url)
    model = requested
    api_version = None
    base_url: str | None = None
    if backend == "hf":
        model = _hf_model(requested)
    elif backend == "anthropic":
        _need_env("ANTHROPIC_API_KEY", f"anthropic:{model}")
        base_url = flag_url
    elif backend == "azure":
        if requested.lower().startswith("azure:"):
            model = requested[6:].strip()
        else:  # the deployment: AZURE_OPENAI_DEPLOYMENT, else the model name itself
            model = os.environ.get("AZURE_OPENAI_DEPLOYMENT") or requested
        if not model:
            raise UsageError("--judge_model_name", "azure: needs a deployment name after it")
        _need_env("AZURE_OPENAI_API_KEY", f"azure:{model}")
        if flag_url:
            base_url = flag_url
        else:
            _need_env("AZURE_OPENAI_ENDPOINT", f"azure:{model}")
            base_url = _check_url(os.environ["AZURE_OPENAI_ENDPOINT"].strip(), "AZURE_OPENAI_ENDPOINT")
        api_version = os.environ.get("OPENAI_API_VERSION") or DEFAULT_AZURE_API_VERSION
    elif backend == "openai-compatible":
        base_url = flag_url or (_check_url(env_url, "--judge_base_url") if env_url else None)
        if not base_url:
            raise UsageError("--judge_base_url", "--judge_backend openai-compatible needs the server URL "
                             "(--judge_base_url or OPENAI_BASE_URL), e.g. http://localhost:8000/v1")
    elif backend == "openai":
        _need_env("OPENAI_API_KEY", f"openai:{model}")
        base_url = flag_url or (_check_url(env_url, "--judge_base_url") if env_url else None)

    if load_4bit:
        if backend != "hf":
            raise UsageError("--judge_load_in_4bit", f"only applies to --judge_backend hf (the judge is {backend})")
        missing = missing_4bit_requirements()
        if missing:
            raise UsageError("--judge_load_in_4bit", f"4-bit loading needs the bitsandbytes package and a CUDA "
                             f"GPU: {missing}; drop the flag to load the judge in full precision")
    if mode == "logprob" and backend == "anthropic":
        raise UsageError("--judge_rating_mode", "the Anthropic API returns no token probabilities; "
                         "use --judge_rating_mode text with a claude-* judge")
    return JudgeSpec(backend=backend, model=model, requested=requested, base_url=base_url, rating_mode=mode,
                     parallel=parallel, timeout_s=float(timeout), max_retries=retries, cache_path=cache_path,
                     load_in_4bit=load_4bit, api_version=api_version)
