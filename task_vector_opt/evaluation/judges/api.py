"""Judges behind an HTTP API: OpenAI, Azure OpenAI, OpenAI-compatible servers (the ``openai`` SDK) and
Anthropic (the ``anthropic`` SDK). Retries for 429 / 5xx / timeouts are the SDKs' own; ours is one fresh
ask when the answer holds no rating.

Errors that no retry can mend are told apart with the SDKs' own exception types: before the run, the probe
turns a bad key, an unknown model or a server that cannot be reached into one UsageError; during the run, a
bad key or an unknown model stops the study (JudgeRefused) instead of failing trial after trial."""
from __future__ import annotations

import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any, Callable

from task_vector_opt.errors import TrialFailure, UsageError
from task_vector_opt.evaluation.judges.base import UNPARSEABLE, Judge, JudgeCall
from task_vector_opt.evaluation.judges.cache import JudgmentCache
from task_vector_opt.evaluation.judges.judgment import JudgeRequest, JudgeTally, Judgment
from task_vector_opt.evaluation.judges.ratings import rating_from_openai_logprobs
from task_vector_opt.evaluation.judges.secrets import KEY_VARIABLES, short_error
from task_vector_opt.evaluation.judges.settings import JudgeSpec

log = logging.getLogger(__name__)

# OpenAI reasoning models take max_completion_tokens, not max_tokens, and no temperature;
# their hidden reasoning is billed as output, so they get a larger completion budget.
REASONING_PREFIXES = ("o1", "o3", "o4", "gpt-5")
REASONING_MAX_COMPLETION_TOKENS = 8192
TOP_LOGPROBS = 20  # the most the OpenAI API returns per position
PROBE = JudgeRequest(system="You check that a connection works.", user="Reply with the single word OK.")
PROBE_MAX_TOKENS = 1  # the probe needs the status, not an answer


class JudgeRefused(TrialFailure):
    """The judge API refuses this run's key or model: no later request can succeed, so the study stops."""

    stops_study = True


def _sdk_errors(exc: BaseException) -> Any:
    """The SDK module (openai or anthropic) whose exception ``exc`` is, or None."""
    import anthropic
    import openai

    for sdk in (openai, anthropic):
        if isinstance(exc, sdk.APIError):
            return sdk
    return None


def _without_userinfo(url: str) -> str:
    return re.sub(r"//[^/@]*@", "//***@", url)


class ApiJudge(Judge):
    """Judges behind an HTTP API: one SDK client, ``parallel`` requests in flight at most."""

    def _call(self, request: JudgeRequest) -> JudgeCall:
        raise NotImplementedError

    def _probe_call(self) -> None:
        """One request as small as the API allows, with this run's model, URL and key."""
        raise NotImplementedError

    def _secrets(self) -> list[str]:
        key = getattr(getattr(self, "_client", None), "api_key", None)
        return [key] if isinstance(key, str) else []

    def _url(self) -> str:
        return _without_userinfo(str(self.spec.base_url or getattr(self._client, "base_url", "") or "")).rstrip("/")

    def _refusal(self, exc: BaseException) -> tuple[str, str | None, str] | None:
        """(what, flag, message) when ``exc`` says that no request of this judge can succeed, else None.
        what: 'key' (401, 403, no quota left), 'model' (404) or 'unreachable' (no connection, or timeouts
        through every retry). The message is one line and holds no key."""
        sdk = _sdk_errors(exc)
        if sdk is None:
            return None
        why = short_error(exc, self._secrets())
        variable = KEY_VARIABLES.get(self.spec.backend, "the API key variable")
        thing = "deployment" if self.spec.backend == "azure" else "model"
        if isinstance(exc, sdk.AuthenticationError):
            given = (f"the key in {variable}" if os.environ.get(variable)
                     else f"requests without a key ({variable} is not set)")
            return "key", None, f"the judge {self.name} refuses {given} ({why}); set {variable} to a valid key"
        if isinstance(exc, sdk.PermissionDeniedError):
            return "key", None, (f"the key in {variable} may not use the judge {self.name} ({why}); set "
                                 f"{variable} to a key with access, or choose another --judge_model_name")
        if isinstance(exc, sdk.RateLimitError) and getattr(exc, "code", None) == "insufficient_quota":
            return "key", None, (f"the account of the key in {variable} has no quota left for the judge "
                                 f"{self.name} ({why}); add credit or set {variable} to another key")
        if isinstance(exc, sdk.NotFoundError):
            return "model", "--judge_model_name", (
                f"the judge server {self._url()} knows no {thing} {self.spec.model!r} ({why}); check the name, "
                "or --judge_base_url if the URL lacks the API's path (e.g. /v1)")
        if isinstance(exc, sdk.APITimeoutError):
            return "unreachable", "--judge_base_url", (
                f"the judge {self.name} at {self._url()} did not answer within --judge_timeout "
                f"{self.spec.timeout_s:g} s, {self.spec.max_retries} retries included; check the URL, or raise "
                "--judge_timeout")
        if isinstance(exc, sdk.APIConnectionError):
            cause = exc.__cause__ or exc.__context__
            detail = short_error(cause, self._secrets()) if cause is not None else why
            return "unreachable", "--judge_base_url", (
                f"cannot reach the judge {self.name} at {self._url()} ({detail}); check the URL and that the "
                "server is running")
        return None

    def probe(self) -> None:
        """One tiny request before any model loads: a bad key, an unknown model or an unreachable server is
        one UsageError (exit code 2). Other errors (a 5xx after the SDK's retries, a refused parameter) are
        said once and left to the run, where --on_judge_failure decides."""
        try:
            self._probe_call()
        except Exception as exc:
            refusal = self._refusal(exc)
            if refusal is not None:
                _what, flag, message = refusal
                raise UsageError(flag, message) from None
            log.warning("judge %s: the probe request failed (%s); going on, failed judgments are handled as "
                        "--on_judge_failure says", self.name, short_error(exc, self._secrets()))
            return
        log.info("judge %s: the probe request was answered (key, model and URL work)", self.name)

    def _judge_one(self, request: JudgeRequest, tally: JudgeTally) -> Judgment:
        tokens_in = tokens_out = 0
        for attempt in range(2):
            try:
                call = self._call(request)
            except Exception as exc:  # the SDK has already retried what is worth retrying
                refusal = self._refusal(exc)
                if refusal is not None and refusal[0] in ("key", "model"):  # every other request would fail too
                    _what, flag, message = refusal
                    raise JudgeRefused(f"{flag}: {message}" if flag else message) from None
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
                try:
                    judgment = future.result()
                except JudgeRefused:  # send none of the requests still waiting
                    for waiting in futures:
                        waiting.cancel()
                    raise
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

    def _probe_call(self) -> None:
        budget = "max_completion_tokens" if self._reasoning else "max_tokens"
        self._client.chat.completions.create(model=self.spec.model, messages=[
            {"role": "system", "content": PROBE.system}, {"role": "user", "content": PROBE.user}],
            **{budget: PROBE_MAX_TOKENS})

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

    def _probe_call(self) -> None:
        self._client.messages.create(model=self.spec.model, system=PROBE.system, max_tokens=PROBE_MAX_TOKENS,
                                     messages=[{"role": "user", "content": PROBE.user}])

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
