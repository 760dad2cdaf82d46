"""Training data as torch datasets: the procedural world, or a folder of images with .txt captions.

Every dataset is map-style and a pure function of its index (and canvas size), and :class:`StreamBatches`
hands out batches of indices ``start, start+1, ...`` sharded over processes, so a resumed run (or another
GPU) sees exactly the data it would have seen: no data-loader state needs saving.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter, ImageOps
from torch.utils.data import Dataset, Sampler

from ..engine.pipeline import sketch_condition
from .masks import REMOVAL_FRACTION, full_or_lama_mask, make_case, random_mask
from .world import LARGE_OBJECT_SIZES, colour_names, make_sample, shape_names

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
HUGE = 2**31 - 1
logger = logging.getLogger(__name__)


def to_tensor(img: Image.Image) -> torch.Tensor:
    """PIL RGB -> (3, H, W) float in [-1, 1]."""
    a = np.asarray(img.convert("RGB"), dtype=np.float32)
    return torch.from_numpy(a).permute(2, 0, 1) / 127.5 - 1


def to_image(t: torch.Tensor) -> Image.Image:
    """(3, H, W) in [-1, 1] -> PIL RGB."""
    a = ((t.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(a, "RGB")


def sketch_tensor(sketch: Image.Image | None, size: tuple[int, int]) -> torch.Tensor:
    """RGBA sketch -> (4, H, W) in [-1, 1], the engine's sketch_condition encoding (none = no strokes: -1)."""
    w, h = size
    if sketch is None:
        return torch.full((4, h, w), -1.0)
    return sketch_condition(np.asarray(sketch.convert("RGBA")))


def load_photo(path: str | Path, min_side: int = 0) -> Image.Image:
    """A photo as RGB, upright (EXIF orientation applied), transparency over white. ``min_side``: a JPEG is
    decoded at the smallest 1/2, 1/4 or 1/8 scale whose short side still has that many pixels (a camera's
    24 MP JPEG decodes ~10x faster)."""
    with Image.open(path) as im:
        if min_side:
            im.draft("RGB", (min_side, min_side))
        im = ImageOps.exif_transpose(im)
        if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            im = Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), im.convert("RGBA"))
        return im.convert("RGB")


def edge_sketch(target: Image.Image, mask: np.ndarray, keep: float = 0.15) -> Image.Image | None:
    """A sketch for a photo (which has no drawn outline): its strongest edges inside the mask, the top
    ``keep`` fraction by gradient magnitude, as black strokes (RGBA, alpha 0 elsewhere). SCEdit's
    controllable tuner is likewise trained on edge maps. None when the hole holds no edge."""
    mask = np.asarray(mask, bool)
    g = np.asarray(target.convert("L").filter(ImageFilter.GaussianBlur(1)), np.float32)
    gy, gx = np.gradient(g)
    magnitude = np.hypot(gx, gy)
    inside = magnitude[mask]
    if inside.size == 0:
        return None
    strokes = mask & (magnitude >= max(np.quantile(inside, 1 - keep), 8.0))  # 8 grey levels a pixel: flat noise is no edge
    if strokes.sum() < 4:
        return None
    arr = np.zeros((*mask.shape, 4), np.uint8)
    arr[..., 3] = strokes * 255
    return Image.fromarray(arr, "RGBA")


class FolderImages:
    """Images in a folder (recursively); a caption from ``name.txt`` next to ``name.png`` when present.
    A file that cannot be read is logged and skipped (a long run must not die on one broken JPEG)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.files = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_EXTS)
        if not self.files:
            raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTS)}) under {self.root}")
        self.unreadable: set[Path] = set()

    def __len__(self) -> int:
        return len(self.files)

    def get(self, index: int, size: int, rng: np.random.Generator) -> tuple[Image.Image, str]:
        for k in range(len(self.files)):
            path = self.files[(index + k) % len(self.files)]
            if path in self.unreadable:
                continue
            try:
                img = load_photo(path, min_side=2 * size)
                break
            except (OSError, ValueError, Image.DecompressionBombError) as exc:
                self.unreadable.add(path)
                logger.warning("skipping unreadable training image %s: %s", path, exc)
        else:
            raise FileNotFoundError(f"no readable images under {self.root}")
        # random square crop (scale 0.6..1 of the short side), resized to size
        w, h = img.size
        side = int(min(w, h) * rng.uniform(0.6, 1.0))
        x0 = int(rng.integers(0, w - side + 1))
        y0 = int(rng.integers(0, h - side + 1))
        img = img.crop((x0, y0, x0 + side, y0 + side)).resize((size, size), Image.BICUBIC)
        if rng.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        txt = path.with_suffix(".txt")
        caption = txt.read_text(encoding="utf-8").strip() if txt.exists() else ""
        return img, caption


class StageDataset(Dataset):
    """Items for one training stage.

    - ``vae``: {"image"}
    - ``asym-decoder``: {"image", "mask"} (mask all ones half of the time); with ``decoder_edits`` also an
      edit case as {"edit_image", "edit_target", "edit_mask", "edit_caption", "edit_sketch", "edit_has_sketch"}
    - ``lazy`` / ``sketch`` / ``distill``: {"image", "target", "mask", "caption", "sketch", "has_sketch"}
    """

    def __init__(self, stage: str, size: int = 256, seed: int = 0, folder: str | None = None,
                 p_kinds: tuple[float, float, float] | None = None, large_objects: float = 0.0,
                 decoder_edits: bool = False, focus_shapes: tuple[str, ...] = (), focus_colours: tuple[str, ...] = (),
                 focus_fraction: float = 0.0, loose_masks: float = 0.0, strip_masks: float = 0.0,
                 removal_fraction: float = REMOVAL_FRACTION):
        """large_objects: the fraction of world scenes (lazy / sketch, and decoder edits) drawn with
        LARGE_OBJECT_SIZES. decoder_edits: asym-decoder items carry an edit case too, for the generator to fill.
        focus_fraction: the fraction of world scenes drawn only from ``focus_shapes`` and ``focus_colours`` (an
        empty one leaves all shapes, or all colours). loose_masks: the fraction of named-object edits whose mask is
        a loose box around the object (make_case's p_loose).
        strip_masks: the fraction of edits that are outpaintings of a band along one side (make_case's p_strip).
        removal_fraction: the fraction of object-masked edits that are removals (make_case's p_removal)."""
        self.removal_fraction = float(removal_fraction)
        self.loose_masks = float(loose_masks)
        self.strip_masks = float(strip_masks)
        self.focus_shapes = shape_names(focus_shapes) if focus_shapes else ()
        self.focus_colours = colour_names(focus_colours) if focus_colours else ()
        self.focus_fraction = float(focus_fraction)
        self.stage = stage
        self.decoder_edits = bool(decoder_edits)
        self.large_objects = float(large_objects)
        self.size = int(size)
        self.seed = int(seed)
        self.folder = FolderImages(folder) if folder else None
        if p_kinds is None:
            # the sketch stage needs named objects with outlines: object masks only
            p_kinds = (1.0, 0.0, 0.0) if stage == "sketch" else (0.6, 0.25, 0.15)
        self.p_kinds = p_kinds

    def __len__(self) -> int:
        return HUGE

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed & 0xFFFFFFFF, index & 0xFFFFFFFF, 0x7D1])

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        """``key``: an index, or (index, canvas size) from :class:`StreamBatches` when sizes are mixed."""
        index, s = key if isinstance(key, tuple) else (key, self.size)
        rng = self._rng(index)
        if self.stage == "vae":
            if self.folder is not None:
                img, _ = self.folder.get(index, s, rng)
            else:
                sample = make_sample(self.seed, index, s)
                img = sample.image if rng.random() < 0.8 else sample.removed
            return {"image": to_tensor(img)}
        if self.stage == "asym-decoder":
            img = self.folder.get(index, s, rng)[0] if self.folder is not None else make_sample(self.seed, index, s).image
            mask = full_or_lama_mask(rng, s, 0.5)
            item = {"image": to_tensor(img), "mask": torch.from_numpy(mask.astype(np.float32))[None]}
            if self.decoder_edits:
                edit = self._edit_item(index, s, rng, with_sketch=True)  # for --generated-sketches
                item.update({f"edit_{k}": v for k, v in edit.items()})
            return item
        if self.stage in ("lazy", "sketch", "distill"):
            # distill: the lazy stage's edits, with the outlines of those that have one (for the sketch tuner)
            return self._edit_item(index, s, rng, with_sketch=self.stage != "lazy")
        raise ValueError(f"unknown stage {self.stage!r}")

    def _edit_item(self, index: int, s: int, rng: np.random.Generator, with_sketch: bool) -> dict:
        """One edit on an s-pixel canvas: the canvas, the truth after the edit, the hole, its caption (and sketch)."""
        if self.folder is not None:
            img, caption = self.folder.get(index, s, rng)
            mask = random_mask(rng, s)
            caption = caption if rng.random() < 0.5 else ""
            image = target = img
            sketch = edge_sketch(img, mask) if with_sketch else None
        else:
            kw = {"sizes": LARGE_OBJECT_SIZES} if rng.random() < self.large_objects else {}
            # drawn only when focusing, so runs without it keep their data
            if self.focus_fraction > 0 and rng.random() < self.focus_fraction:
                kw.update(shapes=self.focus_shapes or None, colours=self.focus_colours or None)  # None: all
            case = make_case(self.seed, index, s, p_kinds=self.p_kinds, p_loose=self.loose_masks,
                             p_strip=self.strip_masks, p_removal=self.removal_fraction, **kw)
            image, target, mask, caption, sketch = case.image, case.target, case.mask, case.caption, case.sketch
        return {
            "image": to_tensor(image),
            "target": to_tensor(target),
            "mask": torch.from_numpy(mask.astype(np.float32))[None],
            "caption": caption,
            "sketch": sketch_tensor(sketch, (s, s)),
            "has_sketch": torch.tensor(sketch is not None),
        }


def _int_list(value: int | str | tuple[int, ...] | list[int], name: str, what: str) -> tuple[int, ...]:
    """A flag's whole numbers from one number, a sequence, or their comma-separated text ("128,256")."""
    parts = value.split(",") if isinstance(value, str) else value if isinstance(value, (tuple, list)) else (value,)
    try:
        return tuple(int(p) for p in parts)
    except ValueError:
        raise ValueError(f"{name} {value!r} is not {what} or a comma-separated list of them") from None


def canvas_sizes(value: int | str | tuple[int, ...] | list[int]) -> tuple[int, ...]:
    """--resolution as a tuple of sizes: one size, several, or their comma-separated text ("128,256")."""
    sizes = _int_list(value, "resolution", "a size in pixels")
    if not sizes or any(size <= 0 or size % 16 for size in sizes):
        raise ValueError(f"resolution {value!r}: every size must be a positive multiple of 16 (one token is 16 px)")
    return sizes


def batch_sizes(value: int | str | tuple[int, ...] | list[int], turns: int) -> tuple[int, ...]:
    """--batch-size as one count per canvas size: one count for all, or one per size ("4,4,1" for 128,256,512)."""
    counts = _int_list(value, "batch size", "a count")
    if not counts or any(c <= 0 for c in counts):
        raise ValueError(f"batch size {value!r}: every count must be at least 1")
    if len(counts) == 1:
        return counts * turns
    if len(counts) != turns:
        raise ValueError(f"batch size {value!r}: {len(counts)} counts for {turns} --resolution sizes (give one, or one per size)")
    return counts


class StreamBatches(Sampler):
    """One process's batches: batch j holds the next ``batch_size`` global indices after those of the batches
    before it, index i of the stream being i * num_shards + shard, and all of its items share the canvas size
    ``sizes[j % len(sizes)]`` (a batch must be one size; every process trains the same size at a step, so none
    waits for a slower one at the gradient all-reduce). With several sizes each item is an (index, size) pair.
    ``batch_size`` is one number, or one per size (fewer items for the larger canvases)."""

    def __init__(self, start_batch: int = 0, batch_size: int | tuple[int, ...] = 1, shard: int = 0,
                 num_shards: int = 1, sizes: tuple[int, ...] = ()):
        self.sizes = tuple(sizes)
        self.start, self.batch_sizes = int(start_batch), batch_sizes(batch_size, max(len(self.sizes), 1))
        self.shard, self.num_shards = int(shard), int(num_shards)

    def _first(self, j: int) -> int:
        """The stream position of batch j's first item: whole turns through the sizes, then the part turn."""
        turns, part = divmod(j, len(self.batch_sizes))
        return turns * sum(self.batch_sizes) + sum(self.batch_sizes[:part])

    def __iter__(self):
        j = self.start
        while True:
            count = self.batch_sizes[j % len(self.batch_sizes)]
            first = self._first(j)
            indices = [(first + k) * self.num_shards + self.shard for k in range(count)]
            if len(self.sizes) > 1:
                size = self.sizes[j % len(self.sizes)]
                indices = [(i, size) for i in indices]
            yield indices
            j += 1

    def __len__(self) -> int:
        return HUGE


__all__ = ["StageDataset", "StreamBatches", "batch_sizes", "canvas_sizes", "FolderImages", "load_photo", "edge_sketch", "to_tensor", "to_image",
           "sketch_tensor"]
