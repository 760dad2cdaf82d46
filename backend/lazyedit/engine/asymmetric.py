"""Decoding through the asymmetric decoder with its known-pixel branch run once per mask.

diffusers' ``MaskConditionDecoder`` runs its conditional branch (a conv stack over the unmasked pixels,
blended into the decoder before every up block) inside every decode. Those features depend only on the
canvas and the mask, not on what the transformer drew, so an editor that knows the mask before the edit is
asked for (a prepare) computes them once: ``known_pixel_features`` then ``decode_with_known_pixels`` give
exactly what ``AsymmetricAutoencoderKL.decode(z, image=image, mask=mask)`` gives (tests check it bit for bit).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import AsymmetricAutoencoderKL


def known_pixel_features(vae: AsymmetricAutoencoderKL, image: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """The conditional branch's features of ``image`` (B, 3, H, W in -1..1) outside ``mask`` (B, 1, H, W, 1 =
    generated), keyed by feature shape as diffusers keys them."""
    return vae.decoder.condition_encoder((1 - mask) * image, mask)


def decode_with_known_pixels(vae: AsymmetricAutoencoderKL, z: torch.Tensor, features: dict[str, torch.Tensor],
                             mask: torch.Tensor) -> torch.Tensor:
    """``vae.decode(z, image=image, mask=mask).sample`` with the branch's features given (inference only)."""
    dec = vae.decoder
    sample = dec.mid_block(dec.conv_in(vae.post_quant_conv(z)), None)
    sample = sample.to(next(iter(dec.up_blocks.parameters())).dtype)
    for up_block in dec.up_blocks:
        m = F.interpolate(mask, size=sample.shape[-2:], mode="nearest")
        sample = up_block(sample * m + features[str(tuple(sample.shape))] * (1 - m), None)
    sample = sample * mask + features[str(tuple(sample.shape))] * (1 - mask)
    return dec.conv_out(dec.conv_act(dec.conv_norm_out(sample)))
