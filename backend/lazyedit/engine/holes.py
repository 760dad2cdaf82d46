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
    token_mask = hole_tokens(torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None], unit)[0]
    if dilation > 0:
        token_mask = F.max_pool2d(token_mask[None].float(), 2 * dilation + 1, stride=1, padding=dilation)[0] > 0
    if all_tokens:
        token_mask = torch.ones_like(token_mask)
    index = torch.nonzero(token_mask.flatten(), as_tuple=True)[0]
    return HolePlan(grid=tuple(token_mask.shape), unit=unit, token_mask=token_mask, index=index)


def hole_tokens(mask: torch.Tensor, unit: int) -> torch.Tensor:
    """Pixel masks (B, 1, H, W) -> token masks (B, gh, gw) bool: a token is in the hole when any of its pixels
    is masked (max-pool), so a one-pixel stroke still gets its token."""
    return F.max_pool2d(mask.float(), unit)[:, 0] > 0


def plan_holes_batch(mask: torch.Tensor, unit: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """plan_holes for a batch of masks (B, 1, H, W), as training needs it: token masks (B, gh, gw), hole
    indices (B, L) padded to the largest hole, row-major, and which of them are real (B, L) bool."""
    tok = hole_tokens(mask, unit)
    flat = tok.flatten(1)
    counts = flat.sum(1)
    length = max(int(counts.max()), 1)
    # a stable sort puts hole tokens first, in row-major order
    order = torch.sort((~flat).to(torch.uint8), dim=1, stable=True).indices[:, :length]
    valid = torch.arange(length, device=mask.device)[None] < counts[:, None]
    index = torch.where(valid, order, torch.zeros_like(order))
    return tok, index, valid


def token_mask_to_latent(token_mask: torch.Tensor, patch: int) -> torch.Tensor:
    """Token masks (B, gh, gw) -> the latent-size mask (B, 1, gh * patch, gw * patch) the context encoder reads."""
    return token_mask.float()[:, None].repeat_interleave(patch, 2).repeat_interleave(patch, 3)


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


def context_window(box: Box, size: tuple[int, int], side: int, unit: int) -> Box:
    """The part of a large canvas an edit over the mask box `box` reads (`size` is the canvas's W, H): at most
    `side` pixels along each axis, or the mask's extent plus an eighth of `side` of context on each side where
    the mask is larger. A canvas no larger than `side` along an axis is read whole along it. Windows sit on a
    grid of a quarter of `side` where the mask fits one, so the next mask in the same area reuses the
    encoded window."""
    (x0, x1), (y0, y1) = (_window_span(box[0], box[2], size[0], side, unit), _window_span(box[1], box[3], size[1], side, unit))
    return x0, y0, x1, y1


def _window_span(m0: int, m1: int, length: int, side: int, unit: int) -> tuple[int, int]:
    if length <= side:
        return 0, length
    context = side // 8
    span = min(max(side, -(-(m1 - m0 + 2 * context) // unit) * unit), length)
    clamp = lambda origin: min(max(origin, 0), length - span)  # noqa: E731
    centred = clamp((m0 + m1 - span) // 2)  # keeps the context: span covers the mask and twice the context
    step = max(side // 4 // unit * unit, unit)
    snapped = clamp(round(centred / step) * step)
    # the snapped window must keep the mask's context inside it, unless the canvas edge is nearer
    if snapped <= max(m0 - context, 0) and snapped + span >= min(m1 + context, length):
        return snapped, snapped + span
    return centred, centred + span
