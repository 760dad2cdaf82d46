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

    def token_box(self, margin: int = 0) -> tuple[int, int, int, int]:
        """Bounding box of the hole in token units (x0, y0, x1, y1), grown by margin tokens, clipped."""
        ys, xs = torch.nonzero(self.token_mask, as_tuple=True)
        gh, gw = self.grid
        return (
            max(int(xs.min()) - margin, 0),
            max(int(ys.min()) - margin, 0),
            min(int(xs.max()) + 1 + margin, gw),
            min(int(ys.max()) + 1 + margin, gh),
        )

    def pixel_box(self, margin: int = 0) -> Box:
        """token_box in pixels: the region an edit decodes."""
        return tuple(v * self.unit for v in self.token_box(margin))


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
