"""Keeping API keys out of what we print: every known key value and anything key-shaped becomes ***."""
from __future__ import annotations

import os
import re
from typing import Iterable

KEY_ENV_VARS = ("OPENAI_API_KEY", "AZURE_OPENAI_API_KEY", "ANTHROPIC_API_KEY")
# the variable each API backend reads its key from
KEY_VARIABLES = {"openai": "OPENAI_API_KEY", "openai-compatible": "OPENAI_API_KEY", "azure": "AZURE_OPENAI_API_KEY",
                 "anthropic": "ANTHROPIC_API_KEY"}
DUMMY_KEY = "EMPTY"  # what an OpenAI-compatible server without auth gets; not a secret

_KEY_PATTERN = re.compile(r"\b(sk-|sk_|key-|Bearer\s+)[A-Za-z0-9_\-\.]{4,}")
MAX_ERROR_CHARS = 240


def scrub(text: str, extra_secrets: Iterable[str] = ()) -> str:
    """``text`` with every known key value and anything key-shaped replaced by ***."""
    secrets = [os.environ.get(name) for name in KEY_ENV_VARS] + list(extra_secrets)
    for secret in secrets:
        if secret and len(secret) >= 4 and secret != DUMMY_KEY:
            text = text.replace(secret, "***")
    return _KEY_PATTERN.sub(lambda m: m.group(1) + "***", text)


def short_error(exc: BaseException, extra_secrets: Iterable[str] = ()) -> str:
    """One scrubbed line naming the exception, cut to MAX_ERROR_CHARS."""
    message = " ".join(str(exc).split())
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    text = scrub(text, extra_secrets)
    return text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS - 3] + "..."
