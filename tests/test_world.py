"""The procedural world: deterministic, exact removal ground truth, sane attributes."""

import numpy as np
import pytest

from lazyedit.training.masks import grow
from lazyedit.training.world import (
    COLOURS, LARGE_OBJECT_SIZES, SHAPES, STYLES, World, make_sample, mask_box, render_scene,
    sample_rng, sample_scene, shape_mask,
)


def _eq(a, b):
    return np.array_equal(np.asarray(a), np.asarray(b))


def test_cached_drawing_is_read_only_and_renders_the_same():
    """A scene's background and objects are drawn once and reused (world._background, world._render_object): a
    second render is identical, drawing on render_background's array does not reach the cache, and the cached
    arrays refuse writes."""
    from lazyedit.training import world

    sample = make_sample(11, 2, 96)
    first = np.asarray(render_scene(sample.scene, 96)).copy()
    canvas = world.render_background(sample.scene.background, 96)
    canvas[...] = 0  # the caller's copy
    assert _eq(render_scene(sample.scene, 96), first)
    assert _eq(render_scene(sample.scene, 96, exclude=[sample.target]), sample.removed)
    ro = world._render_object(sample.scene.objects[0], sample.scene.style, 96, 96)
    with pytest.raises(ValueError, match="read-only"):
        ro.shape_alpha[0, 0] = 1.0
    with pytest.raises(ValueError, match="read-only"):
        world._background(sample.scene.background, 96, 96)[0, 0, 0] = 1.0


def test_deterministic_for_a_seed():
    a, b = make_sample(7, 3), make_sample(7, 3)
    assert _eq(a.image, b.image) and _eq(a.removed, b.removed) and _eq(a.sketch, b.sketch)
    assert np.array_equal(a.mask, b.mask) and a.caption == b.caption and a.box == b.box
    assert World(7)[3].caption == a.caption
    c = make_sample(8, 3)
    assert not _eq(a.image, c.image)


@pytest.mark.parametrize("index", range(24))
def test_removal_differs_only_inside_the_object(index):
    s = make_sample(1, index, size=128)
    img = np.asarray(s.image).astype(int)
    rem = np.asarray(s.removed).astype(int)
    changed = np.any(img != rem, axis=-1)
    assert changed.any(), "removing the object must change the picture"
    assert not np.any(changed & ~s.mask), "removal changed pixels outside the object's mask"


def test_sample_fields():
    for i in range(20):
        s = make_sample(2, i)
        assert s.image.size == (256, 256) and s.image.mode == "RGB"
        assert s.removed.size == (256, 256)
        assert s.sketch.mode == "RGBA" and s.sketch.size == (256, 256)
        assert s.mask.shape == (256, 256) and s.mask.dtype == bool
        assert s.shape in SHAPES and s.colour in COLOURS and s.style in STYLES
        assert s.caption.endswith(f"{s.colour} {s.shape}") and s.caption.split()[0] in ("a", "an")
        assert s.box == mask_box(s.mask)
        x0, y0, x1, y1 = s.box
        assert x1 - x0 >= 30 and y1 - y0 >= 28, "objects span a couple of 16-px tokens at 256"
        alpha = np.asarray(s.sketch)[..., 3]
        strokes = alpha > 127
        # the outline is drawn on the shape's edge: at most a couple of pixels outside the footprint
        assert strokes.any() and not np.any(strokes & ~grow(s.mask, 3))
        # every object of the scene shares the scene's style
        assert all(o.shape in SHAPES for o in s.scene.objects)


def test_any_size_and_aspect():
    s = make_sample(3, 0, size=512)
    assert s.image.size == (512, 512) and s.mask.shape == (512, 512)
    s = make_sample(3, 0, size=(320, 192))
    assert s.image.size == (320, 192) and s.mask.shape == (192, 320)
    changed = np.any(np.asarray(s.image) != np.asarray(s.removed), axis=-1)
    assert not np.any(changed & ~s.mask)


def test_objects_do_not_overlap_and_shapes_render():
    rng = sample_rng(5)
    for _ in range(10):
        scene = sample_scene(rng, n_objects=4)
        masks = [shape_mask(o, 128) for o in scene.objects]
        total = np.sum(masks, axis=0)
        assert total.max() <= 1
        assert all(m.any() for m in masks)
    img = render_scene(scene, 64)
    assert img.size == (64, 64)


def test_large_object_scenes_keep_sizes_whole_objects_and_exact_removal():
    rng = sample_rng(8)
    lo, hi = LARGE_OBJECT_SIZES
    for _ in range(10):
        scene = sample_scene(rng, sizes=LARGE_OBJECT_SIZES)
        assert all(lo <= o.size <= hi for o in scene.objects)
        masks = [shape_mask(o, 128) for o in scene.objects]
        assert np.sum(masks, axis=0).max() <= 1
    # whole objects, and the removal ground truth still differs only inside the target's footprint
    for i in range(6):
        s = make_sample(2, i, size=128, sizes=LARGE_OBJECT_SIZES)
        assert lo <= s.scene.objects[s.target].size <= hi
        x0, y0, x1, y1 = s.box
        assert x0 > 0 and y0 > 0 and x1 < 128 and y1 < 128
        changed = np.any(np.asarray(s.image) != np.asarray(s.removed), axis=-1)
        assert changed.any() and not np.any(changed & ~s.mask)
    assert _eq(make_sample(2, 3, size=96).image, make_sample(2, 3, size=96).image)


def test_all_attributes_occur():
    seen_shapes, seen_colours, seen_styles, seen_bg = set(), set(), set(), set()
    for i in range(150):
        s = make_sample(4, i, size=64)
        seen_shapes.add(s.shape), seen_colours.add(s.colour), seen_styles.add(s.style)
        seen_bg.add(s.scene.background.kind)
    assert seen_shapes == set(SHAPES) and seen_colours == set(COLOURS) and seen_styles == set(STYLES)
    assert len(seen_bg) == 5


def test_example_scene_is_deterministic_and_suggests_what_it_lacks():
    from lazyedit.training.world import example_scene

    for seed in range(12):
        scene, prompt = example_scene(seed)
        assert example_scene(seed) == (scene, prompt)
        assert 2 <= len(scene.objects) <= 3
        assert prompt not in {o.caption for o in scene.objects}  # something new to put in
    assert len({example_scene(s)[1] for s in range(12)}) > 3
