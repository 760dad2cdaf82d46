"""The asymmetric decoder's adversary: a PatchGAN (pix2pix's) that judges the hole, patch by patch.

Trained on L1, MSE and chroma alone the decoder paints the mean of what a latent could hold: outlines come out
as soft grey rims and stripes as smears (at 512 px the round trip of the true scenes keeps their style in
about a third of the cases). The Asymmetric VQGAN paper trains its decoder with an adversarial term for this
reason. The discriminator sees the image and the hole mask, so it judges the generated pixels in the context of
the known ones beside them; only patches that hold hole pixels count.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call


def _down_block(c_in: int, c_out: int, norm: bool) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1, bias=not norm)]
    if norm:
        # GroupNorm, not pix2pix's BatchNorm: batches are a few crops, split over processes
        layers.append(nn.GroupNorm(min(16, c_out // 4), c_out))
    layers.append(nn.LeakyReLU(0.2))
    return layers


class PatchDiscriminator(nn.Module):
    """(image in -1..1, mask 1 = hole) -> one logit per patch (each sees about 2**(layers+2) px)."""

    def __init__(self, channels: int = 64, layers: int = 3):
        super().__init__()
        blocks = _down_block(4, channels, norm=False)
        c = channels
        for i in range(1, layers):
            blocks += _down_block(c, channels * min(2**i, 4), norm=True)
            c = channels * min(2**i, 4)
        blocks.append(nn.Conv2d(c, 1, 3, padding=1))
        self.net = nn.Sequential(*blocks)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([image, mask * 2 - 1], 1))


def adversarial_losses(disc: PatchDiscriminator, rec: torch.Tensor, truth: torch.Tensor,
                       mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Hinge losses of one batch: (discriminator loss, decoder loss, logs). The decoded hole is pasted into the
    truth (the known pixels are copied in an edit anyway). The discriminator's loss sees the decode detached
    and the decoder's loss sees the discriminator's weights detached, so one backward of their sum trains
    each against the other with one optimizer."""
    fake = rec * mask + truth * (1 - mask)
    real_logits = disc(truth, mask)
    fake_logits = disc(fake.detach(), mask)
    # a patch counts by the share of hole pixels under it: a patch of known pixels alone is real on both sides
    w = F.adaptive_avg_pool2d(mask, real_logits.shape[-2:])
    norm = w.sum() + 1e-6
    d_real = (F.relu(1 - real_logits) * w).sum() / norm
    d_fake = (F.relu(1 + fake_logits) * w).sum() / norm
    frozen = {k: p.detach() for k, p in disc.named_parameters()}
    g_logits = functional_call(disc, frozen, (fake, mask))
    g_loss = -(g_logits * w).sum() / norm
    return d_real + d_fake, g_loss, {"d_real": d_real.detach(), "d_fake": d_fake.detach(), "adv_g": g_loss.detach()}
