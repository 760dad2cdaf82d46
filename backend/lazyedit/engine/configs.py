"""Named model sizes. `tiny` is for tests, `demo` is the model shipped for CPUs (`demo-light`, `demo-shallow`:
the same with a lighter decoder, not shipped), `base` is PixArt-alpha-XL/2 scale with the SD-1.x VAE (the
speed benchmark's reference configuration)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from .models.text_encoder import NULL_PROMPT


@dataclass(frozen=True)
class ModelConfig:
    name: str
    resolution: int  # the canvas size the config is meant for (benchmarks, training)
    transformer: dict
    context_encoder: dict
    text_encoder: dict | None  # ByteTextEncoder config; None = CLIP/T5 loaded from a folder
    text_dim: int
    vae: dict
    asym_vae: dict
    sketch_tuner: dict = field(default_factory=dict)
    default_steps: int = 20
    default_guidance: float = 3.0
    # flow-matching timestep shift at sampling (SD3's): >1 spends more of the few steps at high noise,
    # where an object's shape is decided
    sampling_shift: float = 1.0


def _vae(blocks, layers, groups, latent=4):
    return dict(
        block_out_channels=tuple(blocks),
        down_block_types=("DownEncoderBlock2D",) * len(blocks),
        up_block_types=("UpDecoderBlock2D",) * len(blocks),
        layers_per_block=layers,
        norm_num_groups=groups,
        latent_channels=latent,
    )


def _asym(down, layers_down, up, layers_up, groups, latent=4):
    return dict(
        down_block_out_channels=tuple(down),
        down_block_types=("DownEncoderBlock2D",) * len(down),
        layers_per_down_block=layers_down,
        up_block_out_channels=tuple(up),
        up_block_types=("UpDecoderBlock2D",) * len(up),
        layers_per_up_block=layers_up,
        norm_num_groups=groups,
        latent_channels=latent,
    )


def _lazy(width, depth, heads, ctx_width, ctx_depth, ctx_heads, text_dim, tuner_bottleneck, cond_channels, latent=4):
    return dict(
        transformer=dict(width=width, depth=depth, heads=heads, context_dim=width, text_dim=text_dim, latent_channels=latent),
        context_encoder=dict(width=ctx_width, depth=ctx_depth, heads=ctx_heads, out_dim=width, latent_channels=latent),
        sketch_tuner=dict(width=width, num_skips=depth // 2, bottleneck=tuner_bottleneck, encoder_channels=cond_channels),
    )


CONFIGS: dict[str, ModelConfig] = {
    "tiny": ModelConfig(
        name="tiny",
        resolution=64,
        text_encoder=dict(width=32, depth=1, heads=2, max_length=32, null_prompt=NULL_PROMPT),
        text_dim=32,
        vae=_vae((8, 8, 16, 16), 1, 4),
        asym_vae=_asym((8, 8, 16, 16), 1, (8, 8, 16, 16), 1, 4),
        default_steps=4,
        default_guidance=2.0,
        **_lazy(32, 2, 2, 32, 1, 2, 32, 8, 16),
    ),
    "demo": ModelConfig(
        name="demo",
        resolution=512,
        text_encoder=dict(width=128, depth=2, heads=4, max_length=48, null_prompt=NULL_PROMPT),
        text_dim=128,
        vae=_vae((32, 64, 64, 64), 1, 16),
        asym_vae=_asym((32, 64, 64, 64), 1, (48, 96, 96, 96), 1, 16),
        default_steps=5,       # v16 (guidance-distilled): 5 steps within a standard error of 6 (and 6 of 8) on 510/510/240 cases
        default_guidance=4.0,  # 510-case eval: shape 0.47 vs 0.35 and colour 0.42 vs 0.40 at 2.0
        sampling_shift=3.0,    # 510-case eval (v3): shape 0.51 vs 0.46 at 1, 0.49 at 2 and 6; colour, removal up too
        **_lazy(256, 8, 4, 192, 4, 3, 128, 32, 32),
    ),
    "base": ModelConfig(
        name="base",
        resolution=1024,
        text_encoder=None,  # T5-XXL (4096-d) from a local folder, as in PixArt-alpha
        text_dim=4096,
        vae=_vae((128, 256, 512, 512), 2, 32),  # SD-1.x VAE
        asym_vae=_asym((128, 256, 512, 512), 2, (192, 384, 768, 768), 3, 32),  # asymmetric-autoencoder-kl-x-1-5
        default_steps=20,
        default_guidance=4.5,
        **_lazy(1152, 28, 16, 1152, 6, 16, 4096, 64, 64),
    ),
}

# The demo model with its decoder's two finest blocks narrowed from 48/96 to 32/64 channels: about half the
# decode's convolutions on a CPU. Trained by cutting the shipped decoder down and fine-tuning it against the
# original (`lazyedit train asym-decoder --config demo-light --init-from <demo folder> --decoder-teacher 1`,
# docs/training.md "A lighter decoder"); not shipped yet: its removals read 1.3 to 2.2 dB worse (v17; v20, scored
# against its teacher hole by hole, 0.7 to 1.5 dB).
CONFIGS["demo-light"] = replace(CONFIGS["demo"], name="demo-light",
                                asym_vae=_asym((32, 64, 64, 64), 1, (32, 64, 96, 96), 1, 16))
# The demo model with one residual layer in each decoder block instead of two, at the demo's widths: about a
# fifth less of the decode's convolutions, all of it kept at full width where the fine detail is drawn.
# Trained the same way (docs/training.md "A shallower decoder"); not shipped: its removals read 2.2 dB worse
# at 512 px, as demo-light's did.
CONFIGS["demo-shallow"] = replace(CONFIGS["demo"], name="demo-shallow",
                                  asym_vae=_asym((32, 64, 64, 64), 1, (48, 96, 96, 96), 0, 16))

# The demo model on an 8-channel latent, to test whether the 4-channel one loses thin outlines and small shapes
# at 8x. At equal training its VAE kept no more of them (docs/training.md "An 8-channel latent"), so the
# generator, decoder and tuner have not been trained on it.
CONFIGS["demo-z8"] = replace(CONFIGS["demo"], name="demo-z8",
                             vae=_vae((32, 64, 64, 64), 1, 16, latent=8),
                             asym_vae=_asym((32, 64, 64, 64), 1, (48, 96, 96, 96), 1, 16, latent=8),
                             **_lazy(256, 8, 4, 192, 4, 3, 128, 32, 32, latent=8))


def get_config(name: str) -> ModelConfig:
    try:
        return CONFIGS[name]
    except KeyError:
        raise ValueError(f"unknown model config {name!r}: choose one of {', '.join(CONFIGS)}") from None
