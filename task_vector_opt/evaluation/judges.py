"""LLM judges for MT-Bench style grading: one registry of backends behind one small interface.

``judge_spec_from_args`` validates the ``--judge_*`` flags into a ``JudgeSpec`` (plain,
JSON-serializable settings, never a secret) and raises ``UsageError`` before any model
loads; ``make_judge`` builds the client or the in-process model once per run; every
backend then answers ``judge_many(requests) -> (judgments, tally)``.

Backends
    openai, azure, openai-compatible  the ``openai`` SDK (``OpenAI`` / ``AzureOpenAI``)
    anthropic                         the ``anthropic`` SDK
    hf                                a local ``transformers`` causal LM, in this process

Ratings
    text     the judge writes an explanation and ``[[rating]]``; ``parse_rating`` reads it.
    logprob  G-Eval style: the rating is the expected value of the rating under the judge's
             own next-token probabilities of "1".."10" at the position where the rating is
             written (OpenAI-style APIs: ``top_logprobs``; hf: one batched forward pass).

A judgment that cannot be obtained (an API error after the SDK's own retries, or output
that still has no rating after one fresh retry) gets ``rating=None`` and an ``error``; it
is never scored as 0 or -1, and the tally counts it as a failure.

Retries for 429 / 5xx / timeouts are the SDKs' own (``max_retries`` and ``timeout`` on the
client; both SDKs honour ``retry-after-ms`` and ``retry-after`` response headers).

Successful judgments are kept in a persistent sqlite cache (WAL mode, several processes
may share it) keyed by sha256 of (backend, model, rating mode, system prompt, user prompt).
API keys are read from the environment when the client is built, handed to the SDK and
nothing else: not in the spec, the cache, log lines, error strings or reprs.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import math
import os
import re
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable

from task_vector_opt.errors import UsageError
from task_vector_opt.identity import outside_identity

log = logging.getLogger(__name__)

BACKENDS = ("openai", "azure", "openai-compatible", "anthropic", "hf")
BACKEND_CHOICES = ("auto",) + BACKENDS
RATING_MODES = ("text", "logprob")
DEFAULT_JUDGE = "gpt-4"
DEFAULT_CACHE = "runs/judge_cache.sqlite"
DEFAULT_AZURE_API_VERSION = "2024-10-21"
# The original scripts' "Cohere" judge: Command R+ quantized to 4 bits with bitsandbytes.
COHERE_ALIAS = "cohere"
COHERE_MODEL = "CohereForAI/c4ai-command-r-plus-4bit"
OPENAI_PREFIXES = ("gpt-", "o1", "o3", "o4", "chatgpt")
# OpenAI reasoning models take max_completion_tokens, not max_tokens, and no temperature;
# their hidden reasoning is billed as output, so they get a larger completion budget.
REASONING_PREFIXES = ("o1", "o3", "o4", "gpt-5")
REASONING_MAX_COMPLETION_TOKENS = 8192
KEY_ENV_VARS = ("OPENAI_API_KEY", "AZURE_OPENAI_API_KEY", "ANTHROPIC_API_KEY")
DUMMY_KEY = "EMPTY"
HF_LOGPROB_PREFIX = "Rating: [["  # the assistant turn starts with this; the next token is the rating

# USD per 1M (input, output) tokens for a few models, as listed by the vendors in 2025.
# A model name matches its own entry or that entry plus a snapshot suffix ("gpt-4o-2024-08-06",
# "claude-3-5-sonnet-20241022", "gpt-4-0613", "-latest"). Unknown models have no cost (None).
PRICES_USD_PER_MTOK: dict[str, tuple[float, float]] = {
    "gpt-4": (30.0, 60.0),
    "gpt-4-turbo": (10.0, 30.0),
    "gpt-4o": (2.50, 10.0),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4.1": (2.0, 8.0),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-3.5-turbo": (0.50, 1.50),
    "o1": (15.0, 60.0),
    "o3": (2.0, 8.0),
    "o3-mini": (1.10, 4.40),
    "o4-mini": (1.10, 4.40),
    "claude-3-haiku": (0.25, 1.25),
    "claude-3-opus": (15.0, 75.0),
    "claude-3-5-haiku": (0.80, 4.0),
    "claude-3-5-sonnet": (3.0, 15.0),
    "claude-3-7-sonnet": (3.0, 15.0),
    "claude-sonnet-4": (3.0, 15.0),
    "claude-sonnet-4-5": (3.0, 15.0),
    "claude-opus-4": (15.0, 75.0),
    "claude-opus-4-1": (15.0, 75.0),
    "claude-opus-4-5": (5.0, 25.0),
    "claude-haiku-4-5": (1.0, 5.0),
}


def price_for(model: str) -> tuple[float, float] | None:
    """(input, output) USD per 1M tokens for ``model``, or None when the table does not know it."""
    if model in PRICES_USD_PER_MTOK:
        return PRICES_USD_PER_MTOK[model]
    base = _SNAPSHOT_SUFFIX.sub("", model)
    return PRICES_USD_PER_MTOK.get(base) if base != model else None


_SNAPSHOT_SUFFIX = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{8}|\d{4}|latest|preview)$")


# ----------------------------------------------------------------------------- data


@dataclass(frozen=True)
class JudgeRequest:
    """One judgment to make: the judge prompt's system part and the rendered user part."""

    system: str
    user: str


@dataclass
class Judgment:
    rating: float | None  # None: could not be obtained; excluded from the mean and counted
    text: str  # the judge's raw output ('' on error)
    cached: bool
    error: str | None  # why rating is None
    input_tokens: int = 0
    output_tokens: int = 0


@dataclass
class JudgeTally:
    """What a batch of judgments cost. ``requests``: judge calls made by us (the SDK's own
    retries of one call are not counted); ``failures``: judgments whose rating is None."""

    judgments: int = 0
    requests: int = 0
    cache_hits: int = 0
    retries_for_parse: int = 0
    failures: int = 0
    logprob_fallbacks: int = 0  # logprob mode, rating read from the text instead
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float | None = None  # None when the price of the model is unknown

    def add(self, other: "JudgeTally") -> "JudgeTally":
        cost_unknown = (self.cost_usd is None and self.requests > 0) or (
            other.cost_usd is None and other.requests > 0)
        for name in ("judgments", "requests", "cache_hits", "retries_for_parse", "failures",
                     "logprob_fallbacks", "input_tokens", "output_tokens"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        if cost_unknown or (self.cost_usd is None and other.cost_usd is None):
            self.cost_usd = None
        else:
            self.cost_usd = (self.cost_usd or 0.0) + (other.cost_usd or 0.0)
        return self

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class JudgeSpec:
    """Validated judge settings; JSON-serializable and free of secrets (keys stay in the environment)."""

    backend: str  # one of BACKENDS
    model: str  # model name, Azure deployment, or hf hub id / local dir
    requested: str = outside_identity(default=DEFAULT_JUDGE)  # --judge_model_name as given (backend + model count)
    base_url: str | None = None  # OpenAI-compatible server, Anthropic proxy, or Azure endpoint
    rating_mode: str = "text"
    parallel: int = outside_identity(default=2)
    timeout_s: float = outside_identity(default=120.0)
    max_retries: int = outside_identity(default=5)
    cache_path: str | None = outside_identity(default=DEFAULT_CACHE)
    load_in_4bit: bool = False
    api_version: str | None = outside_identity(default=None)  # azure only: the wire protocol, not the judge
    max_tokens: int = 1024  # API judges' output budget
    hf_max_new_tokens: int = 256  # hf text mode
    hf_batch_size: int = outside_identity(default=8)

    @property
    def name(self) -> str:
        return f"{self.backend}:{self.model}"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------- parsing

_DOUBLE = re.compile(r"\[\[\s*(\d+(?:\.\d+)?)\s*\]\]")
_SINGLE = re.compile(r"\[\s*(\d+(?:\.\d+)?)\s*\]")


def parse_rating(text: str) -> float | None:
    """The first ``[[8]]`` / ``[[8.5]]`` in ``text``, else the first ``[8]``; None when absent or outside 1..10."""
    if not text:
        return None
    match = _DOUBLE.search(text) or _SINGLE.search(text)
    if not match:
        return None
    value = float(match.group(1))
    return value if 1.0 <= value <= 10.0 else None


def _valid_rating(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value) and 1.0 <= value <= 10.0)


def expected_rating(probs: dict[int, float]) -> float | None:
    """Expected value of a (possibly unnormalized) distribution over ratings 1..10."""
    total = sum(p for r, p in probs.items() if 1 <= r <= 10 and p > 0)
    if total <= 0 or not math.isfinite(total):
        return None
    return sum(r * p for r, p in probs.items() if 1 <= r <= 10 and p > 0) / total


def rating_from_openai_logprobs(content: list[Any]) -> float | None:
    """G-Eval expected rating from an OpenAI ``choices[0].logprobs.content`` list, or None.

    The rating position is the token holding the first digit after the first ``[[`` (the
    ``[x]`` fallback when there is no ``[[``). Alternatives in that token's ``top_logprobs``
    count when, after the chosen token's text before the digit (e.g. "" or " " or "[["),
    they read as an integer 1..10.

    "10": tokenizers that keep "10" as one token (OpenAI's do) give it directly. When the
    judge wrote "1" and the next token is "0", P(10) = P("1")·P("0" | "1") and
    P(1) = P("1")·(1 - P("0" | "1")), read from the next position's ``top_logprobs``.
    Otherwise a lone "1" alternative is taken as rating 1 (P(10) via "1"+"0" is then
    counted as 1 -- an approximation that only matters when the judge did not write 1 or 10).
    """
    tokens = [_field(item, "token") or "" for item in content]
    text = "".join(tokens)
    match = re.search(r"\[\[\s*(\d)", text) or re.search(r"\[\s*(\d)", text)
    if not match:
        return None
    digit_at = match.start(1)
    offset = 0
    for index, token in enumerate(tokens):
        if offset <= digit_at < offset + len(token):
            break
        offset += len(token)
    else:
        return None
    chosen = tokens[index]
    lead = chosen[:digit_at - offset]  # what the rating token carries before the digit
    tops = _field(content[index], "top_logprobs") or []
    probs: dict[int, float] = {}
    p_one = 0.0
    for top in tops:
        token, logprob = _field(top, "token"), _field(top, "logprob")
        if not isinstance(token, str) or not isinstance(logprob, (int, float)):
            continue
        if lead and not token.startswith(lead):
            continue
        rest = token[len(lead):].strip()
        if not rest.isdigit() or not 1 <= int(rest) <= 10:
            continue
        p = math.exp(logprob)
        probs[int(rest)] = probs.get(int(rest), 0.0) + p
        if rest == "1":
            p_one += p
    written = chosen[len(lead):].strip()
    if written == "1" and p_one > 0 and 10 not in probs and index + 1 < len(content):
        p_zero = 0.0
        for top in _field(content[index + 1], "top_logprobs") or []:
            if (_field(top, "token") or "").strip() == "0":
                p_zero += math.exp(_field(top, "logprob"))
        p_zero = min(p_zero, 1.0)
        probs[1] = p_one * (1.0 - p_zero)
        probs[10] = p_one * p_zero
    return expected_rating(probs)


def _field(obj: Any, name: str) -> Any:
    return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)


# ----------------------------------------------------------------------------- secrets


_KEY_PATTERN = re.compile(r"\b(sk-|sk_|key-|Bearer\s+)[A-Za-z0-9_\-\.]{4,}")


def scrub(text: str, extra_secrets: Iterable[str] = ()) -> str:
    """``text`` with every known key value and anything key-shaped replaced by ***."""
    secrets = [os.environ.get(name) for name in KEY_ENV_VARS] + list(extra_secrets)
    for secret in secrets:
        if secret and len(secret) >= 4 and secret != DUMMY_KEY:
            text = text.replace(secret, "***")
    return _KEY_PATTERN.sub(lambda m: m.group(1) + "***", text)


def _short_error(exc: BaseException, extra_secrets: Iterable[str] = ()) -> str:
    message = " ".join(str(exc).split())
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    text = scrub(text, extra_secrets)
    return text if len(text) <= 240 else text[:237] + "..."


# ----------------------------------------------------------------------------- cache


class JudgmentCache:
    """Successful judgments on disk: sqlite in WAL mode, safe to share between processes."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(str(self.path), timeout=60.0, isolation_level=None,
                                     check_same_thread=False)
        try:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA busy_timeout=60000")
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS judgments (key TEXT PRIMARY KEY, judge TEXT, rating REAL, "
                "text TEXT, input_tokens INTEGER, output_tokens INTEGER, created REAL)")
        except sqlite3.DatabaseError:
            self._conn.close()
            raise

    @staticmethod
    def key(spec: JudgeSpec, request: JudgeRequest) -> str:
        material = json.dumps([spec.backend, spec.model, spec.rating_mode, request.system, request.user],
                              ensure_ascii=False)
        return hashlib.sha256(material.encode("utf-8")).hexdigest()

    def get(self, key: str) -> Judgment | None:
        try:
            with self._lock:
                row = self._conn.execute(
                    "SELECT rating, text, input_tokens, output_tokens FROM judgments WHERE key = ?",
                    (key,)).fetchone()
        except sqlite3.DatabaseError as exc:
            log.warning("judge cache %s: row %s unreadable (%s); judging again", self.path, key[:12],
                        type(exc).__name__)
            return None
        if row is None:
            return None
        rating, text, tokens_in, tokens_out = row
        if not (_valid_rating(rating) and isinstance(text, str) and isinstance(tokens_in, int)
                and isinstance(tokens_out, int)):
            log.warning("judge cache %s: row %s is corrupted; judging again and overwriting it",
                        self.path, key[:12])
            return None
        return Judgment(float(rating), text, True, None, tokens_in, tokens_out)

    def put(self, key: str, judge: str, judgment: Judgment) -> None:
        if judgment.rating is None:
            return
        try:
            with self._lock:
                self._conn.execute(
                    "INSERT OR REPLACE INTO judgments VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (key, judge, float(judgment.rating), judgment.text, int(judgment.input_tokens),
                     int(judgment.output_tokens), time.time()))
        except sqlite3.DatabaseError as exc:
            log.warning("judge cache %s: could not store a judgment (%s)", self.path, type(exc).__name__)

    def close(self) -> None:
        with self._lock:
            self._conn.close()


# ----------------------------------------------------------------------------- judges


@dataclass
class _Outcome:
    """One call's result before parse-retry logic: text, tokens, and a logprob rating if any."""

    text: str
    input_tokens: int = 0
    output_tokens: int = 0
    logprob_rating: float | None = None
    logprobs_missing: bool = False


class Judge:
    """A judge backend. ``judge_many`` keeps the order of ``requests``."""

    name: str = "judge"

    def __init__(self, spec: JudgeSpec, cache: JudgmentCache | None):
        self.spec = spec
        self.name = spec.name
        self._cache = cache
        self._price = price_for(spec.model) if spec.backend in ("openai", "anthropic") else None
        self._fallback_logged = False
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} mode={self.spec.rating_mode}>"

    # subclasses implement _judge_uncached(requests, tally, on_done) -> list[Judgment]
    def _judge_uncached(self, requests: list[JudgeRequest], tally: JudgeTally,
                        on_done: Any) -> list[Judgment]:
        raise NotImplementedError

    def judge_many(self, requests: list[JudgeRequest], progress: bool = True) -> tuple[list[Judgment], JudgeTally]:
        from tqdm.auto import tqdm

        tally = JudgeTally(judgments=len(requests), cost_usd=0.0 if self._price else None)
        results: list[Judgment | None] = [None] * len(requests)
        bar = tqdm(total=len(requests), desc=f"judge {self.name}", leave=False, disable=not progress)
        try:
            todo: dict[str, list[int]] = {}  # cache key -> positions (identical requests judged once)
            for i, request in enumerate(requests):
                key = JudgmentCache.key(self.spec, request)
                hit = self._cache.get(key) if self._cache is not None and key not in todo else None
                if hit is not None:
                    results[i] = hit
                    tally.cache_hits += 1
                    bar.update(1)
                else:
                    todo.setdefault(key, []).append(i)
            keys = list(todo)
            unique = [requests[todo[k][0]] for k in keys]

            def on_done(n: int = 1) -> None:
                bar.update(n)

            judged = self._judge_uncached(unique, tally, on_done) if unique else []
            for key, judgment in zip(keys, judged):
                if self._cache is not None and judgment.rating is not None:
                    self._cache.put(key, self.name, judgment)
                for n, i in enumerate(todo[key]):
                    if n == 0:
                        results[i] = judgment
                    else:  # a repeat of a request in the same batch: same answer, no second call
                        results[i] = Judgment(judgment.rating, judgment.text, True, judgment.error,
                                              judgment.input_tokens, judgment.output_tokens)
                        bar.update(1)
                        if judgment.rating is None:
                            tally.failures += 1
                        else:
                            tally.cache_hits += 1
        finally:
            bar.close()
        return [r for r in results if r is not None], tally

    def _count(self, tally: JudgeTally, outcome: _Outcome) -> None:
        with self._lock:
            tally.requests += 1
            tally.input_tokens += outcome.input_tokens
            tally.output_tokens += outcome.output_tokens
            if self._price and tally.cost_usd is not None:
                tally.cost_usd += (outcome.input_tokens * self._price[0]
                                   + outcome.output_tokens * self._price[1]) / 1e6

    def _note_fallback(self, tally: JudgeTally, why: str) -> None:
        with self._lock:
            tally.logprob_fallbacks += 1
            if not self._fallback_logged:
                self._fallback_logged = True
                log.warning("judge %s: %s; using the rating written in the text instead "
                            "(said once per judge)", self.name, why)

    def _rating_of(self, outcome: _Outcome, tally: JudgeTally) -> float | None:
        if self.spec.rating_mode == "logprob":
            if outcome.logprob_rating is not None:
                return outcome.logprob_rating
            rating = parse_rating(outcome.text)
            if rating is not None:
                self._note_fallback(tally, "the server returned no logprobs" if outcome.logprobs_missing
                                    else "no rating token among the top logprobs")
            return rating
        return parse_rating(outcome.text)

    def close(self) -> None:
        if self._cache is not None:
            self._cache.close()
            self._cache = None


class _ApiJudge(Judge):
    """Judges behind an HTTP API: one SDK client, ``parallel`` requests in flight at most."""

    def _call(self, request: JudgeRequest) -> _Outcome:
        raise NotImplementedError

    def _secrets(self) -> list[str]:
        key = getattr(getattr(self, "_client", None), "api_key", None)
        return [key] if isinstance(key, str) else []

    def _judge_one(self, request: JudgeRequest, tally: JudgeTally) -> Judgment:
        tokens_in = tokens_out = 0
        for attempt in range(2):
            try:
                outcome = self._call(request)
            except Exception as exc:  # the SDK has already retried what is worth retrying
                error = _short_error(exc, self._secrets())
                log.warning("judge %s: request failed: %s", self.name, error)
                return Judgment(None, "", False, error, tokens_in, tokens_out)
            self._count(tally, outcome)
            tokens_in += outcome.input_tokens
            tokens_out += outcome.output_tokens
            rating = self._rating_of(outcome, tally)
            if rating is not None:
                return Judgment(rating, outcome.text, False, None, tokens_in, tokens_out)
            if attempt == 0:
                with self._lock:
                    tally.retries_for_parse += 1
                log.info("judge %s: no rating in the output; asking once more", self.name)
        return Judgment(None, outcome.text, False, "unparseable judge output (no [[rating]] in 1..10 "
                        "after one retry)", tokens_in, tokens_out)

    def _judge_uncached(self, requests, tally, on_done):
        results: list[Judgment | None] = [None] * len(requests)
        with ThreadPoolExecutor(max_workers=self.spec.parallel, thread_name_prefix="judge") as pool:
            futures = {pool.submit(self._judge_one, request, tally): i for i, request in enumerate(requests)}
            for future in as_completed(futures):
                judgment = future.result()
                results[futures[future]] = judgment
                if judgment.rating is None:
                    with self._lock:
                        tally.failures += 1
                on_done()
        return [r for r in results if r is not None]


class OpenAIJudge(_ApiJudge):
    """OpenAI, Azure OpenAI and any OpenAI-compatible chat-completions server."""

    def __init__(self, spec: JudgeSpec, cache: JudgmentCache | None, client: Any):
        super().__init__(spec, cache)
        self._client = client
        self._reasoning = spec.backend in ("openai", "azure") and spec.model.lower().startswith(REASONING_PREFIXES)

    def _call(self, request: JudgeRequest) -> _Outcome:
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
            kwargs["top_logprobs"] = 20
        response = self._client.chat.completions.create(**kwargs)
        choice = response.choices[0] if response.choices else None
        text = (choice.message.content if choice is not None and choice.message is not None else None) or ""
        usage = getattr(response, "usage", None)
        outcome = _Outcome(text, int(getattr(usage, "prompt_tokens", 0) or 0),
                           int(getattr(usage, "completion_tokens", 0) or 0))
        if self.spec.rating_mode == "logprob":
            content = getattr(getattr(choice, "logprobs", None), "content", None) if choice is not None else None
            if content:
                outcome.logprob_rating = rating_from_openai_logprobs(content)
            else:
                outcome.logprobs_missing = True
        return outcome

    def close(self) -> None:
        try:
            self._client.close()
        finally:
            super().close()


class AnthropicJudge(_ApiJudge):
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

    def _call(self, request: JudgeRequest) -> _Outcome:
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
        return _Outcome(text, int(getattr(usage, "input_tokens", 0) or 0),
                        int(getattr(usage, "output_tokens", 0) or 0))

    def close(self) -> None:
        try:
            self._client.close()
        finally:
            super().close()


class HFJudge(Judge):
    """A transformers causal LM judging in this process (batched; ``parallel`` does not apply).

    logprob mode: the chat-templated judge prompt plus an assistant turn that starts with
    ``Rating: [[`` is run through the model; the next-token distribution over "1".."9" (and
    "10" when the tokenizer has it as one token) gives the rating. Otherwise "10" is "1"
    then "0": the sequence is fed with "1" appended, so the same batched forward pass gives
    P(next | prompt) at the second-to-last position and P("0" | prompt + "1") at the last
    (causal attention: the appended token does not change the earlier position), and
    P(10) = P("1")·P("0"|"1"), P(1) = P("1")·(1 - P("0"|"1")). This mode always yields a rating.

    text mode: greedy generation, then ``parse_rating``; an unparseable output is retried once
    with sampling (temperature 0.7, fixed seed), since a greedy retry would repeat itself.
    """

    def __init__(self, spec: JudgeSpec, cache: JudgmentCache | None):
        super().__init__(spec, cache)
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self._torch = torch
        cuda = torch.cuda.is_available()
        if cuda:
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        else:
            dtype = torch.float32
        kwargs: dict[str, Any] = {"dtype": dtype}
        if cuda:
            kwargs["device_map"] = {"": 0}
        if spec.load_in_4bit:
            from transformers import BitsAndBytesConfig

            kwargs["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=dtype)
        log.info("loading judge model %s (%s, %s)", spec.model, "cuda" if cuda else "cpu",
                 "4-bit" if spec.load_in_4bit else str(dtype).replace("torch.", ""))
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(spec.model)
            self._model = AutoModelForCausalLM.from_pretrained(spec.model, **kwargs)
        except (OSError, ValueError, KeyError) as exc:
            raise UsageError("--judge_model_name", f"cannot load the judge model {spec.model}: "
                             f"{_short_error(exc)}") from None
        self._tokenizer.padding_side = "left"
        if self._tokenizer.pad_token_id is None:
            self._tokenizer.pad_token = self._tokenizer.eos_token
        self._model.eval()
        self._device = next(self._model.parameters()).device
        import inspect

        self._keep_logits = "logits_to_keep" in inspect.signature(self._model.forward).parameters
        if spec.rating_mode == "logprob":
            self._digit_ids, self._ten_id, self._zero_id = self._rating_token_ids()

    # -- prompts

    def _chat_text(self, request: JudgeRequest) -> str:
        tok = self._tokenizer
        if getattr(tok, "chat_template", None):
            for messages in ([{"role": "system", "content": request.system},
                              {"role": "user", "content": request.user}],
                             [{"role": "user", "content": f"{request.system}\n\n{request.user}"}]):
                try:  # some templates refuse a system turn; the second try folds it into the user turn
                    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
                except Exception:
                    continue
        return f"{request.system}\n\n{request.user}\n\n"

    def _encode(self, text: str) -> list[int]:
        tok = self._tokenizer
        special = bool(tok.bos_token) and not text.startswith(tok.bos_token)
        return tok(text, add_special_tokens=special)["input_ids"]

    def _rating_token_ids(self) -> tuple[list[int], int | None, int | None]:
        tok = self._tokenizer

        def next_id(prefix: str, suffix: str) -> int | None:
            base = tok(prefix, add_special_tokens=False)["input_ids"]
            ids = tok(prefix + suffix, add_special_tokens=False)["input_ids"]
            if len(ids) == len(base) + 1 and ids[:len(base)] == base:
                return ids[-1]
            return None

        digits = [next_id(HF_LOGPROB_PREFIX, str(d)) for d in range(1, 10)]
        if any(d is None for d in digits):
            raise UsageError("--judge_rating_mode", f"logprob mode needs single-token digits after "
                             f"'{HF_LOGPROB_PREFIX}', which the tokenizer of {self.spec.model} does not have; "
                             "use --judge_rating_mode text")
        ten = next_id(HF_LOGPROB_PREFIX, "10")
        zero = None if ten is not None else next_id(HF_LOGPROB_PREFIX + "1", "0")
        return [int(d) for d in digits], ten, zero  # type: ignore[arg-type]

    def _batch(self, sequences: list[list[int]]) -> dict[str, Any]:
        torch = self._torch
        width = max(len(s) for s in sequences)
        pad = self._tokenizer.pad_token_id
        ids = torch.full((len(sequences), width), pad, dtype=torch.long)
        mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, seq in enumerate(sequences):
            ids[row, width - len(seq):] = torch.tensor(seq, dtype=torch.long)
            mask[row, width - len(seq):] = 1
        return {"input_ids": ids.to(self._device), "attention_mask": mask.to(self._device)}

    # -- judging

    def _judge_uncached(self, requests, tally, on_done):
        out: list[Judgment] = []
        size = max(1, self.spec.hf_batch_size)
        for start in range(0, len(requests), size):
            chunk = requests[start:start + size]
            judged = self._logprob_batch(chunk, tally) if self.spec.rating_mode == "logprob" \
                else self._text_batch(chunk, tally)
            out.extend(judged)
            on_done(len(chunk))
        return out

    def _logprob_batch(self, requests: list[JudgeRequest], tally: JudgeTally) -> list[Judgment]:
        torch = self._torch
        prompts = [self._encode(self._chat_text(r) + HF_LOGPROB_PREFIX) for r in requests]
        two_step = self._ten_id is None
        one_id = self._digit_ids[0]
        sequences = [p + [one_id] for p in prompts] if two_step else prompts
        inputs = self._batch(sequences)
        inputs["position_ids"] = (inputs["attention_mask"].cumsum(-1) - 1).clamp(min=0)
        if self._keep_logits:
            inputs["logits_to_keep"] = 2  # only the last two positions go through the LM head
        with torch.inference_mode():
            logits = self._model(**inputs).logits[:, -2:, :].float()
        probs_now = torch.softmax(logits[:, -2 if two_step else -1, :], dim=-1)
        probs_next = torch.softmax(logits[:, -1, :], dim=-1) if two_step else None
        judgments = []
        for row, prompt in enumerate(prompts):
            p = {d + 1: float(probs_now[row, tid]) for d, tid in enumerate(self._digit_ids)}
            if two_step:
                p_zero = float(probs_next[row, self._zero_id]) if self._zero_id is not None else 0.0
                p[10] = p[1] * p_zero
                p[1] = p[1] * (1.0 - p_zero)
            else:
                p[10] = float(probs_now[row, self._ten_id])
            rating = expected_rating(p)
            outcome = _Outcome(json.dumps({str(k): round(v, 6) for k, v in sorted(p.items())}), len(prompt), 0)
            self._count(tally, outcome)
            if rating is None:
                with self._lock:
                    tally.failures += 1
                judgments.append(Judgment(None, outcome.text, False, "no probability on the rating tokens",
                                          len(prompt), 0))
            else:
                judgments.append(Judgment(rating, outcome.text, False, None, len(prompt), 0))
        return judgments

    def _generate(self, prompts: list[list[int]], sample: bool) -> list[tuple[str, int]]:
        torch = self._torch
        inputs = self._batch(prompts)
        kwargs: dict[str, Any] = {"max_new_tokens": self.spec.hf_max_new_tokens,
                                  "pad_token_id": self._tokenizer.pad_token_id}
        if sample:
            kwargs.update(do_sample=True, temperature=0.7, top_p=1.0, top_k=0)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        with torch.inference_mode(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            generated = self._model.generate(**inputs, **kwargs)
        new = generated[:, inputs["input_ids"].shape[1]:]
        texts = []
        for row in range(new.shape[0]):
            ids = [int(t) for t in new[row] if int(t) != self._tokenizer.pad_token_id]
            texts.append((self._tokenizer.decode(ids, skip_special_tokens=True), len(ids)))
        return texts

    def _text_batch(self, requests: list[JudgeRequest], tally: JudgeTally) -> list[Judgment]:
        prompts = [self._encode(self._chat_text(r)) for r in requests]
        judgments: list[Judgment | None] = [None] * len(requests)
        retry: list[int] = []
        for i, (text, n_out) in enumerate(self._generate(prompts, sample=False)):
            self._count(tally, _Outcome(text, len(prompts[i]), n_out))
            rating = parse_rating(text)
            judgments[i] = Judgment(rating, text, False, None, len(prompts[i]), n_out)
            if rating is None:
                retry.append(i)
        if retry:
            with self._lock:
                tally.retries_for_parse += len(retry)
            for i, (text, n_out) in zip(retry, self._generate([prompts[i] for i in retry], sample=True)):
                self._count(tally, _Outcome(text, len(prompts[i]), n_out))
                rating = parse_rating(text)
                tokens_out = judgments[i].output_tokens + n_out  # type: ignore[union-attr]
                error = None if rating is not None else \
                    "unparseable judge output (no [[rating]] in 1..10 after one retry)"
                if rating is None:
                    tally.failures += 1
                judgments[i] = Judgment(rating, text, False, error, 2 * len(prompts[i]), tokens_out)
        return [j for j in judgments if j is not None]

    def close(self) -> None:
        model = getattr(self, "_model", None)
        if model is not None:
            self._model = None
            del model
            import gc

            gc.collect()
            if self._torch.cuda.is_available():
                self._torch.cuda.empty_cache()
        super().close()


# ----------------------------------------------------------------------------- spec + registry


def _has_4bit_support() -> str | None:
    """None when bitsandbytes and a CUDA device are present; otherwise what is missing."""
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


def judge_spec_from_args(args: Any) -> JudgeSpec:
    """Validate the ``--judge_*`` / ``--parallel`` flags; every problem is a UsageError naming its flag."""
    requested = (getattr(args, "judge_model_name", None) or "").strip()
    if not requested:
        raise UsageError("--judge_model_name", "must not be empty")
    backend = getattr(args, "judge_backend", None) or "auto"
    if backend not in BACKEND_CHOICES:
        raise UsageError("--judge_backend", f"{backend!r} is not one of {', '.join(BACKEND_CHOICES)}")
    parallel = getattr(args, "parallel", 2)
    if not isinstance(parallel, int) or parallel < 1:
        raise UsageError("--parallel", f"must be at least 1 (got {parallel})")
    mode = getattr(args, "judge_rating_mode", None) or "text"
    if mode not in RATING_MODES:
        raise UsageError("--judge_rating_mode", f"{mode!r} is not one of {', '.join(RATING_MODES)}")
    timeout = getattr(args, "judge_timeout", 120.0)
    if not isinstance(timeout, (int, float)) or not math.isfinite(timeout) or timeout <= 0:
        raise UsageError("--judge_timeout", f"must be a positive number of seconds (got {timeout})")
    retries = getattr(args, "judge_max_retries", 5)
    if not isinstance(retries, int) or retries < 0:
        raise UsageError("--judge_max_retries", f"must be 0 or more (got {retries})")
    cache = getattr(args, "judge_cache", DEFAULT_CACHE)
    cache_path = None if cache is None or str(cache).strip().lower() in ("none", "") else str(cache)
    if cache_path is not None and os.path.isdir(cache_path):
        raise UsageError("--judge_cache", f"{cache_path} is a directory; give a file path (or 'none')")
    load_4bit = bool(getattr(args, "judge_load_in_4bit", False))
    flag_url = getattr(args, "judge_base_url", None)
    flag_url = _check_url(flag_url, "--judge_base_url") if flag_url else None
    env_url = os.environ.get("OPENAI_BASE_URL") or None

    if backend == "auto":
        backend = _infer_backend(requested, flag_url or env_url)
    model = requested
    lower = requested.lower()
    api_version = None
    base_url: str | None = None
    if backend == "hf":
        if lower.startswith("hf:"):
            model = requested[3:].strip()
        if model.lower() == COHERE_ALIAS:
            model = COHERE_MODEL
            missing = _has_4bit_support()
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
    elif backend == "anthropic":
        _need_env("ANTHROPIC_API_KEY", f"anthropic:{model}")
        base_url = flag_url
    elif backend == "azure":
        if lower.startswith("azure:"):
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
        missing = _has_4bit_support()
        if missing:
            raise UsageError("--judge_load_in_4bit", f"4-bit loading needs the bitsandbytes package and a CUDA "
                             f"GPU: {missing}; drop the flag to load the judge in full precision")
    if mode == "logprob" and backend == "anthropic":
        raise UsageError("--judge_rating_mode", "the Anthropic API returns no token probabilities; "
                         "use --judge_rating_mode text with a claude-* judge")
    return JudgeSpec(backend=backend, model=model, requested=requested, base_url=base_url, rating_mode=mode,
                     parallel=parallel, timeout_s=float(timeout), max_retries=retries, cache_path=cache_path,
                     load_in_4bit=load_4bit, api_version=api_version)


def _open_cache(spec: JudgeSpec) -> JudgmentCache | None:
    if spec.cache_path is None:
        return None
    try:
        return JudgmentCache(spec.cache_path)
    except (sqlite3.DatabaseError, OSError) as exc:
        raise UsageError("--judge_cache", f"cannot use {spec.cache_path} as the judgment cache "
                         f"({type(exc).__name__}: {exc}); delete it, give another path, or pass 'none'")


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
    cache = _open_cache(spec)
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
