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
from task_vector_opt.evaluation.judges.secrets import DUMMY_KEY, KEY_VARIABLES
from task_vector_opt.evaluation.judges.settings import BACKENDS, JudgeSpec


def _api_key(spec: JudgeSpec, fallback: str | None = None) -> str:
    """The judge's key from the environment (never from a flag, never logged)."""
    variable = KEY_VARIABLES[spec.backend]
    key = os.environ.get(variable) or fallback
    if not key:
        raise UsageError("--judge_model_name", f"the judge {spec.name} needs the {variable} environment variable, "
                                               "which is not set")
    return key


def make_judge(spec: JudgeSpec, probe: bool = False) -> Judge:
    """Build the judge for ``spec``: its SDK client (keys from the environment) or its model, once.

    ``probe``: send an API judge one tiny request first, so that a bad key, an unknown model or a server that
    cannot be reached is a UsageError now, before any model loads (an evaluator's set-up asks for it)."""
    if spec.backend not in BACKENDS:
        raise UsageError("--judge_backend", f"{spec.backend!r} is not one of {', '.join(BACKENDS)}")
    cache = open_cache(spec)
    common = {"timeout": spec.timeout_s, "max_retries": spec.max_retries}  # the SDKs' own retry with backoff
    try:
        if spec.backend in ("openai", "openai-compatible"):
            import openai

            fallback = DUMMY_KEY if spec.backend == "openai-compatible" else None
            judge: Judge = OpenAIJudge(spec, cache, openai.OpenAI(api_key=_api_key(spec, fallback),
                                                                  base_url=spec.base_url, **common))
        elif spec.backend == "azure":
            import openai

            judge = OpenAIJudge(spec, cache, openai.AzureOpenAI(
                api_key=_api_key(spec), azure_endpoint=spec.base_url,
                azure_deployment=spec.model, api_version=spec.api_version, **common))
        elif spec.backend == "anthropic":
            import anthropic

            judge = AnthropicJudge(spec, cache, anthropic.Anthropic(api_key=_api_key(spec),
                                                                    base_url=spec.base_url, **common))
        else:
            judge = HFJudge(spec, cache)
    except BaseException:
        if cache is not None:
            cache.close()
        raise
    if probe:  # a no-op for in-process judges
        try:
            judge.probe()
        except BaseException:
            judge.close()
            raise
    return judge
