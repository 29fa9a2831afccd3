"""The context-once multiple-choice scorer: lm-eval's ``HFLM`` with its token scoring replaced, so that each
distinct context runs through the model once and every choice's continuation is scored after it.

HFLM scores a multiple-choice document by running ``context + choice`` once per choice: for JCommonsenseQA
(5 choices behind a few-shot prompt of hundreds of tokens) that is five passes over the same context. Here:

1. the distinct contexts of a batch run once, left-padded (attention mask, position ids from 0 at each
   context's first token), keeping the KV cache and only the last position's logits. Those logits give
   every choice's first token;
2. each choice's remaining tokens run after a copy of its context's cache rows (a batch of choices), and
   their logits give the rest of the choice.

Everything else is HFLM's own: the tokenisation of context and continuation (``TemplateLM.loglikelihood``),
the left truncation to ``max_length`` (the truncated context is what is shared, so choices of different
lengths may get different contexts, exactly as in HFLM), the softmax dtype, mixed precision, the batch size,
``loglikelihood_rolling`` and ``generate_until``. Each request's answer is the same ``(loglikelihood,
is_greedy)`` pair HFLM gives, to float tolerance (tests/test_context_once.py).

``--batch_size`` counts contexts per pass here (HFLM: requests); the choices of those contexts run in
batches of the same size.
"""
from __future__ import annotations

import copy
import functools
import inspect
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from task_vector_opt.errors import UsageError
from task_vector_opt.evaluation.scorers import SCORER_FLAG

Request = tuple[tuple[str, str], list[int], list[int]]  # ((context, continuation) strings, their token ids)


@dataclass
class ScoringCounts:
    """What the scorer ran, for benchmarks: passes, positions through the model (padding included) and
    real tokens (padding excluded)."""

    passes: int = 0
    positions: int = 0
    tokens: int = 0
    contexts: int = 0
    requests: int = 0
    history: list[tuple[int, int]] = field(default_factory=list, repr=False)  # (rows, width) per pass


@dataclass(frozen=True)
class ForwardArgs:
    """How this model's forward takes a KV cache (``cache`` in recent transformers, ``past_key_values`` before)
    and whether it can keep only the last logits."""

    cache_arg: str
    logits_to_keep: bool


def forward_args(model: Any) -> ForwardArgs:
    """The model's forward keywords the scorer needs; UsageError naming --mc_scorer when a model cannot take an
    attention mask, position ids and a KV cache (then only HFLM's one pass per request can score it)."""
    params = inspect.signature(model.forward).parameters
    cache_arg = next((name for name in ("cache", "past_key_values") if name in params), None)
    missing = [name for name in ("attention_mask", "position_ids") if name not in params]
    if cache_arg is None:
        missing.append("cache/past_key_values")
    if missing:
        raise UsageError(SCORER_FLAG, f"context_once cannot score {type(model).__name__}: its forward takes no "
                                      f"{', '.join(missing)}; pass {SCORER_FLAG} hflm")
    return ForwardArgs(cache_arg=cache_arg, logits_to_keep="logits_to_keep" in params)


def scored_window(context: Sequence[int], continuation: Sequence[int], max_length: int) -> tuple[tuple[int, ...], int]:
    """The context HFLM's single pass actually conditions on, and the continuation's length.

    HFLM feeds ``(context + continuation)[-(max_length + 1):][:-1]`` and reads the last ``len(continuation)``
    positions: the first of them is the context's last kept token. So the shared context is that input
    without the continuation's first ``len - 1`` tokens (left-truncated when the pair is too long)."""
    if not context or not continuation:
        raise ValueError("context and continuation must each hold at least one token")
    if len(continuation) > max_length:
        raise ValueError(f"a continuation of {len(continuation)} tokens exceeds max_length {max_length}")
    fed = (list(context) + list(continuation))[-(max_length + 1):][:-1]
    return tuple(fed[:len(fed) - len(continuation) + 1]), len(continuation)


def _select_rows(cache: Any, rows: torch.Tensor) -> Any:
    """A new cache holding ``rows`` of ``cache`` (repeats allowed), the original untouched: each layer is copied
    (its bookkeeping, e.g. a sliding layer's cumulative length, kept) with its key and value rows selected."""
    selected = copy.copy(cache)
    layers = []
    for layer in cache.layers:
        picked = copy.copy(layer)
        if getattr(layer, "keys", None) is not None and layer.keys.numel():
            picked.keys = layer.keys.index_select(0, rows.to(layer.keys.device))
            picked.values = layer.values.index_select(0, rows.to(layer.values.device))
        layers.append(picked)
    selected.layers = layers
    return selected


def _output_cache(output: Any, cache_arg: str) -> Any:
    return getattr(output, cache_arg, None) if hasattr(output, cache_arg) else output.past_key_values


class ContextOnceScoring:
    """The two-stage scoring of one call's requests; see the module docstring.

    ``lm`` is the HFLM instance: its model, device, max_length, softmax dtype, mixed precision and batch size."""

    def __init__(self, lm: Any, counts: ScoringCounts):
        self.lm = lm
        self.model = lm.model
        self.device = lm.device
        self.args = forward_args(self.model)
        self.counts = counts
        self.pad_id = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else lm.eot_token_id

    def _forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                 cache: Any | None, keep_last: bool) -> Any:
        kwargs: dict[str, Any] = {"attention_mask": attention_mask, "position_ids": position_ids, "use_cache": True,
                                  self.args.cache_arg: cache}
        if keep_last and self.args.logits_to_keep:
            kwargs["logits_to_keep"] = 1
        self.counts.passes += 1
        self.counts.positions += input_ids.numel()
        self.counts.history.append(tuple(input_ids.shape))
        precision = self.lm.mixed_precision_dtype
        with torch.no_grad(), torch.autocast(device_type=self.device.type, dtype=precision,
                                             enabled=precision is not None):
            return self.model(input_ids=input_ids, **kwargs)

    def _log_softmax(self, logits: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(logits, dim=-1, dtype=self.lm.softmax_dtype)

    def score(self, requests: Sequence[Request], batch_size: int) -> list[tuple[float, bool]]:
        max_length = self.lm.max_length
        by_context: dict[tuple[int, ...], list[int]] = {}
        continuations: list[list[int]] = []
        for i, (_, context, continuation) in enumerate(requests):
            shared, _ = scored_window(context, continuation, max_length)
            by_context.setdefault(shared, []).append(i)
            continuations.append(list(continuation))
        # longest contexts first (as HFLM orders its requests): little padding per batch, and memory trouble
        # shows on the first batch
        contexts = sorted(by_context, key=lambda c: (-len(c), c))
        self.counts.contexts += len(contexts)
        self.counts.requests += len(requests)
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        for start in range(0, len(contexts), batch_size):
            batch = contexts[start:start + batch_size]
            self._score_batch(batch, [by_context[c] for c in batch], continuations, batch_size, results)
        assert all(r is not None for r in results)
        return results  # type: ignore[return-value]

    def _score_batch(self, batch: list[tuple[int, ...]], members: list[list[int]], continuations: list[list[int]],
                     batch_size: int, results: list) -> None:
        width = max(len(c) for c in batch)
        input_ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, context in enumerate(batch):
            input_ids[row, width - len(context):] = torch.tensor(context, dtype=torch.long)
            mask[row, width - len(context):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        input_ids, mask, positions = (t.to(self.device) for t in (input_ids, mask, positions))
        self.counts.tokens += int(mask.sum())
        longer = [(row, i) for row, ids in enumerate(members) for i in ids if len(continuations[i]) > 1]
        output = self._forward(input_ids, mask, positions, None, keep_last=True)
        first = self._log_softmax(output.logits[:, -1, :])  # (contexts, vocab): every choice's first token
        greedy_first = first.argmax(dim=-1)
        cache = _output_cache(output, self.args.cache_arg) if longer else None
        del output

        firsts: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        for row, ids in enumerate(members):
            for i in ids:
                token = continuations[i][0]
                firsts[i] = (first[row, token], greedy_first[row] == token)
        for i, (logprob, greedy) in firsts.items():
            if len(continuations[i]) == 1:
                results[i] = (float(logprob), bool(greedy))
        for start in range(0, len(longer), batch_size):
            self._score_rest(longer[start:start + batch_size], batch, mask, cache, continuations, firsts, results)

    def _score_rest(self, rows: list[tuple[int, int]], batch: list[tuple[int, ...]], context_mask: torch.Tensor,
                    cache: Any, continuations: list[list[int]], firsts: dict, results: list) -> None:
        """Tokens 2.. of the choices in ``rows`` ((context row, request)), each after its context's cache rows."""
        rest = [continuations[i][:-1] for _, i in rows]  # inputs: the choice without its last token
        width = max(len(r) for r in rest)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        for row, tokens in enumerate(rest):
            input_ids[row, :len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        context_rows = torch.tensor([row for row, _ in rows], dtype=torch.long, device=self.device)
        starts = torch.tensor([len(batch[row]) for row, _ in rows], dtype=torch.long)
        positions = starts[:, None] + torch.arange(width)[None, :]
        # right padding after each choice: causal attention keeps it out of the choice's own positions
        mask = torch.cat([context_mask.index_select(0, context_rows),
                          torch.ones((len(rows), width), dtype=torch.long, device=self.device)], dim=1)
        self.counts.tokens += sum(len(r) for r in rest)
        output = self._forward(input_ids.to(self.device), mask, positions.to(self.device),
                               _select_rows(cache, context_rows), keep_last=False)
        logprobs = self._log_softmax(output.logits)
        greedy = logprobs.argmax(dim=-1)
        for row, (_, i) in enumerate(rows):
            targets = torch.tensor(continuations[i][1:], dtype=torch.long, device=self.device)
            n = len(targets)
            first_logprob, first_greedy = firsts[i]
            picked = logprobs[row, :n].gather(-1, targets[:, None]).squeeze(-1)
            total = torch.cat([first_logprob.reshape(1).to(picked.dtype), picked]).sum()
            results[i] = (float(total), bool(first_greedy) and bool((greedy[row, :n] == targets).all()))


@functools.cache
def context_once_class(base: type) -> type:
    """``base`` (lm-eval's HFLM or a subclass) with its token scoring done context-once; rolling
    log-likelihoods and generation stay ``base``'s own."""

    class ContextOnceLM(base):
        scoring_counts: ScoringCounts

        def __init__(self, *args: Any, **kwargs: Any):
            super().__init__(*args, **kwargs)
            self.scoring_counts = ScoringCounts()
            self._rolling = False
            if self.backend != "causal":
                raise UsageError(SCORER_FLAG, f"context_once scores causal language models; "
                                              f"{type(self.model).__name__} is {self.backend}; pass {SCORER_FLAG} hflm")
            forward_args(self.model)

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            self._rolling = True  # perplexity windows: HFLM's own scoring, unchanged
            try:
                return super().loglikelihood_rolling(requests, disable_tqdm=disable_tqdm)
            finally:
                self._rolling = False

        def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs: int | None = None):
            if self._rolling:
                return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
            answers = ContextOnceScoring(self, self.scoring_counts).score(requests, self._contexts_per_pass(requests,
                                                                                                           override_bs))
            for (request_strings, _, _), answer in zip(requests, answers, strict=True):
                if request_strings is not None:
                    self.cache_hook.add_partial("loglikelihood", request_strings, answer)
            return answers

        def _contexts_per_pass(self, requests, override_bs: int | None) -> int:
            if override_bs:
                return int(override_bs)
            if self.batch_size != "auto":
                return int(self.batch_size)
            # "auto": HFLM's own detection for the longest request (a pass of full-length rows with all their
            # logits, more than a context pass needs), kept per length for the run's later calls
            longest = max(requests, key=lambda r: len(r[1]) + len(r[2]))
            key = ("context_once", min(len(longest[1]) + len(longest[2]), self.max_length))
            if key not in self.batch_sizes:
                self.batch_sizes[key] = self._detect_batch_size([longest])
            return int(self.batch_sizes[key])

    ContextOnceLM.__name__ = ContextOnceLM.__qualname__ = f"ContextOnce{base.__name__}"
    return ContextOnceLM
