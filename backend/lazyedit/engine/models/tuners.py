"""SCEdit tuners on the transformer's long skip connections.

SC-Tuner:  skip + scale * W_up GELU(W_down skip)                      (W_up zero-init: starts as identity)
CSC-Tuner: skip + scale * (c + W_up GELU(W_down (skip + c)))          c = sum_k weight_k * hint_k
Hints come from condition images (a sketch) patchified at the hole tokens, one zero-init projection per
skip, so the tuners cost what the mask costs.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config

from .layers import gather_tokens, patchify


class SCTuner(nn.Module):
    def __init__(self, dim: int, bottleneck: int):
        super().__init__()
        self.down = nn.Linear(dim, bottleneck)
        self.act = nn.GELU()
        self.up = nn.Linear(bottleneck, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(self.down(x)))

    def forward(self, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        return x + scale * self.residual(x)


class SCTuners(ModelMixin, ConfigMixin):
    """One SC-Tuner per long skip (unconditional tuning, e.g. a style)."""

    @register_to_config
    def __init__(self, width: int = 1152, num_skips: int = 14, bottleneck: int = 64):
        super().__init__()
        self.tuners = nn.ModuleList(SCTuner(width, bottleneck) for _ in range(num_skips))

    def adapter(self, scale: float = 1.0):
        return lambda j, skip: self.tuners[j](skip, scale)


class ConditionEncoder(nn.Sequential):
    """Condition image at pixel size -> features at latent size (8x smaller)."""

    def __init__(self, in_channels: int, channels: int):
        layers, c = [], in_channels
        for out in (channels // 4, channels // 2, channels):
            layers += [nn.Conv2d(c, out, 3, padding=1), nn.SiLU(), nn.Conv2d(out, out, 3, stride=2, padding=1), nn.SiLU()]
            c = out
        super().__init__(*layers)


class CSCTuner(ModelMixin, ConfigMixin):
    @register_to_config
    def __init__(
        self,
        width: int = 1152,
        num_skips: int = 14,
        bottleneck: int = 64,
        condition_channels: int = 4,
        encoder_channels: int = 64,
        patch_size: int = 2,
    ):
        super().__init__()
        self.condition_encoder = ConditionEncoder(condition_channels, encoder_channels)
        self.condition_proj = nn.Linear(encoder_channels * patch_size**2, width)
        self.hints = nn.ModuleList(nn.Linear(width, width) for _ in range(num_skips))
        self.tuners = nn.ModuleList(SCTuner(width, bottleneck) for _ in range(num_skips))
        for hint in self.hints:
            nn.init.zeros_(hint.weight)
            nn.init.zeros_(hint.bias)

    def condition_tokens(self, condition: torch.Tensor, token_index: torch.Tensor) -> torch.Tensor:
        """condition (B, C, H, W) in [-1, 1] at pixel size -> (B, L, width) at the hole tokens."""
        features = self.condition_encoder(condition)
        tokens = patchify(features, self.config.patch_size)
        return self.condition_proj(gather_tokens(tokens, token_index))

    def adapter(self, conditions: list[tuple[torch.Tensor, float]], token_index: torch.Tensor, scale: float = 1.0):
        """conditions: [(image (B, C, H, W), weight), ...], summed with their weights. Returns a skip adapter
        for LazyDiffusionTransformer.forward. Condition tokens are computed once here, not at every step."""
        tokens = sum(w * self.condition_tokens(c, token_index) for c, w in conditions)
        hints = [proj(tokens) for proj in self.hints]

        def apply(j: int, skip: torch.Tensor) -> torch.Tensor:
            c = hints[j].to(skip.dtype)
            return skip + scale * (c + self.tuners[j].residual(skip + c))

        return apply
