"""What flows through a judge: the request, the judgment it gives back, and the tally of a batch's cost."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


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
