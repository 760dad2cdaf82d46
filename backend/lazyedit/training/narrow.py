"""Starting a narrower or shallower model from a trained wider one of the same layout (a lighter decoder
for CPUs).

Every dimension where the narrow tensor is smaller keeps a channel subset of the wide one: from each of
the ``groups`` GroupNorm groups, its first channels. One rule for every dimension of a given width keeps a
residual stream's channels the same subset in every layer that reads or writes it (convolutions, norms,
the known-pixel features blended into it), and a narrow group is part of one wide group, so the norms see
the statistics of the channels they saw before. A shortcut the narrow block needs where the wide one added
its input unchanged (its width now changes inside the block) starts as that identity on the kept channels.
A block with fewer residual layers (diffusers' ``resnets``) keeps the wide block's first ones: the ones
dropped added ``f(x)`` to an input of their own width, so the block starts as if their ``f`` were zero.
What the dropped channels and layers carried is lost; fine-tuning (best against the wide model,
--decoder-teacher) recovers it.
"""

from __future__ import annotations

import re

import torch

_RESIDUAL_LAYER = re.compile(r"^(.*\.resnets)\.(\d+)\.")


def kept_channels(wide: int, narrow: int, groups: int) -> torch.Tensor:
    """The wide channels a narrow dimension keeps: the first narrow/groups of each group."""
    if wide % groups or narrow % groups:
        raise ValueError(f"cannot narrow {wide} channels to {narrow}: both must be multiples of {groups} groups")
    per_wide, per_narrow = wide // groups, narrow // groups
    return torch.tensor([g * per_wide + j for g in range(groups) for j in range(per_narrow)])


def narrowed_state_dict(wide: dict[str, torch.Tensor], narrow: torch.nn.Module, groups: int) -> dict[str, torch.Tensor]:
    """A state dict for ``narrow`` cut out of the wide model's state dict ``wide``."""
    own = narrow.state_dict()
    out = {}
    for key, target in own.items():
        if key not in wide:
            if ".conv_shortcut." not in key:
                raise KeyError(f"{key}: the wide model has no such weight and it is not a block's shortcut")
            t = torch.zeros_like(target)
            if key.endswith("weight"):  # 1x1 convolution (out, in, 1, 1) selecting the kept channels
                t[torch.arange(t.shape[0]), kept_channels(t.shape[1], t.shape[0], groups), 0, 0] = 1
            out[key] = t
            continue
        t = wide[key]
        if t.ndim != target.ndim or any(w < n for w, n in zip(t.shape, target.shape)):
            raise ValueError(f"{key}: {tuple(t.shape)} cannot be narrowed to {tuple(target.shape)}")
        for dim, (w, n) in enumerate(zip(t.shape, target.shape)):
            if w != n:
                t = t.index_select(dim, kept_channels(w, n, groups))
        out[key] = t.to(target.dtype).clone()
    extra = sorted(k for k in wide.keys() - own.keys() if not _dropped_residual_layer(k, wide, own))
    if extra:  # any other layer the narrow model lacks is not a cut (strict loading would refuse it too)
        raise KeyError(f"the wide model has weights the narrow one lacks: {', '.join(extra[:3])}")
    return out


def _dropped_residual_layer(key: str, wide: dict, own: dict) -> bool:
    """Whether ``key`` belongs to a residual layer that the narrow block lacks after keeping the ones before
    it: not its block's first layer, and one that adds its input unchanged (no shortcut of its own)."""
    m = _RESIDUAL_LAYER.match(key)
    if not m or int(m[2]) == 0:
        return False
    prefix = f"{m[1]}.{m[2]}."
    return not any(k.startswith(prefix) for k in own) and not any(
        k.startswith(prefix + "conv_shortcut.") for k in wide)
