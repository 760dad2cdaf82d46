"""LazyDiffusion's context encoder: a ViT over the whole visible canvas and the mask.

It runs once per mask. It sees every token of the canvas but returns only the tokens at the hole
positions, so everything the diffusion decoder needs to know about the rest of the picture (colours,
style, what lies around the hole) must be squeezed into those few tokens.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config

from .layers import TransformerBlock, gather_tokens, patchify, sincos_positions


class ContextEncoder(ModelMixin, ConfigMixin):
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
    ):
        super().__init__()
        # Input per token: the visible latent (zeros in the hole) plus the mask, patchified.
        self.embed = nn.Linear((latent_channels + 1) * patch_size**2, width)
        self.blocks = nn.ModuleList(TransformerBlock(width, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, out_dim)
        self.apply(_init_linear)

    def forward(self, latent: torch.Tensor, latent_mask: torch.Tensor, hole_index: torch.Tensor,
                position_offset: torch.Tensor | None = None) -> torch.Tensor:
        """latent (B, C, h, w), latent_mask (B, 1, h, w) with 1 in the hole, hole_index (B, L) flat token
        indices -> context tokens (B, L, out_dim) for the hole positions only. position_offset (B, 2): token
        (row, col) shift of the positional embedding (training crops; None at inference)."""
        p = self.config.patch_size
        visible = torch.cat([latent * (1 - latent_mask), latent_mask], dim=1)
        x = self.embed(patchify(visible, p))
        grid = (latent.shape[2] // p, latent.shape[3] // p)
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
