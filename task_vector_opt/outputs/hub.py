"""--push_to_hub REPO: upload the saved model directory (weights, tokenizer, model card, report) with huggingface_hub.

Checked before any model loads: the repo id, a token, and that the hub is not switched off (HF_HUB_OFFLINE).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from task_vector_opt.errors import UsageError

log = logging.getLogger(__name__)


def check_push_to_hub(repo_id: str | None) -> None:
    if repo_id is None:
        return
    from huggingface_hub import get_token
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise UsageError("--push_to_hub", f"{repo_id!r} is not a Hugging Face repo id; give one like "
                                          "your-name/my-merged-model") from None
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise UsageError("--push_to_hub", f"{repo_id!r} cannot be uploaded while HF_HUB_OFFLINE is set; unset it "
                                          "or drop --push_to_hub")
    if not get_token():
        raise UsageError("--push_to_hub", f"no Hugging Face token to upload {repo_id!r}; run `hf auth login` or set "
                                          "HF_TOKEN (a token with write access)")


def push_folder(folder: Path, repo_id: str, private: bool, message: str) -> str:
    """Create the model repo if needed and upload ``folder`` in one commit; return the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    repo_url = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    log.info("uploading %s to %s", folder, repo_url)
    commit = api.upload_folder(repo_id=repo_id, repo_type="model", folder_path=str(folder), commit_message=message)
    return str(commit.commit_url or repo_url)
