"""LazyEditPipeline: local edits whose cost follows the mask, not the image.

Per edit: the canvas latent (cached per canvas version) and the context tokens (cached per canvas and
mask) are looked up, only the hole tokens are denoised, and only the bounding box of the hole (plus a
margin) is decoded, by the asymmetric decoder conditioned on the real pixels. The result is pasted back
so that every pixel outside the mask is bit-identical to the input.

The benchmark baselines run through the same code: `regenerate_image` denoises every token of the
canvas, `regenerate_crop` denoises every token of a crop around the mask.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import secrets
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import (
    AsymmetricAutoencoderKL,
    AutoencoderKL,
    DDIMScheduler,
    DiffusionPipeline,
    FlowMatchEulerDiscreteScheduler,
)
from PIL import Image

from .asymmetric import decode_with_known_pixels, known_pixel_features
from .cache import ByteLRU
from .holes import Box, HolePlan, context_window, decode_box, mask_box, plan_holes, token_mask_to_latent
from .models import ContextEncoder, CSCTuner, HFTextEncoder, LazyDiffusionTransformer
from .models.transformer import DISTILLED_GUIDANCE_RANGE
from .models.layers import patchify, unpatchify

logger = logging.getLogger("lazyedit.engine")

STRATEGIES = ("lazy", "regenerate_image", "regenerate_crop")


class EditCancelled(Exception):
    """The step callback asked to stop; raised between denoising steps."""


class EditInputError(ValueError):
    """Bad input to an edit. `code` is one of the protocol's error codes."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class StepPreview:
    step: int  # 1-based
    total: int
    box: Box
    render: Callable[[], Image.Image] = field(repr=False)

    @functools.cached_property
    def image(self) -> Image.Image:
        """Latent -> RGB of the box (cheap, no VAE), rendered only if someone looks: a client that is sent
        every fourth preview costs one render in four."""
        return self.render()


@dataclass
class EditRequest:
    image: Image.Image
    mask: Image.Image | np.ndarray
    prompt: str = ""
    sketch: Image.Image | None = None
    sketch_strength: float = 1.0
    steps: int | None = None
    guidance: float | None = None
    seed: int | None = None
    canvas_key: str | None = None
    callback: Callable[[StepPreview], bool | None] | None = None
    strategy: str = "lazy"
    dilation: int = 0


@dataclass
class EditResult:
    image: Image.Image
    box: Box
    seed: int
    steps: int
    timings: dict[str, float] = field(default_factory=dict)
    hole_tokens: int = 0
    total_tokens: int = 0

    @property
    def region(self) -> Image.Image:
        return self.image.crop(self.box)


@dataclass(eq=False)  # jobs are compared by identity (they hold arrays)
class _Job:
    """One validated request on its way through the sampler."""

    request: EditRequest
    rgb: np.ndarray  # (H, W, 3) uint8, the original image
    mask: np.ndarray  # (H, W) bool
    sketch: np.ndarray | None  # (H, W, 4) uint8
    seed: int
    steps: int
    guidance: float
    offset: tuple[int, int] = (0, 0)  # where this (possibly cropped) canvas sits in the original
    box: Box = (0, 0, 0, 0)  # the mask's bounding box, once the job is validated (previews ask every step)
    canvas_key: str = ""
    timings: dict = field(default_factory=dict)
    plan: HolePlan | None = None
    latent: torch.Tensor | None = None  # (1, C, h, w) scaled, padded canvas
    rgb_fit: torch.Tensor | None = None  # (C+1, 3) latent -> RGB least-squares fit for previews
    mask_digest: str = ""  # names the (padded) mask in cache keys
    context: torch.Tensor | None = None  # (1, L, D)
    tokens: torch.Tensor | None = None  # (L, C*p*p) current sample
    cancelled: bool = False


def flow_scheduler(shift: float = 1.0) -> FlowMatchEulerDiscreteScheduler:
    """The sampler lazyedit models are trained for: Euler on the flow-matching ODE, timesteps shifted by ``shift``."""
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)


class LazyEditPipeline(DiffusionPipeline):
    _optional_components = ["asym_vae", "tokenizer", "sketch_tuner"]

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder,
        context_encoder: ContextEncoder,
        transformer: LazyDiffusionTransformer,
        scheduler,
        asym_vae: AsymmetricAutoencoderKL | None = None,
        tokenizer=None,
        sketch_tuner: CSCTuner | None = None,
        model_name: str = "custom",
        default_steps: int = 20,
        default_guidance: float = 3.0,
    ):
        super().__init__()
        self.register_modules(
            vae=vae,
            asym_vae=asym_vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            context_encoder=context_encoder,
            transformer=transformer,
            scheduler=scheduler,
            sketch_tuner=sketch_tuner,
        )
        self.register_to_config(model_name=model_name, default_steps=default_steps, default_guidance=default_guidance)
        self.decode_margin = 16  # pixels of known canvas around the mask that the asymmetric decoder sees
        # Largest side (pixels) of the canvas a lazy edit reads; None reads the whole canvas, as in the paper.
        # The context encoder attends over every token it reads, so on a large canvas a window around the mask
        # keeps an edit's cost bounded (holes.context_window).
        self.context_window: int | None = None
        self.latent_cache = ByteLRU(512 << 20)
        self.context_cache = ByteLRU(256 << 20)
        self.text_cache = ByteLRU(64 << 20)
        self.known_pixels_cache = ByteLRU(256 << 20)  # the asymmetric decoder's features of the unmasked pixels
        self.random_weights = False  # set by load_pipeline when no trained weights were found
        self.text_stand_in = False  # set by load_pipeline: random T5-shaped text features (benchmarks only)
        self._pinned_device: torch.device | None = None

    # ----------------------------------------------------------------- properties
    @property
    def device(self) -> torch.device:
        # DiffusionPipeline.device walks every module of every component (about 1 ms on a CPU) and an edit asks
        # some twenty times, so edit_batch pins it for the length of a call.
        return self._pinned_device or super().device

    @property
    def model_name(self) -> str:
        return self.config.model_name

    @property
    def default_steps(self) -> int:
        return self.config.default_steps

    @property
    def default_guidance(self) -> float:
        return self.config.default_guidance

    @property
    def guidance_distilled(self) -> bool:
        """The transformer takes the guidance scale as an input: one forward row per edit and step, not two."""
        return bool(self.transformer.config.get("guidance_embeds", False))

    @property
    def limits(self) -> dict:
        """What an edit may ask for; read from the components, so a swapped-in transformer's own range holds
        (a guidance-distilled one knows only the scales it was trained on)."""
        low, high = DISTILLED_GUIDANCE_RANGE if self.guidance_distilled else (0.0, 20.0)
        return {"min_steps": 1, "max_steps": 100, "min_guidance": low, "max_guidance": high, "max_pixels": 4096 * 4096}

    @property
    def patch_size(self) -> int:
        return self.transformer.config.patch_size

    @property
    def vae_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def unit(self) -> int:
        """Pixels per token side."""
        return self.vae_factor * self.patch_size

    @property
    def text(self):
        """The text encoder behind one interface: built-in byte encoder, or CLIP/T5 with its tokenizer."""
        if self.tokenizer is None:
            return self.text_encoder
        return HFTextEncoder(self.tokenizer, self.text_encoder)

    def cache_stats(self) -> dict:
        return {"latent": self.latent_cache.stats(), "context": self.context_cache.stats(), "text": self.text_cache.stats(),
                "known_pixels": self.known_pixels_cache.stats()}

    def clear_caches(self) -> None:
        for cache in (self.latent_cache, self.context_cache, self.text_cache, self.known_pixels_cache):
            cache.clear()

    def clear_mask_caches(self) -> None:
        """Forget what was computed per mask (the context, the decoder's known pixels): the next edit costs
        what an edit of a new mask on a known canvas costs."""
        self.context_cache.clear()
        self.known_pixels_cache.clear()

    def use_scheduler(self, kind: str) -> None:
        """"euler" (flow matching, default) or "ddim" (run on the same flow-matching model, see _ddim_output)."""
        if isinstance(self.scheduler, FlowMatchEulerDiscreteScheduler):
            self._euler = self.scheduler  # the model's own (its shift), for switching back
        if kind == "euler":
            self.scheduler = getattr(self, "_euler", None) or flow_scheduler()
        elif kind == "ddim":
            self.scheduler = DDIMScheduler(
                num_train_timesteps=1000,
                beta_schedule="scaled_linear",
                prediction_type="v_prediction",
                rescale_betas_zero_snr=True,
                timestep_spacing="trailing",
                clip_sample=False,
                set_alpha_to_one=True,
            )
        else:
            raise ValueError(f"unknown scheduler {kind!r}: use euler or ddim")

    # ----------------------------------------------------------------- public API
    def edit(self, image, mask, prompt: str = "", **kwargs) -> EditResult:
        result = self.edit_batch([EditRequest(image=image, mask=mask, prompt=prompt, **kwargs)])[0]
        if isinstance(result, EditCancelled):
            raise result
        return result

    @torch.no_grad()
    def edit_batch(self, requests: list[EditRequest]) -> list[EditResult | EditCancelled]:
        """Runs several edits; those sharing a step count share one packed forward pass per step.
        Input errors raise EditInputError before any work starts."""
        jobs = [self._validate(r) for r in requests]
        results: list = [None] * len(jobs)
        groups: dict[tuple, list[int]] = {}
        for i, job in enumerate(jobs):  # one packed batch per step count and token grid
            grid = tuple(-(-n // self.unit) for n in job.mask.shape)
            groups.setdefault((job.steps, grid), []).append(i)
        with self._device_pinned():
            for members in groups.values():
                for i, out in zip(members, self._run_group([jobs[i] for i in members])):
                    results[i] = out
        return results

    @torch.no_grad()
    def prepare(self, image: Image.Image, mask: Image.Image | np.ndarray | None = None, canvas_key: str | None = None) -> dict:
        """Fills the caches the next edit of `image` reads: the canvas latent and, given a `mask`, that mask's
        context (LazyDiffusion's context encoder runs once per mask) and the asymmetric decoder's features of
        the pixels around it. An editor calls it while the person is still writing the prompt, so that the
        edit itself runs only the diffusion transformer and the decoder's upsampling path. Returns the stage
        timings (0 where a cache already held the result)."""
        if mask is None and isinstance(image, Image.Image) and self._windowed(image.size):
            return {}  # the window follows the mask: nothing to encode before one is painted
        whole = np.ones(image.size[::-1], dtype=bool) if mask is None and isinstance(image, Image.Image) else mask
        job = self._validate(EditRequest(image=image, mask=whole, canvas_key=canvas_key))
        with self._device_pinned():
            self._encode_canvas(job)
            if mask is not None:
                self._encode_context(job)
                if self.asym_vae is not None:
                    self._known_pixels(job, self.decode_box(job.mask, job.box))
        return job.timings

    @contextmanager
    def _device_pinned(self):
        self._pinned_device = super().device
        try:
            yield
        finally:
            self._pinned_device = None

    # ----------------------------------------------------------------- validation
    def _validate(self, r: EditRequest) -> _Job:
        if r.strategy not in STRATEGIES:
            raise EditInputError("out_of_range", f"unknown strategy {r.strategy!r}: use {', '.join(STRATEGIES)}")
        if not isinstance(r.image, Image.Image):
            raise EditInputError("bad_image", "image is not a decoded image")
        w, h = r.image.size
        if w * h > self.limits["max_pixels"]:
            raise EditInputError("image_too_large", f"image is {w}x{h} = {w * h} pixels, over the limit of {self.limits['max_pixels']}")
        if w < 1 or h < 1:
            raise EditInputError("bad_image", "image is empty")
        mask = np.asarray(r.mask)
        if isinstance(r.mask, Image.Image):
            mask = np.asarray(r.mask.convert("L")) > 127
        mask = mask.astype(bool)
        if mask.shape != (h, w):
            raise EditInputError("mask_size", f"mask is {mask.shape[1]}x{mask.shape[0]} but the image is {w}x{h}")
        if not mask.any():
            raise EditInputError("empty_mask", "the mask is empty: nothing to edit")
        null = self.text.null_prompt
        if null and r.prompt.strip() == null:
            raise EditInputError("reserved_prompt", f"the prompt {null!r} is reserved: the model reads it as no prompt at "
                                 "all (leave the prompt empty to fill the hole from its surroundings)")
        sketch = None
        if r.sketch is not None:
            if r.sketch.size != (w, h):
                raise EditInputError("sketch_size", f"sketch is {r.sketch.size[0]}x{r.sketch.size[1]} but the image is {w}x{h}")
            if self.sketch_tuner is None:
                raise EditInputError("out_of_range", f"model {self.model_name} has no sketch tuner")
            sketch = np.asarray(r.sketch.convert("RGBA"))
        steps = self.default_steps if r.steps is None else r.steps
        if not (isinstance(steps, int) and self.limits["min_steps"] <= steps <= self.limits["max_steps"]):
            raise EditInputError("out_of_range", f"steps must be an integer from {self.limits['min_steps']} to {self.limits['max_steps']}, got {steps!r}")
        guidance = self.default_guidance if r.guidance is None else float(r.guidance)
        if not (self.limits["min_guidance"] <= guidance <= self.limits["max_guidance"]):
            raise EditInputError("out_of_range", f"guidance must be from {self.limits['min_guidance']} to {self.limits['max_guidance']}, got {guidance}")
        if not (0.0 <= r.sketch_strength <= 2.0):
            raise EditInputError("out_of_range", f"sketch strength must be from 0 to 2, got {r.sketch_strength}")
        seed = secrets.randbelow(2**31) if r.seed is None else r.seed
        if not (isinstance(seed, int) and 0 <= seed < 2**63):
            raise EditInputError("out_of_range", f"seed must be an integer from 0 to 2^63-1, got {seed!r}")
        rgb = np.asarray(r.image.convert("RGB"))
        key = r.canvas_key or hashlib.sha1(rgb.tobytes() + bytes(str(rgb.shape), "ascii")).hexdigest()
        job = _Job(request=r, rgb=rgb, mask=mask, sketch=sketch, seed=seed, steps=steps, guidance=guidance, canvas_key=key)
        if r.strategy == "regenerate_crop":
            self._crop_job(job, self.crop_box(job.mask), "crop")
        elif r.strategy == "lazy" and self._windowed((w, h)):
            self._crop_job(job, context_window(mask_box(job.mask), (w, h), self.context_window, self.unit), "window")
        job.box = mask_box(job.mask)
        return job

    def _windowed(self, size: tuple[int, int]) -> bool:
        return bool(self.context_window) and max(size) > self.context_window

    def crop_box(self, mask: np.ndarray) -> Box:
        """RegenerateCrop's crop: a square around the mask, twice the mask's larger side, inside the image."""
        h, w = mask.shape
        x0, y0, x1, y1 = mask_box(mask)
        side = min(max(2 * max(x1 - x0, y1 - y0), 2 * self.unit), max(w, h))
        cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
        cx0 = min(max(cx - side // 2, 0), max(w - side, 0))
        cy0 = min(max(cy - side // 2, 0), max(h - side, 0))
        return cx0, cy0, min(cx0 + side, w), min(cy0 + side, h)

    def _crop_job(self, job: _Job, box: Box, kind: str) -> None:
        """Edit only `box` of the canvas, as a canvas of its own (RegenerateCrop's crop, a context window)."""
        cx0, cy0, cx1, cy1 = box
        job.offset = (cx0, cy0)
        job.rgb = job.rgb[cy0:cy1, cx0:cx1]
        job.mask = job.mask[cy0:cy1, cx0:cx1]
        if job.sketch is not None:
            job.sketch = job.sketch[cy0:cy1, cx0:cx1]
        job.canvas_key = f"{job.canvas_key}:{kind}{cx0},{cy0},{cx1},{cy1}"

    # ----------------------------------------------------------------- stages
    def _pad(self, array: np.ndarray, fill_edge: bool = True) -> np.ndarray:
        h, w = array.shape[:2]
        ph, pw = -h % self.unit, -w % self.unit
        if not (ph or pw):
            return array
        pad = ((0, ph), (0, pw)) + ((0, 0),) * (array.ndim - 2)
        return np.pad(array, pad, mode="edge" if fill_edge else "constant")

    def _to_tensor(self, rgb: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.array(rgb)).permute(2, 0, 1)[None].float() / 127.5 - 1
        return t.to(self.device, self.vae.dtype)

    def _encode_canvas(self, job: _Job) -> None:
        def compute():
            pixels = self._to_tensor(self._pad(job.rgb))
            latent = self.vae.encode(pixels).latent_dist.mode() * self.vae.config.scaling_factor
            return latent, _fit_latent_rgb(latent, pixels, self.vae_factor)

        t0 = time.perf_counter()
        (job.latent, job.rgb_fit), hit = self.latent_cache.get_or_compute(job.canvas_key, compute)
        job.timings["vae_encode_ms"] = 0.0 if hit else _ms(t0)
        job.timings["latent_cache_hit"] = hit

    def _encode_context(self, job: _Job) -> None:
        mask = self._pad(job.mask, fill_edge=False)
        job.plan = plan_holes(mask, self.unit, job.request.dilation, all_tokens=job.request.strategy != "lazy")
        job.mask_digest = hashlib.sha1(np.packbits(mask).tobytes() + bytes(str(mask.shape), "ascii")).hexdigest()
        key = (job.canvas_key, job.mask_digest, job.request.dilation, job.request.strategy)

        def compute():
            latent_mask = token_mask_to_latent(self._hide_mask(job)[None], self.patch_size).to(job.latent)
            index = job.plan.index[None].to(self.device)
            pixel_mask = torch.from_numpy(np.ascontiguousarray(mask))[None, None].to(latent_mask)
            return self.context_encoder(job.latent.to(self.context_encoder.dtype), latent_mask, index, pixel_mask=pixel_mask)

        t0 = time.perf_counter()
        job.context, hit = self.context_cache.get_or_compute(key, compute)
        job.timings["context_ms"] = 0.0 if hit else _ms(t0)
        job.timings["context_cache_hit"] = hit

    def _hide_mask(self, job: _Job) -> torch.Tensor:
        """Tokens the context encoder must not see: the masked ones (all baselines hide the same)."""
        if job.request.strategy == "lazy":
            return job.plan.token_mask
        return plan_holes(self._pad(job.mask, fill_edge=False), self.unit, job.request.dilation).token_mask

    def _encode_text(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        embs, masks = [], []
        for prompt in prompts:
            (emb, mask), _ = self.text_cache.get_or_compute(prompt, lambda p=prompt: self.text.encode([p], self.device))
            embs.append(emb)
            masks.append(mask)
        return torch.cat(embs), torch.cat(masks)

    # ----------------------------------------------------------------- sampling
    def _run_group(self, jobs: list[_Job]) -> list[EditResult | EditCancelled]:
        t_start = time.perf_counter()
        for job in jobs:
            self._encode_canvas(job)
            self._encode_context(job)
        t0 = time.perf_counter()
        # (job, prompt) per forward row: a conditional row, plus the model's unconditional one for guidance
        # (a prompt equal to the null prompt is its own unconditional row: guidance would not change it; a
        # guidance-distilled transformer takes the scale as an input and needs no second row)
        null = self.text.null_prompt
        distilled = self.guidance_distilled
        rows = []
        for job in jobs:
            rows.append((job, job.request.prompt))
            if not distilled and job.guidance != 1.0 and job.request.prompt != null:
                rows.append((job, null))
        text, text_mask = self._encode_text([p for _, p in rows])
        text_ms = _ms(t0)

        dtype = self.transformer.dtype
        token_dim = self.transformer.config.latent_channels * self.patch_size**2
        lengths = [job.plan.num_tokens for job in jobs]
        length = max(lengths)
        index = torch.zeros(len(rows), length, dtype=torch.long, device=self.device)
        context = torch.zeros(len(rows), length, job.context.shape[-1], dtype=dtype, device=self.device)
        token_mask = torch.zeros(len(rows), length, dtype=torch.bool, device=self.device)
        for r, (job, _) in enumerate(rows):
            n = job.plan.num_tokens
            index[r, :n] = job.plan.index.to(self.device)
            context[r, :n] = job.context[0].to(dtype)
            token_mask[r, :n] = True
        grid = jobs[0].plan.grid
        row_guidance = torch.tensor([job.guidance for job, _ in rows], device=self.device).to(dtype) if distilled else None
        if min(lengths) == length:
            token_mask = None  # nothing padded: let attention take its unmasked fast path
        adapter = self._sketch_adapter(rows, index)

        for job in jobs:
            g = torch.Generator("cpu").manual_seed(job.seed)
            job.tokens = torch.randn(job.plan.num_tokens, token_dim, generator=g).to(self.device, torch.float32)

        scheduler = self.scheduler.__class__.from_config(self.scheduler.config)
        scheduler.set_timesteps(jobs[0].steps, device=self.device)
        sample = torch.zeros(len(jobs), length, token_dim, device=self.device)
        for b, job in enumerate(jobs):
            sample[b, : job.plan.num_tokens] = job.tokens * getattr(scheduler, "init_noise_sigma", 1.0)
        row_of_job = {id(job): [r for r, (j, _) in enumerate(rows) if j is job] for job in jobs}
        job_of_row = [jobs.index(j) for j, _ in rows]
        active = torch.ones(len(jobs), dtype=torch.bool)
        t0 = time.perf_counter()
        timesteps = scheduler.timesteps
        for step, t in enumerate(timesteps):
            model_in, sigma = self._model_input(scheduler, sample, t)
            row_in = model_in[job_of_row]
            flow_t = torch.full((len(rows),), float(sigma) * 1000, device=self.device)
            velocity = self.transformer(
                row_in.to(dtype), context, index, grid, flow_t.to(dtype), text.to(dtype), text_mask, token_mask, adapter,
                guidance=row_guidance,
            ).float()
            guided = torch.stack([self._guide(velocity, row_of_job[id(job)], job.guidance) for job in jobs])
            out = self._scheduler_output(scheduler, guided, model_in, sigma)
            sample = scheduler.step(out, t, sample).prev_sample
            for b, job in enumerate(jobs):
                if not active[b] or job.request.callback is None:
                    continue
                x0 = model_in[b] - float(sigma) * guided[b]
                preview = self._preview(job, x0[: job.plan.num_tokens], step + 1, len(timesteps))
                if job.request.callback(preview) is False:
                    active[b] = False
                    job.cancelled = True
            if not active.any():
                break
        denoise_ms = _ms(t0)

        results = []
        for b, job in enumerate(jobs):
            if job.cancelled:
                results.append(EditCancelled(f"edit cancelled at step {step + 1} of {len(timesteps)}"))
                continue
            job.tokens = sample[b, : job.plan.num_tokens]
            job.timings.update(text_ms=text_ms, denoise_ms=denoise_ms, steps=job.steps)
            results.append(self._finish(job, t_start))
        return results

    @staticmethod
    def _guide(velocity: torch.Tensor, rows: list[int], guidance: float) -> torch.Tensor:
        if len(rows) == 1:
            return velocity[rows[0]]
        cond, uncond = velocity[rows[0]], velocity[rows[1]]
        return uncond + guidance * (cond - uncond)

    def _model_input(self, scheduler, sample: torch.Tensor, t) -> tuple[torch.Tensor, float]:
        """The flow-matching model's input and noise level sigma for the scheduler's current sample."""
        if isinstance(scheduler, DDIMScheduler):
            # DDPM sample = k * flow sample, with k = sqrt(ab) + sqrt(1 - ab) and sigma = sqrt(1 - ab) / k.
            ab = scheduler.alphas_cumprod[int(t)].item()
            k = ab**0.5 + (1 - ab) ** 0.5
            return sample / k, (1 - ab) ** 0.5 / k
        return sample, float(scheduler.sigmas[scheduler.step_index or 0])

    @staticmethod
    def _scheduler_output(scheduler, velocity: torch.Tensor, model_in: torch.Tensor, sigma: float) -> torch.Tensor:
        if isinstance(scheduler, DDIMScheduler):
            # Flow velocity v = noise - x0 gives x0 and noise; DDIM wants the DDPM v-prediction of them.
            x0 = model_in - sigma * velocity
            noise = model_in + (1 - sigma) * velocity
            k = 1.0 / ((1 - sigma) ** 2 + sigma**2) ** 0.5  # sqrt(ab) = (1 - sigma) * k', sqrt(1 - ab) = sigma * k'
            return (1 - sigma) * k * noise - sigma * k * x0
        return velocity

    def _sketch_adapter(self, rows, index: torch.Tensor):
        if not any(job.sketch is not None for job, _ in rows):
            return None
        h, w = rows[0][0].plan.grid
        size = (h * self.unit, w * self.unit)
        conditions = torch.zeros(len(rows), 4, *size, device=self.device)
        scale = torch.zeros(len(rows), 1, 1, device=self.device)
        for r, (job, _) in enumerate(rows):
            if job.sketch is not None:
                conditions[r] = sketch_condition(self._pad(job.sketch, fill_edge=False)).to(self.device)
                scale[r] = job.request.sketch_strength
        tuner = self.sketch_tuner
        return tuner.adapter([(conditions.to(tuner.dtype), 1.0)], index, scale.to(tuner.dtype))

    def _scatter(self, job: _Job, tokens: torch.Tensor) -> torch.Tensor:
        """Canvas latent with the hole tokens replaced."""
        p, c = self.patch_size, job.latent.shape[1]
        all_tokens = patchify(job.latent, p).clone()
        all_tokens[0, job.plan.index.to(self.device)] = tokens.to(all_tokens.dtype)
        return unpatchify(all_tokens, p, c, job.plan.grid)

    def decode_box(self, mask: np.ndarray, box: Box | None = None) -> Box:
        """The region an edit over `mask` (unpadded; `box` its bounding box, when known) decodes, in the
        canvas padded to whole tokens."""
        h, w = mask.shape
        padded = (-(-w // self.unit) * self.unit, -(-h // self.unit) * self.unit)
        return decode_box(box or mask_box(mask), self.decode_margin, self.vae_factor, padded)

    def _preview(self, job: _Job, x0_tokens: torch.Tensor, step: int, total: int) -> StepPreview:
        box = job.box

        def render() -> Image.Image:
            latent = self._scatter(job, x0_tokens)
            bx0, by0, bx1, by1 = box
            f = self.vae_factor
            lx0, ly0, lx1, ly1 = bx0 // f, by0 // f, -(-bx1 // f), -(-by1 // f)
            crop = latent[0, :, ly0:ly1, lx0:lx1].float()
            feats = torch.cat([crop, torch.ones_like(crop[:1])]).flatten(1).T
            rgb = (feats @ job.rgb_fit.float()).T.reshape(3, ly1 - ly0, lx1 - lx0)
            rgb = F.interpolate(rgb[None], scale_factor=f, mode="bilinear", align_corners=False)[0]
            rgb = rgb[:, by0 - ly0 * f : by1 - ly0 * f, bx0 - lx0 * f : bx1 - lx0 * f]
            return Image.fromarray(((rgb.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy())

        return StepPreview(step=step, total=total, box=self._offset_box(job, box), render=render)

    def _known_pixels(self, job: _Job, box: Box) -> tuple[torch.Tensor, dict]:
        """The asymmetric decoder's mask over the decode `box` and its conditional branch's features of the
        unmasked pixels there: cached per canvas and mask (a prepare fills the cache before the edit)."""
        x0, y0, x1, y1 = box
        mask = self._pad(job.mask, fill_edge=False)[y0:y1, x0:x1]
        mask = torch.from_numpy(mask.astype(np.float32))[None, None].to(self.device, self.asym_vae.dtype)

        def compute():
            image = self._to_tensor(self._pad(job.rgb)[y0:y1, x0:x1]).to(self.asym_vae.dtype)
            return known_pixel_features(self.asym_vae, image, mask)

        t0 = time.perf_counter()
        features, hit = self.known_pixels_cache.get_or_compute((job.canvas_key, job.mask_digest, box), compute)
        job.timings["known_pixels_ms"] = 0.0 if hit else _ms(t0)
        return mask, features

    def _offset_box(self, job: _Job, box: Box) -> Box:
        ox, oy = job.offset
        return box[0] + ox, box[1] + oy, box[2] + ox, box[3] + oy

    def _finish(self, job: _Job, t_start: float) -> EditResult:
        t0 = time.perf_counter()
        latent = self._scatter(job, job.tokens)
        x0, y0, x1, y1 = self.decode_box(job.mask, job.box)
        f = self.vae_factor
        z = latent[:, :, y0 // f : y1 // f, x0 // f : x1 // f] / self.vae.config.scaling_factor
        if self.asym_vae is not None:
            mask, features = self._known_pixels(job, (x0, y0, x1, y1))
            decoded = decode_with_known_pixels(self.asym_vae, z.to(mask.dtype), features, mask)
        else:
            decoded = self.vae.decode(z.to(self.vae.dtype)).sample
        decoded = ((decoded[0].float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
        job.timings["decode_ms"] = _ms(t0)

        # Paste back: only masked pixels change, so everything outside the mask is bit-identical.
        h, w = job.mask.shape
        out = job.request.image.convert("RGB")
        full = np.array(out)
        ox, oy = job.offset
        region = full[oy : oy + h, ox : ox + w]
        dh, dw = min(y1, h) - y0, min(x1, w) - x0
        sub_mask = job.mask[y0 : y0 + dh, x0 : x0 + dw]
        region[y0 : y0 + dh, x0 : x0 + dw][sub_mask] = decoded[:dh, :dw][sub_mask]
        job.timings["total_ms"] = _ms(t_start)
        result = EditResult(
            image=Image.fromarray(full),
            box=self._offset_box(job, job.box),
            seed=job.seed,
            steps=job.steps,
            timings=job.timings,
            hole_tokens=job.plan.num_tokens,
            total_tokens=job.plan.grid[0] * job.plan.grid[1],
        )
        return result


# --------------------------------------------------------------------- helpers
def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000, 2)


def _fit_latent_rgb(latent: torch.Tensor, pixels: torch.Tensor, factor: int) -> torch.Tensor:
    """Least-squares linear map from latent channels (+1) to the canvas' own colours, for cheap previews."""
    target = F.avg_pool2d(pixels.float(), factor)[0].flatten(1).T  # (N, 3)
    feats = latent[0].float().flatten(1).T
    feats = torch.cat([feats, torch.ones_like(feats[:, :1])], dim=1)
    step = max(1, feats.shape[0] // 8192)
    return torch.linalg.lstsq(feats[::step].cpu(), target[::step].cpu()).solution.to(latent.device)


def sketch_condition(rgba: np.ndarray) -> torch.Tensor:
    """RGBA sketch (H, W, 4) uint8 -> (4, H, W) in [-1, 1]: stroke colours where drawn, and the stroke mask."""
    arr = np.asarray(rgba, np.uint8).transpose(2, 0, 1)
    drawn = arr[3:] > 127  # alpha over one half
    out = np.empty(arr.shape, np.float32)
    np.multiply(arr[:3].astype(np.float32) / 255, drawn, out=out[:3])
    out[3:] = drawn
    return torch.from_numpy(out * 2 - 1)
