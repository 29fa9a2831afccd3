"""Left-padded batches of token ids, as causal LMs generate from them: the last real token of every
row sits at the last position, and the attention mask marks the padding out."""
from __future__ import annotations

from typing import Sequence

import torch


def left_padded(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), each of shape (rows, longest sequence), on the CPU."""
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, ids in enumerate(sequences):
        if ids:
            input_ids[row, width - len(ids):] = torch.tensor(list(ids), dtype=torch.long)
            attention_mask[row, width - len(ids):] = 1
    return input_ids, attention_mask
