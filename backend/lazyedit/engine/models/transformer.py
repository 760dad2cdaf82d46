"""LazyDiffusion's diffusion decoder: a PixArt-style DiT that only ever sees the hole tokens.

Per token the input is the noisy latent patch concatenated (hidden dimension) with the context token
the context encoder produced for that position. Positions are 2-D sin-cos embeddings gathered at the
hole indices, timesteps enter through adaLN-single, text through cross-attention, and U-ViT long skips
join block i of the first half to block depth-1-i of the second half. SCEdit tuners act on those skips.
Optionally (``pooled_text``) the mean of the caption's tokens also joins the timestep vector, as SD3's pooled
CLIP vector does: a global condition every token is modulated by, where cross-attention lets each token look
the caption up on its own. Optionally (``hole_positions``) each token also learns where it lies inside the hole's
box (and how large the box is, in tokens): a shape named by the prompt is drawn relative to the box a person
masked, and absolute positions make every token work that out from the others by attention.
Batches may pack holes of different sizes: `token_mask` marks the real tokens of each row.

A guidance-distilled transformer (``guidance_embeds``) also takes the classifier-free guidance scale as an
input, embedded like a timestep (as FLUX.1-dev's is): it predicts the guided velocity in one row, where the
model it was distilled from needs a conditional and an unconditional row per step.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn as nn
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config

from .layers import AddedInputs, Attention, Mlp, TimestepEmbedder, sincos_positions, zero_output_mlp

# skip_adapter(skip_index, skip_tokens) -> skip_tokens: where SC-/CSC-Tuners plug in.
SkipAdapter = Callable[[int, torch.Tensor], torch.Tensor]

# The guidance scales a distilled transformer is trained on (and the only ones a pipeline lets it take).
DISTILLED_GUIDANCE_RANGE = (1.0, 8.0)
# Guidance scales reach the sinusoidal embedder as timesteps do (about 0..1000), so that 1..8 are told apart.
GUIDANCE_EMBED_SCALE = 100.0


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


def pooled_tokens(text: torch.Tensor, text_mask: torch.Tensor | None) -> torch.Tensor:
    """The mean of the real tokens (B, T, D) -> (B, D); padding does not count."""
    if text_mask is None:
        return text.mean(dim=1)
    weights = text_mask.to(text.dtype)[..., None]
    return (text * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)


def hole_box_features(index: torch.Tensor, grid: tuple[int, int], token_mask: torch.Tensor | None,
                      frequencies: int = 8) -> torch.Tensor:
    """Where each hole token lies in its row's hole box: (B, L) flat grid indices -> (B, L, 4 * frequencies + 2).

    The coordinates run from -1 to 1 across the box of the row's real tokens (``token_mask``; None: all are
    real), encoded by sin and cos at ``frequencies`` multiples of pi/2, plus the log of the box's height and
    width in tokens. Padding tokens get features too; attention never reads them."""
    rows, cols = (index // grid[1]).float(), (index % grid[1]).float()
    real = torch.ones_like(index, dtype=torch.bool) if token_mask is None else token_mask
    big = float(grid[0] * grid[1])

    def span(pos):
        low = pos.masked_fill(~real, big).amin(dim=1, keepdim=True)
        high = pos.masked_fill(~real, -big).amax(dim=1, keepdim=True)
        half = ((high - low) / 2).clamp(min=0.5)  # a one-token-wide box: its token reads 0
        return ((pos - (low + high) / 2) / half).clamp(-1, 1), torch.log1p(high - low).expand_as(pos)

    (r, log_h), (c, log_w) = span(rows), span(cols)
    k = torch.arange(1, frequencies + 1, device=index.device, dtype=torch.float32) * (math.pi / 2)
    angles = torch.cat([r[..., None] * k, c[..., None] * k], dim=-1)
    return torch.cat([torch.sin(angles), torch.cos(angles), log_h[..., None], log_w[..., None]], dim=-1)


class HolePositionEmbedder(nn.Module):
    """hole_box_features -> a vector added to each token's input; zero output at init, so adding it to a trained
    transformer changes nothing until it is trained."""

    frequencies = 8

    def __init__(self, dim: int):
        super().__init__()
        self.mlp = zero_output_mlp(4 * self.frequencies + 2, dim)

    def forward(self, index: torch.Tensor, grid: tuple[int, int], token_mask: torch.Tensor | None) -> torch.Tensor:
        features = hole_box_features(index, grid, token_mask, self.frequencies)
        return self.mlp(features.to(self.mlp[0].weight.dtype))


class DiTBlock(nn.Module):
    """Self-attention, cross-attention to text, MLP; adaLN-single modulation from a shared timestep vector."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, long_skip: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm_cross = nn.LayerNorm(dim)
        self.cross_attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dim, mlp_ratio)
        # adaLN-single: one global timestep projection, plus a learned per-block offset table.
        self.scale_shift_table = nn.Parameter(torch.randn(6, dim) / dim**0.5)
        if long_skip:
            self.skip_norm = nn.LayerNorm(2 * dim)
            self.skip_linear = nn.Linear(2 * dim, dim)
        else:
            self.skip_norm = self.skip_linear = None
        nn.init.zeros_(self.cross_attn.to_out.weight)
        nn.init.zeros_(self.cross_attn.to_out.bias)

    def forward(self, x, t_mod, token_mask, text, text_mask, skip=None):
        if skip is not None:
            x = self.skip_linear(self.skip_norm(torch.cat([x, skip], dim=-1)))
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
            self.scale_shift_table[None] + t_mod.reshape(x.shape[0], 6, -1)
        ).chunk(6, dim=1)
        x = x + gate_msa * self.attn(modulate(self.norm1(x), shift_msa, scale_msa), key_mask=token_mask)
        x = x + self.cross_attn(self.norm_cross(x), text, key_mask=text_mask)
        return x + gate_mlp * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class FinalLayer(nn.Module):
    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.scale_shift_table = nn.Parameter(torch.randn(2, dim) / dim**0.5)
        self.linear = nn.Linear(dim, out_dim)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        shift, scale = (self.scale_shift_table[None] + t[:, None]).chunk(2, dim=1)
        return self.linear(modulate(self.norm(x), shift, scale))


class LazyDiffusionTransformer(AddedInputs, ModelMixin, ConfigMixin):
    @register_to_config
    def __init__(
        self,
        latent_channels: int = 4,
        patch_size: int = 2,
        width: int = 1152,
        depth: int = 28,
        heads: int = 16,
        mlp_ratio: float = 4.0,
        context_dim: int = 1152,
        text_dim: int = 4096,
        guidance_embeds: bool = False,
        pooled_text: bool = False,
        hole_positions: bool = False,
    ):
        super().__init__()
        if depth % 2:
            raise ValueError("depth must be even: blocks pair up across the long skips")
        token_dim = latent_channels * patch_size**2
        self.x_embedder = nn.Linear(token_dim + context_dim, width)
        self.t_embedder = TimestepEmbedder(width)
        self.t_block = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))
        if guidance_embeds:
            self.guidance_embedder = TimestepEmbedder(width)
            # zero output: a student starts as exactly its teacher's conditional prediction
            nn.init.zeros_(self.guidance_embedder.mlp[2].weight)
            nn.init.zeros_(self.guidance_embedder.mlp[2].bias)
        if pooled_text:
            # zero output: added to a trained transformer, it starts as exactly that transformer
            self.pooled_text_embedder = zero_output_mlp(text_dim, width)
        if hole_positions:
            self.hole_position_embedder = HolePositionEmbedder(width)
        self.caption_proj = nn.Sequential(nn.Linear(text_dim, width), nn.GELU(approximate="tanh"), nn.Linear(width, width))
        half = depth // 2
        self.in_blocks = nn.ModuleList(DiTBlock(width, heads, mlp_ratio, long_skip=False) for _ in range(half))
        self.out_blocks = nn.ModuleList(DiTBlock(width, heads, mlp_ratio, long_skip=True) for _ in range(half))
        self.final_layer = FinalLayer(width, token_dim)
        nn.init.xavier_uniform_(self.x_embedder.weight)
        nn.init.zeros_(self.t_block[1].weight)
        nn.init.zeros_(self.t_block[1].bias)

    # the inputs a trained transformer can be given later: config flag -> its zero-initialised module
    ADDED_INPUTS = {"pooled_text": "pooled_text_embedder", "hole_positions": "hole_position_embedder"}

    def guidance_student(self) -> "LazyDiffusionTransformer":
        """A guidance-distilled copy of this transformer that starts as exactly its conditional row (the
        guidance embedder's output is zero): where the distill stage begins."""
        if self.config.guidance_embeds:
            raise ValueError("this transformer is already guidance-distilled")
        return self._with_zero_input("guidance_embedder.", guidance_embeds=True)

    def undistilled(self, scale: float = 1.0) -> "LazyDiffusionTransformer":
        """The inverse of ``guidance_student``: a copy without the guidance input that predicts exactly what
        this distilled one does at guidance ``scale`` (1: the conditional velocity, or with the null prompt
        the unconditional one), so classifier-free guidance can run on it again and the lazy stage can train
        it. The guidance embedding is a constant added to the timestep embedding, which ends in a linear
        layer: it folds into that layer's bias."""
        if not self.config.guidance_embeds:
            raise ValueError("this transformer is not guidance-distilled")
        plain = type(self).from_config(self.config, guidance_embeds=False)
        state = {k: v for k, v in self.state_dict().items() if not k.startswith("guidance_embedder.")}
        with torch.no_grad():
            g = torch.full((1,), float(scale), device=self.device)
            offset = self.guidance_embedder(g * GUIDANCE_EMBED_SCALE)[0]
            state["t_embedder.mlp.2.bias"] = state["t_embedder.mlp.2.bias"] + offset.to(state["t_embedder.mlp.2.bias"].dtype)
        plain.load_state_dict(state, strict=True)
        return plain.to(self.device, self.dtype)

    @property
    def num_skips(self) -> int:
        return len(self.in_blocks)

    def first_half_parameters(self):
        """Parameters that feed the skips; SCEdit tuning freezes them and never backpropagates into them."""
        for module in (self.x_embedder, self.t_embedder, self.t_block, self.caption_proj, self.in_blocks):
            yield from module.parameters()
        yield from self.added_input_parameters()

    def forward(
        self,
        noisy_tokens: torch.Tensor,
        context: torch.Tensor,
        token_index: torch.Tensor,
        grid: tuple[int, int],
        timestep: torch.Tensor,
        text: torch.Tensor,
        text_mask: torch.Tensor | None = None,
        token_mask: torch.Tensor | None = None,
        skip_adapter: SkipAdapter | None = None,
        position_offset: torch.Tensor | None = None,
        guidance: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """noisy_tokens (B, L, C*p*p) and context (B, L, context_dim) at flat grid indices token_index (B, L);
        timestep (B,) in 0..1000; text (B, T, text_dim); position_offset (B, 2) shifts the token positions
        (training crops); guidance (B,) the guidance scale, required by (and only by) a guidance-distilled
        transformer. Returns the prediction per token (B, L, C*p*p)."""
        if self.config.guidance_embeds != (guidance is not None):
            raise ValueError("this transformer is guidance-distilled: pass the guidance scale" if self.config.guidance_embeds
                             else "this transformer is not guidance-distilled: it takes no guidance scale")
        frozen = not any(p.requires_grad for p in self.first_half_parameters())
        # With the first half frozen (SCEdit tuning) no gradient may flow back through it: run it without a graph.
        with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
            x = self.x_embedder(torch.cat([noisy_tokens, context], dim=-1))
            x = x + sincos_positions(x.shape[-1], grid, token_index, position_offset).to(x.dtype)
            if self.config.hole_positions:
                x = x + self.hole_position_embedder(token_index, grid, token_mask).to(x.dtype)
            t = self.t_embedder(timestep)
            if guidance is not None:
                t = t + self.guidance_embedder(guidance * GUIDANCE_EMBED_SCALE)
            if self.config.pooled_text:
                t = t + self.pooled_text_embedder(pooled_tokens(text, text_mask))
            t_mod = self.t_block(t)
            text = self.caption_proj(text)
            skips = []
            for block in self.in_blocks:
                x = block(x, t_mod, token_mask, text, text_mask)
                skips.append(x)
        for i, block in enumerate(self.out_blocks):
            j = len(skips) - 1 - i
            skip = skips[j] if skip_adapter is None else skip_adapter(j, skips[j])
            x = block(x, t_mod, token_mask, text, text_mask, skip=skip)
        return self.final_layer(x, t)
