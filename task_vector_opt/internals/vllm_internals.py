"""vLLM's internals that the vLLM answer backend needs, behind one door (tests/test_library_doors.py checks them).

The backend pushes the live model's tensors into vLLM's worker after each merge (evaluation/vllm_backend.py);
that is one device copy per tensor only when the engine core runs in this process, which vLLM offers through an
environment variable, not an argument of ``LLM``: ``VLLM_ENABLE_V1_MULTIPROCESSING=0``. vLLM reads it while the
engine is built (``LLMEngine.from_engine_args``, ``UniProcExecutor``) and caches its settings once the engine core
has started (``vllm.envs.enable_envs_cache``), so ``engine_in_this_process`` sets it for the engine's start only
and puts the earlier value back: the rest of the process, and any process it starts later, does not inherit it.
``check_envs`` fails with one clear line when the installed vLLM no longer knows the variable.
"""
from __future__ import annotations

import contextlib
import os
from types import ModuleType
from typing import Iterator

IN_PROCESS_VARIABLE = "VLLM_ENABLE_V1_MULTIPROCESSING"
IN_PROCESS_VALUE = "0"


class VLLMChanged(RuntimeError):
    """The installed vLLM no longer has an internal this program relies on."""


def check_envs(envs: ModuleType) -> None:
    """Raise VLLMChanged unless ``envs`` (vllm.envs) declares the variable that keeps the engine in this process."""
    declared = getattr(envs, "environment_variables", None)
    if not isinstance(declared, dict) or IN_PROCESS_VARIABLE not in declared:
        version = getattr(envs, "__version__", None) or _version()
        raise VLLMChanged(f"vllm.envs declares no {IN_PROCESS_VARIABLE} (vLLM {version}); --generation_backend vllm "
                          "runs the engine in this process through it: install a vLLM version the project supports "
                          "(pip install '.[vllm]')")


@contextlib.contextmanager
def engine_in_this_process() -> Iterator[None]:
    """Within the block (the engine's start), vLLM builds its engine core in this process."""
    import vllm.envs

    check_envs(vllm.envs)
    previous = os.environ.get(IN_PROCESS_VARIABLE)
    os.environ[IN_PROCESS_VARIABLE] = IN_PROCESS_VALUE
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(IN_PROCESS_VARIABLE, None)
        else:
            os.environ[IN_PROCESS_VARIABLE] = previous


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("vllm")
    except PackageNotFoundError:
        return "not installed"
