"""What every judge backend shares: ``judge_many`` with the cache in front, the tally, and the rating rules.

A backend implements ``_judge_uncached``; ``judge_many`` keeps the order of the requests, answers
repeats from the cache (or from the same batch) and counts what the batch cost.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Callable

from task_vector_opt.evaluation.judges.cache import JudgmentCache
from task_vector_opt.evaluation.judges.judgment import JudgeRequest, JudgeTally, Judgment
from task_vector_opt.evaluation.judges.prices import price_for
from task_vector_opt.evaluation.judges.ratings import parse_rating
from task_vector_opt.evaluation.judges.settings import JudgeSpec

log = logging.getLogger(__name__)

UNPARSEABLE = "unparseable judge output (no [[rating]] in 1..10 after one retry)"


@dataclass
class JudgeCall:
    """One call's result before the parse-retry rule: text, tokens, and a logprob rating if any."""

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

    def _judge_uncached(self, requests: list[JudgeRequest], tally: JudgeTally,
                        on_done: Callable[[int], None]) -> list[Judgment]:
        """Judge ``requests`` (none of them cached), in order; call ``on_done(n)`` as n of them finish."""
        raise NotImplementedError

    def probe(self) -> None:
        """Check, before any model loads, that this judge can answer at all; UsageError if it cannot.
        In-process judges have loaded their model by now, so there is nothing left to check."""

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

    def _count(self, tally: JudgeTally, call: JudgeCall) -> None:
        with self._lock:
            tally.requests += 1
            tally.input_tokens += call.input_tokens
            tally.output_tokens += call.output_tokens
            if self._price and tally.cost_usd is not None:
                tally.cost_usd += (call.input_tokens * self._price[0]
                                   + call.output_tokens * self._price[1]) / 1e6

    def _note_fallback(self, tally: JudgeTally, why: str) -> None:
        with self._lock:
            tally.logprob_fallbacks += 1
            if not self._fallback_logged:
                self._fallback_logged = True
                log.warning("judge %s: %s; using the rating written in the text instead "
                            "(said once per judge)", self.name, why)

    def _rating_of(self, call: JudgeCall, tally: JudgeTally) -> float | None:
        if self.spec.rating_mode == "logprob":
            if call.logprob_rating is not None:
                return call.logprob_rating
            rating = parse_rating(call.text)
            if rating is not None:
                self._note_fallback(tally, "the server returned no logprobs" if call.logprobs_missing
                                    else "no rating token among the top logprobs")
            return rating
        return parse_rating(call.text)

    def close(self) -> None:
        if self._cache is not None:
            self._cache.close()
            self._cache = None
