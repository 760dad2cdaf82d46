"""Building pipelines from named configs and loading them from folders."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path

import torch
from diffusers import AsymmetricAutoencoderKL, AutoencoderKL
from diffusers.utils import logging as diffusers_logging

from .configs import get_config
from .models import ByteTextEncoder, ContextEncoder, CSCTuner, LazyDiffusionTransformer
from .pipeline import LazyEditPipeline, flow_scheduler

logger = logging.getLogger("lazyedit.engine")

# Prompt tokens of a T5 text encoder as PixArt-alpha uses it: the length of a benchmark's stand-in.
T5_TOKENS = 120

# The demo model trained by `lazyedit train` and shipped with the package.
DEMO_MODEL_DIR = Path(__file__).resolve().parent.parent / "weights" / "demo"


def build_pipeline(config_name: str, seed: int = 0, text_encoder=None, tokenizer=None) -> LazyEditPipeline:
    """A pipeline of the named config with freshly initialised (random) weights."""
    cfg = get_config(config_name)
    torch.manual_seed(seed)
    if text_encoder is None:
        if cfg.text_encoder is None:
            raise ValueError(f"config {config_name!r} uses a CLIP/T5 text encoder: pass one loaded from a folder")
        text_encoder = ByteTextEncoder(**cfg.text_encoder)
    vae = AutoencoderKL(**cfg.vae)
    asym_vae = AsymmetricAutoencoderKL(**cfg.asym_vae)
    # The asymmetric VAE shares the SD encoder: keep one latent space.
    asym_vae.encoder.load_state_dict(vae.encoder.state_dict())
    asym_vae.quant_conv.load_state_dict(vae.quant_conv.state_dict())
    pipe = LazyEditPipeline(
        vae=vae,
        asym_vae=asym_vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        context_encoder=ContextEncoder(**cfg.context_encoder),
        transformer=LazyDiffusionTransformer(**cfg.transformer),
        scheduler=flow_scheduler(cfg.sampling_shift),
        sketch_tuner=CSCTuner(**cfg.sketch_tuner),
        model_name=config_name,
        default_steps=cfg.default_steps,
        default_guidance=cfg.default_guidance,
    )
    return pipe


def load_pipeline(
    model: str = "demo",
    device: str = "cpu",
    dtype: torch.dtype | None = None,
    vae: str | None = None,
    asym_vae: str | None = None,
    text_encoder: str | None = None,
    text_stand_in: bool = False,
) -> LazyEditPipeline:
    """model: "tiny" (random weights, for tests), "demo" (the shipped demo model, or random demo weights
    with a warning when none is shipped), "base" (random, benchmarks only) or a folder saved by
    save_pretrained. vae / asym_vae / text_encoder: optional local folders with real weights (an SD-1.x
    AutoencoderKL, an asymmetric-autoencoder-kl checkpoint, a CLIP or T5 text encoder) that replace the
    pipeline's own. text_stand_in (benchmarks only): a config whose text encoder must come from a folder
    (base: T5-XXL) gets random text features of the same width and length instead, so its decoder can be
    timed where no T5 weights are."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    text = None
    stand_in = False
    if text_encoder:
        from .models import HFTextEncoder

        text = HFTextEncoder.from_folder(text_encoder)
    path = Path(model)
    random_weights = False
    if model == "demo" and (DEMO_MODEL_DIR / "model_index.json").is_file():
        path = DEMO_MODEL_DIR
    if (path / "model_index.json").is_file():
        # diffusers warns that AsymmetricAutoencoderKL's own saved config has keys its __init__ does not
        # take (block_out_channels, force_upcast): true of every such checkpoint, so not worth a warning.
        with diffusers_errors_only():
            pipe = LazyEditPipeline.from_pretrained(str(path))
        pipe.register_to_config(model_name=pipe.config.model_name if model != "demo" else "demo")
    elif model in ("tiny", "demo", "base"):
        if model != "tiny":
            logger.warning("no trained %s weights found (looked in %s): running with RANDOM weights", model, DEMO_MODEL_DIR)
        random_weights = model != "tiny"
        text_model, tokenizer = (None, None) if text is None else (text.model, text.tokenizer)
        stand_in = text is None and text_stand_in and get_config(model).text_encoder is None
        if stand_in:
            text_model = ByteTextEncoder(width=get_config(model).text_dim, depth=0, heads=1, max_length=T5_TOKENS)
        pipe = build_pipeline(model, text_encoder=text_model, tokenizer=tokenizer)
    else:
        raise FileNotFoundError(f"model {model!r} is neither tiny, demo, base nor a folder with a model_index.json")
    if text is not None and model not in ("tiny", "demo", "base"):
        pipe.register_modules(text_encoder=text.model, tokenizer=text.tokenizer)
    if vae:
        pipe.register_modules(vae=AutoencoderKL.from_pretrained(vae, local_files_only=True))
    if asym_vae:
        pipe.register_modules(asym_vae=load_asym_vae(asym_vae))
    pipe.random_weights = random_weights
    pipe.text_stand_in = stand_in
    if random_weights:  # say so wherever the model's name is shown (health, the editor's status bar)
        pipe.register_to_config(model_name=f"{model} (random weights)")
    pipe = pipe.to(device)
    # the shipped weights are fp16 (small); compute in fp32 unless told otherwise
    want = dtype or torch.float32
    if any(p.dtype != want for m in pipe.components.values() if isinstance(m, torch.nn.Module) for p in m.parameters()):
        with diffusers_errors_only():  # its "modules to keep in float32" notice does not apply to these models
            pipe = pipe.to(dtype=want)
    for vae in (pipe.vae, pipe.asym_vae):  # conv stacks: channels-last runs 10-20% faster (measured on CPU)
        if vae is not None:
            vae.to(memory_format=torch.channels_last)
    return pipe


def load_asym_vae(path: str | Path) -> AsymmetricAutoencoderKL:
    """An AsymmetricAutoencoderKL folder (a published checkpoint or our own), without diffusers' notice that
    its saved config has keys its __init__ does not take: true of every such checkpoint."""
    with diffusers_errors_only():
        return AsymmetricAutoencoderKL.from_pretrained(str(path), local_files_only=True)


@contextmanager
def diffusers_errors_only():
    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(verbosity)
