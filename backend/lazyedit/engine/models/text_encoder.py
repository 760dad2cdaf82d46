"""Text encoders: a small byte-level transformer built in (the demo model needs no download), and
CLIP or T5 encoders loaded from a local folder through transformers.

Both expose encode(prompts, device) -> (embeddings (B, T, D), mask (B, T) True for real tokens).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config

from .layers import TransformerBlock

BOS = 256  # byte values are 0..255; the start token keeps the empty prompt non-empty.
PAD = 257

#: what new models are trained to read as "no condition" (the caption dropped for classifier-free guidance).
#: It must not be "": an empty prompt asks to fill the hole from its context (a removal), and a model whose
#: dropped captions are empty too learns that an empty prompt sometimes means an object, so it paints phantom
#: objects into removals, and guidance (conditional == unconditional) cannot steer them out.
NULL_PROMPT = "<null>"


class ByteTextEncoder(ModelMixin, ConfigMixin):
    @register_to_config
    def __init__(self, width: int = 256, depth: int = 2, heads: int = 4, max_length: int = 64, null_prompt: str = ""):
        """null_prompt: the caption dropped captions were replaced with in training, the unconditional row of
        guidance; "" in models trained before it had its own (their config has none)."""
        super().__init__()
        self.token_embedding = nn.Embedding(258, width)
        self.position_embedding = nn.Parameter(torch.randn(max_length, width) * 0.02)
        self.blocks = nn.ModuleList(TransformerBlock(width, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(width)

    @property
    def hidden_size(self) -> int:
        return self.config.width

    @property
    def null_prompt(self) -> str:
        return self.config.null_prompt

    def tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.config.max_length
        ids = torch.full((len(prompts), n), PAD, dtype=torch.long)
        for row, prompt in enumerate(prompts):
            data = [BOS] + list(prompt.strip().lower().encode("utf-8"))[: n - 1]
            ids[row, : len(data)] = torch.tensor(data)
        return ids, ids != PAD

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.token_embedding(ids) + self.position_embedding[: ids.shape[1]]
        for block in self.blocks:
            x = block(x, mask)
        return self.norm(x)

    def encode(self, prompts: list[str], device=None) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = self.tokenize(prompts)
        ids, mask = ids.to(device or self.device), mask.to(device or self.device)
        return self(ids, mask), mask


class HFTextEncoder:
    """A CLIP or T5 text encoder and its tokenizer from a local folder (transformers' own loaders)."""

    def __init__(self, tokenizer, model, max_length: int | None = None):
        self.tokenizer = tokenizer
        self.model = model
        # CLIP has 77 learned positions; T5 has relative positions, PixArt-alpha uses 120 tokens.
        limit = getattr(model.config, "max_position_embeddings", 120)
        self.max_length = min(max_length or limit, limit, tokenizer.model_max_length)

    @classmethod
    def from_folder(cls, path: str | Path, max_length: int | None = None, dtype=None) -> "HFTextEncoder":
        from transformers import AutoConfig, AutoTokenizer, CLIPTextModel, T5EncoderModel

        path = Path(path)
        tok_dir = path / "tokenizer" if (path / "tokenizer").is_dir() else path
        model_dir = path / "text_encoder" if (path / "text_encoder").is_dir() else path
        kind = AutoConfig.from_pretrained(model_dir, local_files_only=True).model_type
        model_cls = {"clip_text_model": CLIPTextModel, "clip": CLIPTextModel, "t5": T5EncoderModel}.get(kind)
        if model_cls is None:
            raise ValueError(f"{model_dir}: text encoder type {kind!r} is not CLIP or T5")
        tokenizer = AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)
        model = model_cls.from_pretrained(model_dir, local_files_only=True, torch_dtype=dtype).eval()
        return cls(tokenizer, model, max_length)

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    @property
    def null_prompt(self) -> str:
        # CLIP/T5 backbones (PixArt, SD) are trained with empty captions as the dropped condition
        return ""

    @property
    def device(self):
        return self.model.device

    @torch.no_grad()
    def encode(self, prompts: list[str], device=None) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self.tokenizer(prompts, padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt")
        ids = batch.input_ids.to(self.model.device)
        mask = batch.attention_mask.to(self.model.device).bool()
        out = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        return out.to(device or out.device), mask.to(device or out.device)
