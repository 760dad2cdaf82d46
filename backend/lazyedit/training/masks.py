"""Training masks and training cases (numpy + PIL only).

Mask kinds:
- ``object``: the footprint of a scene object grown by a few pixels (the user painted over a thing);
- ``strokes``: LaMa-style thick random brush strokes;
- ``box``: a random rectangle.

Every mask's area (fraction of the canvas) is forced into ``[min_area, max_area]`` (default 1%..60%):
too large -> cut to a window of at most ``max_area``; too small -> grown (object masks) or joined
with a box of ``min_area``. The bounds are guaranteed for any canvas of at least 8x8 pixels.

A :class:`TrainingCase` pairs a canvas, a mask, a caption and the ground truth for the whole canvas.
Its rule: the hole holds what the caption names, any object the hole only partly covers (the model
completes it from what is visible), and background elsewhere. Objects wholly inside the hole that the
caption does not name are removed from the target, so an empty caption trains removal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from .world import (
    Sample,
    Scene,
    _size_wh,
    make_sample,
    mask_box,
    object_footprint,
    render_scene,
    render_sketch,
    sample_rng,
)

MIN_AREA = 0.01
MAX_AREA = 0.60
MASK_KINDS = ("object", "strokes", "box")
# the share of object-masked edits that are removals (empty caption, the object gone), unless a run says otherwise
REMOVAL_FRACTION = 0.2


def area(mask: np.ndarray) -> float:
    return float(np.count_nonzero(mask)) / mask.size


def grow(mask: np.ndarray, px: int) -> np.ndarray:
    """Dilate a bool mask by ``px`` pixels: a (2 px + 1)-pixel square, clipped at the canvas edge (what ``px``
    3x3 max filters in a row give, in one separable pass)."""
    if px <= 0:
        return mask.copy()
    return ndimage.maximum_filter(np.asarray(mask, bool), size=2 * px + 1, mode="constant", cval=False)


def shrink(mask: np.ndarray, px: int) -> np.ndarray:
    """Erode a bool mask by ``px`` pixels (a (2 px + 1)-pixel square); the canvas edge counts as the pixels
    along it, so a shape cut by the edge is not eaten from that side (what ``px`` 3x3 min filters give)."""
    if px <= 0:
        return mask.copy()
    return ndimage.minimum_filter(np.asarray(mask, bool), size=2 * px + 1, mode="nearest")


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill the enclosed holes of a bool mask (e.g. the centre of a ring), so no island of the
    original survives inside an object mask. (scipy's C flood, not PIL's per-pixel Python one, which
    took four fifths of a 256 px training sample's drawing.)"""
    return ndimage.binary_fill_holes(mask)


def box_mask(rng: np.random.Generator, size, min_area: float = 0.02, max_area: float = 0.4) -> np.ndarray:
    w, h = _size_wh(size)
    a = rng.uniform(min_area, max_area) * w * h
    aspect = math.exp(rng.uniform(-0.8, 0.8))
    bw = int(np.clip(round(math.sqrt(a * aspect)), 1, w))
    bh = int(np.clip(round(a / max(bw, 1)), 1, h))
    x0 = int(rng.integers(0, w - bw + 1))
    y0 = int(rng.integers(0, h - bh + 1))
    m = np.zeros((h, w), bool)
    m[y0:y0 + bh, x0:x0 + bw] = True
    return m


def strip_mask(rng: np.random.Generator, size, min_depth: float = 0.1, max_depth: float = 0.4) -> np.ndarray:
    """A band along one side of the canvas, ``min_depth`` to ``max_depth`` of the canvas deep: what the
    editor's Expand masks (the new border an outpainting fills)."""
    w, h = _size_wh(size)
    side = int(rng.integers(4))  # left, right, top, bottom
    depth = float(rng.uniform(min_depth, max_depth))
    d = max(1, round(depth * (w if side < 2 else h)))
    m = np.zeros((h, w), bool)
    if side == 0:
        m[:, :d] = True
    elif side == 1:
        m[:, w - d:] = True
    elif side == 2:
        m[:d] = True
    else:
        m[h - d:] = True
    return m


def stroke_mask(rng: np.random.Generator, size, max_strokes: int = 4, max_vertices: int = 8,
                width_range: tuple[float, float] = (0.04, 0.14)) -> np.ndarray:
    """LaMa-style thick strokes: a few random polylines with round joints, widths relative to the canvas."""
    w, h = _size_wh(size)
    m_side = min(w, h)
    im = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(1, max_strokes + 1))):
        width = max(2, int(rng.uniform(*width_range) * m_side))
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        angle = rng.uniform(0, 2 * math.pi)
        pts = [(x, y)]
        for _ in range(int(rng.integers(2, max_vertices + 1))):
            angle += rng.uniform(-1.2, 1.2)
            length = rng.uniform(0.05, 0.25) * m_side
            x = float(np.clip(x + length * math.cos(angle), 0, w - 1))
            y = float(np.clip(y + length * math.sin(angle), 0, h - 1))
            pts.append((x, y))
        draw.line(pts, fill=255, width=width, joint="curve")
        r = width / 2
        for px, py in (pts[0], pts[-1]):
            draw.ellipse([px - r, py - r, px + r, py + r], fill=255)
    return np.asarray(im) > 127


def fit_area(mask: np.ndarray, rng: np.random.Generator, min_area: float = MIN_AREA,
             max_area: float = MAX_AREA) -> np.ndarray:
    """Force the area into [min_area, max_area] (requires 2 * min_area < max_area)."""
    h, w = mask.shape
    total = w * h
    lo = int(math.ceil(min_area * total))
    hi = int(math.floor(max_area * total))
    if not 0 < lo <= hi:
        raise ValueError(f"area bounds [{min_area}, {max_area}] are empty on a {w}x{h} canvas")
    m = mask.copy()
    n = int(np.count_nonzero(m))
    if n > hi:
        # keep the part inside a window of at most `hi` pixels, chosen over the mask's densest area
        ww = int(np.clip(round(math.sqrt(hi * w / h)), 1, w))
        wh = int(np.clip(hi // ww, 1, h))
        x0 = int(rng.integers(0, w - ww + 1))
        y0 = int(rng.integers(0, h - wh + 1))
        window = np.zeros_like(m)
        window[y0:y0 + wh, x0:x0 + ww] = True
        m &= window
        n = int(np.count_nonzero(m))
    if n < lo:
        # join a box of exactly-enough pixels; union stays <= n + box <= 2*lo (+ rounding) <= hi
        bw = int(np.clip(math.ceil(math.sqrt(lo * w / h)), 1, w))
        bh = int(np.clip(math.ceil(lo / bw), 1, h))
        x0 = int(rng.integers(0, w - bw + 1))
        y0 = int(rng.integers(0, h - bh + 1))
        m[y0:y0 + bh, x0:x0 + bw] = True
        n = int(np.count_nonzero(m))
        if n > hi:  # only on absurd bounds/tiny canvases: fall back to the box alone
            m = np.zeros_like(m)
            m[y0:y0 + bh, x0:x0 + bw] = True
    return m


def object_mask(footprint: np.ndarray, rng: np.random.Generator, grow_px: tuple[int, int] | None = None,
                min_area: float = MIN_AREA, max_area: float = MAX_AREA) -> np.ndarray:
    """Footprint grown by a few pixels (scaled to the canvas), grown further up to ``min_area``."""
    h, w = footprint.shape
    scale = min(w, h) / 256
    if grow_px is None:
        grow_px = (max(1, int(round(2 * scale))), max(2, int(round(10 * scale))))
    m = fill_holes(grow(footprint, int(rng.integers(grow_px[0], grow_px[1] + 1))))
    lo = math.ceil(min_area * w * h)
    step = max(1, int(round(2 * scale)))
    guard = 0
    while np.count_nonzero(m) < lo and guard < 64:
        m = grow(m, step)
        guard += 1
    if not (min_area <= area(m) <= max_area):
        m = fit_area(m, rng, min_area, max_area)
    return m


def loose_box_mask(footprint: np.ndarray, margin: float = 0.25) -> np.ndarray:
    """The box of the footprint grown on every side by ``margin`` of its larger side (at least 2 px), clipped
    to the canvas: the rectangle a person drags around where an object should go, which leaves the object's
    shape to the prompt rather than giving it away as a grown object mask does."""
    h, w = footprint.shape
    x0, y0, x1, y1 = mask_box(footprint)
    pad = max(2, int(round(margin * max(x1 - x0, y1 - y0))))
    m = np.zeros((h, w), bool)
    m[max(0, y0 - pad):min(h, y1 + pad), max(0, x0 - pad):min(w, x1 + pad)] = True
    return m


def random_mask(rng: np.random.Generator, size, kind: str | None = None, min_area: float = MIN_AREA,
                max_area: float = MAX_AREA, kinds: Sequence[str] = ("strokes", "box"),
                p: Sequence[float] | None = None) -> np.ndarray:
    """A strokes or box mask with area in [min_area, max_area]."""
    if kind is None:
        kind = kinds[int(rng.choice(len(kinds), p=p))]
    if kind == "strokes":
        m = stroke_mask(rng, size)
    elif kind == "box":
        m = box_mask(rng, size, max(min_area, 0.02), min(max_area, 0.45))
    else:
        raise ValueError(f"unknown random mask kind {kind!r}")
    return fit_area(m, rng, min_area, max_area)


# --------------------------------------------------------------------------------------------------
# Training cases
# --------------------------------------------------------------------------------------------------


@dataclass
class TrainingCase:
    image: Image.Image  # RGB canvas the user edits (the hole's content is hidden from the model)
    mask: np.ndarray  # bool (H, W), True = generate
    caption: str  # "" = no text: fill with what belongs there (removal of wholly covered objects)
    target: Image.Image  # RGB ground truth for the whole canvas (equals image outside the mask)
    kind: str  # "object", "removal", "strokes", "box"
    sketch: Image.Image | None = None  # RGBA outline of the named object (None when nothing is named)
    sample: Sample | None = None


def _inside(footprint: np.ndarray, mask: np.ndarray) -> bool:
    return bool(np.count_nonzero(footprint)) and not np.any(footprint & ~mask)


def case_from_mask(scene: Scene, mask: np.ndarray, size, rng: np.random.Generator, p_caption: float = 0.5,
                   kind: str = "strokes") -> TrainingCase:
    """Apply the case rule to an arbitrary mask: name one wholly covered object with prob. p_caption."""
    w, h = _size_wh(size)
    feet = [object_footprint(scene, i, (w, h)) for i in range(len(scene.objects))]
    covered = [i for i, f in enumerate(feet) if _inside(f, mask)]
    named = None
    if covered and rng.random() < p_caption:
        named = covered[int(rng.integers(len(covered)))]
    drop = [i for i in covered if i != named]
    image = render_scene(scene, (w, h))
    target = render_scene(scene, (w, h), exclude=drop) if drop else image
    caption = scene.objects[named].caption if named is not None else ""
    sketch = render_sketch(scene, [named], (w, h)) if named is not None else None
    return TrainingCase(image, mask, caption, target, kind, sketch)


def make_case(seed: int = 0, index: int = 0, size=256, p_kinds: Sequence[float] = (0.6, 0.25, 0.15),
              p_removal: float = REMOVAL_FRACTION, min_area: float = MIN_AREA, max_area: float = MAX_AREA,
              p_loose: float = 0.0, p_strip: float = 0.0, **scene_kwargs) -> TrainingCase:
    """The ``index``-th training case of world ``seed`` (deterministic).

    p_kinds: probabilities of (object, strokes, box) masks. Object masks are removal cases (empty
    caption, target = scene without the object) with probability ``p_removal``; the others (the object
    named) have, with probability ``p_loose``, a loose box around the object for a mask instead of its grown
    shape (``loose_box_mask``, margin 0.1 to 0.5), so the shape must come from the caption. With probability
    ``p_strip`` the case is instead an outpainting: a band along one side (``strip_mask``), no caption, the
    target the scene without the objects wholly inside the band (decided on a stream of its own, so that the
    other cases are those of a run without it).
    """
    w, h = _size_wh(size)
    sample = make_sample(seed, index, (w, h), **scene_kwargs)
    if p_strip > 0:
        strip_rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(index) & 0xFFFFFFFF, 0x57B1])
        if strip_rng.random() < p_strip:
            case = case_from_mask(sample.scene, strip_mask(strip_rng, (w, h)), (w, h), strip_rng, p_caption=0.0, kind="strip")
            case.sample = sample
            return case
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(index) & 0xFFFFFFFF, 0x3A5C])
    kind = MASK_KINDS[int(rng.choice(3, p=np.asarray(p_kinds, float) / np.sum(p_kinds)))]
    if kind == "object":
        mask = object_mask(sample.mask, rng, min_area=min_area, max_area=max_area)
        removal = rng.random() < p_removal
        if not removal and p_loose > 0 and rng.random() < p_loose:  # drawn only then: other runs keep their data
            loose = loose_box_mask(sample.mask, float(rng.uniform(0.1, 0.5)))
            if min_area <= area(loose) <= max_area:
                mask = loose
        # a grown mask may swallow a neighbour entirely: apply the rule to the others too
        others = [i for i in range(len(sample.scene.objects)) if i != sample.target
                  and _inside(object_footprint(sample.scene, i, (w, h)), mask)]
        if removal:
            drop = [sample.target] + others
            target = render_scene(sample.scene, (w, h), exclude=drop)
            case = TrainingCase(sample.image, mask, "", target, "removal", None, sample)
        else:
            target = render_scene(sample.scene, (w, h), exclude=others) if others else sample.image
            case = TrainingCase(sample.image, mask, sample.caption, target, "object", sample.sketch, sample)
        return case
    mask = random_mask(rng, (w, h), kind, min_area, max_area)
    case = case_from_mask(sample.scene, mask, (w, h), rng, kind=kind)
    case.sample = sample
    return case


def full_or_lama_mask(rng: np.random.Generator, size, p_full: float = 0.5) -> np.ndarray:
    """Masks for the asymmetric decoder: all ones with probability p_full (plain decoding), else LaMa-style."""
    w, h = _size_wh(size)
    if rng.random() < p_full:
        return np.ones((h, w), bool)
    return random_mask(rng, (w, h), kinds=("strokes", "box"), p=(0.7, 0.3))


__all__ = [
    "MIN_AREA", "MAX_AREA", "MASK_KINDS", "TrainingCase", "area", "grow", "shrink", "box_mask", "loose_box_mask", "stroke_mask",
    "strip_mask",
    "fill_holes", "fit_area", "object_mask", "random_mask", "case_from_mask", "make_case", "full_or_lama_mask", "sample_rng",
]
