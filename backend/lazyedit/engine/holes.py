"""From a pixel mask to the set of tokens the diffusion decoder works on."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels, end exclusive


@dataclass(frozen=True)
class HolePlan:
    grid: tuple[int, int]  # token grid of the padded canvas
    unit: int  # pixels per token side (VAE factor * patch size)
    token_mask: torch.Tensor  # (gh, gw) bool
    index: torch.Tensor  # (L,) flat token indices, row-major

    @property
    def num_tokens(self) -> int:
        return int(self.index.numel())

    @property
    def fraction(self) -> float:
        return self.num_tokens / (self.grid[0] * self.grid[1])


def plan_holes(mask: np.ndarray, unit: int, dilation: int = 0, all_tokens: bool = False) -> HolePlan:
    """mask (H, W) bool at pixel size, H and W multiples of unit. A token is in the hole when any of its
    pixels is masked (max-pool), then the hole is grown by `dilation` tokens."""
    h, w = mask.shape
    if h % unit or w % unit:
        raise ValueError(f"mask size {w}x{h} is not a multiple of the token size {unit}")
    m = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]
    tokens = F.max_pool2d(m, unit)
    if dilation > 0:
        tokens = F.max_pool2d(tokens, 2 * dilation + 1, stride=1, padding=dilation)
    token_mask = tokens[0, 0] > 0
    if all_tokens:
        token_mask = torch.ones_like(token_mask)
    index = torch.nonzero(token_mask.flatten(), as_tuple=True)[0]
    return HolePlan(grid=tuple(token_mask.shape), unit=unit, token_mask=token_mask, index=index)


def mask_box(mask: np.ndarray) -> Box:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def decode_box(box: Box, margin: int, align: int, size: tuple[int, int]) -> Box:
    """The region an edit decodes: the mask's bounding box (`box`) grown by `margin` pixels of known context
    for the asymmetric decoder, widened to whole latent pixels (`align`), clipped to `size` (W, H of the
    padded canvas, multiples of align). The box follows the mask, not its tokens: a token box decodes up to a
    token more on every side, and the decoder's cost grows with the area it decodes."""
    x0, y0, x1, y1 = box
    w, h = size
    return (
        max((x0 - margin) // align * align, 0),
        max((y0 - margin) // align * align, 0),
        min(-(-(x1 + margin) // align) * align, w),
        min(-(-(y1 + margin) // align) * align, h),
    )
