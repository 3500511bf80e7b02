"""The exact merge: ``W += s B G`` in row blocks, undone bit for bit without a copy of W.

Merging records only the factors of the delta and the few elements where subtracting the same delta
again would not give back W's exact bits; unmerge subtracts and puts those elements back. Used by
:class:`torch_neat.NeatLinear` (its :attr:`~torch_neat.NeatLinear.merge_record`) and by
:mod:`torch_neat.peft` (docs/design.md §3.2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

__all__ = ["MergeRecord", "merge_factors", "unmerge_factors", "unmerged_copy"]

Tensor = torch.Tensor

_INT_VIEW = {8: torch.int64, 4: torch.int32, 2: torch.int16, 1: torch.int8}
# Elements of the (rows, r, d_in) product formed per block while merging.
_MERGE_BLOCK_ELEMENTS = 1 << 24


def _bits(t: Tensor) -> Tensor:
    return t.view(_INT_VIEW[t.element_size()])


@dataclass
class MergeRecord:
    """What unmerge needs: the factors of the delta and the elements the subtraction would get wrong."""

    B: Tensor  # (d_out, R) scale folded in
    G: Tensor  # (R, d_in)
    index: Tensor  # (k,) flat row-major indices into W, int32 when they fit
    values: Tensor  # (k,) original W values there

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.B, self.G, self.index, self.values))


def _delta_rows(B: Tensor, G: Tensor, r0: int, r1: int, dtype: torch.dtype) -> Tensor:
    # Deterministic for given shapes (an elementwise product and a fixed-order reduction, no BLAS
    # kernel choice involved), so unmerge recomputes exactly the delta merge added.
    return (B[r0:r1, :, None] * G[None, :, :]).sum(dim=1).to(dtype)


def _block_rows(d_in: int, R: int) -> int:
    return max(1, _MERGE_BLOCK_ELEMENTS // max(1, d_in * R))


@torch.no_grad()
def merge_factors(weight: Tensor, B: Tensor, G: Tensor, *, exact: bool = True, safe: bool = False) -> Optional[MergeRecord]:
    """Adds ``B @ G`` (B: (d_out, R) with the scale folded in, G: (R, d_in)) into ``weight`` in place.

    With ``exact`` returns the :class:`MergeRecord` that :func:`unmerge_factors` needs to restore the
    weight bit for bit. With ``safe`` checks every merged value is finite before writing anything.
    """
    d_out, d_in = weight.shape
    step = _block_rows(d_in, B.shape[1])
    if safe:
        for r0 in range(0, d_out, step):
            r1 = min(d_out, r0 + step)
            if not torch.isfinite(weight[r0:r1] + _delta_rows(B, G, r0, r1, weight.dtype)).all():
                raise ValueError("merge: the merged weight would contain inf or NaN; the adapter seems broken")
    index_dtype = torch.int32 if d_out * d_in < 2**31 else torch.int64
    index, vals = [], []
    for r0 in range(0, d_out, step):
        r1 = min(d_out, r0 + step)
        block = weight[r0:r1]
        delta = _delta_rows(B, G, r0, r1, weight.dtype)
        new = block + delta
        if exact:
            bad = (_bits(new - delta) != _bits(block)).nonzero()
            if bad.numel():
                index.append(((bad[:, 0] + r0) * d_in + bad[:, 1]).to(index_dtype))
                vals.append(block[bad[:, 0], bad[:, 1]].clone())
        block.copy_(new)
    if not exact:
        return None
    return MergeRecord(
        B=B,
        G=G,
        index=torch.cat(index) if index else torch.empty(0, dtype=index_dtype, device=weight.device),
        values=torch.cat(vals) if vals else weight.new_empty(0),
    )


@torch.no_grad()
def unmerge_factors(weight: Tensor, rec: MergeRecord) -> None:
    """Undoes :func:`merge_factors` exactly."""
    d_out, d_in = weight.shape
    step = _block_rows(d_in, rec.B.shape[1])
    for r0 in range(0, d_out, step):
        r1 = min(d_out, r0 + step)
        weight[r0:r1].sub_(_delta_rows(rec.B, rec.G, r0, r1, weight.dtype))
    if rec.index.numel():
        index = rec.index.long()
        weight[index // d_in, index % d_in] = rec.values


@torch.no_grad()
def unmerged_copy(weight: Tensor, rec: MergeRecord) -> Tensor:
    """A copy of ``weight`` with the merge ``rec`` describes undone (the weight itself is left merged)."""
    original = weight.detach().clone()
    unmerge_factors(original, rec)
    return original
