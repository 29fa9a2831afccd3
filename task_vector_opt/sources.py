"""Where a model comes from: a hub id or a local directory, and the weight files a directory may hold. Shared by
the command line (which checks them) and the merging stage (which resolves and loads them)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from task_vector_opt.identity import outside_identity

WEIGHT_PATTERNS = ("*.safetensors",)
PICKLE_PATTERNS = ("*.bin", "*.pt", "*.pth")


def is_hub_id(text: str) -> bool:
    """True when ``text`` names a Hugging Face hub repo (``org/name`` or ``name``) rather than a local path:
    nothing exists at that path, it is not written like a path, and the hub accepts it as a repo id."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if Path(text).expanduser().exists() or text.startswith((".", "/", "~")) or "\\" in text:
        return False
    try:
        validate_repo_id(text)
    except HFValidationError:
        return False
    return True


@dataclass(frozen=True)
class ModelSource:
    """A model given as a hub id or a local directory."""

    flag: str = outside_identity()  # which flag named it, for one-line errors; the study knows the model by
    # its path or id
    name_or_path: str  # as given: a hub id or a local directory (transformers' pretrained_model_name_or_path)

    @property
    def is_local(self) -> bool:
        return Path(self.name_or_path).expanduser().is_dir()

    @property
    def is_hub_id(self) -> bool:
        return is_hub_id(self.name_or_path)
