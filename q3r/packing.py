"""One buffer per shape group whose views are the model's parameters.

AdamQ3R reads every regularized matrix of a shape group as one (G, d1, d2) tensor and writes
R(W)'s step back. With the weights scattered over G parameters that costs a stack and a copy
back of all of them every step, which on CPU cost as much as the Q3R matmuls themselves. Packed,
the group's weights live in one buffer and each parameter's data is a view into it
(``p.data = buffer[i:j].view(p.shape)``), so the step reads and writes them in place.

The Parameter objects stay the model's: same identity, names, ``requires_grad``, gradients
(separate tensors) and optimizer state. ``model.state_dict()`` holds views that together cover
the buffer exactly, so a checkpoint of the whole model is the same size as before (a
``state_dict`` of a part of the model stores the whole buffer). Anything that replaces a
parameter's data afterwards (``p.data = ...``, as ``Module._apply`` does for a new dtype or device)
breaks the link: ``PackedWeights.buffer()`` notices by address at every use and packs again, or returns
None (the caller stacks copies) when the parameters no longer qualify.

A group packs when each parameter it touches is covered entirely by consecutive members, in row
order (a whole weight, or the Q, K, V rows of a fused qkv), is a contiguous float32/float64 leaf
(half precision is stacked into float32 for the SVDs, so it cannot be a view) and owns its
storage alone (a parameter that already shares memory with something is left as it is).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from .targets import Target

PACKABLE_DTYPES = (torch.float32, torch.float64)


class PackedWeights:
    """The weights of same-shape targets kept in one (G, d1, d2) buffer, the parameters its views."""

    def __init__(self, targets: Sequence[Target]):
        self.spans = _spans(targets)              # [(param, first member, end member)] or None
        self.shape = (len(targets), *targets[0].shape)   # (G, d1, d2)
        self._buffer: Optional[Tensor] = None
        self._offsets: list[int] = []             # bytes from the buffer's start to each parameter's

    def buffer(self) -> Optional[Tensor]:
        """The (G, d1, d2) buffer that the parameters are views of; None if they cannot be packed."""
        if self.spans is None:
            return None
        if self._buffer is not None:
            base = self._buffer.data_ptr()        # follows the storage if it moved (share_memory_)
            if all(p.data_ptr() == base + o for (p, _, _), o in zip(self.spans, self._offsets)):
                return self._buffer
        return self._pack()

    def _pack(self) -> Optional[Tensor]:
        params = [p for p, _, _ in self.spans]
        if not all(_packable(p, self._buffer) for p in params):
            self._buffer, self._offsets = None, []
            return None
        _, d1, d2 = self.shape
        buffer = torch.empty(self.shape, dtype=params[0].dtype, device=params[0].device)
        with torch.no_grad():
            for p, start, end in self.spans:
                buffer[start:end].copy_(p.detach().view(end - start, d1, d2))
                p.data = buffer[start:end].view(p.shape)
        self._buffer = buffer
        self._offsets = [p.data_ptr() - buffer.data_ptr() for p in params]
        return buffer


def _spans(targets: Sequence[Target]) -> Optional[list[tuple[Tensor, int, int]]]:
    """Runs of consecutive members that cover one parameter each, in row order; None if the
    members do not split into such runs (the group is then stacked, not packed)."""
    spans, i = [], 0
    while i < len(targets):
        p, j, row = targets[i].param, i, 0
        while j < len(targets) and targets[j].param is p and targets[j].row_start == row:
            row = targets[j].row_end
            j += 1
        if row != p.shape[0] or any(q is p for q, _, _ in spans):
            return None
        spans.append((p, i, j))
        i = j
    return spans


def _packable(p: Tensor, buffer: Optional[Tensor]) -> bool:
    """A contiguous float leaf whose storage is its own (or already this group's buffer)."""
    if not (p.is_leaf and p.dtype in PACKABLE_DTYPES and p.is_contiguous()):
        return False
    storage = p.untyped_storage()
    if buffer is not None and storage.data_ptr() == buffer.untyped_storage().data_ptr():
        return True
    return storage.nbytes() == p.numel() * p.element_size()
