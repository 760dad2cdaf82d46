"""Building blocks shared by the context encoder and the diffusion transformer."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

try:  # xformers runs on CUDA only; on a CPU we always take torch SDPA.
    import xformers.ops as xops
except Exception:  # pragma: no cover - depends on the machine
    xops = None

# "auto" uses xformers when the tensors are on CUDA and xformers is importable, else SDPA.
ATTENTION_BACKEND = "auto"


def set_attention_backend(name: str) -> None:
    """Choose "auto", "sdpa" or "xformers" for every attention layer."""
    global ATTENTION_BACKEND
    if name not in ("auto", "sdpa", "xformers"):
        raise ValueError(f"unknown attention backend {name!r}: use auto, sdpa or xformers")
    if name == "xformers" and xops is None:
        raise RuntimeError("xformers is not installed")
    ATTENTION_BACKEND = name


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
    """Multi-head attention on (B, heads, L, Dh) tensors; key_mask (B, Lk) is True for real keys."""
    use_xformers = ATTENTION_BACKEND == "xformers" or (
        ATTENTION_BACKEND == "auto" and xops is not None and q.is_cuda
    )
    if use_xformers:
        bias = None
        if key_mask is not None:
            bias = torch.zeros(q.shape[0], 1, 1, k.shape[2], dtype=q.dtype, device=q.device)
            bias = bias.masked_fill(~key_mask[:, None, None, :], float("-inf"))
            bias = bias.expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2])
        out = xops.memory_efficient_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_bias=bias
        )
        return out.transpose(1, 2)
    attn_mask = None if key_mask is None else key_mask[:, None, None, :]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)


class Attention(nn.Module):
    """Self- or cross-attention with a key padding mask (packed variable-length batches)."""

    def __init__(self, dim: int, heads: int, kv_dim: int | None = None):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim)
        self.to_kv = nn.Linear(kv_dim or dim, 2 * dim)
        self.to_out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, kv: torch.Tensor | None = None, key_mask: torch.Tensor | None = None):
        kv = x if kv is None else kv
        b, n, d = x.shape
        q = self.to_q(x).view(b, n, self.heads, -1).transpose(1, 2)
        k, v = self.to_kv(kv).view(b, kv.shape[1], 2, self.heads, -1).permute(2, 0, 3, 1, 4)
        out = attention(q, k, v, key_mask)
        return self.to_out(out.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Sequential):
    def __init__(self, dim: int, ratio: float = 4.0):
        hidden = int(dim * ratio)
        super().__init__(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))


class TransformerBlock(nn.Module):
    """Pre-norm ViT block (the context encoder's and the byte text encoder's)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, mlp_ratio)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), key_mask=key_mask)
        return x + self.mlp(self.norm2(x))


class TimestepEmbedder(nn.Module):
    """Scalar timesteps (0..1000) -> vectors: sinusoidal features then a small MLP (as in DiT)."""

    def __init__(self, dim: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        nn.init.normal_(self.mlp[0].weight, std=0.02)
        nn.init.normal_(self.mlp[2].weight, std=0.02)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
        args = t.float()[:, None] * freqs[None]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


def _axis_sincos(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """1-D sin-cos embedding of integer positions (...,) -> (..., dim), computed where the positions are."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, device=pos.device, dtype=torch.float32) / (dim / 2))
    angle = pos[..., None].float() * omega
    return torch.cat([torch.sin(angle), torch.cos(angle)], dim=-1)


def sincos_positions(dim: int, grid: tuple[int, int], index: torch.Tensor, offset: torch.Tensor | None = None) -> torch.Tensor:
    """2-D sin-cos embeddings of the token grid at flat token indices (B, L) -> (B, L, dim): half the channels
    encode the row, half the column.

    Positions are absolute grid coordinates, so a hole keeps its place on any canvas size. ``offset`` (B, 2)
    shifts each sample's (row, col) coordinates: training on small crops placed at random offsets teaches
    the positions of canvases larger than the crops. Computed from the indices (no table), so nothing waits
    on the host and nothing is copied to the device.
    """
    rows, cols = index // grid[1], index % grid[1]
    if offset is not None:
        rows, cols = rows + offset[:, :1], cols + offset[:, 1:]
    return torch.cat([_axis_sincos(dim // 2, rows), _axis_sincos(dim // 2, cols)], dim=-1)


def patchify(latent: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, H/p * W/p, C*p*p), row-major over the token grid."""
    b, c, h, w = latent.shape
    x = latent.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // p) * (w // p), c * p * p)


def unpatchify(tokens: torch.Tensor, p: int, c: int, grid: tuple[int, int]) -> torch.Tensor:
    b = tokens.shape[0]
    gh, gw = grid
    x = tokens.reshape(b, gh, gw, c, p, p).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c, gh * p, gw * p)


def gather_tokens(tokens: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """tokens (B, N, D), index (B, L) -> (B, L, D)."""
    return torch.gather(tokens, 1, index[..., None].expand(-1, -1, tokens.shape[-1]))


class AddedInputs:
    """For a ModelMixin + ConfigMixin model with optional inputs a trained model can be given later: each config
    flag of ``ADDED_INPUTS`` switches on a module (named there) whose output is zero at init, so switching it on
    changes nothing until that module is trained."""

    ADDED_INPUTS: dict[str, str] = {}

    def with_added_input(self, flag: str):
        """A copy of this model with the ``flag`` input switched on; it computes exactly what this one does
        until the new (zero-output) module is trained."""
        if flag not in self.ADDED_INPUTS:
            raise ValueError(f"unknown added input {flag!r}: choose one of {', '.join(self.ADDED_INPUTS)}")
        if self.config.get(flag):
            raise ValueError(f"this {type(self).__name__} already takes the {flag} input")
        return self._with_zero_input(self.ADDED_INPUTS[flag] + ".", **{flag: True})

    def _with_zero_input(self, prefix: str, **flag):
        """A copy with one more (zero-initialised) input module, named ``prefix``, switched on by ``flag``."""
        wider = type(self).from_config(self.config, **flag)  # a keyword: the config's own value would win
        keys = wider.load_state_dict(self.state_dict(), strict=False)
        assert not keys.unexpected_keys and all(k.startswith(prefix) for k in keys.missing_keys)
        return wider.to(self.device, self.dtype)

    def added_input_parameters(self):
        """The parameters of the added input modules switched on."""
        for flag, name in self.ADDED_INPUTS.items():
            if self.config.get(flag):
                yield from getattr(self, name).parameters()


def zero_output_mlp(in_dim: int, dim: int) -> nn.Sequential:
    """Linear, SiLU, Linear with the last layer zeroed: an added input's embedder, silent until trained."""
    mlp = nn.Sequential(nn.Linear(in_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
    nn.init.zeros_(mlp[2].weight)
    nn.init.zeros_(mlp[2].bias)
    return mlp


def mask_detail_tokens(pixel_mask: torch.Tensor, unit: int, cells: int) -> torch.Tensor:
    """Pixel masks (B, 1, H, W), H and W multiples of ``unit`` (pixels per token side) -> (B, gh * gw, cells**2):
    the share of each of a token's cells x cells sub-squares that is masked, row-major over the token grid.
    A token's hole flag says only that some pixel of it is masked; this says which (a star's points, the
    outline a person painted)."""
    if unit % cells:
        raise ValueError(f"a token of {unit} px does not split into {cells}x{cells} cells")
    coverage = F.avg_pool2d(pixel_mask.float(), unit // cells)
    return patchify(coverage, cells)
