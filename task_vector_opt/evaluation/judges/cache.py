"""Successful judgments on disk, so that a rerun or another worker never pays for the same judgment twice.

sqlite in WAL mode (several processes may share the file), keyed by sha256 of (backend, model,
rating mode, system prompt, user prompt). A row that cannot be read back is a miss, never a rating.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
from pathlib import Path

from task_vector_opt.errors import UsageError
from task_vector_opt.evaluation.judges.judgment import JudgeRequest, Judgment
from task_vector_opt.evaluation.judges.ratings import is_valid_rating
from task_vector_opt.evaluation.judges.settings import JudgeSpec

log = logging.getLogger(__name__)


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
        if not (is_valid_rating(rating) and isinstance(text, str) and isinstance(tokens_in, int)
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


def open_cache(spec: JudgeSpec) -> JudgmentCache | None:
    """The cache ``spec`` names (None when it names none); a file that is not a usable cache is a UsageError."""
    if spec.cache_path is None:
        return None
    try:
        return JudgmentCache(spec.cache_path)
    except (sqlite3.DatabaseError, OSError) as exc:
        raise UsageError("--judge_cache", f"cannot use {spec.cache_path} as the judgment cache "
                         f"({type(exc).__name__}: {exc}); delete it, give another path, or pass 'none'")
