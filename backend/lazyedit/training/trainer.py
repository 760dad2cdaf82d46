"""Trainers for the four stages of a lazyedit model, on accelerate (CPU, one GPU or many).

Stages and what they write into ``<output>/model`` (the DiffusionPipeline layout of LazyEditPipeline):

- ``vae``           AutoencoderKL (L1 + MSE + tiny KL); its latent scaling factor is measured at the end.
- ``asym-decoder``  AsymmetricAutoencoderKL: encoder + quant_conv copied from the trained VAE and frozen,
                    the mask-conditioned decoder trained, half the samples with a full mask.
- ``lazy``          ByteTextEncoder + ContextEncoder + LazyDiffusionTransformer jointly, flow matching on the
                    hole tokens only (x_t = (1-t) x0 + t noise, target noise - x0, timestep t*1000),
                    caption dropped 10% of the time for classifier-free guidance.
- ``sketch``        CSCTuner on the frozen backbone.
- ``distill``       guidance distillation: a copy of the transformer with a guidance-scale input learns, from
                    the frozen transformer (and sketch tuner), the guided velocity cond + w (cond - uncond) for w
                    in DISTILLED_GUIDANCE_RANGE, so that sampling needs one forward row per step instead of two
                    (Meng et al., "On Distillation of Guided Diffusion Models", 2023). The teacher is kept in
                    ``<output>/distill/teacher``; the student replaces ``<output>/model/transformer``.

Each stage keeps its run state in ``<output>/<stage>/`` (accelerate checkpoints, TensorBoard logs,
sample grids) and resumes from its latest checkpoint. After every checkpoint the EMA weights are
exported to ``<output>/model/<component>`` and, once the backbone exists, ``model_index.json`` is written
with LazyEditPipeline.save_pretrained, so ``load_pipeline("<output>/model")`` works.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from lazyedit.engine import LazyEditPipeline, flow_scheduler, get_config
from lazyedit.engine.holes import plan_holes_batch, token_mask_to_latent
from lazyedit.engine.loading import DEMO_MODEL_DIR, diffusers_errors_only, load_asym_vae
from lazyedit.engine.models import ByteTextEncoder, ContextEncoder, CSCTuner, LazyDiffusionTransformer
from lazyedit.engine.models.layers import AddedInputs, gather_tokens, patchify, unpatchify
from lazyedit.engine.models.transformer import DISTILLED_GUIDANCE_RANGE

from .data import StageDataset, StreamBatches, batch_sizes, canvas_sizes, to_image
from .masks import REMOVAL_FRACTION
from .world import colour_names, contact_sheet, shape_names

if TYPE_CHECKING:
    from PIL import Image

logger = logging.getLogger("lazyedit.training")

# 'lazyedit train all' runs these; distill is optional (a faster model that may draw a little worse)
CORE_STAGES = ("vae", "asym-decoder", "lazy", "sketch")
STAGES = (*CORE_STAGES, "distill")
# what each stage trains (the pipeline components it writes)
STAGE_COMPONENTS = {
    "vae": ("vae",),
    "asym-decoder": ("asym_vae",),
    "lazy": ("text_encoder", "context_encoder", "transformer"),
    "sketch": ("sketch_tuner",),
    "distill": ("transformer",),
}


@dataclass
class TrainArgs:
    stage: str
    config: str = "demo"
    output: str = "runs/demo"
    data: str = "world"
    # canvas size in pixels; several sizes take turns batch by batch (short and long token sequences both
    # stay trained); _defaults makes it a tuple
    resolution: int | tuple[int, ...] | None = None
    # items per batch: one number, or one per --resolution size; _defaults makes it a tuple
    batch_size: int | tuple[int, ...] | None = None
    steps: int | None = None
    lr: float | None = None
    warmup: int = 100
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    max_minutes: float | None = None
    save_every: int = 200
    sample_every: int = 200
    log_every: int = 10
    keep_checkpoints: int = 2
    mixed_precision: str = "auto"
    seed: int = 0
    num_workers: int = 0
    resume: str = "auto"  # auto | never | path to a checkpoint folder
    text_dropout: float = 0.1
    position_grid: int = 0  # lazy/sketch: place each crop at a random offset in a grid this many tokens wide
    large_objects: float = 0.0  # lazy/sketch: fraction of world scenes with large objects (world.LARGE_OBJECT_SIZES)
    # asym-decoder: fraction of batches that decode edits whose hole latents the trained backbone sampled
    generated_latents: float = 0.0
    # asym-decoder: fraction of those edits (object masks) whose hole latents are sampled with their sketch
    generated_sketches: float = 0.0
    # asym-decoder: weight of an L1 term to the --init-from model's decoder on the same inputs
    decoder_teacher: float = 0.0
    # asym-decoder: weight of the PatchGAN term (discriminator.py), and the step it starts at (the discriminator
    # learns alone until then)
    adversarial: float = 0.0
    adversarial_start: int = 100
    # vae/asym-decoder: weight of an L1 term on the image's spatial differences (edge_error)
    edge_weight: float = 0.0
    sample_steps: int = 12
    sample_guidance: float = 2.0
    progress: bool = True
    # a pipeline folder (e.g. the bundled demo model) to fine-tune: it fills in the components <output>/model
    # lacks, and the stage's trained components start from its weights instead of a fresh init
    init_from: str | None = None
    # a pipeline folder that only fills in the components <output>/model lacks: the stage's trained components
    # start from a fresh init (retraining one stage from scratch on another model's frozen parts)
    components_from: str | None = None
    # lazy/sketch on the world: the fraction of scenes drawn only from these shapes (the ones a model misses)
    focus_shapes: tuple[str, ...] = ()
    focus_colours: tuple[str, ...] = ()
    focus_fraction: float = 0.0
    # lazy/sketch/distill on the world: the fraction of named-object edits masked by a loose box around the object
    loose_masks: float = 0.0
    # lazy/distill on the world: the fraction of edits that outpaint a band along one side (what Expand asks)
    strip_masks: float = 0.0
    # lazy/distill on the world: the fraction of object-masked edits that are removals (empty caption, the scene
    # without the object for a target); the default is what every run before stop 40 trained on
    removal_fraction: float = REMOVAL_FRACTION
    # lazy/sketch/distill: shift the training noise levels toward pure noise as the sampler's shift does, so the
    # first sampling steps (where an object's shape is decided) are trained as often as they are taken
    timestep_shift: float = 1.0
    # lazy: give the transformer the pooled caption too (added to its timestep vector; zero-initialised, so a
    # transformer from --init-from starts as it was). A run that started with it keeps it when resumed.
    pooled_text: bool = False
    # lazy: give each hole token its place in the hole's box (zero-initialised too; kept when resumed)
    hole_positions: bool = False
    # lazy: give the context encoder which pixels of each token are masked (zero-initialised too; kept when resumed)
    mask_detail: bool = False
    # lazy: the learning rate of the added inputs (pooled text, hole positions, mask detail); None: --lr. A
    # zero-initialised module grows slowly at a fine-tune's rate.
    added_input_lr: float | None = None


STAGE_DEFAULTS = {
    # stage: (resolution, batch size, steps, learning rate)
    "vae": (128, 8, 3000, 1e-3),
    "asym-decoder": (128, 8, 1500, 4e-4),
    "lazy": (256, 8, 20000, 3e-4),
    "sketch": (256, 8, 2000, 3e-4),
    "distill": (256, 8, 2000, 1e-4),
}


def _defaults(args: TrainArgs) -> TrainArgs:
    """The stage's defaults for what was left unset; flags that need another flag are refused here, before
    a finished stage is skipped or any model is loaded."""
    if args.generated_sketches > 0 and args.generated_latents <= 0:
        raise ValueError("--generated-sketches needs --generated-latents (it is a fraction of those edits)")
    if args.decoder_teacher and (args.stage != "asym-decoder" or not args.init_from or args.decoder_teacher < 0):
        raise ValueError("--decoder-teacher is a positive weight for the asym-decoder stage and needs --init-from (the teacher)")
    if args.adversarial and (args.stage != "asym-decoder" or args.adversarial < 0):
        raise ValueError("--adversarial is a positive weight for the asym-decoder stage")
    if args.edge_weight and (args.stage not in ("vae", "asym-decoder") or args.edge_weight < 0):
        raise ValueError("--edge-weight is a positive weight for the vae and asym-decoder stages")
    if args.loose_masks > 0 and args.stage not in ("lazy", "sketch", "distill"):
        raise ValueError("--loose-masks is for the stages that train on edits: lazy, sketch, distill")
    if args.strip_masks > 0 and args.stage not in ("lazy", "distill"):
        raise ValueError("--strip-masks is for the stages that fill holes from their context: lazy, distill")
    if args.removal_fraction != REMOVAL_FRACTION and args.stage not in ("lazy", "distill"):
        raise ValueError("--removal-fraction is for the stages that learn removals: lazy, distill")
    if args.timestep_shift != 1.0 and (args.stage not in ("lazy", "sketch", "distill") or args.timestep_shift <= 0):
        raise ValueError("--timestep-shift is a positive factor for the stages that denoise: lazy, sketch, distill")
    for flag, on in (("--pooled-text", args.pooled_text), ("--hole-positions", args.hole_positions),
                     ("--mask-detail", args.mask_detail), ("--added-input-lr", args.added_input_lr is not None)):
        if on and args.stage != "lazy":
            raise ValueError(f"{flag} changes the backbone: it is for the lazy stage, which trains it")
    if args.added_input_lr is not None and args.added_input_lr <= 0:
        raise ValueError("--added-input-lr must be a positive learning rate")
    if args.focus_fraction > 0 and not (args.focus_shapes or args.focus_colours):
        raise ValueError("--focus-fraction needs --focus-shapes or --focus-colours (what those scenes are drawn from)")
    args.focus_shapes = shape_names(args.focus_shapes) if args.focus_shapes else ()
    args.focus_colours = colour_names(args.focus_colours) if args.focus_colours else ()
    if args.init_from and args.components_from:
        raise ValueError("--init-from and --components-from are exclusive: the first also starts the stage from the "
                         "folder's weights, the second only lends its other components")
    if args.components_from and args.stage not in ("asym-decoder", "lazy", "sketch"):
        raise ValueError(f"--components-from is for the stages trained on frozen components (asym-decoder, lazy, "
                         f"sketch), not {args.stage}" + (": the student starts from its teacher, use --init-from"
                                                         if args.stage == "distill" else ""))
    for flag, folder in (("--init-from", args.init_from), ("--components-from", args.components_from)):
        if folder and not (Path(folder) / "model_index.json").exists():
            raise ValueError(f"{flag} {folder}: not a pipeline folder (no model_index.json)")
    res, bs, steps, lr = STAGE_DEFAULTS[args.stage]
    args.resolution = canvas_sizes(args.resolution or res)
    args.batch_size = batch_sizes(args.batch_size or bs, len(args.resolution))
    args.steps = args.steps or steps
    args.lr = args.lr or lr
    return args


# ----------------------------------------------------------------------------------------------------
# Model building and export
# ----------------------------------------------------------------------------------------------------


def model_dir(output: str | Path) -> Path:
    return Path(output) / "model"


def build_vae(cfg):
    from diffusers import AutoencoderKL

    return AutoencoderKL(**cfg.vae)


def build_asym(cfg):
    from diffusers import AsymmetricAutoencoderKL

    return AsymmetricAutoencoderKL(**cfg.asym_vae)


def build_backbone(cfg, **added_inputs: bool):
    """The text encoder, context encoder and transformer of a config; ``added_inputs``: optional inputs switched
    on, each given to the model that takes it (``ContextEncoder.ADDED_INPUTS``,
    ``LazyDiffusionTransformer.ADDED_INPUTS``)."""

    if cfg.text_encoder is None:
        raise ValueError(f"config {cfg.name!r} uses an external text encoder; lazyedit train builds ByteTextEncoder models only")
    unknown = set(added_inputs) - set(ContextEncoder.ADDED_INPUTS) - set(LazyDiffusionTransformer.ADDED_INPUTS)
    if unknown:
        raise ValueError(f"unknown added inputs: {', '.join(sorted(unknown))}")

    def inputs_of(cls):
        return {flag: on for flag, on in added_inputs.items() if flag in cls.ADDED_INPUTS}

    text = ByteTextEncoder(**cfg.text_encoder)
    ctx = ContextEncoder(**{**cfg.context_encoder, **inputs_of(ContextEncoder)})
    tr = LazyDiffusionTransformer(**{**cfg.transformer, **inputs_of(LazyDiffusionTransformer)})
    return text, ctx, tr


def build_tuner(cfg):

    return CSCTuner(**cfg.sketch_tuner)


def load_component(cls, path: Path):
    return cls.from_pretrained(str(path))


def ship_pipeline(output: str | Path, dest: str | Path | None = None) -> Path:
    """Copy ``<output>/model`` as fp16 safetensors to ``dest`` (default: where ``load_pipeline("demo")``
    looks), the form the demo model ships in. Returns the destination folder."""

    dest = Path(dest) if dest else DEMO_MODEL_DIR
    with diffusers_errors_only():  # notices about the asymmetric VAE's config and fp32-kept modules do not apply
        pipe = LazyEditPipeline.from_pretrained(str(model_dir(output)))
        pipe.register_to_config(model_name="demo")
        pipe = pipe.to(dtype=torch.float16)
    save_into(pipe, dest)  # the model card and eval files beside the weights stay
    return dest


BACKBONE_COMPONENTS = ("text_encoder", "context_encoder", "transformer")


def average_pipelines(first: str | Path, second: str | Path, dest: str | Path, weight: float = 0.5,
                      components: tuple[str, ...] = BACKBONE_COMPONENTS) -> Path:
    """Write to ``dest`` (fp16, as ship does) the pipeline folder ``first`` with each named component's weights
    replaced by ``(1 - weight) * first + weight * second``: two fine-tunes of one model averaged, which can keep
    some of what each learned (stop 42: the backbone resumed 7673 steps gained shape and lost 512 px colour; its
    average with where it started kept both). Averaged in fp32; ``ValueError`` names what does not match."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"average weight {weight}: must be within 0..1")
    with diffusers_errors_only():
        base, other = (LazyEditPipeline.from_pretrained(str(f)) for f in (first, second))
    for name in components:
        a, b = getattr(base, name, None), getattr(other, name, None)
        for model, folder in ((a, first), (b, second)):
            if not isinstance(model, torch.nn.Module):  # absent, or a scheduler
                raise ValueError(f"average: component {name!r} missing in {folder}, or not a model with weights")
        wa, wb = a.state_dict(), b.state_dict()
        if wa.keys() != wb.keys() or any(wa[k].shape != wb[k].shape for k in wa):
            raise ValueError(f"average: {name} of {first} and of {second} have different weights (another architecture)")
        with torch.no_grad():
            for k, t in wa.items():
                if t.is_floating_point():
                    t.copy_((1 - weight) * t.float() + weight * wb[k].float())
    dest = Path(dest)
    with diffusers_errors_only():
        base = base.to(dtype=torch.float16)
    save_into(base, dest)
    return dest


def seed_run_folder(source: str | Path, output: str | Path, skip: tuple[str, ...] = ()) -> list[str]:
    """Copy into ``<output>/model`` every component of the pipeline folder ``source`` that it lacks (the
    frozen parts a fine-tuning stage needs), except those named in ``skip``. fp16 weights stay fp16 on disk;
    from_pretrained loads them as fp32. Returns the names copied."""
    source, root = Path(source), model_dir(output)
    root.mkdir(parents=True, exist_ok=True)
    copied = []
    for comp in sorted(source.iterdir()):
        if comp.name in skip:
            continue
        if (comp / "config.json").exists() and not (root / comp.name / "config.json").exists():
            shutil.copytree(comp, root / comp.name, dirs_exist_ok=True)
            copied.append(comp.name)
    return copied


def save_into(pipe, dest: Path) -> None:
    """``pipe.save_pretrained`` into ``dest``, replacing only what it writes (the index and the component
    folders) and keeping everything else there (model card, eval reports, stage markers). Written to a
    sibling folder first, so an interrupted save leaves the old components whole."""
    tmp = dest.with_name(dest.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    pipe.save_pretrained(str(tmp), safe_serialization=True)
    dest.mkdir(parents=True, exist_ok=True)
    for child in tmp.iterdir():
        old = dest / child.name
        if old.is_dir():
            shutil.rmtree(old)
        elif old.exists():
            old.unlink()
        child.rename(old)
    shutil.rmtree(tmp)


def export_pipeline(output: str | Path, config_name: str) -> bool:
    """Write ``<output>/model/model_index.json`` (and every component) through LazyEditPipeline.save_pretrained
    when the VAE and the backbone exist. Returns whether the folder is a loadable pipeline."""
    from diffusers import AutoencoderKL


    cfg = get_config(config_name)
    root = model_dir(output)
    need = ["vae", "text_encoder", "context_encoder", "transformer"]
    if not all((root / n / "config.json").exists() for n in need):
        return False
    pipe = LazyEditPipeline(
        vae=AutoencoderKL.from_pretrained(str(root / "vae")),
        text_encoder=ByteTextEncoder.from_pretrained(str(root / "text_encoder")),
        context_encoder=ContextEncoder.from_pretrained(str(root / "context_encoder")),
        transformer=LazyDiffusionTransformer.from_pretrained(str(root / "transformer")),
        scheduler=flow_scheduler(cfg.sampling_shift),
        asym_vae=load_asym_vae(root / "asym_vae") if (root / "asym_vae" / "config.json").exists() else None,
        sketch_tuner=CSCTuner.from_pretrained(str(root / "sketch_tuner")) if (root / "sketch_tuner" / "config.json").exists() else None,
        model_name=f"{cfg.name}-trained",
        default_steps=cfg.default_steps,
        default_guidance=cfg.default_guidance,
    )
    save_into(pipe, root)
    return True


# ----------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------


#: pixels inside the hole's edge that the asymmetric decoder's seam term weighs (eval's seam band is 3)
SEAM_RIM = 4


def chroma_error(rec: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-pixel L1 of the colour part (each channel minus the pixel's grey level). Without it a small VAE
    learns luminance first and leaves colours grey, or shifted in hue, for a long time."""
    return ((rec - rec.mean(1, keepdim=True)) - (x - x.mean(1, keepdim=True))).abs()


def edge_error(rec: torch.Tensor, x: torch.Tensor, m: torch.Tensor | None = None) -> torch.Tensor:
    """Mean L1 of the horizontal and vertical pixel differences, over the image or, with a hole ``m``, over
    the pixel pairs inside it. An outline or a shadow's edge is a few pixels of a whole image, so plain L1
    barely notices it blurred to a grey rim; their differences are where this term lives (a weight-free
    stand-in for a perceptual loss, which needs pretrained weights). A flat colour shift costs nothing here."""
    dx = ((rec[..., :, 1:] - rec[..., :, :-1]) - (x[..., :, 1:] - x[..., :, :-1])).abs()
    dy = ((rec[..., 1:, :] - rec[..., :-1, :]) - (x[..., 1:, :] - x[..., :-1, :])).abs()
    if m is None:
        return (dx.mean() + dy.mean()) / 2
    mx, my = m[..., :, 1:] * m[..., :, :-1], m[..., 1:, :] * m[..., :-1, :]
    return ((dx * mx).sum() / (mx.sum() * 3 + 1) + (dy * my).sum() / (my.sum() * 3 + 1)) / 2


def with_edge_term(loss: torch.Tensor, logs: dict, rec: torch.Tensor, x: torch.Tensor, weight: float,
                   m: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """``loss`` plus ``weight`` times ``edge_error`` (logged as "edge"); unchanged when the weight is 0."""
    if not weight:
        return loss, logs
    edge = edge_error(rec, x, m)
    return loss + weight * edge, {**logs, "edge": edge.detach()}


def flow_noising(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x_t = (1 - t) x0 + t noise; velocity target noise - x0. t broadcasts from (B,)."""
    tt = t.view(-1, *([1] * (x0.dim() - 1)))
    return (1 - tt) * x0 + tt * noise, noise - x0


def sample_t(b: int, device, generator=None, shift: float = 1.0) -> torch.Tensor:
    """Logit-normal t in (0, 1) (SD3's choice: weights the middle noise levels), moved toward t = 1 by
    ``shift`` with the map the flow scheduler applies to its sigmas (SD3's resolution shift)."""
    t = torch.sigmoid(torch.randn(b, device=device, generator=generator))
    return shift * t / (1 + (shift - 1) * t)


@torch.no_grad()
def sample_holes(backbone, canvas: torch.Tensor, mask: torch.Tensor, captions: list[str], *, unit: int, steps: int,
                 guidance: float, shift: float, generator: torch.Generator, adapter=None) -> torch.Tensor:
    """The canvas latents (scaled) with their hole tokens sampled by the backbone: Euler flow sampling with
    classifier-free guidance, as the pipeline does. ``adapter(index)``: the sketch tuner's residuals for the
    doubled (conditional + unconditional) batch."""

    text_enc, ctx_enc, tr = backbone
    p = tr.config.patch_size
    b, device = canvas.shape[0], canvas.device
    tok, index, valid = plan_holes_batch(mask, unit)
    grid = tuple(tok.shape[1:])
    context = ctx_enc(canvas, token_mask_to_latent(tok, p), index, pixel_mask=mask)
    # a guidance-distilled transformer takes the scale as an input: one row per edit instead of two
    distilled = tr.config.guidance_embeds
    rows = 1 if distilled else 2
    emb, tmask = text_enc.encode(list(captions) + ([] if distilled else [text_enc.null_prompt] * b), device)
    index2, valid2, context2 = torch.cat([index] * rows), torch.cat([valid] * rows), torch.cat([context] * rows)
    residuals = adapter(index2) if adapter is not None else None
    scale = torch.full((b,), float(guidance), device=device) if distilled else None
    x = torch.randn(b, index.shape[1], tr.config.latent_channels * p * p, generator=generator).to(device)
    sched = flow_scheduler(shift)
    sched.set_timesteps(steps, device=device)
    for t in sched.timesteps:
        sigma = float(sched.sigmas[sched.step_index or 0])
        ts = torch.full((rows * b,), sigma * 1000, device=device)
        v = tr(torch.cat([x] * rows), context2, index2, grid, ts, emb, tmask, valid2, residuals, guidance=scale).float()
        if not distilled:
            v = v[b:] + guidance * (v[:b] - v[b:])
        x = sched.step(v, t, x).prev_sample
    tokens = patchify(canvas, p)
    for i in range(b):
        n = int(valid[i].sum())
        tokens[i, index[i, :n]] = x[i, :n].to(tokens.dtype)
    return unpatchify(tokens, p, canvas.shape[1], grid)


def guided_sketch_adapter(tuner, sketch: torch.Tensor, strength: torch.Tensor | None = None):
    """``adapter(index)`` for sample_holes: the sketch tuner's residuals for the batch that classifier-free
    guidance doubles (the sketch steers both halves, as in the pipeline), or for the batch itself (a
    guidance-distilled transformer's single row); ``strength`` (B, 1, 1) per edit."""
    def adapter(index):
        rows = index.shape[0] // sketch.shape[0]
        scale = 1.0 if strength is None else torch.cat([strength] * rows)
        return tuner.adapter([(torch.cat([sketch] * rows), 1.0)], index, scale)

    return adapter


def decoder_loss(rec: torch.Tensor, x: torch.Tensor, m: torch.Tensor, edge_weight: float = 0.0) -> tuple[torch.Tensor, dict]:
    """The asymmetric decoder's loss against the truth ``x``, for hole ``m`` (plus ``edge_weight`` times the
    hole's ``edge_error``: the known pixels are copied, the hole's edges are what the decoder draws)."""
    err = (rec - x).abs()
    chroma = chroma_error(rec, x)
    # the hole is what the decoder must invent from latents alone; its colours are what users judge
    # (without the chroma term a hue shift such as purple -> blue costs little L1)
    hole = ((err + 2 * chroma) * m).sum() / (m.sum() * 3 + 1)
    # the hole's rim, where the decoder sees the known pixels next to it: a visible seam is the
    # asymmetric decoder's failure (the paper's reason for its masked-image branch)
    rim = m * F.max_pool2d(1 - m, kernel_size=2 * SEAM_RIM + 1, stride=1, padding=SEAM_RIM)
    seam = (err * rim).sum() / (rim.sum() * 3 + 1)
    l1 = err.mean()
    loss = l1 + F.mse_loss(rec, x) + 2 * chroma.mean() + hole + 2 * seam
    logs = {"l1": l1.detach(), "chroma": chroma.mean().detach(), "hole": hole.detach(), "seam": seam.detach()}
    return with_edge_term(loss, logs, rec, x, edge_weight, m)


def token_unit(autoencoder, transformer) -> int:
    """Pixels per token side: the autoencoder's downsampling times the transformer's patch size (an
    AsymmetricAutoencoderKL names its encoder's blocks down_block_out_channels, an AutoencoderKL
    block_out_channels)."""
    cfg = autoencoder.config
    blocks = getattr(cfg, "down_block_out_channels", None) or cfg.block_out_channels
    return 2 ** (len(blocks) - 1) * transformer.config.patch_size


def _latest_checkpoint(stage_dir: Path) -> Path | None:
    ckpts = sorted(stage_dir.glob("checkpoints/step_*"), key=lambda p: int(p.name.split("_")[1]))
    ckpts = [c for c in ckpts if (c / "trainer_state.json").exists()]
    return ckpts[-1] if ckpts else None


# ----------------------------------------------------------------------------------------------------
# The stage runner
# ----------------------------------------------------------------------------------------------------


class StageNet(torch.nn.Module):
    """The trainable models of a stage behind one forward(batch) -> (loss, logs), so accelerate/DDP wraps
    a single module whose forward computes the whole loss (gradient sync hooks see every parameter)."""

    def __init__(self, stage: str, models: dict, frozen: dict, text_dropout: float, generator: torch.Generator,
                 position_grid: int = 0, generated_latents: float = 0.0, sampling: dict | None = None,
                 generated_sketches: float = 0.0, decoder_teacher: float = 0.0, adversarial: float = 0.0,
                 edge_weight: float = 0.0, timestep_shift: float = 1.0):
        super().__init__()
        self.edge_weight = edge_weight
        self.timestep_shift = timestep_shift
        self.decoder_teacher = decoder_teacher
        self.adversarial = adversarial
        self.adversary_on = False  # the trainer turns the decoder's adversarial term on at --adversarial-start
        if adversarial > 0:
            from .discriminator import PatchDiscriminator

            # a submodule, so the optimizer, DDP and checkpoints hold it; not in ``models``: never exported
            self.discriminator = PatchDiscriminator()
        self.stage = stage
        self.generated_latents = generated_latents
        self.generated_sketches = generated_sketches
        self.sampling = sampling or {}  # steps, guidance, shift of the pipeline the decoder will serve
        self.models = torch.nn.ModuleDict(models)
        self.frozen = frozen  # plain dict: not parameters of this module, never in the optimizer or checkpoints
        self.text_dropout = text_dropout
        self.position_grid = position_grid
        self.generator = generator

    def _encode(self, pixels: torch.Tensor) -> torch.Tensor:
        vae = self.frozen["vae"]
        with torch.no_grad():
            pixels = pixels.to(vae.dtype).contiguous(memory_format=torch.channels_last)
            return vae.encode(pixels).latent_dist.mode().float().contiguous() * vae.config.scaling_factor

    def backbone(self):
        """(text encoder, context encoder, transformer) that sample: the distill stage's student samples."""
        src = self.models if self.stage == "lazy" else self.frozen
        tr = self.models["transformer"] if self.stage == "distill" else src["transformer"]
        return src["text_encoder"], src["context_encoder"], tr

    def forward(self, batch: dict):
        if self.stage == "vae":
            vae = self.models["vae"]
            x = batch["image"]
            post = vae.encode(x).latent_dist
            # decode the posterior mode (what the pipeline encodes with): converges much faster than
            # decoding samples; the small KL term keeps the latent scale in check
            rec = vae.decode(post.mode()).sample
            l1 = (rec - x).abs().mean()
            mse = F.mse_loss(rec, x)
            chroma = chroma_error(rec, x).mean()
            kl = post.kl().mean() / x[0].numel()
            loss = l1 + mse + 2 * chroma + 1e-3 * kl
            logs = {"l1": l1.detach(), "mse": mse.detach(), "chroma": chroma.detach(), "kl": kl.detach()}
            return with_edge_term(loss, logs, rec, x, self.edge_weight)
        if self.stage == "asym-decoder":
            asym = self.models["asym_vae"]
            if "edit_image" in batch and float(torch.rand(1, generator=self.generator)) < self.generated_latents:
                return self._generated_decoder_loss(batch)
            x, m = batch["image"], batch["mask"]
            with torch.no_grad():
                z = asym.encode(x).latent_dist.mode()
            # keywords: AsymmetricAutoencoderKL.forward would pass image/mask positionally and drop the mask
            rec = asym.decode(z, image=x, mask=m).sample
            return self._with_adversary(self._with_teacher(decoder_loss(rec, x, m, self.edge_weight), rec, z, x, m), rec, x, m)
        if self.stage == "distill":
            return self._distill_loss(batch)
        return self._flow_loss(batch)

    def _generated_decoder_loss(self, batch: dict):
        """Decode an edit whose hole latents the frozen backbone sampled, against the edit's truth. The
        generator's latents are not the encoder's: trained on true latents only, the decoder follows them
        to a seam where they disagree with the known pixels beside the hole."""
        asym = self.models["asym_vae"]
        x, target, m = batch["edit_image"], batch["edit_target"], batch["edit_mask"]
        scale = asym.config.scaling_factor
        backbone = self.backbone()
        with torch.no_grad():
            canvas = asym.encode(x).latent_dist.mode() * scale
            z = sample_holes(backbone, canvas, m, list(batch["edit_caption"]), unit=token_unit(asym, backbone[2]),
                             generator=self.generator, adapter=self._generated_sketch_adapter(batch),
                             **self.sampling) / scale
        rec = asym.decode(z, image=x, mask=m).sample
        loss, logs = self._with_adversary(self._with_teacher(decoder_loss(rec, target, m, self.edge_weight), rec, z, x, m),
                                          rec, target, m)
        return loss, {**logs, "generated": torch.ones(())}

    def _with_teacher(self, loss_logs: tuple[torch.Tensor, dict], rec: torch.Tensor, z: torch.Tensor,
                      x: torch.Tensor, m: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """The decoder's loss plus, with --decoder-teacher, its loss against what the wider decoder it was cut
        from decodes of the same latents and known pixels: a dense target that already joins generated
        latents to the canvas, for a decoder cut from it to relearn what the cut lost. The teacher's output
        is scored as the truth is (``decoder_loss``: the hole and its rim weighted apart): a plain L1 over the
        whole image is mostly the known pixels, which the cut decoder copies easily, and let removal fills
        stay grainy (v17, v18)."""
        loss, logs = loss_logs
        teacher = self.frozen.get("asym_teacher")
        if teacher is None:
            return loss, logs
        with torch.no_grad():
            target = teacher.decode(z, image=x, mask=m).sample
        gap, gap_logs = decoder_loss(rec, target, m)
        return loss + self.decoder_teacher * gap, {**logs, "teacher_l1": gap_logs["l1"], "teacher_hole": gap_logs["hole"]}

    def _with_adversary(self, loss_logs: tuple[torch.Tensor, dict], rec: torch.Tensor, truth: torch.Tensor,
                        m: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """The decoder's loss plus, with --adversarial, the PatchGAN's: the discriminator's own hinge loss
        always, the decoder's (weighted) from --adversarial-start on."""
        loss, logs = loss_logs
        if self.adversarial <= 0:
            return loss, logs
        from .discriminator import adversarial_losses

        d_loss, g_loss, adv_logs = adversarial_losses(self.discriminator, rec.float(), truth, m)
        weight = torch.zeros(())
        if self.adversary_on and torch.is_grad_enabled():
            # VQGAN's adaptive weight: the adversarial gradient at the decoder's last layer is scaled to the
            # reconstruction's there, times --adversarial, so the weight means the same as both losses move
            last = self.models["asym_vae"].decoder.conv_out.weight
            g_rec = torch.autograd.grad(loss, last, retain_graph=True)[0].norm()
            g_adv = torch.autograd.grad(g_loss, last, retain_graph=True)[0].norm()
            weight = (self.adversarial * g_rec / (g_adv + 1e-4)).clamp(max=1e4).detach()
        return loss + d_loss + weight * g_loss, {**logs, **adv_logs, "adv_weight": weight}

    def _generated_sketch_adapter(self, batch: dict):
        """The frozen sketch tuner's adapter for the edits drawn with their sketch (a ``generated_sketches``
        fraction of those that have one; the others get strength 0), or None: the decoder then also learns
        the latents the tuner steers, which the sketch cases of the editor decode."""
        if self.generated_sketches <= 0:
            return None
        has = batch["edit_has_sketch"].bool().cpu()
        use = has & (torch.rand(has.shape[0], generator=self.generator) < self.generated_sketches)
        if not use.any():
            return None
        sketch = batch["edit_sketch"]
        return guided_sketch_adapter(self.frozen["sketch_tuner"], sketch, use.to(sketch.device, sketch.dtype)[:, None, None])

    def _holes(self, batch: dict) -> dict:
        """What a flow-matching loss over the batch's holes needs: context tokens, the hole tokens noised to
        time t (xt) and their velocity target v, token indices and validity, and position offsets."""

        _, ctx_enc, tr = self.backbone()
        p = tr.config.patch_size
        unit = token_unit(self.frozen["vae"], tr)
        image, target, mask = batch["image"], batch["target"], batch["mask"]
        b, device = image.shape[0], image.device
        canvas = self._encode(image)
        # most targets equal their canvas (insertions, completions): encode only those that differ (removals)
        differ = (target != image).flatten(1).any(1)
        goal = canvas.clone()
        if differ.any():
            goal[differ] = self._encode(target[differ])
        tok, index, valid = plan_holes_batch(mask, unit)
        grid = tuple(tok.shape[1:])
        offset = None
        if self.position_grid > max(grid):
            # crops smaller than the canvases the model will see: shift their positions at random so every
            # position of a canvas up to position_grid tokens wide is trained
            offset = torch.randint(0, self.position_grid - max(grid) + 1, (b, 2), generator=self.generator).to(device)
        context = ctx_enc(canvas, token_mask_to_latent(tok, p), index, offset, pixel_mask=mask)
        x0 = gather_tokens(patchify(goal, p), index)
        noise = torch.randn(x0.shape, generator=self.generator).to(device)
        t = sample_t(b, "cpu", self.generator, self.timestep_shift).to(device)
        xt, v = flow_noising(x0, noise, t)
        return {"context": context, "index": index, "valid": valid, "grid": grid, "offset": offset, "t": t,
                "xt": xt, "v": v}

    def _captions(self, batch: dict, dropout: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Text embeddings and mask of the batch's captions, each replaced by the null prompt with
        probability ``dropout``."""
        text_enc = self.backbone()[0]
        captions = list(batch["caption"])
        if dropout > 0:
            drop = torch.rand(len(captions), generator=self.generator) < dropout
            # the model's own "no condition", not "": an empty caption asks for a fill from the context
            captions = [text_enc.null_prompt if d else c for c, d in zip(captions, drop.tolist())]
        ids, tmask = text_enc.tokenize(captions)
        ids, tmask = ids.to(batch["image"].device), tmask.to(batch["image"].device)
        return text_enc(ids, tmask), tmask

    @staticmethod
    def _hole_mse(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        w = valid.float()[..., None]
        return ((pred.float() - target) ** 2 * w).sum() / (w.sum() * target.shape[-1])

    def _flow_loss(self, batch: dict):
        tr = self.backbone()[2]
        h = self._holes(batch)
        text, tmask = self._captions(batch, self.text_dropout if self.stage == "lazy" else 0.0)
        adapter = None
        if self.stage == "sketch":
            adapter = self.models["sketch_tuner"].adapter([(batch["sketch"], 1.0)], h["index"])
        # a guidance-distilled backbone (a sketch tuner trained on one) predicts the conditional velocity at scale 1
        scale = torch.ones_like(h["t"]) if tr.config.guidance_embeds else None
        pred = tr(h["xt"], h["context"], h["index"], h["grid"], h["t"] * 1000, text, tmask, h["valid"], adapter,
                  h["offset"], guidance=scale)
        b = h["t"].shape[0]
        return self._hole_mse(pred, h["v"], h["valid"]), {"hole_tokens": h["valid"].sum().float() / b}

    def _distill_loss(self, batch: dict):
        """The student's one-row prediction at scale w against the teacher's guided velocity at w, on the same
        noised holes; half the edits that have an outline are steered by the frozen sketch tuner in both."""

        text_enc, teacher, student = self.backbone()[0], self.frozen["teacher"], self.models["transformer"]
        h = self._holes(batch)
        b, device = h["t"].shape[0], h["t"].device
        # some null prompts too: their guided velocity is the unconditional one, whatever the scale
        text, tmask = self._captions(batch, self.text_dropout)
        lo, hi = DISTILLED_GUIDANCE_RANGE
        w = (lo + (hi - lo) * torch.rand(b, generator=self.generator)).to(device)
        adapter = None
        tuner = self.frozen.get("sketch_tuner")
        if tuner is not None:
            use = batch["has_sketch"].bool().cpu() & (torch.rand(b, generator=self.generator) < 0.5)
            if use.any():
                strength = use.to(device, torch.float32)[:, None, None]
                adapter = tuner.adapter([(batch["sketch"], 1.0)], h["index"], strength)
        args = (h["context"], h["index"], h["grid"], h["t"] * 1000)
        with torch.no_grad():
            null, null_mask = (x.expand(b, *x.shape[1:]) for x in text_enc.encode([text_enc.null_prompt], device))
            cond = teacher(h["xt"], *args, text, tmask, h["valid"], adapter, h["offset"]).float()
            uncond = teacher(h["xt"], *args, null, null_mask, h["valid"], adapter, h["offset"]).float()
            guided = uncond + w[:, None, None] * (cond - uncond)
        pred = student(h["xt"], *args, text, tmask, h["valid"], adapter, h["offset"], guidance=w)
        loss = self._hole_mse(pred, guided, h["valid"])
        return loss, {"hole_tokens": h["valid"].sum().float() / b, "guidance": w.mean()}


class StageTrainer:
    def __init__(self, args: TrainArgs):
        from accelerate import Accelerator
        from accelerate.utils import ProjectConfiguration

        self.args = args = _defaults(args)
        self.cfg = get_config(args.config)
        self.output = Path(args.output)
        self.stage_dir = self.output / args.stage
        self.stage_dir.mkdir(parents=True, exist_ok=True)
        mp = args.mixed_precision
        if mp == "auto":
            mp = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else ("fp16" if torch.cuda.is_available() else "no")
        self.accelerator = Accelerator(
            # without cpu=True accelerate ignores torchrun's process group on a machine with no GPU, and every
            # process trains alone on the same data and races the others for the same checkpoint folder
            cpu=not (torch.cuda.is_available() or torch.backends.mps.is_available()),
            mixed_precision=mp,
            log_with="tensorboard",
            project_config=ProjectConfiguration(project_dir=str(self.stage_dir), logging_dir=str(self.stage_dir / "logs")),
        )
        self.device = self.accelerator.device
        self.step = 0
        self.losses: list[float] = []
        torch.manual_seed(args.seed + self.accelerator.process_index)
        self.generator = torch.Generator(device="cpu").manual_seed(args.seed * 1000 + self.accelerator.process_index)

    # ---------------------------------------------------------------- stage setup
    def _setup(self):
        a, cfg, stage = self.args, self.cfg, self.args.stage
        mdir = model_dir(self.output)
        source = a.init_from or a.components_from
        if source:
            if self.accelerator.is_main_process:
                # --components-from: the stage's own components are not copied, they start fresh
                copied = seed_run_folder(source, self.output, skip=() if a.init_from else STAGE_COMPONENTS[stage])
                if copied:
                    logger.info("copied %s from %s into %s", ", ".join(copied), source, mdir)
            self.accelerator.wait_for_everyone()
        self.frozen: dict[str, torch.nn.Module] = {}
        if stage == "vae":
            self.models = {"vae": build_vae(cfg)}
        elif stage == "asym-decoder":
            vae = self._require(mdir / "vae", "vae")
            asym = build_asym(cfg)
            missing = asym.load_state_dict(
                {k: v for k, v in vae.state_dict().items() if k.startswith(("encoder.", "quant_conv."))}, strict=False
            )
            assert not [k for k in missing.missing_keys if k.startswith(("encoder.", "quant_conv."))]
            asym.register_to_config(scaling_factor=vae.config.scaling_factor)
            asym.encoder.requires_grad_(False)
            asym.quant_conv.requires_grad_(False)
            self.models = {"asym_vae": asym}
            if a.generated_latents > 0:
                self._load_frozen_backbone(mdir)
            if a.decoder_teacher:
                from diffusers import AsymmetricAutoencoderKL

                self.frozen["asym_teacher"] = AsymmetricAutoencoderKL.from_pretrained(
                    str(Path(a.init_from) / "asym_vae")).requires_grad_(False).eval()
            if a.generated_sketches > 0:
                path = mdir / "sketch_tuner"
                if not (path / "config.json").exists():
                    raise FileNotFoundError(f"{path} missing: run the sketch stage first")
                self.frozen["sketch_tuner"] = CSCTuner.from_pretrained(str(path)).requires_grad_(False).eval()
        elif stage == "lazy":
            vae = self._require(mdir / "vae", "vae")
            vae.requires_grad_(False).eval()
            self.frozen["vae"] = vae
            # each added input: asked for by its flag (TrainArgs names it as the config does), or kept from the run
            added = {}
            for name, cls in (("context_encoder", ContextEncoder), ("transformer", LazyDiffusionTransformer)):
                trained = mdir / name / "config.json"
                kept = json.loads(trained.read_text()) if trained.exists() else {}
                added.update({flag: getattr(a, flag) or kept.get(flag, False) for flag in cls.ADDED_INPUTS})
            text, ctx, tr = build_backbone(cfg, **added)
            self.models = {"text_encoder": text, "context_encoder": ctx, "transformer": tr}
        elif stage == "sketch":
            vae = self._require(mdir / "vae", "vae")
            self._load_frozen_backbone(mdir)
            vae.requires_grad_(False).eval()
            self.frozen["vae"] = vae
            self.models = {"sketch_tuner": build_tuner(cfg)}
        elif stage == "distill":
            vae = self._require(mdir / "vae", "vae")
            vae.requires_grad_(False).eval()
            self.frozen["vae"] = vae
            # not the model's transformer: once the student has been exported, that is the student
            self._load_frozen_backbone(mdir, transformer=False)
            self.frozen["teacher"] = teacher = self._distill_teacher(mdir)
            self.models = {"transformer": teacher.guidance_student()}
            if (mdir / "sketch_tuner" / "config.json").exists():
                self.frozen["sketch_tuner"] = CSCTuner.from_pretrained(str(mdir / "sketch_tuner")).requires_grad_(False).eval()
        else:
            raise ValueError(f"unknown stage {stage!r}: choose one of {', '.join(STAGES)}")
        if a.init_from and stage != "distill":  # the student starts from its teacher, the model's own transformer
            self._init_weights(Path(a.init_from))
        for m in self.frozen.values():
            m.to(self.device)
        if "vae" in self.frozen:
            # the frozen encoder runs on every batch; channels-last convolutions are ~20% faster on CPUs
            self.frozen["vae"].to(memory_format=torch.channels_last)
        sampling = {"steps": cfg.default_steps, "guidance": cfg.default_guidance, "shift": cfg.sampling_shift}
        self.net_inner = StageNet(stage, self.models, self.frozen, a.text_dropout, self.generator, a.position_grid,
                                  a.generated_latents, sampling, a.generated_sketches, a.decoder_teacher, a.adversarial,
                                  a.edge_weight, a.timestep_shift)
        params = [p for p in self.net_inner.parameters() if p.requires_grad]
        self.params = params
        self.optimizer = torch.optim.AdamW(self._param_groups(params), lr=a.lr, betas=(0.9, 0.99),
                                           weight_decay=a.weight_decay)
        warm = max(1, a.warmup)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: min(1.0, (s + 1) / warm))
        from diffusers.training_utils import EMAModel

        self.ema = EMAModel(params, decay=a.ema_decay, use_ema_warmup=True, inv_gamma=1.0, power=2 / 3)
        self.net, self.optimizer, self.scheduler = self.accelerator.prepare(self.net_inner, self.optimizer, self.scheduler)
        self.models = self.net_inner.models
        self.ema.to(self.device)
        self.accelerator.register_for_checkpointing(self.ema)

    def _param_groups(self, params: list) -> list[dict]:
        """The optimizer's groups: the backbone's added input modules (pooled text, hole positions, mask detail) in a group
        of their own, always, so a checkpoint resumes whatever the flags; its ``lr_scale`` is its rate over --lr
        (--added-input-lr / --lr; 1 without the flag), kept by the checkpoint."""

        added = {id(p) for m in self.models.values() if isinstance(m, AddedInputs) for p in m.added_input_parameters()}
        if self.args.added_input_lr is not None and not added:
            raise ValueError("--added-input-lr: the backbone has no added input (--pooled-text, --hole-positions, --mask-detail)")
        if not added:
            return [{"params": params, "lr_scale": 1.0}]
        scale = self._added_input_scale()
        return [{"params": [p for p in params if id(p) not in added], "lr_scale": 1.0},
                {"params": [p for p in params if id(p) in added], "lr_scale": scale, "lr": self.args.lr * scale}]

    def _added_input_scale(self) -> float:
        a = self.args
        return 1.0 if a.added_input_lr is None else a.added_input_lr / a.lr

    def _init_weights(self, source: Path) -> None:
        """--init-from: the trained components start from ``source``'s weights (a checkpoint, when one is
        resumed, replaces them later); a component the config makes narrower or shallower than ``source``'s
        starts from a cut of it (narrow.py)."""
        from .narrow import narrowed_state_dict

        for name, model in self.models.items():
            path = source / name
            if not (path / "config.json").exists():
                raise FileNotFoundError(f"--init-from {source}: it has no {name} to start the {self.args.stage} stage from")
            source_model = type(model).from_pretrained(str(path))
            if source_model.config.get("guidance_embeds") and not model.config.get("guidance_embeds"):
                # its velocity at a guidance scale w was learned from a teacher's; the lazy stage's loss trains an
                # undistilled transformer, so start from the distilled one's scale-1 prediction (the conditional
                # velocity, the unconditional with the null prompt), guided again by two rows
                source_model = source_model.undistilled(1.0)
                logger.info("%s: guidance-distilled; starts as its prediction at guidance 1, undistilled", path)
            for flag in getattr(model, "ADDED_INPUTS", {}):
                if model.config.get(flag) and not source_model.config.get(flag):
                    source_model = source_model.with_added_input(flag)
                    logger.info("%s: the %s input is added (zero-initialised)", path, flag)
            wide = source_model.state_dict()
            own = model.state_dict()
            if own.keys() == wide.keys() and all(own[k].shape == wide[k].shape for k in own):
                model.load_state_dict(wide)
                logger.info("%s starts from %s", name, path)
            else:
                model.load_state_dict(narrowed_state_dict(wide, model, model.config.get("norm_num_groups", 1)))
                logger.info("%s starts from a cut of %s", name, path)

    def _load_frozen_backbone(self, mdir: Path, transformer: bool = True) -> None:
        """The trained text encoder, context encoder and (unless told not to) transformer, frozen (for the
        stages after lazy)."""

        parts = [("text_encoder", ByteTextEncoder), ("context_encoder", ContextEncoder)]
        for name, cls in parts + ([("transformer", LazyDiffusionTransformer)] if transformer else []):
            path = mdir / name
            if not (path / "config.json").exists():
                raise FileNotFoundError(f"{path} missing: run the lazy stage first")
            m = cls.from_pretrained(str(path))
            m.requires_grad_(False).eval()
            self.frozen[name] = m

    def _distill_teacher(self, mdir: Path):
        """The transformer the distill stage learns from: ``<output>/model/transformer`` as it was when the stage
        first ran, kept in ``<output>/distill/teacher`` (the student's exports replace the model's own)."""

        keep = self.stage_dir / "teacher"
        if not (keep / "config.json").exists():
            if self.accelerator.is_main_process:
                source = mdir / "transformer"
                if LazyDiffusionTransformer.load_config(str(source)).get("guidance_embeds"):
                    raise ValueError(f"{source} is already guidance-distilled and {keep} holds no teacher: "
                                     "distill from an undistilled transformer")
                shutil.copytree(source, keep)
            self.accelerator.wait_for_everyone()
        return LazyDiffusionTransformer.from_pretrained(str(keep)).requires_grad_(False).eval()

    def _require(self, path: Path, what: str):
        from diffusers import AutoencoderKL

        if not (path / "config.json").exists():
            raise FileNotFoundError(f"{path} missing: run the {what} stage first")
        return AutoencoderKL.from_pretrained(str(path))

    def unwrap(self, name: str):
        return self.net_inner.models[name]

    def _encode(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net_inner._encode(pixels)

    def _backbone(self):
        return self.net_inner.backbone()

    # ---------------------------------------------------------------- samples
    @torch.no_grad()
    def sample_grid(self, batch: dict) -> Image.Image | None:
        stage = self.args.stage
        n = min(4, batch["image"].shape[0])
        ims = []
        if stage == "vae":
            vae = self.unwrap("vae")
            x = batch["image"][:n]
            rec = vae.decode(vae.encode(x).latent_dist.mode()).sample
            for i in range(n):
                ims += [to_image(x[i]), to_image(rec[i])]
            return contact_sheet(ims, cols=4)
        if stage == "asym-decoder":
            asym = self.unwrap("asym_vae")
            x, m = batch["image"][:n], batch["mask"][:n]
            z = asym.encode(x).latent_dist.mode()
            rec = asym.decode(z, image=x, mask=m).sample
            for i in range(n):
                ims += [to_image(x[i] * (1 - m[i]) + 0.0 * m[i]), to_image(rec[i]), to_image(x[i])]
            return contact_sheet(ims, cols=6)
        out = self.generate({k: (v[:n] if torch.is_tensor(v) else list(v)[:n]) for k, v in batch.items()},
                            steps=self.args.sample_steps, guidance=self.args.sample_guidance)
        for i in range(n):
            hole = batch["image"][i] * (1 - batch["mask"][i]) + 0.0 * batch["mask"][i]
            row = [to_image(hole), to_image(out[i]), to_image(batch["target"][i])]
            if stage == "sketch":
                row.insert(1, to_image(batch["sketch"][i][:3] * 0 + batch["sketch"][i][3:] * -1))
            ims += row
        return contact_sheet(ims, cols=len(ims) // n * 2 if n >= 2 else len(ims))

    @torch.no_grad()
    def generate(self, batch: dict, steps: int = 12, guidance: float = 2.0, seed: int = 0) -> torch.Tensor:
        """Fill the holes of a batch (Euler flow sampling + plain VAE decode + paste). For previews."""
        backbone = self._backbone()
        vae = self.frozen["vae"]
        unit = token_unit(vae, backbone[2])
        image, mask = batch["image"].to(self.device), batch["mask"].to(self.device)
        adapter = None
        if self.args.stage == "sketch":
            adapter = guided_sketch_adapter(self.unwrap("sketch_tuner"), batch["sketch"].to(self.device))
        latent = sample_holes(backbone, self._encode(image), mask, list(batch["caption"]), unit=unit, steps=steps,
                              guidance=guidance, shift=self.cfg.sampling_shift,
                              generator=torch.Generator("cpu").manual_seed(seed), adapter=adapter)
        dec = vae.decode((latent / vae.config.scaling_factor).to(vae.dtype)).sample.float().clamp(-1, 1)
        return image * (1 - mask) + dec * mask

    # ---------------------------------------------------------------- checkpoints / export
    def save_checkpoint(self):
        acc = self.accelerator
        path = self.stage_dir / "checkpoints" / f"step_{self.step:07d}"
        acc.save_state(str(path))
        if acc.is_main_process:
            (path / "trainer_state.json").write_text(json.dumps({"step": self.step, "stage": self.args.stage,
                                                                 "config": self.args.config}))
            ckpts = sorted(self.stage_dir.glob("checkpoints/step_*"), key=lambda p: int(p.name.split("_")[1]))
            for old in ckpts[: -self.args.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
            self.export()
        acc.wait_for_everyone()

    def export(self):
        """EMA weights -> <output>/model/<component> (save_pretrained), then the pipeline index."""
        mdir = model_dir(self.output)
        mdir.mkdir(parents=True, exist_ok=True)
        self.ema.store(self.params)
        self.ema.copy_to(self.params)
        try:
            for name in self.models:
                m = self.unwrap(name)
                if name == "vae" and getattr(self, "latent_scale", None):
                    m.register_to_config(scaling_factor=self.latent_scale)
                m.save_pretrained(str(mdir / name))
        finally:
            self.ema.restore(self.params)
        (mdir / f"{self.args.stage}.json").write_text(json.dumps({"step": self.step, "config": self.args.config}))
        if self.args.stage in ("lazy", "sketch", "asym-decoder", "distill"):
            try:
                export_pipeline(self.output, self.args.config)
            except Exception as exc:  # the index is a convenience; components are saved regardless
                logger.warning("could not write the pipeline index: %s", exc)

    @torch.no_grad()
    def measure_latent_scale(self, loader_iter, batches: int = 8) -> float:
        vae = self.unwrap("vae")
        self.ema.store(self.params)
        self.ema.copy_to(self.params)
        zs = []
        for _ in range(batches):
            zs.append(vae.encode(next(loader_iter)["image"].to(self.device)).latent_dist.mode().float().flatten())
        self.ema.restore(self.params)
        std = torch.cat(zs).std().item()
        return float(1.0 / max(std, 1e-6))

    def _apply_lr(self, lr: float):
        """A checkpoint restores the optimizer's and scheduler's learning rate; this one (--lr) wins, so a
        resumed phase can lower it (the added inputs' group keeps its ratio to it)."""
        inner = getattr(self.scheduler, "scheduler", self.scheduler)  # accelerate wraps the scheduler
        groups = self.optimizer.param_groups
        if len(groups) > 1 and self.args.added_input_lr is not None:
            groups[1]["lr_scale"] = self._added_input_scale()  # asked again: it wins over the checkpoint's
        inner.base_lrs = [lr * g.get("lr_scale", 1.0) for g in groups]
        for group, base, factor in zip(groups, inner.base_lrs, (f(inner.last_epoch) for f in inner.lr_lambdas)):
            group["initial_lr"] = base
            group["lr"] = base * factor
        inner._last_lr = [g["lr"] for g in self.optimizer.param_groups]

    # ---------------------------------------------------------------- main loop
    def run(self) -> dict:
        a, acc = self.args, self.accelerator
        self._setup()
        resume = None
        if a.resume == "auto":
            resume = _latest_checkpoint(self.stage_dir)
        elif a.resume not in ("never", "", None):
            resume = Path(a.resume)
        if resume is not None:
            acc.load_state(str(resume))
            self.step = json.loads((resume / "trainer_state.json").read_text())["step"]
            self._apply_lr(a.lr)
            logger.info("resumed %s from %s at step %d", a.stage, resume, self.step)
            if acc.is_main_process:
                print(f"[lazyedit train] resumed {a.stage} at step {self.step} from {resume}, lr {a.lr:g}", flush=True)
        self.generator.manual_seed(a.seed * 1000 + acc.process_index + 7919 * self.step)
        acc.init_trackers(a.stage.replace("-", "_"), config={k: (",".join(map(str, v)) if isinstance(v, tuple) else v) for k, v in vars(a).items()
                                   if isinstance(v, (int, float, str, bool, tuple))})
        ds = StageDataset(a.stage, a.resolution[0], a.seed, None if a.data == "world" else a.data,
                          large_objects=a.large_objects, decoder_edits=a.stage == "asym-decoder" and a.generated_latents > 0,
                          focus_shapes=a.focus_shapes, focus_colours=a.focus_colours, focus_fraction=a.focus_fraction,
                          loose_masks=a.loose_masks, strip_masks=a.strip_masks, removal_fraction=a.removal_fraction)
        batches = StreamBatches(self.step, a.batch_size, acc.process_index, acc.num_processes, a.resolution)
        loader = DataLoader(ds, batch_sampler=batches, num_workers=a.num_workers, persistent_workers=a.num_workers > 0)
        it = iter(loader)
        from tqdm.auto import tqdm

        bar = tqdm(total=a.steps, initial=self.step, desc=f"train {a.stage}", disable=not (a.progress and acc.is_main_process),
                   dynamic_ncols=True)
        t_start = time.time()
        first_step = self.step
        fixed_batch = None
        stopped_early = False
        self.net.train()
        while self.step < a.steps:
            batch = next(it)
            batch = {k: (v.to(self.device) if torch.is_tensor(v) else v) for k, v in batch.items()}
            if fixed_batch is None:
                fixed_batch = batch
            self.net_inner.adversary_on = self.step >= a.adversarial_start
            with acc.accumulate(self.net):
                with acc.autocast():
                    loss, logs = self.net(batch)
                logs = {k: float(v) for k, v in logs.items()}
                acc.backward(loss)
                if acc.sync_gradients and a.grad_clip > 0:
                    acc.clip_grad_norm_(self.params, a.grad_clip)
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
            self.ema.step(self.params)
            self.step += 1
            lv = loss.detach().item()
            self.losses.append(lv)
            bar.update(1)
            if self.step % a.log_every == 0 or self.step == 1:
                logs = {"loss": lv, "lr": self.scheduler.get_last_lr()[0], **logs}
                acc.log(logs, step=self.step)
                bar.set_postfix(loss=f"{np.mean(self.losses[-a.log_every:]):.4f}")
                if bar.disable and acc.is_main_process:  # logs and nohup runs still show progress, a line at a time
                    rate = (time.time() - t_start) / max(1, self.step - first_step)
                    print(f"[lazyedit train] {a.stage} step {self.step}/{a.steps} loss {np.mean(self.losses[-a.log_every:]):.4f} "
                          f"{rate:.2f} s/step", flush=True)
            out_of_time = self._out_of_time(t_start)
            if self.step % a.sample_every == 0 and acc.is_main_process:
                self._save_samples(fixed_batch)
            if self.step % a.save_every == 0 or self.step >= a.steps or out_of_time:
                if a.stage == "vae" and (self.step >= a.steps or out_of_time):
                    # also when stopped by the clock: the next stage of a plan encodes with what is saved now
                    self.latent_scale = self.measure_latent_scale(it)
                self.save_checkpoint()
            if out_of_time and self.step < a.steps:
                stopped_early = True
                break
        if a.stage == "vae" and self.step >= a.steps and not getattr(self, "latent_scale", None):
            self.latent_scale = self.measure_latent_scale(it)
            self.export()
        if acc.is_main_process and (self.step % a.sample_every) and fixed_batch is not None:
            self._save_samples(fixed_batch)
        bar.close()
        acc.end_training()
        return {"stage": a.stage, "step": self.step, "done": self.step >= a.steps, "stopped_early": stopped_early,
                "losses": self.losses, "lr": self.scheduler.get_last_lr()[0], "model": str(model_dir(self.output))}

    def _out_of_time(self, t_start: float) -> bool:
        """--max-minutes reached. With several processes they must agree on the step (each one's clock
        started a little apart): one that stops alone would wait in the checkpoint's barrier while the others
        wait in the next step's all-reduce, for ever."""
        a, acc = self.args, self.accelerator
        if a.max_minutes is None:
            return False
        late = (time.time() - t_start) / 60 >= a.max_minutes
        if acc.num_processes > 1:
            late = bool(acc.reduce(torch.tensor([float(late)], device=self.device), reduction="sum").item() > 0)
        return late

    def _save_samples(self, batch):
        self.ema.store(self.params)
        self.ema.copy_to(self.params)
        self.net.eval()
        try:
            grid = self.sample_grid(batch)
        finally:
            self.ema.restore(self.params)
            self.net.train()
        if grid is not None:
            d = self.stage_dir / "samples"
            d.mkdir(exist_ok=True)
            grid.save(d / f"step_{self.step:07d}.png")
            grid.save(d / "latest.png")


def stage_done(output: str | Path, stage: str, steps: int) -> int | None:
    """The step a finished stage stopped at, when its export says it reached ``steps``; else None."""
    marker = model_dir(output) / f"{stage}.json"
    if marker.exists():
        step = json.loads(marker.read_text()).get("step", 0)
        if step >= steps:
            return step
    return None


def train_stage(args: TrainArgs) -> dict:
    args = _defaults(args)
    done = stage_done(args.output, args.stage, args.steps) if args.resume == "auto" else None
    if done is not None:
        print(f"[lazyedit train] {args.stage}: already trained to step {done} (of {args.steps}); skipping", flush=True)
        return {"stage": args.stage, "step": done, "done": True, "stopped_early": False, "losses": [],
                "model": str(model_dir(args.output))}
    return StageTrainer(args).run()
