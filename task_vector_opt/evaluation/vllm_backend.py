"""--generation_backend vllm: bench answers from a vLLM engine that follows the live model's merges.

The engine starts once per run, in this process, from the live model's config and tokenizer with dummy
weights, and is filled by pushing every live tensor into it (checkpoint names: evaluation.vllm_names).
After each merge only the tensors the merger rewrote since the last push are pushed again (the merger
counts its writes), through ``LLM.collective_rpc`` with a function that calls the model's own
``load_weights``: vLLM fuses and places them as it does when loading a checkpoint. Nothing is reloaded and
nothing is written to disk per trial. A push resets the engine's prefix cache, whose entries the old weights
computed.

In this process (VLLM_ENABLE_V1_MULTIPROCESSING=0) the pushed tensors reach vLLM's worker as they are:
one device-to-device copy per tensor, or one host-to-device copy when the live model is on the CPU.

Prompts, temperatures and answer text are those of the hf path (evaluation.generation): the same prompt
token ids, FastChat's temperature per category (greedy at 0; above 0, temperature then top-k 50), the same
stop tokens and strings, the same decoding of the answer tokens. A sampled answer depends only on (seed,
question, turn) in both backends, but the two draw from different random streams.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch

from task_vector_opt.errors import UsageError
from task_vector_opt.evaluation.bench.files import Question
from task_vector_opt.evaluation.finite import NonFiniteLogits
from task_vector_opt.evaluation.generation import SAMPLING_TOP_K, AnswerGenerator, row_seed
from task_vector_opt.evaluation.vllm_names import checkpoint_tensors, mixtral_router_name, slot_checkpoint_name

log = logging.getLogger(__name__)

GENERATION_BACKENDS = ("hf", "vllm")
BACKEND_FLAG = "--generation_backend"
MEMORY_FLAG = "--vllm_gpu_memory_utilization"
DEFAULT_GPU_MEMORY_UTILIZATION = 0.5
MIN_VLLM = "0.33.0"  # the version whose weight-loading rules tests/test_vllm_backend.py checks the names against
INSTALL_HINT = "pip install -e '.[vllm]' (or: bash scripts/setup.sh vllm) on a machine with a CUDA GPU"


# ------------------------------------------------------------------------------------------------ validation

def check_backend_flags(backend: str, utilization: float | None) -> float:
    """The flags' own values (before anything else is looked at); returns vLLM's share of the GPU's memory.
    ``utilization`` None: --vllm_gpu_memory_utilization not given (the default share); given with the hf backend,
    which never reads it, it is refused."""
    if backend not in GENERATION_BACKENDS:
        raise UsageError(BACKEND_FLAG, f"{backend!r} is not a backend; choose hf or vllm")
    if utilization is None:
        return DEFAULT_GPU_MEMORY_UTILIZATION
    if not 0.0 < utilization < 1.0:
        raise UsageError(MEMORY_FLAG, f"({utilization}) must be between 0 and 1 (exclusive): the share of the GPU's "
                                      "memory vLLM takes; the rest holds the live model and the task vectors")
    if backend != "vllm":
        raise UsageError(MEMORY_FLAG, f"({utilization}) was given with --generation_backend {backend}, which runs no "
                                      "vLLM engine; add --generation_backend vllm, or drop "
                                      "--vllm_gpu_memory_utilization")
    return utilization


def check_vllm_runs_here() -> None:
    """--generation_backend vllm: the vllm package installed and a CUDA GPU visible (cheap; asked first)."""
    if importlib.util.find_spec("vllm") is None:
        raise UsageError(BACKEND_FLAG, f"'vllm' needs the vllm package, which is not installed; install it with "
                                       f"{INSTALL_HINT}, or use --generation_backend hf")
    if not torch.cuda.is_available():
        raise UsageError(BACKEND_FLAG, "'vllm' needs a CUDA GPU and none is visible here; use --generation_backend "
                                       "hf (the default)")


def check_vllm_serves(architectures: Sequence[str], where: str, served: set[str] | None = None) -> None:
    """The target's architectures (its config.json) must include one vLLM serves (``served``: vLLM's registry)."""
    if served is None:
        from vllm import ModelRegistry

        served = set(ModelRegistry.get_supported_archs())
    if not any(arch in served for arch in architectures):
        raise UsageError(BACKEND_FLAG, f"vLLM does not serve {where} (architectures: "
                                       f"{', '.join(architectures) or 'none'} in its config.json); use "
                                       "--generation_backend hf")


# ------------------------------------------------------------------------------------------------ the engine

def _load_weights(worker: Any, weights: list[tuple[str, torch.Tensor]], complete: bool) -> list[str]:
    """Runs in vLLM's worker: the model's own load_weights (vLLM's checkpoint loading rules). With ``complete``
    (the first fill), returns the names of vLLM parameters that no pushed tensor reached."""
    model = worker.model_runner.model
    loaded = model.load_weights(weights=weights)
    if not complete or loaded is None:
        return []
    return sorted(set(dict(model.named_parameters())) - set(loaded))


class TensorFeed:
    """Which live tensors a merge rewrote since the last push, as (checkpoint name, tensor) pairs.

    Reads the merger's write counters (merging.merger.Merger.writes, MoEMerger.writes), so a tensor rewritten
    to the same setting it had (a restore to the target) is pushed too: it changed in between."""

    def __init__(self, merger: Any, model: torch.nn.Module):
        self.merger = merger
        self.model = model
        self.moe = getattr(merger, "moe", None)  # the MoE merger's InMemoryMoE; None for a dense merger
        self.seen: dict[str, int] = {}
        self.routers_seen = 0
        self.mark()

    def mark(self) -> None:
        """Everything written so far is in the engine."""
        self.seen = dict(self.merger.writes)
        self.routers_seen = getattr(self.merger, "router_refreshes", 0)

    def changed(self) -> list[tuple[str, torch.Tensor]]:
        keys = [key for key, count in self.merger.writes.items() if self.seen.get(key) != count]
        if self.moe is None:
            pairs = checkpoint_tensors(self.model, keys) if keys else []
        else:
            pairs = [(slot_checkpoint_name(key), self.moe.live(key)) for key in keys]
            if getattr(self.merger, "router_refreshes", 0) != self.routers_seen:
                pairs += [(mixtral_router_name(i), layer.mlp.gate.weight.data)
                          for i, layer in enumerate(self.moe.model.model.layers)]
        return pairs


def nonfinite_tensor(pairs: Iterable[tuple[str, torch.Tensor]]) -> str | None:
    """The first tensor holding NaN or inf, or None. One host sync for all of them."""
    pairs = list(pairs)
    if not pairs:
        return None
    finite = torch.stack([tensor.isfinite().all().to("cpu", non_blocking=True) for _, tensor in pairs])
    if bool(finite.all()):
        return None
    return pairs[int((~finite).nonzero()[0, 0])][0]


def _sampling_params_class():
    from vllm import SamplingParams

    return SamplingParams


def _start_llm(folder: Path, dtype: torch.dtype, utilization: float, trust_remote_code: bool):
    # The engine in this process: a push hands vLLM's worker our tensors themselves, no copy between processes.
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    from vllm import LLM

    return LLM(model=str(folder), tokenizer=str(folder), dtype=str(dtype).removeprefix("torch."),
               load_format="dummy", gpu_memory_utilization=utilization, enable_prefix_caching=True,
               trust_remote_code=trust_remote_code, seed=0)


@dataclass
class PushStats:
    pushes: int = 0
    tensors: int = 0
    seconds: float = 0.0  # the last push's (load_weights + prefix cache reset)


class VLLMEngine:
    """One vLLM engine per run holding a copy of the live model's weights, kept equal to it by pushes."""

    def __init__(self, utilization: float = DEFAULT_GPU_MEMORY_UTILIZATION, trust_remote_code: bool = False,
                 start: Callable[..., Any] = _start_llm, sampling_params: Callable[[], type] = _sampling_params_class):
        """``start`` / ``sampling_params``: how the vLLM LLM and its SamplingParams are made (tests pass a
        recording stand-in: vLLM itself needs a GPU)."""
        self.utilization = utilization
        self.trust_remote_code = trust_remote_code
        self._start = start
        self._sampling_params = sampling_params
        self.llm: Any = None
        self.feed: TensorFeed | None = None
        self.merger: Any = None
        self.stats = PushStats()
        self._folder: tempfile.TemporaryDirectory | None = None

    def follow(self, merger: Any) -> None:
        """The merger whose writes are pushed (engine.run hands it over once the workspace is ready)."""
        self.merger = merger

    def ensure_started(self, model: torch.nn.Module, processor: Any) -> None:
        """Start the engine (once) from the live model's config and tokenizer and push every live tensor."""
        if self.llm is not None:
            return
        if self.merger is None:
            raise RuntimeError("the vLLM backend was not handed the run's merger (engine.run calls follow)")
        started = time.perf_counter()
        self._folder = tempfile.TemporaryDirectory(prefix="task_vector_opt-vllm-")
        folder = Path(self._folder.name)
        model.config.save_pretrained(folder)  # config, tokenizer / processor files: no weights are written
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(folder)
        processor.save_pretrained(folder)
        dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
        self.llm = self._start(folder, dtype, self.utilization, self.trust_remote_code)
        self.feed = TensorFeed(self.merger, model)
        weights = checkpoint_tensors(model)
        self._check_finite(weights)
        unfilled = self._push(weights, complete=True)
        if unfilled:
            raise RuntimeError(f"vLLM's model has {len(unfilled)} parameter(s) no live tensor filled "
                               f"({', '.join(unfilled[:3])}); this architecture's names do not map")
        self.feed.mark()
        log.info("vLLM engine started and filled in %.1fs (%d tensors pushed, gpu_memory_utilization %.2f)",
                 time.perf_counter() - started, len(weights), self.utilization)

    def sync(self) -> int:
        """Push what the merger rewrote since the last push; return how many tensors went."""
        assert self.feed is not None
        pairs = self.feed.changed()
        if not pairs:
            return 0
        self._check_finite(pairs)
        self._push(pairs, complete=False)
        self.feed.mark()
        return len(pairs)

    def _check_finite(self, pairs: list[tuple[str, torch.Tensor]]) -> None:
        # The hf path fails such a merge on its NaN logits (evaluation.finite); vLLM would answer from it.
        bad = nonfinite_tensor(pairs)
        if bad is not None:
            raise NonFiniteLogits(f"non-finite values in the merged tensor {bad}; vLLM would answer from them")

    def _push(self, pairs: list[tuple[str, torch.Tensor]], complete: bool) -> list[str]:
        started = time.perf_counter()
        unfilled = self.llm.collective_rpc(_load_weights, args=(pairs, complete))[0]
        self.llm.reset_prefix_cache()  # its entries were computed with the old weights
        if torch.cuda.is_available():
            torch.cuda.synchronize()  # the push's copies are done when it is timed
        self.stats = PushStats(self.stats.pushes + 1, len(pairs), time.perf_counter() - started)
        log.debug("pushed %d tensors into vLLM in %.3fs", len(pairs), self.stats.seconds)
        return unfilled

    def generate(self, prompts: list[Any], params: list[Any]) -> list[list[int]]:
        """Token ids of each prompt's answer (vLLM batches and schedules the prompts itself)."""
        outputs = self.llm.generate(prompts, sampling_params=params, use_tqdm=False)
        return [list(output.outputs[0].token_ids) for output in outputs]

    def sampling(self, **kwargs: Any) -> Any:
        return self._sampling_params()(**kwargs)


class VLLMAnswerGenerator(AnswerGenerator):
    """AnswerGenerator's prompts, temperatures and decoding, answered by the vLLM engine (see the module doc)."""

    def __init__(self, tokenizer, engine: VLLMEngine, **kwargs: Any):
        super().__init__(tokenizer, **kwargs)
        self.engine = engine

    def params_for(self, temperature: float, seed: int, eos: list[int]) -> Any:
        sampling = {"temperature": temperature, "top_k": SAMPLING_TOP_K, "top_p": 1.0, "seed": seed} \
            if temperature > 0 else {"temperature": 0.0}
        return self.engine.sampling(max_tokens=self.max_new_tokens, stop_token_ids=eos,
                                    stop=self.format.stop_strings or None, skip_special_tokens=True, **sampling)

    def _answer(self, model, questions: Sequence[Question], batched: bool) -> list[list[str]]:
        self.engine.ensure_started(model, self.tokenizer)
        self.engine.sync()
        questions = list(questions)
        answers: list[list[str]] = [[] for _ in questions]
        eos, _pad = self._special_ids(model)
        for turn in range(max((len(q.turns) for q in questions), default=0)):
            asked = [i for i, q in enumerate(questions) if len(q.turns) > turn]
            prompts = [{"prompt_token_ids": self.prompt_ids(questions[i], answers[i])} for i in asked]
            params = [self.params_for(self.temperature_of(questions[i]),
                                      row_seed(self.seed, questions[i].question_id, turn), eos) for i in asked]
            for i, ids in zip(asked, self.engine.generate(prompts, params)):
                answers[i].append(self._decode(ids, eos))
        return answers
