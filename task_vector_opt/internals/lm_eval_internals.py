"""lm-eval's internals that the JGLUE evaluator and the context-once scorer need, behind one door
(tests/test_library_doors.py checks them against the installed lm-eval).

- **The request progress bar.** ``Task.build_all_requests`` draws a bar with ``lm_eval.api.task``'s module
  global ``tqdm`` and has no option to turn it off: ``no_request_progress_bars`` swaps in a disabled one.
- **HFLM's batch-size cache.** With ``batch_size="auto"`` HFLM keeps the sizes it detected in ``batch_sizes``
  (a dict); ``share_batch_sizes`` hands a new HFLM the run's dict, so a size is detected once per run, not per
  trial.
- **HFLM's token scoring.** ``TemplateLM`` leaves token-level scoring to ``_loglikelihood_tokens(requests,
  disable_tqdm, override_bs)``, the method a model class overrides: the context-once scorer
  (evaluation/context_once.py) overrides it and calls HFLM's ``_detect_batch_size(requests)``. The subclass stays
  beside its scoring, where a reader of the scorer looks for it; ``check_token_scoring`` (called when the subclass
  is made) fails with one clear line when the installed lm-eval no longer has these methods with these
  parameters, and ``detect_batch_size`` is the one call of the private detector.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
from typing import Any, Iterator, Sequence

TOKEN_SCORING = "_loglikelihood_tokens"
TOKEN_SCORING_PARAMETERS = ("requests", "disable_tqdm", "override_bs")  # what the override takes and passes on
BATCH_SIZE_DETECTION = "_detect_batch_size"
BATCH_SIZE_DETECTION_PARAMETERS = ("requests",)


class LmEvalChanged(RuntimeError):
    """The installed lm-eval no longer has an internal this program relies on."""


@contextlib.contextmanager
def no_request_progress_bars(keep: bool = False) -> Iterator[None]:
    """Within the block, lm-eval builds its tasks' requests with no progress bar (one bar per task and trial);
    ``keep``: leave the bar on (the evaluator keeps it at DEBUG)."""
    import lm_eval.api.task as task_module

    original = getattr(task_module, "tqdm", None)
    if original is None or keep:  # None: no bar to silence (check_request_progress_bar tells when lm-eval moved it)
        yield
        return
    task_module.tqdm = functools.partial(original, disable=True)
    try:
        yield
    finally:
        task_module.tqdm = original


def check_request_progress_bar() -> None:
    """Raise LmEvalChanged unless ``lm_eval.api.task`` draws its request bar with a module-level ``tqdm``."""
    import lm_eval.api.task as task_module

    if not callable(getattr(task_module, "tqdm", None)):
        raise LmEvalChanged(f"lm_eval.api.task has no module-level tqdm (lm-eval {_version()}); "
                            "task_vector_opt/internals/lm_eval_internals.py silences the request bar through it")


def share_batch_sizes(lm: Any, batch_sizes: dict) -> None:
    """Let ``lm`` (an HFLM) keep its detected batch sizes in ``batch_sizes``, the run's dict."""
    lm.batch_sizes = batch_sizes


def detect_batch_size(lm: Any, requests: Sequence[Any]) -> int:
    """HFLM's own batch-size detection (largest batch that fits) for ``requests``' first request."""
    return int(getattr(lm, BATCH_SIZE_DETECTION)(requests))


def check_token_scoring(base: type) -> None:
    """Raise LmEvalChanged unless ``base`` (HFLM or a subclass) has the token scoring and batch-size detection
    methods with the parameters the context-once scorer passes."""
    for name, wanted in ((TOKEN_SCORING, TOKEN_SCORING_PARAMETERS),
                         (BATCH_SIZE_DETECTION, BATCH_SIZE_DETECTION_PARAMETERS)):
        method = getattr(base, name, None)
        if not callable(method):
            raise LmEvalChanged(f"{base.__name__} has no method {name} (lm-eval {_version()}); the context-once "
                                f"scorer overrides or calls it: pin lm-eval to a version that has it")
        parameters = inspect.signature(method).parameters
        missing = [p for p in wanted if p not in parameters]
        if missing:
            raise LmEvalChanged(f"{base.__name__}.{name} takes no {', '.join(missing)} (lm-eval {_version()}; it "
                                f"takes {', '.join(parameters)}); the context-once scorer passes them: pin lm-eval "
                                "to a version that does")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lm_eval")
    except PackageNotFoundError:
        return "not installed"
