"""Cheap image augmentation for the embedded benchmark data."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["random_shift"]


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Translate each image by up to ``max_shift`` pixels (zero padding), a cheap augmentation.

    Args:
        x: Images ``[B, C, H, W]``.
        max_shift: Largest shift in pixels along each axis; 0 returns ``x`` unchanged.
        generator: Optional random generator for reproducibility.

    Returns:
        Shifted images ``[B, C, H, W]``.
    """
    if max_shift <= 0:
        return x
    b, _, h, w = x.shape
    pad = F.pad(x, (max_shift,) * 4, value=float(x.min()))
    dy = torch.randint(0, 2 * max_shift + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * max_shift + 1, (b,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None]).view(b, 1, h, 1).expand(b, x.shape[1], h, w + 2 * max_shift)
    out = torch.gather(pad, 2, rows)
    cols = (dx[:, None] + torch.arange(w)[None]).view(b, 1, 1, w).expand(b, x.shape[1], h, w)
    return torch.gather(out, 3, cols)
