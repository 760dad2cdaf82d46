"""`lazyedit eval`: measure a model on a seeded, held-out set of procedural-world edits.

Cases (index i of world ``--seed``, never the training seed 0):
- ``insert``  canvas = the scene without the object, mask = the object's grown mask, prompt = its caption;
- ``remove``  canvas = the scene, same mask, empty prompt, ground truth = the scene without the object;
- ``sketch``  like insert, plus the object's outline as a sketch (when the model has a sketch tuner);
- ``box``     (only when asked for: ``--kinds ...,box``) the insert cases again, the mask a loose box around
  the object (``loose_box_mask``) instead of its grown shape: what a person drags, so the shape must come
  from the prompt. Scored under ``box_`` names, with ``box_fill``, the share of the box read as an object
  (a model that paints the whole box with the colour scores near 1 and classifies as a square), and
  ``box_shape_word_change`` / ``box_colour_word_change``: how far the hole's pixels move (mean absolute
  difference, 0-255) when the same edit is asked with the next shape word, or the next colour word,
  instead: how much the model listens to each word.
- ``outpaint`` (only when asked for) after each removal case, the same scene with a band along one side
  masked (``strip_mask``, 10 to 40% deep) and no prompt: what the editor's Expand asks. Scored by
  ``outpaint_psnr`` and ``outpaint_seam`` in the band, against the scene without the objects wholly inside it.

Metrics (all from pixels, pure numpy functions below, checked on hand-made cases in tests/test_eval.py):
- colour accuracy: the dominant colour class (hue for chromatic pixels, white/black by value) of what was
  generated in the hole equals the prompt's colour;
- shape accuracy: the shape template (7 shapes, fitted to the generated object's box, a few rotations)
  with the highest IoU is the prompt's shape;
- style accuracy: the generated object's style (shadow / outline / stripes / plain) equals the scene's;
- sketch IoU: IoU of the generated object with the sketched shape;
- removal PSNR: PSNR inside the hole against the true background; removal object fraction: the share
  of the hole read as an object after a removal (a phantom object, or what is left of the removed one);
- preserved error: the largest pixel difference outside the mask (must be 0);
- seam error: mean absolute error against the ground truth in a 3-pixel band inside the mask edge,
  asymmetric decoder vs the plain VAE decoder on the same latents (removal cases);
- RegenerateCrop beside LazyDiffusion (strategy="regenerate_crop") on the same insert cases, with timings.

Two ceilings put the scores in context: ``--ground-truth`` scores the true scenes (what the metrics can
measure), ``--autoencoder`` scores the true scenes after a round trip through the model's VAE and decoders
(what the autoencoder leaves a perfect transformer).
"""

from __future__ import annotations

import argparse
import json
import math
import operator
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from .masks import case_from_mask, grow, loose_box_mask, object_mask, shrink, strip_mask
from .world import COLOURS, SHAPES, Sample, SceneObject, caption_for, make_sample, shape_mask

CHROMATIC = {"red": 0.0, "orange": 30.0, "yellow": 53.0, "green": 129.0, "blue": 224.0, "purple": 277.0}
DIFF_THRESHOLD = 36.0  # RGB distance from the true background for a pixel to count as "object"
PSNR_CAP = 100.0
CASE_KINDS = ("insert", "remove", "sketch")  # eval cases cycle through these
EXTRA_KINDS = ("box", "outpaint")  # run only when named: they add cases and leave the cycle above as it was


# ----------------------------------------------------------------------------------------------------
# Pixel classification
# ----------------------------------------------------------------------------------------------------


def colour_classes(rgb: np.ndarray) -> np.ndarray:
    """(N, 3) uint8 -> (N,) colour index into COLOURS order, or -1 (unclassifiable: greyish mid-tones)."""
    names = list(COLOURS)
    a = rgb.astype(np.float32) / 255
    mx, mn = a.max(1), a.min(1)
    v = mx
    s = np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-6), 0)
    out = np.full(len(a), -1, np.int64)
    # hue in degrees
    r, g, b = a[:, 0], a[:, 1], a[:, 2]
    d = np.maximum(mx - mn, 1e-6)
    h = np.where(mx == r, ((g - b) / d) % 6, np.where(mx == g, (b - r) / d + 2, (r - g) / d + 4)) * 60
    chrom = (s > 0.45) & (v > 0.2)
    hues = np.array(list(CHROMATIC.values()))
    dist = np.abs(((h[:, None] - hues[None]) + 180) % 360 - 180)
    idx = np.array([names.index(n) for n in CHROMATIC])[dist.argmin(1)]
    out[chrom] = idx[chrom]
    out[(~chrom) & (s < 0.2) & (v > 0.82)] = names.index("white")
    out[(~chrom) & (v < 0.2)] = names.index("black")
    return out


def dominant_colour(rgb: np.ndarray) -> str | None:
    cls = colour_classes(rgb)
    cls = cls[cls >= 0]
    if len(cls) == 0:
        return None
    return list(COLOURS)[int(np.bincount(cls, minlength=len(COLOURS)).argmax())]


def _segment(out: np.ndarray, background: np.ndarray, hole: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(object, shadow) pixels of the hole. Shadow = the background at half brightness (the world's drop
    shadow) outside the object's closed silhouette, so dark stripes inside an object are not taken for it."""
    o = out.astype(np.float32)
    bg = background.astype(np.float32)
    half = bg * 0.5
    # distance to the segment background -> half background (a shadow and its anti-aliased edge)
    d = half - bg
    t = np.clip(((o - bg) * d).sum(-1) / np.maximum((d * d).sum(-1), 1e-6), 0, 1)
    off = np.linalg.norm(o - (bg + t[..., None] * d), axis=-1)
    candidates = hole & (off < 14) & (t > 0.25) & (np.abs(d).max(-1) > 20)
    differs = hole & (np.linalg.norm(o - bg, axis=-1) > DIFF_THRESHOLD)
    core = differs & ~candidates
    closed = shrink(grow(core, 3), 3)
    shadow = candidates & ~closed
    return differs & ~shadow, shadow & (t > 0.6)


def shadow_pixels(out: np.ndarray, background: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """Pixels of the hole that look like the world's drop shadow."""
    return _segment(out, background, hole)[1]


def object_pixels(out: np.ndarray, background: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """What was generated in the hole that is not background (nor the object's shadow)."""
    return _segment(out, background, hole)[0]


def object_fraction(out: np.ndarray, background: np.ndarray, hole: np.ndarray) -> float:
    """The fraction of the hole read as an object: after a removal, a phantom object or what is left of the
    removed one (a fill that is off by a shade of the background does not count)."""
    n = np.count_nonzero(hole)
    return np.count_nonzero(object_pixels(out, background, hole)) / n if n else 0.0


def iou(a: np.ndarray, b: np.ndarray) -> float:
    u = np.count_nonzero(a | b)
    return float(np.count_nonzero(a & b)) / u if u else 0.0


_EXTENT_CACHE: dict[tuple[str, float], float] = {}


def _shape_extent(shape: str, rot: float) -> float:
    """Largest side of the shape's box / its diameter, at rotation ``rot``."""
    key = (shape, round(rot, 4))
    if key not in _EXTENT_CACHE:
        m = shape_mask(SceneObject(shape, "red", 0.5, 0.5, 0.8, rot), 400)
        ys, xs = np.nonzero(m)
        _EXTENT_CACHE[key] = max(xs.max() - xs.min() + 1, ys.max() - ys.min() + 1) / (0.8 * 400)
    return _EXTENT_CACHE[key]


def classify_shape(obj: np.ndarray, rotations=(-0.35, -0.23, -0.12, 0.0, 0.12, 0.23, 0.35)) -> tuple[str | None, float]:
    """Best-fitting shape template for a bool object mask: (shape, IoU). Templates are scaled so their box
    matches the object's box and centred on it, for a few rotations."""
    if np.count_nonzero(obj) < 12:
        return None, 0.0
    h, w = obj.shape
    ys, xs = np.nonzero(obj)
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    side = max(x1 - x0, y1 - y0)
    m = float(min(w, h))
    best, best_iou = None, -1.0
    for shape in SHAPES:
        for rot in rotations if shape not in ("circle", "ring") else (0.0,):
            size = side / _shape_extent(shape, rot) / m
            tmpl = shape_mask(SceneObject(shape, "red", 0.5, 0.5, size, rot), (w, h))
            ty, tx = np.nonzero(tmpl)
            if len(tx) == 0:
                continue
            # align box centres
            dx = int(round((x0 + x1) / 2 - (tx.min() + tx.max() + 1) / 2))
            dy = int(round((y0 + y1) / 2 - (ty.min() + ty.max() + 1) / 2))
            tmpl = np.roll(np.roll(tmpl, dy, 0), dx, 1)
            score = iou(obj, tmpl)
            if score > best_iou:
                best, best_iou = shape, score
    return best, best_iou


def classify_style(out: np.ndarray, background: np.ndarray, hole: np.ndarray) -> str:
    """plain / outlined / shadowed / striped, from the pixels generated in the hole."""
    obj, shadow = _segment(out, background, hole)
    n = np.count_nonzero(obj)
    if n < 12:
        return "plain"
    if np.count_nonzero(shadow) > 0.06 * n:
        return "shadowed"
    o = out.astype(np.float32)
    lum = o @ np.array([0.299, 0.587, 0.114], np.float32)
    band = obj & ~shrink(obj, 2)
    inner = shrink(obj, 3)
    inner_lum = lum[inner] if np.count_nonzero(inner) >= 8 else lum[obj]
    dominant = dominant_colour(out[inner] if np.count_nonzero(inner) >= 8 else out[obj])
    if np.count_nonzero(band):
        if dominant == "black":
            edge_frac = float(np.mean(lum[band] > 200))
        else:
            edge_frac = float(np.mean(lum[band] < 45))
        if edge_frac > 0.45:
            return "outlined"
    if inner_lum.std() > 8:
        return "striped"
    return "plain"


def psnr(a: np.ndarray, b: np.ndarray, where: np.ndarray | None = None) -> float:
    x, y = a.astype(np.float64), b.astype(np.float64)
    if where is not None:
        x, y = x[where], y[where]
    mse = float(np.mean((x - y) ** 2)) if x.size else 0.0
    return PSNR_CAP if mse == 0 else min(PSNR_CAP, 10 * math.log10(255.0**2 / mse))


def seam_error(out: np.ndarray, truth: np.ndarray, hole: np.ndarray, band: int = 3) -> float:
    """Mean absolute error against the truth in the band of `band` pixels inside the hole's edge."""
    ring = hole & ~shrink(hole, band)
    if not np.count_nonzero(ring):
        return 0.0
    return float(np.abs(out.astype(np.float32) - truth.astype(np.float32))[ring].mean())


def preserved_error(out: np.ndarray, canvas: np.ndarray, hole: np.ndarray) -> int:
    """Largest absolute pixel difference outside the hole (an editor must keep it at 0)."""
    keep = ~hole
    if not np.count_nonzero(keep):
        return 0
    return int(np.abs(out.astype(np.int16) - canvas.astype(np.int16))[keep].max())


# ----------------------------------------------------------------------------------------------------
# Scoring one case
# ----------------------------------------------------------------------------------------------------


def score_insert(out: np.ndarray, background: np.ndarray, hole: np.ndarray, sample: Sample) -> dict:
    """Scores of an inserted object against the sample's prompt (colour, shape, style, sketch IoU)."""
    obj = object_pixels(out, background, hole)
    inner = shrink(obj, 2)
    pix = out[inner] if np.count_nonzero(inner) >= 8 else out[obj]
    colour = dominant_colour(pix) if len(pix) else None
    shape, shape_iou = classify_shape(obj)
    style = classify_style(out, background, hole)
    truth_shape = shape_mask(sample.scene.objects[sample.target], (out.shape[1], out.shape[0]))
    return {
        "colour": colour,
        "colour_ok": colour == sample.colour,
        "shape": shape,
        "shape_ok": shape == sample.shape,
        "style": style,
        "style_ok": style == sample.style,
        "sketch_iou": iou(obj, truth_shape),
        "object_px": int(np.count_nonzero(obj)),
    }


# ----------------------------------------------------------------------------------------------------
# Running a model
# ----------------------------------------------------------------------------------------------------


@dataclass
class EvalCase:
    index: int
    kind: str  # insert | remove | sketch | box | outpaint
    sample: Sample
    mask: np.ndarray
    truth: Image.Image | None = None  # set where the sample holds no perfect answer (outpaint: rendered once)


def eval_cases(n: int, seed: int = 1234, size: int = 256, sketch: bool = True, box: bool = False,
               outpaint: bool = False) -> list[EvalCase]:
    """The held-out cases; with ``box`` each insert case is followed by its ``box`` twin (same scene and prompt,
    a loose box for a mask), with ``outpaint`` each removal case by an ``outpaint`` one (the same scene, a band
    along one side masked, no prompt: what Expand asks)."""
    kinds = CASE_KINDS if sketch else CASE_KINDS[:2]
    cases = []
    for i in range(n):
        s = make_sample(seed, i, size)
        rng = np.random.default_rng([seed, i, 0xE7A1])
        mask = object_mask(s.mask, rng)
        cases.append(EvalCase(i, kinds[i % len(kinds)], s, mask))
        if box and cases[-1].kind == "insert":
            cases.append(EvalCase(i, "box", s, loose_box_mask(s.mask)))
        if outpaint and cases[-1].kind == "remove":
            band = strip_mask(np.random.default_rng([seed, i, 0x0E7B]), size)
            # the scene without the objects wholly inside the band (what no context can tell of; cut ones stay)
            truth = case_from_mask(s.scene, band, s.image.size, np.random.default_rng(0), p_caption=0.0).target
            cases.append(EvalCase(i, "outpaint", s, band, truth))
    return cases


def case_canvas(case: EvalCase) -> Image.Image:
    """What the edit starts from: the scene without the object (insert, sketch) or with it (remove, outpaint)."""
    return case.sample.image if case.kind in ("remove", "outpaint") else case.sample.removed


def case_truth(case: EvalCase) -> Image.Image:
    """The perfect answer: the scene with the object, or without it for a removal, or the case's own (an
    outpainting's)."""
    if case.truth is not None:
        return case.truth
    return case.sample.removed if case.kind == "remove" else case.sample.image


@dataclass
class Totals:
    values: dict = field(default_factory=dict)

    def add(self, key: str, value) -> None:
        self.values.setdefault(key, []).append(float(value))

    def summary(self) -> dict:
        """Means, counts, and standard errors of the means (how far apart two reports must be to differ)."""
        items = sorted(self.values.items())
        return ({k: round(float(np.mean(v)), 4) for k, v in items} | {f"n_{k}": len(v) for k, v in items}
                | {f"se_{k}": round(float(np.std(v, ddof=1) / np.sqrt(len(v))), 4) for k, v in items if len(v) > 1})


def run_eval(pipe, cases: list[EvalCase], steps: int | None = None, guidance: float | None = None,
             strategies=("lazy", "regenerate_crop"), seam: bool = True, progress: bool = True,
             grid: str | None = None, grid_cases: int = 12, sketch_strength: float = 1.0) -> dict:
    """Run every case through the pipeline; ``grid``: write a PNG of the first cases
    (canvas with the hole, one column per strategy, ground truth)."""
    from tqdm.auto import tqdm

    from .world import contact_sheet

    tiles: list = []

    tot = {s: Totals() for s in strategies}
    worst_preserved = 0
    asym = getattr(pipe, "asym_vae", None)
    for case in tqdm(cases, desc="eval", disable=not progress):
        s = case.sample
        canvas = case_canvas(case)
        prompt = "" if case.kind in ("remove", "outpaint") else s.caption
        sketch = s.sketch if case.kind == "sketch" else None
        truth_bg = np.asarray(s.removed)
        canvas_np = np.asarray(canvas)
        row = []
        if grid and len(tiles) < grid_cases * (len(strategies) + 2):
            hole_view = canvas_np.copy()
            hole_view[case.mask] = 128
            row.append(Image.fromarray(hole_view))
        for strategy in strategies:
            if strategy != "lazy" and case.kind == "sketch":
                if row:
                    row.append(Image.new("RGB", canvas.size, (255, 255, 255)))
                continue
            t0 = time.perf_counter()
            res = pipe.edit(canvas, case.mask, prompt=prompt, sketch=sketch, sketch_strength=sketch_strength,
                            steps=steps, guidance=guidance, seed=case.index, strategy=strategy)
            ms = (time.perf_counter() - t0) * 1000
            out = np.asarray(res.image)
            if row:
                row.append(res.image)
            t = tot[strategy]
            t.add("ms_per_edit", ms)
            pe = preserved_error(out, canvas_np, case.mask)
            worst_preserved = max(worst_preserved, pe)
            t.add("preserved_error_max", pe)
            score_case(t, case, out)
            if case.kind == "box":
                def reworded(colour: str, shape: str) -> np.ndarray:
                    return np.asarray(pipe.edit(canvas, case.mask, prompt=caption_for(colour, shape), steps=steps,
                                                guidance=guidance, seed=case.index, strategy=strategy).image)
                for word, other in (("shape", reworded(s.colour, next_word(SHAPES, s.shape))),
                                    ("colour", reworded(next_word(tuple(COLOURS), s.colour), s.shape))):
                    t.add(f"box_{word}_word_change", word_change(out, other, case.mask))
            if case.kind == "remove" and seam and strategy == "lazy":
                t.add("seam_error_asym" if asym is not None else "seam_error_plain", seam_error(out, truth_bg, case.mask))
                if asym is not None:
                    pipe.register_modules(asym_vae=None)
                    try:
                        plain = pipe.edit(canvas, case.mask, prompt=prompt, steps=steps, guidance=guidance,
                                          seed=case.index, strategy=strategy)
                    finally:
                        pipe.register_modules(asym_vae=asym)
                    t.add("seam_error_plain", seam_error(np.asarray(plain.image), truth_bg, case.mask))
        if row:
            row.append(case_truth(case))
            tiles += row
    report = {s: tot[s].summary() for s in strategies}
    report["preserved_error_max"] = worst_preserved
    if grid and tiles:
        Path(grid).parent.mkdir(parents=True, exist_ok=True)
        contact_sheet(tiles, cols=2 * (len(strategies) + 2)).save(grid)
    return report


def next_word(words: tuple[str, ...], word: str) -> str:
    return words[(words.index(word) + 1) % len(words)]


def word_change(out: np.ndarray, other: np.ndarray, hole: np.ndarray) -> float:
    """Mean absolute difference (0-255) inside the hole between two answers that differ by one prompt word: how
    much the model listens to that word (box cases: the same seed with the next shape, or the next colour)."""
    return float(np.abs(out.astype(np.int16) - other.astype(np.int16))[hole].mean())


def score_case(t: Totals, case: EvalCase, out: np.ndarray) -> None:
    """Add the scores of one answer ``out`` (H, W, 3 uint8) to ``t``: removal PSNR for removals, colour,
    shape, style and IoU for insertions (sketch cases under ``sketch_`` names), PSNR and seam in the band for
    outpaintings."""
    s = case.sample
    if case.kind == "outpaint":
        truth = np.asarray(case_truth(case))
        t.add("outpaint_psnr", psnr(out, truth, case.mask))
        t.add("outpaint_seam", seam_error(out, truth, case.mask))
        return
    truth_bg = np.asarray(s.removed)
    if case.kind == "remove":
        t.add("removal_psnr", psnr(out, truth_bg, case.mask))
        t.add("removal_object_frac", object_fraction(out, truth_bg, case.mask))
        return
    sc = score_insert(out, truth_bg, case.mask, s)
    prefix = {"sketch": "sketch_", "box": "box_"}.get(case.kind, "")
    t.add(prefix + "colour_acc", sc["colour_ok"])
    t.add(f"{prefix}colour_acc_{s.colour}", sc["colour_ok"])  # per prompted colour: which colours drift
    t.add(prefix + "shape_acc", sc["shape_ok"])
    t.add(f"{prefix}shape_acc_{s.shape}", sc["shape_ok"])  # per prompted shape: which shapes the model cannot draw
    t.add(prefix + "style_acc", sc["style_ok"])
    t.add(f"{prefix}style_acc_{s.style}", sc["style_ok"])  # per scene style: which styles the decoder loses
    t.add({"sketch": "sketch_iou", "box": "box_object_iou"}.get(case.kind, "object_iou"), sc["sketch_iou"])
    if case.kind == "box":
        t.add("box_fill", sc["object_px"] / max(1, np.count_nonzero(case.mask)))


def ground_truth_report(cases: list[EvalCase]) -> dict:
    """The metrics of perfect answers (the true scenes): the ceiling the metrics can measure."""
    t = Totals()
    for case in cases:
        score_case(t, case, np.asarray(case_truth(case)))
    return t.summary()


def autoencoder_report(pipe, cases: list[EvalCase], progress: bool = True, vae=None) -> dict:
    """The metrics of the true scenes after a round trip through the model's autoencoder: encoded by its
    VAE, decoded by the asymmetric decoder (given the canvas and the mask, as an edit is) and by the plain
    VAE decoder, pasted into the canvas. The ceiling a perfect generator of latents can reach with these
    decoders: what the eval's scores owe to the autoencoder rather than the transformer.
    ``vae``: a candidate VAE in place of the model's, scored through its own decoder only (the model's
    asymmetric decoder was trained on other latents)."""
    import torch
    from tqdm.auto import tqdm

    from .data import to_image, to_tensor

    asym = getattr(pipe, "asym_vae", None) if vae is None else None
    vae = pipe.vae if vae is None else vae
    decoders = {"plain": None} | ({"asym": asym} if asym is not None else {})
    tot = {name: Totals() for name in decoders}
    f = pipe.vae_factor
    for case in tqdm(cases, desc="autoencoder", disable=not progress):
        canvas, truth = case_canvas(case), case_truth(case)
        # decode the box an edit decodes (the mask and a margin), not the whole canvas: the same context for
        # the asymmetric decoder as in an edit, and 512 px cases in a fraction of the time
        x0, y0, x1, y1 = pipe.decode_box(case.mask)
        box_mask = case.mask[y0:y1, x0:x1]
        with torch.no_grad():
            z = vae.encode(to_tensor(truth)[None].to(pipe.device, vae.dtype)).latent_dist.mode()
            z = z[:, :, y0 // f : y1 // f, x0 // f : x1 // f]
            for name, dec in decoders.items():
                if dec is None:
                    rec = vae.decode(z).sample
                else:
                    mask = torch.from_numpy(box_mask.astype(np.float32))[None, None].to(pipe.device, dec.dtype)
                    image = to_tensor(canvas.crop((x0, y0, x1, y1)))[None].to(pipe.device, dec.dtype)
                    rec = dec.decode(z.to(dec.dtype), image=image, mask=mask).sample
                pasted = np.array(canvas)
                region = pasted[y0:y1, x0:x1]
                region[box_mask] = np.asarray(to_image(rec[0]))[box_mask]
                score_case(tot[name], case, pasted)
                if case.kind == "remove":  # the decoder's own seam, with the true latents
                    tot[name].add("seam_error", seam_error(pasted, np.asarray(truth), case.mask))
    return {name: t.summary() for name, t in tot.items()}


# The demo model's targets (issue 5): (label, report key, digits, comparison, bound). "seam_ratio" is the
# asymmetric decoder's seam over the plain one's; style's bound is RegenerateCrop's score in the same report.
TARGETS = (
    ("colour", "colour_acc", 3, ">=", 0.9),
    ("shape", "shape_acc", 3, ">=", 0.7),
    ("removal (dB)", "removal_psnr", 2, ">=", 28.0),
    ("sketch IoU", "sketch_iou", 3, ">=", 0.7),
    ("style", "style_acc", 3, ">", "regenerate_crop"),
    ("object IoU", "object_iou", 3, None, None),
    ("seam asym / plain", "seam_ratio", 2, "<=", 0.5),
    ("preserved", "preserved_error_max", 0, "==", 0),
)
COMPARISONS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "==": operator.eq}


def _scores(report: dict, strategy: str, name: str) -> dict:
    if not isinstance(report, dict):
        raise ValueError(f"{name}: not an eval report (a JSON object of scores per strategy)")
    if not isinstance(report.get(strategy), dict):
        held = ", ".join(k for k, v in report.items() if isinstance(v, dict)) or "none"
        raise ValueError(f"{name}: no {strategy!r} scores (it holds {held})")
    scores = dict(report[strategy])
    if scores.get("seam_error_plain"):
        scores["seam_ratio"] = scores["seam_error_asym"] / scores["seam_error_plain"]
    scores.setdefault("preserved_error_max", report.get("preserved_error_max"))  # the strategy's own, else the report-wide worst
    return scores


def compare_reports(old: dict, new: dict, strategy: str = "lazy", names: tuple[str, str] = ("old", "new")) -> list[dict]:
    """One row per target metric: both scores, the change in the new report's standard errors, and whether
    each report meets the target (None where the report cannot say). A pure function; `format_comparison`
    renders it."""
    a, b = _scores(old, strategy, names[0]), _scores(new, strategy, names[1])
    rows = []
    for label, key, digits, op, bound in TARGETS:
        if a.get(key) is None and b.get(key) is None:
            continue
        row = {"metric": label, "key": key, "digits": digits, "old": a.get(key), "new": b.get(key), "se": b.get(f"se_{key}")}
        row["change_se"] = (None if None in (row["old"], row["new"]) or not row["se"]
                            else round((row["new"] - row["old"]) / row["se"], 1))
        for side, scores, report in (("old_met", a, old), ("new_met", b, new)):
            value, limit = scores.get(key), bound
            if isinstance(bound, str):  # another strategy's score in the same report
                limit = report.get(bound, {}).get(key)
            row[side] = None if op is None or value is None or limit is None else COMPARISONS[op](value, limit)
        row["target"] = "" if op is None else f"{op} {bound}" + ("'s" if isinstance(bound, str) else "")
        rows.append(row)
    return rows


def format_comparison(rows: list[dict], names: tuple[str, str] = ("old", "new")) -> str:
    """Markdown: metric | old → new | change in standard errors | target | met (old → new)."""
    def cell(value, digits):
        return "–" if value is None else f"{value:.{digits}f}"

    def met(flag):
        return "–" if flag is None else "yes" if flag else "NO"

    lines = [f"| metric | {names[0]} → {names[1]} | change (se) | target | met |", "|---|---|---|---|---|"]
    for r in rows:
        change = "" if r["change_se"] is None else f"{r['change_se']:+.1f}"
        lines.append(f"| {r['metric']} | {cell(r['old'], r['digits'])} → {cell(r['new'], r['digits'])} | {change} | "
                     f"{r['target']} | {met(r['old_met'])} → {met(r['new_met'])} |")
    return "\n".join(lines)


def compare_main(paths: list[str], strategy: str) -> int:
    """`lazyedit eval --compare OLD NEW`: the table, exit 1 where NEW misses a target OLD met, 2 on bad input."""
    reports = []
    for path in paths:
        try:
            reports.append(json.loads(Path(path).read_text()))
        except (OSError, ValueError) as exc:
            print(f"lazyedit eval: --compare {path}: not a readable JSON report ({exc})", file=sys.stderr)
            return 2
    names = tuple(paths)
    try:
        rows = compare_reports(reports[0], reports[1], strategy, names)
    except ValueError as exc:
        print(f"lazyedit eval: --compare {exc}", file=sys.stderr)
        return 2
    print(format_comparison(rows, names))
    lost = [r["metric"] for r in rows if r["old_met"] and r["new_met"] is False]
    if lost:
        print(f"{paths[1]} misses what {paths[0]} met: {', '.join(lost)}")
    return 1 if lost else 0


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="lazyedit eval", description="Evaluate a lazyedit model on held-out procedural edits.")
    p.add_argument("--model", default="demo", help="model folder (DiffusionPipeline layout), or tiny / demo")
    p.add_argument("--cases", type=int, default=510, help="number of held-out cases (>= 500 for a report)")
    p.add_argument("--seed", type=int, default=1234, help="held-out world seed (training uses 0)")
    p.add_argument("--size", type=int, default=256, help="canvas size in pixels")
    p.add_argument("--steps", type=int, help="denoising steps (default: the model's)")
    p.add_argument("--guidance", type=float, help="guidance (default: the model's)")
    p.add_argument("--sketch-strength", type=float, default=1.0, help="strength of the sketch in sketch cases (0..2)")
    p.add_argument("--kinds", default="insert,remove,sketch",
                   help="comma-separated case kinds to run (the others are skipped; the case list stays the same); "
                        "box (not run by default) adds, for each insert case, the same insert into a loose box")
    p.add_argument("--strategies", help="comma-separated: lazy, regenerate_crop, regenerate_image (default: the first two)")
    p.add_argument("--decode-margin", type=int, metavar="PX",
                   help="pixels of canvas around the mask the asymmetric decoder sees (default: the pipeline's)")
    p.add_argument("--no-seam", action="store_true", help="skip the plain-decoder rerun of removal cases")
    p.add_argument("--context-window", type=int, metavar="PX",
                   help="lazy edits read at most PX x PX pixels around the mask (the service's --context-window; "
                        "default: the whole canvas)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", "--out", dest="out", help="write the report as JSON here")
    p.add_argument("--grid", help="write a PNG of the first cases: canvas with hole | each strategy | truth")
    p.add_argument("--ground-truth", action="store_true", help="score the true scenes instead of a model (metric ceiling)")
    p.add_argument("--autoencoder", action="store_true",
                   help="score the true scenes after a round trip through the model's VAE and decoders "
                        "(the ceiling its autoencoder leaves the generator)")
    p.add_argument("--vae", metavar="DIR",
                   help="with --autoencoder: a VAE folder (AutoencoderKL.save_pretrained, e.g. <run>/model/vae) scored "
                        "in place of the model's, through its own decoder: a candidate VAE judged before a generator "
                        "is trained on its latents")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--compare", nargs=2, metavar=("OLD", "NEW"),
                   help="compare two --json reports against the targets instead of evaluating (exit 1 if NEW misses "
                        "a target OLD met); --strategies names the one compared (default lazy)")
    return p


def eval_main(argv: list[str] | None = None) -> int:
    """Entry point of `lazyedit eval`."""
    ns = build_parser().parse_args(argv)
    if ns.compare:
        return compare_main(ns.compare, (ns.strategies or "lazy").split(",")[0].strip())
    kinds = {k.strip() for k in ns.kinds.split(",") if k.strip()}
    if not kinds or not kinds <= set(CASE_KINDS + EXTRA_KINDS):
        print(f"lazyedit eval: --kinds {ns.kinds!r}: choose from {', '.join(CASE_KINDS + EXTRA_KINDS)}", file=sys.stderr)
        return 2
    if ns.decode_margin is not None and ns.decode_margin < 0:
        print(f"lazyedit eval: --decode-margin {ns.decode_margin}: must be 0 or more pixels", file=sys.stderr)
        return 2
    if ns.context_window is not None and ns.context_window < 1:
        print(f"lazyedit eval: --context-window {ns.context_window}: must be a positive number of pixels", file=sys.stderr)
        return 2
    if ns.vae and not ns.autoencoder:
        print("lazyedit eval: --vae scores a VAE's round trip: it needs --autoencoder", file=sys.stderr)
        return 2
    pipe = None
    if not ns.ground_truth:
        from lazyedit.engine import load_pipeline

        pipe = load_pipeline(ns.model, device=ns.device)
        if ns.decode_margin is not None:
            pipe.decode_margin = ns.decode_margin
        pipe.context_window = ns.context_window
    sketch = pipe is None or pipe.sketch_tuner is not None
    cases = [c for c in eval_cases(ns.cases, ns.seed, ns.size, sketch=sketch, box="box" in kinds,
                                   outpaint="outpaint" in kinds) if c.kind in kinds]
    if pipe is None:
        report = {"ground_truth": ground_truth_report(cases)}
    elif ns.autoencoder:
        vae = None
        if ns.vae:
            from diffusers import AutoencoderKL

            try:
                vae = AutoencoderKL.from_pretrained(ns.vae, torch_dtype=pipe.vae.dtype).to(pipe.device).eval()
            except (OSError, ValueError) as exc:
                print(f"lazyedit eval: --vae {ns.vae}: not a VAE folder ({exc})", file=sys.stderr)
                return 2
            factor = 2 ** (len(vae.config.block_out_channels) - 1)
            if factor != pipe.vae_factor:  # the decode box is cut on the model's latent grid
                print(f"lazyedit eval: --vae {ns.vae}: downsamples {factor}x, the model's VAE {pipe.vae_factor}x",
                      file=sys.stderr)
                return 2
        report = {"autoencoder": autoencoder_report(pipe, cases, progress=not ns.no_progress, vae=vae)}
    else:
        strategies = tuple(s.strip() for s in (ns.strategies or "lazy,regenerate_crop").split(",") if s.strip())
        report = run_eval(pipe, cases, ns.steps, ns.guidance, strategies, seam=not ns.no_seam,
                          progress=not ns.no_progress, grid=ns.grid, sketch_strength=ns.sketch_strength)
    if pipe is not None:
        report |= {"model": ns.model, "cases": ns.cases, "seed": ns.seed, "size": ns.size,
                   "kinds": [k for k in CASE_KINDS + EXTRA_KINDS if k in kinds], "sketch_strength": ns.sketch_strength,
                   "decode_margin": pipe.decode_margin, "context_window": pipe.context_window} | ({"vae": ns.vae} if ns.vae else {})
    text = json.dumps(report, indent=2)
    print(text)
    if ns.out:
        Path(ns.out).parent.mkdir(parents=True, exist_ok=True)
        Path(ns.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(eval_main())
