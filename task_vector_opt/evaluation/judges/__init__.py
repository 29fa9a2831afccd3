"""LLM judges for MT-Bench style grading: one registry of backends behind one small interface.

``settings.judge_spec_from_args`` validates the ``--judge_*`` flags into a ``JudgeSpec`` (plain,
JSON-serializable settings, never a secret) and raises ``UsageError`` before any model loads;
``registry.make_judge`` builds the client or the in-process model once per run; every backend
then answers ``judge_many(requests) -> (judgments, tally)`` (``base.Judge``).

Backends
    openai, azure, openai-compatible  the ``openai`` SDK (``api.OpenAIJudge``)
    anthropic                         the ``anthropic`` SDK (``api.AnthropicJudge``)
    hf                                a local ``transformers`` causal LM, in this process (``in_process.HFJudge``)

Ratings (``ratings``)
    text     the judge writes an explanation and ``[[rating]]``; ``parse_rating`` reads it.
    logprob  G-Eval style: the rating is the expected value of the rating under the judge's
             own next-token probabilities of "1".."10" at the position where the rating is
             written (OpenAI-style APIs: ``top_logprobs``; hf: one batched forward pass).

A judgment that cannot be obtained (an API error after the SDK's own retries, or output
that still has no rating after one fresh retry) gets ``rating=None`` and an ``error``; it
is never scored as 0 or -1, and the tally counts it as a failure.

Also here: the persistent judgment cache (``cache``), the price table (``prices.json``, read by
``prices``) and the scrubbing of API keys from anything printed (``secrets``).
"""
