"""A transformers causal LM judging in this process (the ``hf`` backend; the original's Cohere judge).

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
from __future__ import annotations

import gc
import inspect
import json
import logging
from typing import Any, Callable

from task_vector_opt.errors import UsageError
from task_vector_opt.evaluation.batching import left_padded
from task_vector_opt.evaluation.judges.base import UNPARSEABLE, Judge, JudgeCall
from task_vector_opt.evaluation.judges.cache import JudgmentCache
from task_vector_opt.evaluation.judges.judgment import JudgeRequest, JudgeTally, Judgment
from task_vector_opt.evaluation.judges.ratings import expected_rating, parse_rating
from task_vector_opt.evaluation.judges.secrets import short_error
from task_vector_opt.evaluation.judges.settings import JudgeSpec

log = logging.getLogger(__name__)

HF_LOGPROB_PREFIX = "Rating: [["  # the assistant turn starts with this; the next token is the rating
RETRY_TEMPERATURE = 0.7
RETRY_SEED = 0


class HFJudge(Judge):
    """A transformers causal LM judging in this process (batched; ``parallel`` does not apply)."""

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
                             f"{short_error(exc)}") from None
        self._tokenizer.padding_side = "left"
        if self._tokenizer.pad_token_id is None:
            self._tokenizer.pad_token = self._tokenizer.eos_token
        self._model.eval()
        self._device = next(self._model.parameters()).device
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
        input_ids, attention_mask = left_padded(sequences, self._tokenizer.pad_token_id)
        return {"input_ids": input_ids.to(self._device), "attention_mask": attention_mask.to(self._device)}

    # -- judging

    def _judge_uncached(self, requests: list[JudgeRequest], tally: JudgeTally,
                        on_done: Callable[[int], None]) -> list[Judgment]:
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
            call = JudgeCall(json.dumps({str(k): round(v, 6) for k, v in sorted(p.items())}), len(prompt), 0)
            self._count(tally, call)
            if rating is None:
                with self._lock:
                    tally.failures += 1
                judgments.append(Judgment(None, call.text, False, "no probability on the rating tokens",
                                          len(prompt), 0))
            else:
                judgments.append(Judgment(rating, call.text, False, None, len(prompt), 0))
        return judgments

    def _generate(self, prompts: list[list[int]], sample: bool) -> list[tuple[str, int]]:
        torch = self._torch
        inputs = self._batch(prompts)
        kwargs: dict[str, Any] = {"max_new_tokens": self.spec.hf_max_new_tokens,
                                  "pad_token_id": self._tokenizer.pad_token_id}
        if sample:
            kwargs.update(do_sample=True, temperature=RETRY_TEMPERATURE, top_p=1.0, top_k=0)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        with torch.inference_mode(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(RETRY_SEED)
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
            self._count(tally, JudgeCall(text, len(prompts[i]), n_out))
            rating = parse_rating(text)
            judgments[i] = Judgment(rating, text, False, None, len(prompts[i]), n_out)
            if rating is None:
                retry.append(i)
        if retry:
            with self._lock:
                tally.retries_for_parse += len(retry)
            for i, (text, n_out) in zip(retry, self._generate([prompts[i] for i in retry], sample=True)):
                self._count(tally, JudgeCall(text, len(prompts[i]), n_out))
                rating = parse_rating(text)
                tokens_out = judgments[i].output_tokens + n_out  # type: ignore[union-attr]
                error = None if rating is not None else UNPARSEABLE
                if rating is None:
                    tally.failures += 1
                judgments[i] = Judgment(rating, text, False, error, 2 * len(prompts[i]), tokens_out)
        return [j for j in judgments if j is not None]

    def close(self) -> None:
        model = getattr(self, "_model", None)
        if model is not None:
            self._model = None
            del model
            gc.collect()
            if self._torch.cuda.is_available():
                self._torch.cuda.empty_cache()
        super().close()
