"""Judges behind an HTTP API: OpenAI, Azure OpenAI, OpenAI-compatible servers (the ``openai`` SDK) and
Anthropic (the ``anthropic`` SDK). Retries for 429 / 5xx / timeouts are the SDKs' own; ours is one fresh
ask when the answer holds no rating."""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any, Callable

from task_vector_opt.evaluation.judges.base import UNPARSEABLE, Judge, JudgeCall
from task_vector_opt.evaluation.judges.cache import JudgmentCache
from task_vector_opt.evaluation.judges.judgment import JudgeRequest, JudgeTally, Judgment
from task_vector_opt.evaluation.judges.ratings import rating_from_openai_logprobs
from task_vector_opt.evaluation.judges.secrets import short_error
from task_vector_opt.evaluation.judges.settings import JudgeSpec

log = logging.getLogger(__name__)

# OpenAI reasoning models take max_completion_tokens, not max_tokens, and no temperature;
# their hidden reasoning is billed as output, so they get a larger completion budget.
REASONING_PREFIXES = ("o1", "o3", "o4", "gpt-5")
REASONING_MAX_COMPLETION_TOKENS = 8192
TOP_LOGPROBS = 20  # the most the OpenAI API returns per position


class ApiJudge(Judge):
    """Judges behind an HTTP API: one SDK client, ``parallel`` requests in flight at most."""

    def _call(self, request: JudgeRequest) -> JudgeCall:
        raise NotImplementedError

    def _secrets(self) -> list[str]:
        key = getattr(getattr(self, "_client", None), "api_key", None)
        return [key] if isinstance(key, str) else []

    def _judge_one(self, request: JudgeRequest, tally: JudgeTally) -> Judgment:
        tokens_in = tokens_out = 0
        for attempt in range(2):
            try:
                call = self._call(request)
            except Exception as exc:  # the SDK has already retried what is worth retrying
                error = short_error(exc, self._secrets())
                log.warning("judge %s: request failed: %s", self.name, error)
                return Judgment(None, "", False, error, tokens_in, tokens_out)
            self._count(tally, call)
            tokens_in += call.input_tokens
            tokens_out += call.output_tokens
            rating = self._rating_of(call, tally)
            if rating is not None:
                return Judgment(rating, call.text, False, None, tokens_in, tokens_out)
            if attempt == 0:
                with self._lock:
                    tally.retries_for_parse += 1
                log.info("judge %s: no rating in the output; asking once more", self.name)
        return Judgment(None, call.text, False, UNPARSEABLE, tokens_in, tokens_out)

    def _judge_uncached(self, requests: list[JudgeRequest], tally: JudgeTally,
                        on_done: Callable[[int], None]) -> list[Judgment]:
        results: list[Judgment | None] = [None] * len(requests)
        with ThreadPoolExecutor(max_workers=self.spec.parallel, thread_name_prefix="judge") as pool:
            futures = {pool.submit(self._judge_one, request, tally): i for i, request in enumerate(requests)}
            for future in as_completed(futures):
                judgment = future.result()
                results[futures[future]] = judgment
                if judgment.rating is None:
                    with self._lock:
                        tally.failures += 1
                on_done(1)
        return [r for r in results if r is not None]

    def close(self) -> None:
        try:
            self._client.close()
        finally:
            super().close()


class OpenAIJudge(ApiJudge):
    """OpenAI, Azure OpenAI and any OpenAI-compatible chat-completions server."""

    def __init__(self, spec: JudgeSpec, cache: JudgmentCache | None, client: Any):
        super().__init__(spec, cache)
        self._client = client
        self._reasoning = spec.backend in ("openai", "azure") and spec.model.lower().startswith(REASONING_PREFIXES)

    def _call(self, request: JudgeRequest) -> JudgeCall:
        kwargs: dict[str, Any] = {
            "model": self.spec.model,
            "messages": [{"role": "system", "content": request.system},
                         {"role": "user", "content": request.user}],
        }
        if self._reasoning:
            kwargs["max_completion_tokens"] = max(self.spec.max_tokens, REASONING_MAX_COMPLETION_TOKENS)
        else:
            kwargs["max_tokens"] = self.spec.max_tokens
            kwargs["temperature"] = 0
        if self.spec.rating_mode == "logprob" and not self._reasoning:
            kwargs["logprobs"] = True
            kwargs["top_logprobs"] = TOP_LOGPROBS
        response = self._client.chat.completions.create(**kwargs)
        choice = response.choices[0] if response.choices else None
        text = (choice.message.content if choice is not None and choice.message is not None else None) or ""
        usage = getattr(response, "usage", None)
        call = JudgeCall(text, int(getattr(usage, "prompt_tokens", 0) or 0),
                         int(getattr(usage, "completion_tokens", 0) or 0))
        if self.spec.rating_mode == "logprob":
            content = getattr(getattr(choice, "logprobs", None), "content", None) if choice is not None else None
            if content:
                call.logprob_rating = rating_from_openai_logprobs(content)
            else:
                call.logprobs_missing = True
        return call


class AnthropicJudge(ApiJudge):
    """Claude via the anthropic SDK.

    anthropic>=1.0 dropped ``temperature`` from ``messages.create``'s signature; it is sent in
    ``extra_body`` (same wire payload). Newer Claude models refuse a non-default temperature
    with a 400 that names it: the judge then asks again without it and stops sending it.
    """

    def __init__(self, spec: JudgeSpec, cache: JudgmentCache | None, client: Any):
        super().__init__(spec, cache)
        self._client = client
        self._send_temperature = True

    def _create(self, request: JudgeRequest, temperature: bool) -> Any:
        return self._client.messages.create(
            model=self.spec.model, system=request.system, max_tokens=self.spec.max_tokens,
            messages=[{"role": "user", "content": request.user}],
            extra_body={"temperature": 0} if temperature else None)

    def _call(self, request: JudgeRequest) -> JudgeCall:
        import anthropic

        if self._send_temperature:
            try:
                response = self._create(request, temperature=True)
            except anthropic.BadRequestError as exc:
                if "temperature" not in str(exc).lower():
                    raise
                with self._lock:
                    if self._send_temperature:
                        self._send_temperature = False
                        log.warning("judge %s: the model refuses temperature=0; judging at its default "
                                    "temperature", self.name)
                response = self._create(request, temperature=False)
        else:
            response = self._create(request, temperature=False)
        text = "".join(getattr(block, "text", "") or "" for block in (response.content or [])
                       if getattr(block, "type", None) == "text")
        usage = getattr(response, "usage", None)
        return JudgeCall(text, int(getattr(usage, "input_tokens", 0) or 0),
                         int(getattr(usage, "output_tokens", 0) or 0))
