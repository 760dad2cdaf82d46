"""Training masks: guaranteed area bounds, grown object masks, the removal rule of training cases."""

import numpy as np
import pytest

from lazyedit.training.masks import (
    MAX_AREA, MIN_AREA, area, fill_holes, fit_area, full_or_lama_mask, grow, make_case, object_mask, random_mask, shrink,
    strip_mask,
)
from lazyedit.training.world import make_sample


@pytest.mark.parametrize("size", [64, 128, (200, 120), 256])
def test_random_masks_respect_area_bounds(size):
    rng = np.random.default_rng(0)
    for _ in range(60):
        for kind in ("strokes", "box"):
            a = area(random_mask(rng, size, kind))
            assert MIN_AREA <= a <= MAX_AREA


def test_fit_area_bounds_on_extremes():
    rng = np.random.default_rng(1)
    for m in (np.zeros((100, 100), bool), np.ones((100, 100), bool), np.eye(100, dtype=bool)):
        for lo, hi in ((0.01, 0.6), (0.05, 0.2), (0.2, 0.45)):
            a = area(fit_area(m, rng, lo, hi))
            assert lo <= a <= hi


def test_object_masks_cover_the_object_and_respect_bounds():
    rng = np.random.default_rng(2)
    for i in range(30):
        s = make_sample(3, i, size=128)
        m = object_mask(s.mask, rng)
        assert MIN_AREA <= area(m) <= MAX_AREA
        assert not np.any(s.mask & ~m), "the grown mask must cover the whole object"
        assert np.count_nonzero(m) > np.count_nonzero(s.mask)


def test_grow_and_shrink_are_square_filters_at_the_edge_too():
    """grow(m, px) / shrink(m, px) are what px 3x3 max / min filters in a row give (PIL's, the reference), on
    masks touching the canvas edge too (which shrink does not eat into)."""
    from PIL import Image, ImageFilter

    rng = np.random.default_rng(5)
    for t in range(80):
        h, w = (int(v) for v in rng.integers(5, 60, 2))
        sparse = t % 2 == 0
        m = rng.random((h, w)) < (rng.uniform(0.002, 0.08) if sparse else rng.uniform(0.5, 0.98))
        m[:, 0] |= t % 4 < 2
        px = int(rng.integers(0, 9))
        for ours, pil in ((grow, ImageFilter.MaxFilter), (shrink, ImageFilter.MinFilter)):
            im = Image.fromarray(m.astype(np.uint8) * 255, "L")
            for _ in range(px):
                im = im.filter(pil(3))
            assert np.array_equal(ours(m, px), np.asarray(im) > 127), (ours.__name__, t, px)


def test_grow_and_fill_holes():
    m = np.zeros((21, 21), bool)
    m[10, 10] = True
    g = grow(m, 2)
    assert g[10, 8] and g[8, 10] and not g[10, 7]
    ring = np.zeros((21, 21), bool)
    ring[5:16, 5:16] = True
    ring[8:13, 8:13] = False
    assert fill_holes(ring)[10, 10] and not fill_holes(ring)[0, 0]
    # a hole is background cut off from the border side to side: a diagonal gap does not let the outside in
    diamond = np.zeros((5, 5), bool)
    diamond[1, 2] = diamond[2, 1] = diamond[2, 3] = diamond[3, 2] = True
    assert fill_holes(diamond).sum() == 5 and fill_holes(diamond)[2, 2]
    open_ring = ring.copy()
    open_ring[10, 5:8] = False  # a channel to the outside: nothing to fill
    assert np.array_equal(fill_holes(open_ring), open_ring)


def test_cases_follow_the_rule():
    kinds = set()
    for i in range(40):
        c = make_case(5, i, size=128)
        kinds.add(c.kind)
        assert MIN_AREA <= area(c.mask) <= MAX_AREA
        img, tgt = np.asarray(c.image), np.asarray(c.target)
        changed = np.any(img != tgt, axis=-1)
        assert not np.any(changed & ~c.mask), "target must equal the canvas outside the mask"
        if c.kind == "removal":
            assert c.caption == "" and changed.any()
        if c.kind == "object":
            assert c.caption == c.sample.caption and c.sketch is not None
    assert {"object", "removal", "strokes", "box"} <= kinds


def test_cases_are_deterministic():
    a, b = make_case(9, 4, size=96), make_case(9, 4, size=96)
    assert np.array_equal(a.mask, b.mask) and a.caption == b.caption
    assert np.array_equal(np.asarray(a.target), np.asarray(b.target))


def test_loose_masks_box_the_named_object_and_change_nothing_else():
    loose_seen = 0
    for i in range(40):
        tight, loose = make_case(5, i, size=128), make_case(5, i, size=128, p_loose=1.0)
        assert (tight.kind, tight.caption) == (loose.kind, loose.caption)
        if tight.kind != "object":  # removals, strokes and boxes keep their masks
            assert np.array_equal(tight.mask, loose.mask)
            continue
        assert MIN_AREA <= area(loose.mask) <= MAX_AREA
        assert np.all(loose.mask[loose.sample.mask])  # the named object lies inside
        if not np.array_equal(tight.mask, loose.mask):  # (a box over the area cap keeps the grown mask)
            loose_seen += 1
            ys, xs = np.nonzero(loose.mask)
            assert loose.mask.sum() == (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
            changed = np.any(np.asarray(loose.image) != np.asarray(loose.target), axis=-1)
            assert not np.any(changed & ~loose.mask)
    assert loose_seen >= 10


def test_strip_masks_band_one_side_and_outpaint_without_a_caption():
    rng = np.random.default_rng(0)
    sides = set()
    for _ in range(40):
        m = strip_mask(rng, (120, 80))
        ys, xs = np.nonzero(m)
        assert m.sum() == (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)  # a rectangle ...
        full_w, full_h = xs.min() == 0 and xs.max() == 119, ys.min() == 0 and ys.max() == 79
        assert full_w or full_h  # ... across the whole canvas ...
        depth = (ys.max() - ys.min() + 1) / 80 if full_w and not full_h else (xs.max() - xs.min() + 1) / 120
        assert 0.09 <= depth <= 0.41  # ... 10 to 40% deep, along one side
        sides.add((xs.min() == 0, xs.max() == 119, ys.min() == 0, ys.max() == 79))
    assert len(sides) == 4
    strips = 0
    for i in range(40):
        plain, mixed = make_case(5, i, size=128), make_case(5, i, size=128, p_strip=0.5)
        if mixed.kind != "strip":  # the other cases are those of a run without strips
            assert (plain.kind, plain.caption) == (mixed.kind, mixed.caption) and np.array_equal(plain.mask, mixed.mask)
            continue
        strips += 1
        assert mixed.caption == ""
        changed = np.any(np.asarray(mixed.image) != np.asarray(mixed.target), axis=-1)
        assert not np.any(changed & ~mixed.mask)  # only objects wholly inside the band are dropped
    assert 10 <= strips <= 30


def test_full_or_lama():
    rng = np.random.default_rng(3)
    full = [full_or_lama_mask(rng, 64).all() for _ in range(200)]
    assert 0.35 < np.mean(full) < 0.65
