"""The one registry of judge backends: ``make_judge`` builds the judge a ``JudgeSpec`` names, once per run.

API keys are read from the environment here, handed to the SDK and nothing else: not in the spec,
the cache, log lines, error strings or reprs.
"""
from __future__ import annotations

import os

from task_vector_opt.errors import UsageError
from task_vector_opt.evaluation.judges.api import AnthropicJudge, OpenAIJudge
from task_vector_opt.evaluation.judges.base import Judge
from task_vector_opt.evaluation.judges.cache import open_cache
from task_vector_opt.evaluation.judges.in_process import HFJudge
from task_vector_opt.evaluation.judges.secrets import DUMMY_KEY
from task_vector_opt.evaluation.judges.settings import BACKENDS, JudgeSpec


def _api_key(spec: JudgeSpec, variable: str, fallback: str | None = None) -> str:
    """The judge's key from the environment (never from a flag, never logged)."""
    key = os.environ.get(variable) or fallback
    if not key:
        raise UsageError("--judge_model_name", f"the judge {spec.name} needs the {variable} environment variable, "
                                               "which is not set")
    return key


def make_judge(spec: JudgeSpec) -> Judge:
    """Build the judge for ``spec``: its SDK client (keys from the environment) or its model, once."""
    if spec.backend not in BACKENDS:
        raise UsageError("--judge_backend", f"{spec.backend!r} is not one of {', '.join(BACKENDS)}")
    cache = open_cache(spec)
    common = {"timeout": spec.timeout_s, "max_retries": spec.max_retries}  # the SDKs' own retry with backoff
    try:
        if spec.backend in ("openai", "openai-compatible"):
            import openai

            fallback = DUMMY_KEY if spec.backend == "openai-compatible" else None
            return OpenAIJudge(spec, cache, openai.OpenAI(api_key=_api_key(spec, "OPENAI_API_KEY", fallback),
                                                          base_url=spec.base_url, **common))
        if spec.backend == "azure":
            import openai

            return OpenAIJudge(spec, cache, openai.AzureOpenAI(
                api_key=_api_key(spec, "AZURE_OPENAI_API_KEY"), azure_endpoint=spec.base_url,
                azure_deployment=spec.model, api_version=spec.api_version, **common))
        if spec.backend == "anthropic":
            import anthropic

            return AnthropicJudge(spec, cache, anthropic.Anthropic(api_key=_api_key(spec, "ANTHROPIC_API_KEY"),
                                                                   base_url=spec.base_url, **common))
        return HFJudge(spec, cache)
    except BaseException:
        if cache is not None:
            cache.close()
        raise
