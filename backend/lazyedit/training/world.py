"""Procedural world for training and evaluating lazyedit (numpy + PIL only, no torch).

A :class:`Scene` is a resolution-independent description: a background, one scene-wide style, and a
few non-overlapping objects (shape, colour, centre, size, rotation), all in normalised coordinates.
:func:`render_scene` turns it into pixels at any size. Everything is a pure function of its inputs:
``sample_scene(rng)`` draws a scene from a ``numpy.random.Generator`` and ``make_sample(seed, index)``
is deterministic for its arguments.

Rendering is exact with respect to removal: each object is composited as its own set of layers whose
coverage (anti-aliased by 4x supersampling) is zero outside the object's *footprint* (fill, outline
and shadow). Objects never overlap, so rendering the scene without an object changes pixels only
inside that object's footprint, which is the mask handed out with each sample.
"""

from __future__ import annotations

import colorsys
import functools
import math
from dataclasses import dataclass, field, replace
from typing import Iterable, Sequence

import numpy as np
from PIL import Image, ImageDraw

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "ring", "heart", "cross")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "orange": (245, 135, 25),
    "yellow": (240, 215, 35),
    "green": (35, 165, 55),
    "blue": (35, 85, 220),
    "purple": (135, 55, 185),
    "white": (245, 245, 245),
    "black": (18, 18, 18),
}
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)
STYLES: tuple[str, ...] = ("plain", "outlined", "shadowed", "striped")
BACKGROUNDS: tuple[str, ...] = ("flat", "gradient", "stripes", "checkers", "noise")

SUPERSAMPLE = 4
MIN_OBJECT_SIZE = 0.14  # diameter as a fraction of min(width, height): 36 px at 256
MAX_OBJECT_SIZE = 0.36
# Objects as big as the demo model meets on a 512 px canvas (4-12 tokens wide) drawn on a 128 px
# training crop (the crop is then a zoomed-in view of a 512 px scene): trains that scale at the 128 px cost.
LARGE_OBJECT_SIZES = (0.3, 0.85)


def _world_names(value: str | Sequence[str], known: Sequence[str], what: str) -> tuple[str, ...]:
    """Names from comma-separated text ("star,ring") or a sequence; unknown names raise ValueError."""
    parts = value.split(",") if isinstance(value, str) else value
    names = tuple(p.strip() for p in parts if p.strip())
    unknown = [p for p in names if p not in known]
    if not names or unknown:
        raise ValueError(f"{what} {value!r}: {', '.join(unknown) or 'none given'}; choose among {', '.join(known)}")
    return names


def shape_names(value: str | Sequence[str]) -> tuple[str, ...]:
    """World shapes from comma-separated text ("star,ring") or a sequence; unknown names raise ValueError."""
    return _world_names(value, SHAPES, "shapes")


def colour_names(value: str | Sequence[str]) -> tuple[str, ...]:
    """World colours from comma-separated text ("orange,yellow") or a sequence; unknown names raise ValueError."""
    return _world_names(value, COLOUR_NAMES, "colours")


def caption_for(colour: str, shape: str) -> str:
    article = "an" if colour[0] in "aeiou" else "a"
    return f"{article} {colour} {shape}"


def _size_wh(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    w, h = size
    return int(w), int(h)


# --------------------------------------------------------------------------------------------------
# Scene description
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Background:
    kind: str  # one of BACKGROUNDS
    colours: tuple[tuple[int, int, int], tuple[int, int, int]]
    angle: float = 0.0  # radians (gradient, stripes, checkers rotation)
    period: float = 0.1  # stripes / checkers period, fraction of min(w, h)
    noise_seed: int = 0
    noise_cells: int = 6


@dataclass(frozen=True)
class SceneObject:
    shape: str  # one of SHAPES
    colour: str  # one of COLOURS
    cx: float  # centre, fraction of width
    cy: float  # centre, fraction of height
    size: float  # diameter, fraction of min(width, height)
    rotation: float = 0.0  # radians
    rgb: tuple[int, int, int] | None = None  # jittered colour; None = the palette colour

    @property
    def fill_rgb(self) -> tuple[int, int, int]:
        return self.rgb if self.rgb is not None else COLOURS[self.colour]

    @property
    def caption(self) -> str:
        return caption_for(self.colour, self.shape)


@dataclass(frozen=True)
class Scene:
    background: Background
    style: str  # one of STYLES, shared by every object
    objects: tuple[SceneObject, ...] = field(default_factory=tuple)

    def without(self, indices: Iterable[int]) -> "Scene":
        drop = set(int(i) for i in indices)
        return replace(self, objects=tuple(o for i, o in enumerate(self.objects) if i not in drop))


@dataclass
class Sample:
    """One training / evaluation case of the world."""

    image: Image.Image  # RGB scene
    caption: str  # "a red star"
    mask: np.ndarray  # bool (H, W): footprint of the target object (everything it paints)
    removed: Image.Image  # RGB: the same scene without the target object
    sketch: Image.Image  # RGBA: outline of the target shape, strokes opaque, elsewhere alpha 0
    shape: str
    colour: str
    style: str
    box: tuple[int, int, int, int]  # footprint box (x0, y0, x1, y1), end exclusive
    scene: Scene
    target: int  # index of the target object in scene.objects
    seed: int = 0
    index: int = 0

    @property
    def attributes(self) -> dict:
        return {"shape": self.shape, "colour": self.colour, "style": self.style, "box": self.box}


# --------------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------------


def _muted_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    h = rng.random()
    s = rng.uniform(0.05, 0.35)
    v = rng.uniform(0.35, 0.85)
    r, g, b = colorsys.hsv_to_rgb(h, s, v)
    return (int(round(r * 255)), int(round(g * 255)), int(round(b * 255)))


def sample_background(rng: np.random.Generator, kind: str | None = None) -> Background:
    kind = kind or BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    c1 = _muted_colour(rng)
    c2 = _muted_colour(rng)
    if kind == "flat":
        c2 = c1
    return Background(
        kind=kind,
        colours=(c1, c2),
        angle=float(rng.uniform(0, math.pi)),
        period=float(rng.uniform(0.06, 0.2)),
        noise_seed=int(rng.integers(2**31 - 1)),
        noise_cells=int(rng.integers(3, 9)),
    )


def _jitter_rgb(rng: np.random.Generator, colour: str, amount: int = 12) -> tuple[int, int, int]:
    base = np.array(COLOURS[colour], dtype=np.int64)
    j = rng.integers(-amount, amount + 1, size=3)
    return tuple(int(v) for v in np.clip(base + j, 0, 255))


def _footprint_radius(obj_size: float) -> float:
    # generous bound (in units of min(w, h)) on what an object paints: outline + shadow included
    return obj_size / 2 * 1.06 + 0.035


def sample_scene(
    rng: np.random.Generator,
    n_objects: int | tuple[int, int] = (1, 4),
    style: str | None = None,
    background: str | None = None,
    shapes: Sequence[str] | None = None,
    colours: Sequence[str] | None = None,
    aspect: float = 1.0,
    sizes: tuple[float, float] = (MIN_OBJECT_SIZE, MAX_OBJECT_SIZE),
) -> Scene:
    """Draw a random scene. ``aspect`` = width / height of the canvas it will be rendered on; ``sizes``: the
    range of object diameters (fraction of the shorter side)."""
    lo_size, hi_size = sizes
    shapes = tuple(shapes or SHAPES)
    colours = tuple(colours or COLOUR_NAMES)
    style = style or STYLES[rng.integers(len(STYLES))]
    bg = sample_background(rng, background)
    if isinstance(n_objects, int):
        n_lo = n_hi = n_objects
    else:
        n_lo, n_hi = n_objects
    n = int(rng.integers(n_lo, n_hi + 1))
    sx = min(1.0, 1.0 / aspect)  # fraction of width per unit of min(w, h)
    sy = min(1.0, aspect)
    objs: list[SceneObject] = []
    placed: list[tuple[float, float, float]] = []  # (cx, cy) in min-side units, footprint radius
    attempts = 0
    while len(objs) < n and attempts < 400:
        attempts += 1
        # bigger objects early, smaller ones to fill in when the canvas gets crowded
        hi = hi_size if attempts < 100 else (lo_size + hi_size) / 2
        size = float(rng.uniform(lo_size, hi))
        fr = _footprint_radius(size)
        # keep the whole footprint inside the canvas
        fx, fy = fr * sx, fr * sy
        if fx >= 0.5 or fy >= 0.5:
            continue
        cx = float(rng.uniform(fx, 1 - fx))
        cy = float(rng.uniform(fy, 1 - fy))
        ux, uy = cx / sx, cy / sy
        gap = 0.02
        if any(math.hypot(ux - px, uy - py) < fr + pr + gap for px, py, pr in placed):
            continue
        shape = shapes[rng.integers(len(shapes))]
        colour = colours[rng.integers(len(colours))]
        rot_range = {"circle": 0.0, "ring": 0.0}.get(shape, 0.35)
        objs.append(
            SceneObject(
                shape=shape,
                colour=colour,
                cx=cx,
                cy=cy,
                size=size,
                rotation=float(rng.uniform(-rot_range, rot_range)),
                rgb=_jitter_rgb(rng, colour),
            )
        )
        placed.append((ux, uy, fr))
    if not objs:  # cannot happen with sane bounds, but keep the contract "at least one object"
        objs.append(SceneObject(shapes[0], colours[0], 0.5, 0.5, min(lo_size, 0.8)))
    return Scene(background=bg, style=style, objects=tuple(objs))


# --------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------


def _grid(w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in units of min(w, h)."""
    m = float(min(w, h))
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    return (xs + 0.5) / m, (ys + 0.5) / m


def render_background(bg: Background, size: int | Sequence[int] = 256) -> np.ndarray:
    """Float32 (H, W, 3) in [0, 255], the caller's to draw on."""
    w, h = _size_wh(size)
    return _background(bg, w, h).copy()


# A training sample renders its scene two or three times (the canvas, the truth without some objects, the
# footprints): the background and each object are drawn once and reused, read-only.
@functools.lru_cache(maxsize=8)
def _background(bg: Background, w: int, h: int) -> np.ndarray:
    out = _draw_background(bg, w, h)
    out.setflags(write=False)
    return out


def _draw_background(bg: Background, w: int, h: int) -> np.ndarray:
    c1 = np.asarray(bg.colours[0], np.float32)
    c2 = np.asarray(bg.colours[1], np.float32)
    if bg.kind == "flat":
        return np.broadcast_to(c1, (h, w, 3)).astype(np.float32).copy()
    x, y = _grid(w, h)
    ca, sa = math.cos(bg.angle), math.sin(bg.angle)
    u = x * ca + y * sa
    if bg.kind == "gradient":
        lo, hi = u.min(), u.max()
        t = (u - lo) / max(hi - lo, 1e-6)
    elif bg.kind == "stripes":
        # soft-edged stripes (a pixel wide ramp) so they stay alias-free at any size
        phase = (u / bg.period) % 1.0
        edge = 1.0 / (bg.period * min(w, h))
        t = np.clip((np.abs(phase - 0.5) - 0.25) / edge + 0.5, 0, 1)
    elif bg.kind == "checkers":
        v = -x * sa + y * ca
        a = np.floor(u / bg.period) + np.floor(v / bg.period)
        t = (a % 2).astype(np.float32)
    elif bg.kind == "noise":
        nr = np.random.default_rng(bg.noise_seed)
        cells = bg.noise_cells
        t = np.zeros((h, w), np.float32)
        amp_total = 0.0
        for octave, amp in ((1, 1.0), (3, 0.35)):
            n = cells * octave
            grid = nr.random((n + 1, n + 1)).astype(np.float32)
            g = Image.fromarray(grid, mode="F").resize((w, h), Image.BICUBIC)
            t += amp * np.asarray(g, np.float32)
            amp_total += amp
        t = np.clip(t / amp_total, 0, 1)
        t = np.clip((t - 0.5) * 1.8 + 0.5, 0, 1)
    else:
        raise ValueError(f"unknown background kind {bg.kind!r}")
    t = t[..., None].astype(np.float32)
    return c1 * (1 - t) + c2 * t


def _shape_polygon(shape: str, n_curve: int = 96) -> np.ndarray | None:
    """Unit-radius outline (x right, y down), or None for shapes drawn as ellipses."""
    if shape == "square":
        s = 0.78
        return np.array([[-s, -s], [s, -s], [s, s], [-s, s]], np.float64)
    if shape == "triangle":
        a = np.deg2rad([-90, 30, 150])
        pts = np.stack([np.cos(a), np.sin(a)], 1)
        pts[:, 1] += 0.18  # centre the bounding box vertically
        return pts
    if shape == "star":
        pts = []
        for k in range(10):
            r = 1.0 if k % 2 == 0 else 0.45
            a = -math.pi / 2 + k * math.pi / 5
            pts.append((r * math.cos(a), r * math.sin(a) + 0.06))
        return np.array(pts)
    if shape == "cross":
        a, b = 0.95, 0.32
        return np.array(
            [[-b, -a], [b, -a], [b, -b], [a, -b], [a, b], [b, b], [b, a], [-b, a], [-b, b], [-a, b], [-a, -b], [-b, -b]]
        )
    if shape == "heart":
        t = np.linspace(0, 2 * math.pi, n_curve, endpoint=False)
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        pts = np.stack([x, y], 1)
        pts -= (pts.max(0) + pts.min(0)) / 2
        pts /= np.abs(pts).max()
        return pts
    return None


RING_INNER = 0.55


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, rot: float,
                fill: int | None = 255, width: float = 0.0) -> None:
    """Draw a filled shape (width == 0) or its outline stroke of ``width`` pixels (centred on the edge)."""
    if shape in ("circle", "ring"):
        radii = (r, r * RING_INNER) if shape == "ring" else (r,)
        if width <= 0:
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
            if shape == "ring":
                ri = r * RING_INNER
                draw.ellipse([cx - ri, cy - ri, cx + ri, cy + ri], fill=0)
        else:
            for rr in radii:
                ro = rr + width / 2
                draw.ellipse([cx - ro, cy - ro, cx + ro, cy + ro], outline=fill, width=max(1, int(round(width))))
        return
    poly = _shape_polygon(shape)
    c, s = math.cos(rot), math.sin(rot)
    rotm = np.array([[c, -s], [s, c]])
    pts = poly @ rotm.T * r + np.array([cx, cy])
    pl = [tuple(p) for p in pts.tolist()]
    if width <= 0:
        draw.polygon(pl, fill=fill)
    else:
        draw.line(pl + [pl[0]], fill=fill, width=max(1, int(round(width))), joint="curve")
        # round caps on the corners so the stroke is closed everywhere
        hw = width / 2
        for x, y in pl:
            draw.ellipse([x - hw, y - hw, x + hw, y + hw], fill=fill)


@dataclass
class _Layer:
    alpha: np.ndarray  # float32 (h, w) coverage in [0, 1] on the object's crop
    colour: np.ndarray  # float32 (h, w, 3) or (3,)


@dataclass
class _ObjectRender:
    x0: int
    y0: int
    layers: list[_Layer]
    shape_alpha: np.ndarray  # coverage of the shape itself (no outline, no shadow)
    outline_alpha: np.ndarray  # coverage of the sketch stroke along the shape edge

    @property
    def footprint(self) -> np.ndarray:
        fp = np.zeros_like(self.shape_alpha, dtype=bool)
        for layer in self.layers:
            fp |= layer.alpha > 0
        return fp


def _style_params(obj: SceneObject, style: str, m: float) -> dict:
    r = obj.size * m / 2
    return {
        "r": r,
        "outline_w": max(1.5, 0.09 * r),
        "shadow_off": max(2.0, 0.1 * r),
        "sketch_w": max(2.0, 0.012 * m),
    }


def _coverage(w: int, h: int, fn) -> np.ndarray:
    ss = SUPERSAMPLE
    im = Image.new("L", (w * ss, h * ss), 0)
    fn(ImageDraw.Draw(im), ss)
    im = im.reduce(ss)
    return np.asarray(im, np.float32) / 255.0


@functools.lru_cache(maxsize=64)
def _render_object(obj: SceneObject, style: str, w: int, h: int) -> _ObjectRender:
    """The object drawn on its crop; cached (see _background), so every array of it is read-only."""
    ro = _draw_object(obj, style, w, h)
    for arr in (ro.shape_alpha, ro.outline_alpha, *(a for layer in ro.layers for a in (layer.alpha, layer.colour))):
        arr.setflags(write=False)
    return ro


def _draw_object(obj: SceneObject, style: str, w: int, h: int) -> _ObjectRender:
    m = float(min(w, h))
    p = _style_params(obj, style, m)
    r = p["r"]
    cx, cy = obj.cx * w, obj.cy * h
    pad = r * 0.06 + p["outline_w"] + p["shadow_off"] + p["sketch_w"] + 3
    x0 = max(0, int(math.floor(cx - r - pad)))
    y0 = max(0, int(math.floor(cy - r - pad)))
    x1 = min(w, int(math.ceil(cx + r + pad)))
    y1 = min(h, int(math.ceil(cy + r + pad)))
    bw, bh = x1 - x0, y1 - y0
    lx, ly = cx - x0, cy - y0

    def shape_at(dx=0.0, dy=0.0, width=0.0):
        def fn(draw, ss):
            _draw_shape(draw, obj.shape, (lx + dx) * ss, (ly + dy) * ss, r * ss, obj.rotation, 255, width * ss)
        return fn

    rgb = np.asarray(obj.fill_rgb, np.float32)
    shape_alpha = _coverage(bw, bh, shape_at())
    layers: list[_Layer] = []
    if style == "shadowed":
        off = p["shadow_off"]
        sh = _coverage(bw, bh, shape_at(off, off)) * 0.5
        layers.append(_Layer(sh, np.zeros(3, np.float32)))
    if style == "striped":
        ys, xs = np.mgrid[0:bh, 0:bw].astype(np.float32)
        period = max(4.0, r / 2.2)
        u = ((xs + x0 + ys + y0) / math.sqrt(2)) / period
        phase = u % 1.0
        t = np.clip((np.abs(phase - 0.5) - 0.25) * period + 0.5, 0, 1)[..., None]
        if obj.colour == "black":
            alt = np.full(3, 95, np.float32)
        elif obj.colour == "white":
            alt = np.full(3, 175, np.float32)
        else:
            alt = rgb * 0.55
        layers.append(_Layer(shape_alpha, rgb * (1 - t) + alt * t))
    else:
        layers.append(_Layer(shape_alpha, rgb))
    if style == "outlined":
        oc = np.full(3, 235 if obj.colour == "black" else 15, np.float32)
        ol = _coverage(bw, bh, shape_at(width=p["outline_w"]))
        layers.append(_Layer(ol, oc))
    sketch = _coverage(bw, bh, shape_at(width=p["sketch_w"]))
    return _ObjectRender(x0, y0, layers, shape_alpha, sketch)


def _composite(canvas: np.ndarray, ro: _ObjectRender) -> None:
    h, w = ro.shape_alpha.shape
    region = canvas[ro.y0:ro.y0 + h, ro.x0:ro.x0 + w]
    for layer in ro.layers:
        a = layer.alpha[..., None]
        blended = region * (1 - a) + layer.colour * a
        # exact no-op where the layer paints nothing, so removal differs only inside the footprint
        region[...] = np.where(a > 0, blended, region)


def _to_image(arr: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "RGB")


def render_scene(scene: Scene, size: int | Sequence[int] = 256, exclude: Iterable[int] = ()) -> Image.Image:
    """Render ``scene`` at ``size`` (int or (width, height)), leaving out the objects in ``exclude``."""
    w, h = _size_wh(size)
    canvas = render_background(scene.background, (w, h))
    skip = set(int(i) for i in exclude)
    for i, obj in enumerate(scene.objects):
        if i in skip:
            continue
        _composite(canvas, _render_object(obj, scene.style, w, h))
    return _to_image(canvas)


def object_footprint(scene: Scene, index: int, size: int | Sequence[int] = 256) -> np.ndarray:
    """Bool (H, W): every pixel the object paints (fill, outline, shadow)."""
    w, h = _size_wh(size)
    ro = _render_object(scene.objects[index], scene.style, w, h)
    out = np.zeros((h, w), bool)
    fh, fw = ro.shape_alpha.shape
    out[ro.y0:ro.y0 + fh, ro.x0:ro.x0 + fw] = ro.footprint
    return out


def shape_mask(obj: SceneObject, size: int | Sequence[int] = 256, threshold: float = 0.5) -> np.ndarray:
    """Bool (H, W): the object's shape alone (no style), coverage above ``threshold``."""
    w, h = _size_wh(size)
    ro = _render_object(obj, "plain", w, h)
    out = np.zeros((h, w), bool)
    fh, fw = ro.shape_alpha.shape
    out[ro.y0:ro.y0 + fh, ro.x0:ro.x0 + fw] = ro.shape_alpha > threshold
    return out


def render_sketch(scene: Scene, indices: Iterable[int], size: int | Sequence[int] = 256,
                  rgb: tuple[int, int, int] = (0, 0, 0)) -> Image.Image:
    """RGBA sketch: the outlines of the given objects' shapes; strokes opaque, elsewhere alpha 0."""
    w, h = _size_wh(size)
    alpha = np.zeros((h, w), np.uint8)
    for i in indices:
        ro = _render_object(scene.objects[i], scene.style, w, h)
        fh, fw = ro.outline_alpha.shape
        sub = alpha[ro.y0:ro.y0 + fh, ro.x0:ro.x0 + fw]
        np.maximum(sub, np.where(ro.outline_alpha >= 0.5, 255, 0).astype(np.uint8), out=sub)
    arr = np.zeros((h, w, 4), np.uint8)
    arr[..., :3] = rgb
    arr[..., 3] = alpha
    return Image.fromarray(arr, "RGBA")


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1), end exclusive, of the True pixels; (0, 0, 0, 0) when empty."""
    ys = np.flatnonzero(mask.any(1))
    xs = np.flatnonzero(mask.any(0))
    if len(xs) == 0:
        return (0, 0, 0, 0)
    return (int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1)


# --------------------------------------------------------------------------------------------------
# Samples
# --------------------------------------------------------------------------------------------------


def sample_rng(seed: int, index: int = 0) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(index) & 0xFFFFFFFF, 0x1A2E])


def sample_from_scene(scene: Scene, target: int, size: int | Sequence[int] = 256,
                      seed: int = 0, index: int = 0) -> Sample:
    w, h = _size_wh(size)
    obj = scene.objects[target]
    mask = object_footprint(scene, target, (w, h))
    return Sample(
        image=render_scene(scene, (w, h)),
        caption=obj.caption,
        mask=mask,
        removed=render_scene(scene, (w, h), exclude=[target]),
        sketch=render_sketch(scene, [target], (w, h)),
        shape=obj.shape,
        colour=obj.colour,
        style=scene.style,
        box=mask_box(mask),
        scene=scene,
        target=target,
        seed=seed,
        index=index,
    )


def make_sample(seed: int = 0, index: int = 0, size: int | Sequence[int] = 256, **scene_kwargs) -> Sample:
    """The ``index``-th sample of world ``seed``: deterministic for (seed, index, size, kwargs)."""
    w, h = _size_wh(size)
    rng = sample_rng(seed, index)
    scene = sample_scene(rng, aspect=w / h, **scene_kwargs)
    target = int(rng.integers(len(scene.objects)))
    return sample_from_scene(scene, target, (w, h), seed=seed, index=index)


class World:
    """An unlimited, indexable stream of samples: ``World(seed)[i]`` is always the same sample."""

    def __init__(self, seed: int = 0, size: int | Sequence[int] = 256, **scene_kwargs):
        self.seed = int(seed)
        self.size = _size_wh(size)
        self.scene_kwargs = scene_kwargs

    def __getitem__(self, index: int) -> Sample:
        return make_sample(self.seed, index, self.size, **self.scene_kwargs)

    def __iter__(self):
        i = 0
        while True:
            yield self[i]
            i += 1

    def take(self, n: int, start: int = 0) -> list[Sample]:
        return [self[i] for i in range(start, start + n)]


def contact_sheet(images: Sequence[Image.Image], cols: int = 4, pad: int = 2,
                  bg: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Tile images (RGBA composited on white) into one RGB grid."""
    if not images:
        return Image.new("RGB", (1, 1), bg)
    w = max(im.width for im in images)
    h = max(im.height for im in images)
    rows = (len(images) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * (w + pad) + pad, rows * (h + pad) + pad), bg)
    for k, im in enumerate(images):
        if im.mode == "RGBA":
            base = Image.new("RGB", im.size, (255, 255, 255))
            base.paste(im, mask=im.split()[3])
            im = base
        elif im.mode != "RGB":
            im = im.convert("RGB")
        r, c = divmod(k, cols)
        sheet.paste(im, (pad + c * (w + pad), pad + r * (h + pad)))
    return sheet


EXAMPLE_WORLD = 0xE7A  # the editor's example scenes: a stream apart from training (0) and evaluation (1234)


def example_scene(seed: int) -> tuple[Scene, str]:
    """A scene for a person to try the editor on (the demo model knows only this world), and a prompt to try
    in it: a shape and colour the scene does not hold yet. Deterministic for the seed; render it at any size."""
    rng = sample_rng(EXAMPLE_WORLD, seed)
    scene = sample_scene(rng, n_objects=(2, 3))
    held = {(o.colour, o.shape) for o in scene.objects}
    ideas = [(c, s) for c in COLOUR_NAMES for s in SHAPES if (c, s) not in held]
    colour, shape = ideas[int(rng.integers(len(ideas)))]
    return scene, caption_for(colour, shape)
