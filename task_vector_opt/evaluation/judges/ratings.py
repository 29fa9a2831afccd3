"""Reading a rating out of a judge's answer: the ``[[8]]`` it writes, or the expected value of its
next-token probabilities over "1".."10" (G-Eval style)."""
from __future__ import annotations

import math
import re
from typing import Any

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


def is_valid_rating(value: Any) -> bool:
    """A finite number in 1..10 (booleans are not ratings)."""
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
    # the SDK gives objects; a raw JSON payload gives dicts
    return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)
