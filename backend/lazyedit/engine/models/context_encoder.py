"""LazyDiffusion's context encoder: a ViT over the whole visible canvas and the mask.

It runs once per mask. It sees every token of the canvas but returns only the tokens at the hole
positions, so everything the diffusion decoder needs to know about the rest of the picture (colours,
style, what lies around the hole) must be squeezed into those few tokens.

The mask reaches it at token resolution: a token is in the hole when any of its pixels is. Optionally
(``mask_detail``) each token also reads which of its pixels are masked, on a grid of cells inside it: the
outline a person painted (a star's points, a ring's hole) is finer than a token, and without it the hole is a
blocky footprint the generator can only fill.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config

from .layers import AddedInputs, TransformerBlock, gather_tokens, mask_detail_tokens, patchify, sincos_positions, zero_output_mlp


class ContextEncoder(AddedInputs, ModelMixin, ConfigMixin):
    # the inputs a trained context encoder can be given later: config flag -> its zero-output module
    ADDED_INPUTS = {"mask_detail": "mask_detail_embedder"}
    # a token's side split this many times each way: 4 px cells for the 16 px tokens of an 8x VAE, patch 2
    MASK_DETAIL_CELLS = 4

    @register_to_config
    def __init__(
        self,
        latent_channels: int = 4,
        patch_size: int = 2,
        width: int = 384,
        depth: int = 6,
        heads: int = 6,
        mlp_ratio: float = 4.0,
        out_dim: int = 256,
        mask_detail: bool = False,
    ):
        super().__init__()
        # Input per token: the visible latent (zeros in the hole) plus the mask, patchified.
        self.embed = nn.Linear((latent_channels + 1) * patch_size**2, width)
        self.blocks = nn.ModuleList(TransformerBlock(width, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, out_dim)
        self.apply(_init_linear)
        if mask_detail:  # after apply: its last layer stays zero
            self.mask_detail_embedder = zero_output_mlp(self.MASK_DETAIL_CELLS**2, width)

    def forward(self, latent: torch.Tensor, latent_mask: torch.Tensor, hole_index: torch.Tensor,
                position_offset: torch.Tensor | None = None, pixel_mask: torch.Tensor | None = None) -> torch.Tensor:
        """latent (B, C, h, w), latent_mask (B, 1, h, w) with 1 in the hole tokens, hole_index (B, L) flat token
        indices -> context tokens (B, L, out_dim) for the hole positions only. position_offset (B, 2): token
        (row, col) shift of the positional embedding (training crops; None at inference). pixel_mask (B, 1, H, W),
        1 where masked, at the canvas' pixel size: required by (and only read by) a ``mask_detail`` encoder."""
        p = self.config.patch_size
        visible = torch.cat([latent * (1 - latent_mask), latent_mask], dim=1)
        x = self.embed(patchify(visible, p))
        grid = (latent.shape[2] // p, latent.shape[3] // p)
        if self.config.mask_detail:
            if pixel_mask is None:
                raise ValueError("this context encoder reads the mask's pixels (mask_detail): pass pixel_mask")
            unit = pixel_mask.shape[-1] // grid[1]
            if pixel_mask.shape[-2:] != (grid[0] * unit, grid[1] * unit):
                raise ValueError(f"pixel_mask {tuple(pixel_mask.shape[-2:])} does not cover the latent's {grid} token grid")
            detail = mask_detail_tokens(pixel_mask, unit, self.MASK_DETAIL_CELLS)
            x = x + self.mask_detail_embedder(detail.to(x.dtype))
        all_index = torch.arange(grid[0] * grid[1], device=x.device).expand(x.shape[0], -1)
        x = x + sincos_positions(x.shape[-1], grid, all_index, position_offset).to(x.dtype)
        for block in self.blocks:
            x = block(x)
        return self.out(self.norm(gather_tokens(x, hole_index)))


def _init_linear(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
