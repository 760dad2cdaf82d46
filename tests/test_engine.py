"""Engine behaviour on the tiny config, CPU."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from lazyedit.engine import (EditCancelled, EditInputError, EditRequest, LazyEditPipeline, build_pipeline, get_config,
                             load_pipeline)
from lazyedit.images import decode_canvas, read_file
from lazyedit.engine.models import CSCTuner, SCTuner


@pytest.fixture(scope="module")
def pipe():
    pipe = load_pipeline("tiny")
    # DiT zero-inits its output layers (the untrained model predicts 0); give them weights so that every
    # input really reaches the output and the tests below can fail.
    tr = pipe.transformer
    for layer in [tr.final_layer.linear, tr.t_block[1]] + [b.cross_attn.to_out for b in (*tr.in_blocks, *tr.out_blocks)]:
        torch.nn.init.normal_(layer.weight, std=0.05)
    return pipe


def canvas(w=90, h=70, seed=0):
    return Image.fromarray((np.random.RandomState(seed).rand(h, w, 3) * 255).astype(np.uint8))


def box_mask(w=90, h=70, box=(30, 20, 50, 40)):
    m = np.zeros((h, w), bool)
    m[box[1] : box[3], box[0] : box[2]] = True
    return m


def expected_tokens(mask: np.ndarray, unit: int) -> list[int]:
    """Hole tokens computed the slow, obvious way: any masked pixel inside the token's square."""
    h, w = mask.shape
    gh, gw = -(-h // unit), -(-w // unit)
    out = []
    for ty in range(gh):
        for tx in range(gw):
            if mask[ty * unit : (ty + 1) * unit, tx * unit : (tx + 1) * unit].any():
                out.append(ty * gw + tx)
    return out


def test_pixels_outside_mask_are_bit_identical(pipe):
    img, mask = canvas(), box_mask()
    res = pipe.edit(img, mask, "a red star", seed=3)
    before, after = np.asarray(img), np.asarray(res.image)
    assert (before[~mask] == after[~mask]).all()
    assert (before[mask] != after[mask]).any(axis=-1).mean() > 0.5
    assert res.box == (30, 20, 50, 40)
    assert res.region.size == (20, 20)


def test_odd_sizes_and_irregular_masks(pipe):
    img = canvas(37, 53, seed=1)
    mask = np.zeros((53, 37), bool)
    yy, xx = np.mgrid[0:53, 0:37]
    mask[(yy - 40) ** 2 + (xx - 30) ** 2 < 60] = True  # a disc touching the padded edge
    res = pipe.edit(img, mask, "a blue ring", seed=0)
    assert res.image.size == (37, 53)
    before, after = np.asarray(img), np.asarray(res.image)
    assert (before[~mask] == after[~mask]).all()
    assert not (before[mask] == after[mask]).all()


def test_transformer_receives_exactly_the_hole_tokens(pipe):
    seen = []
    hook = pipe.transformer.register_forward_pre_hook(
        lambda mod, args, kwargs: seen.append((args[2].clone(), None if args[7] is None else args[7].clone())), with_kwargs=True
    )
    try:
        mask = np.zeros((70, 90), bool)
        mask[5:9, 3:40] = True  # a thin stroke across several tokens
        mask[60:62, 80:82] = True
        pipe.edit(canvas(), mask, "x", seed=0, guidance=1.0, steps=2)
    finally:
        hook.remove()
    want = expected_tokens(mask, pipe.unit)
    assert len(seen) == 2
    for index, token_mask in seen:
        assert index.shape == (1, len(want))
        assert index[0].tolist() == want
        assert token_mask is None or token_mask.all()  # a single unpadded row needs no mask


def test_same_seed_same_output_other_seed_differs(pipe):
    img, mask = canvas(), box_mask()
    a = np.asarray(pipe.edit(img, mask, "a red star", seed=7).image)
    b = np.asarray(pipe.edit(img, mask, "a red star", seed=7).image)
    c = np.asarray(pipe.edit(img, mask, "a red star", seed=8).image)
    assert (a == b).all()
    assert (a != c).any()


def test_cache_hits_skip_both_encoders(pipe):
    pipe.clear_caches()
    calls = {"vae": 0, "ctx": 0}
    h1 = pipe.vae.encoder.register_forward_hook(lambda *a: calls.__setitem__("vae", calls["vae"] + 1))
    h2 = pipe.context_encoder.register_forward_hook(lambda *a: calls.__setitem__("ctx", calls["ctx"] + 1))
    try:
        img, mask = canvas(seed=5), box_mask()
        first = pipe.edit(img, mask, "a red star", seed=1, canvas_key="v1")
        assert calls == {"vae": 1, "ctx": 1}
        second = pipe.edit(img, mask, "a green heart", seed=1, canvas_key="v1")
        assert calls == {"vae": 1, "ctx": 1}
        assert second.timings["latent_cache_hit"] and second.timings["context_cache_hit"]
        assert not first.timings["latent_cache_hit"]
        stats = pipe.cache_stats()
        assert stats["latent"]["hits"] == 1 and stats["context"]["hits"] == 1
        pipe.edit(img, box_mask(box=(5, 5, 20, 20)), "a green heart", seed=1, canvas_key="v1")  # new mask
        assert calls == {"vae": 1, "ctx": 2}
        pipe.edit(img, mask, "a green heart", seed=1, canvas_key="v2")  # new canvas version
        assert calls == {"vae": 2, "ctx": 3}
    finally:
        h1.remove()
        h2.remove()


def test_prepare_runs_the_encoders_an_edit_would_and_changes_nothing_it_draws(pipe):
    pipe.clear_caches()
    img, mask = canvas(seed=6), box_mask(box=(10, 30, 40, 60))
    cold = pipe.edit(img, mask, "a red star", seed=2, canvas_key="p0")
    pipe.clear_caches()
    calls = {"vae": 0, "ctx": 0}
    h1 = pipe.vae.encoder.register_forward_hook(lambda *a: calls.__setitem__("vae", calls["vae"] + 1))
    h2 = pipe.context_encoder.register_forward_hook(lambda *a: calls.__setitem__("ctx", calls["ctx"] + 1))
    h3 = pipe.asym_vae.decoder.condition_encoder.register_forward_hook(
        lambda *a: calls.__setitem__("known", calls.get("known", 0) + 1))
    try:
        canvas_only = pipe.prepare(img, canvas_key="p0")  # what a new canvas gets
        assert calls == {"vae": 1, "ctx": 0} and canvas_only["vae_encode_ms"] > 0
        with_mask = pipe.prepare(img, mask, canvas_key="p0")  # what a painted mask gets
        assert calls == {"vae": 1, "ctx": 1, "known": 1}
        assert with_mask["latent_cache_hit"] and with_mask["context_ms"] > 0 and with_mask["known_pixels_ms"] > 0
        warm = pipe.edit(img, mask, "a red star", seed=2, canvas_key="p0")
        assert calls == {"vae": 1, "ctx": 1, "known": 1}
        assert warm.timings["context_cache_hit"] and warm.timings["context_ms"] == 0
        assert warm.timings["known_pixels_ms"] == 0
    finally:
        h1.remove()
        h2.remove()
        h3.remove()
    assert np.array_equal(np.asarray(warm.image), np.asarray(cold.image))
    with pytest.raises(EditInputError) as err:
        pipe.prepare(img, box_mask(w=40), canvas_key="p0")
    assert err.value.code == "mask_size"
    with pytest.raises(EditInputError) as err:
        pipe.prepare(img, np.zeros((70, 90), bool), canvas_key="p0")
    assert err.value.code == "empty_mask"


def test_cache_is_bounded_in_bytes():
    from lazyedit.engine.cache import ByteLRU

    cache = ByteLRU(max_bytes=3 * 400)
    for i in range(5):
        cache.get_or_compute(i, lambda: torch.zeros(100))  # 400 bytes each
    assert len(cache) == 3 and cache.size_bytes == 1200
    assert cache.get_or_compute(4, lambda: None)[1] is True
    assert cache.get_or_compute(0, lambda: torch.zeros(100))[1] is False


def test_save_and_load_round_trip(pipe, tmp_path):
    img, mask = canvas(), box_mask()
    sketch = Image.new("RGBA", img.size)
    before = np.asarray(pipe.edit(img, mask, "a red star", seed=11, sketch=sketch).image)
    pipe.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "transformer" / "diffusion_pytorch_model.safetensors").is_file()
    again = load_pipeline(str(tmp_path / "m"))
    assert isinstance(again, LazyEditPipeline) and isinstance(again.sketch_tuner, CSCTuner)
    after = np.asarray(again.edit(img, mask, "a red star", seed=11, sketch=sketch).image)
    assert (before == after).all()


def _decoder_inputs(pipe, n=6):
    tr = pipe.transformer
    text, text_mask = pipe.text.encode(["a red star"])
    return dict(
        noisy_tokens=torch.randn(1, n, tr.config.latent_channels * tr.config.patch_size**2),
        context=torch.randn(1, n, tr.config.context_dim),
        token_index=torch.arange(n)[None],
        grid=(4, 4),
        timestep=torch.tensor([500.0]),
        text=text,
        text_mask=text_mask,
    )


def test_guidance_contrasts_with_the_models_null_prompt(pipe, tmp_path):
    """New models read "<null>" as "no condition" and "" as "fill from the context": an empty prompt (a
    removal) is guided away from the null prompt (which is refused as a prompt: test_bad_input_is_named)."""
    from lazyedit.engine.models.text_encoder import NULL_PROMPT

    img, mask = canvas(), box_mask()
    assert pipe.text.null_prompt == NULL_PROMPT != ""

    def run(prompt, guidance):
        return np.asarray(pipe.edit(img, mask, prompt, seed=5, guidance=guidance).image)

    assert (run("", 4.0) != run("", 1.0)).any()
    # the null prompt is part of the text encoder's config; a config from before it (no key) reads as ""
    pipe.text_encoder.save_pretrained(tmp_path / "text")
    config = tmp_path / "text" / "config.json"
    assert json.loads(config.read_text())["null_prompt"] == NULL_PROMPT
    legacy = json.loads(config.read_text())
    del legacy["null_prompt"]
    config.write_text(json.dumps(legacy))
    assert type(pipe.text_encoder).from_pretrained(str(tmp_path / "text")).null_prompt == ""


def _distilled_copy(pipe):
    """The pipe with a guidance-distilled transformer that starts from pipe's weights (the distill stage's start)."""
    return LazyEditPipeline(**{**pipe.components, "transformer": pipe.transformer.guidance_student()}, model_name="distilled")


def test_guidance_distilled_transformer_runs_one_row_per_step(pipe):
    """A distilled transformer takes the scale as an input: one forward row per edit and step. Its guidance
    embedder starts at zero, so before training it is its teacher's conditional row at any scale."""
    from lazyedit.engine.models.transformer import DISTILLED_GUIDANCE_RANGE

    distilled = _distilled_copy(pipe)
    assert distilled.guidance_distilled and not pipe.guidance_distilled
    assert (distilled.limits["min_guidance"], distilled.limits["max_guidance"]) == DISTILLED_GUIDANCE_RANGE
    swapped = LazyEditPipeline(**pipe.components, model_name="swapped")  # limits follow a transformer swapped in
    assert swapped.limits["max_guidance"] == 20.0
    swapped.register_modules(transformer=distilled.transformer)
    assert (swapped.limits["min_guidance"], swapped.limits["max_guidance"]) == DISTILLED_GUIDANCE_RANGE
    rows = []
    hook = distilled.transformer.register_forward_hook(lambda m, args, kwargs, out: rows.append(out.shape[0]), with_kwargs=True)
    img, mask = canvas(), box_mask()
    try:
        out = np.asarray(distilled.edit(img, mask, "a red star", seed=2, steps=3, guidance=5.0).image)
    finally:
        hook.remove()
    assert rows == [1, 1, 1]
    assert (out == np.asarray(pipe.edit(img, mask, "a red star", seed=2, steps=3, guidance=1.0).image)).all()
    assert (out[~mask] == np.asarray(img)[~mask]).all()
    # once the embedder has weights the scale matters
    torch.nn.init.normal_(distilled.transformer.guidance_embedder.mlp[2].weight, std=0.05)
    high, low = (np.asarray(distilled.edit(img, mask, "a red star", seed=2, steps=3, guidance=g).image) for g in (5.0, 1.0))
    assert (high != low).any()
    with pytest.raises(EditInputError, match="guidance must be from 1.0 to 8.0"):
        distilled.edit(img, mask, "a red star", guidance=9.0)
    inputs = _decoder_inputs(pipe)
    with pytest.raises(ValueError, match="is guidance-distilled: pass the guidance scale"):
        distilled.transformer(**inputs)
    with pytest.raises(ValueError, match="not guidance-distilled"):
        pipe.transformer(**inputs, guidance=torch.tensor([4.0]))


def _added_input_copy(pipe, flag, inputs):
    """pipe's transformer with the added input ``flag``: it predicts exactly what the transformer does, and
    refuses to add the input twice."""
    wider = pipe.transformer.with_added_input(flag)
    assert wider.config.get(flag) and not pipe.transformer.config.get(flag)
    torch.testing.assert_close(wider(**inputs), pipe.transformer(**inputs), rtol=0, atol=0)
    with pytest.raises(ValueError, match=f"already takes the {flag} input"):
        wider.with_added_input(flag)
    return wider


def test_hole_positions_place_each_token_in_its_hole_box(pipe, tmp_path):
    """hole_box_features: -1..1 across the box of each row's real tokens, whatever the box's place on the grid;
    with_added_input("hole_positions") starts as the transformer it copies, and once it has weights a grid cell
    reads by its place in the hole's box."""
    import math

    from lazyedit.engine.models.transformer import hole_box_features

    grid = (8, 8)
    # row 0: a 2x3 box at rows 1-2, cols 4-6; row 1: the same box's first row, padded with two fake tokens
    index = torch.tensor([[12, 13, 14, 20, 21, 22], [12, 13, 14, 0, 0, 63]])
    real = torch.tensor([[True] * 6, [True, True, True, False, False, False]])
    f = hole_box_features(index, grid, real, frequencies=1)
    angle = torch.asin(f[..., :2].clamp(-1, 1)) / (math.pi / 2)  # sin(r * pi/2) -> r, for the one frequency
    assert angle[0, :, 0].tolist() == pytest.approx([-1, -1, -1, 1, 1, 1])  # rows: top, bottom
    assert angle[0, :, 1].tolist() == pytest.approx([-1, 0, 1, -1, 0, 1])  # cols: left, middle, right
    assert angle[1, :3, 0].tolist() == pytest.approx([0, 0, 0])  # one row tall: the middle
    assert f[0, 0, -2:].tolist() == pytest.approx([math.log(2), math.log(3)])  # log(1 + extent)
    assert f[1, 0, -2:].tolist() == pytest.approx([0, math.log(3)])  # the padding does not widen the box
    moved = hole_box_features(index + 17, grid, real, frequencies=1)  # two rows down, one col right
    torch.testing.assert_close(moved[real], f[real])

    inputs = _decoder_inputs(pipe)
    wider = _added_input_copy(pipe, "hole_positions", inputs)
    with pytest.raises(ValueError, match="unknown added input"):
        wider.with_added_input("hole_size")
    torch.manual_seed(5)
    torch.nn.init.normal_(wider.hole_position_embedder.mlp[2].weight, std=0.05)
    full = wider(**inputs)
    assert not torch.allclose(full, pipe.transformer(**inputs), atol=1e-4)
    # the same grid cell in two holes: embedded by its place in each hole's box, not by its place on the grid
    embed = wider.hole_position_embedder
    cell_in_first, cell_in_second = embed(index, grid, real)[0, 1], embed(index, grid, real)[1, 1]
    assert not torch.allclose(cell_in_first, cell_in_second, atol=1e-4)
    torch.testing.assert_close(embed(index + 17, grid, real)[real], embed(index, grid, real)[real])
    wider.save_pretrained(tmp_path / "tr")
    again = type(wider).from_pretrained(str(tmp_path / "tr"))
    assert again.config.hole_positions
    torch.testing.assert_close(again(**inputs), full)


def test_mask_detail_tells_the_context_encoder_which_pixels_are_masked(pipe, tmp_path):
    """mask_detail_tokens: the masked share of each token's 4x4 cells; with_added_input("mask_detail") starts as the
    context encoder it copies; once it has weights, two masks with the same hole tokens but other pixels give other
    context, the pipeline passes its mask's pixels, and the edit still keeps every pixel outside the mask."""
    from lazyedit.engine import LazyEditPipeline
    from lazyedit.engine.models.layers import mask_detail_tokens
    from lazyedit.engine.holes import plan_holes_batch, token_mask_to_latent

    m = torch.zeros(1, 1, 16, 32)
    m[0, 0, 0:4, 0:8] = 1  # token 0: its top-left 4x8 px, the first two cells of its first row
    m[0, 0, 2:4, 16:18] = 1  # token 1: half of one cell's rows and half its columns
    cells = mask_detail_tokens(m, unit=16, cells=4)
    assert cells.shape == (1, 2, 16)
    assert cells[0, 0].tolist() == [1, 1] + [0] * 14
    assert cells[0, 1].tolist() == [0.25] + [0] * 15
    with pytest.raises(ValueError, match="does not split"):
        mask_detail_tokens(m, unit=16, cells=3)

    ctx = pipe.context_encoder
    unit = pipe.unit
    grid = (4, 4)
    latent = torch.randn(1, ctx.config.latent_channels, grid[0] * ctx.config.patch_size, grid[1] * ctx.config.patch_size)
    square = torch.zeros(1, 1, grid[0] * unit, grid[1] * unit)
    square[..., unit : 3 * unit, unit : 3 * unit] = 1  # four whole tokens
    thin = square.clone()
    thin[..., unit : unit + 2, :] = 0  # the same four tokens, two rows of pixels fewer
    tok, index, _ = plan_holes_batch(square, unit)
    assert torch.equal(tok, plan_holes_batch(thin, unit)[0])
    latent_mask = token_mask_to_latent(tok, ctx.config.patch_size)
    wider = ctx.with_added_input("mask_detail")
    assert wider.config.mask_detail and not ctx.config.mask_detail
    with pytest.raises(ValueError, match="already takes the mask_detail input"):
        wider.with_added_input("mask_detail")
    with torch.no_grad():
        torch.testing.assert_close(wider(latent, latent_mask, index, pixel_mask=square), ctx(latent, latent_mask, index),
                                   rtol=0, atol=0)
        with pytest.raises(ValueError, match="pass pixel_mask"):
            wider(latent, latent_mask, index)
        torch.manual_seed(6)
        torch.nn.init.normal_(wider.mask_detail_embedder[2].weight, std=0.05)
        a, b = (wider(latent, latent_mask, index, pixel_mask=m_) for m_ in (square, thin))
    assert not torch.allclose(a, b, atol=1e-4)
    wider.save_pretrained(tmp_path / "ctx")
    again = type(wider).from_pretrained(str(tmp_path / "ctx"))
    assert again.config.mask_detail
    with torch.no_grad():
        torch.testing.assert_close(again(latent, latent_mask, index, pixel_mask=square), a)

    detailed = LazyEditPipeline(**{**pipe.components, "context_encoder": wider}, model_name="detailed")
    img = canvas()
    full, trimmed = box_mask(), box_mask()
    trimmed[20:22, 30:50] = False  # the same tokens, two pixel rows fewer

    def contexts(p):
        p.clear_caches()  # the module's pipe may hold these masks' context from other tests
        seen = []
        hook = p.context_encoder.register_forward_hook(lambda mod, args, out: seen.append(out))
        try:
            outs = [np.asarray(p.edit(img, mk, "a red star", seed=3, steps=2).image) for mk in (full, trimmed)]
        finally:
            hook.remove()
        assert (outs[0][~full] == np.asarray(img)[~full]).all() and (outs[1][~trimmed] == np.asarray(img)[~trimmed]).all()
        return seen

    plain_ctx, detailed_ctx = contexts(pipe), contexts(detailed)
    assert len(plain_ctx) == len(detailed_ctx) == 2
    torch.testing.assert_close(plain_ctx[0], plain_ctx[1])  # tokens alone: the two masks are one hole
    assert not torch.allclose(detailed_ctx[0], detailed_ctx[1], atol=1e-4)  # the pixels reached the context


def test_pooled_text_joins_the_timestep_vector(pipe, tmp_path):
    """with_added_input("pooled_text") adds a zero-initialised embedder of the caption's mean token: the copy predicts exactly
    what the transformer did; once the embedder has weights the caption reaches every token through it, padding
    does not count, and the folder round-trips with the input (and a distilled copy keeps it)."""
    from lazyedit.engine.models.transformer import pooled_tokens

    inputs = _decoder_inputs(pipe)
    wider = _added_input_copy(pipe, "pooled_text", inputs)
    torch.manual_seed(4)
    torch.nn.init.normal_(wider.pooled_text_embedder[2].weight, std=0.05)
    moved = wider(**inputs)
    assert not torch.allclose(moved, pipe.transformer(**inputs), atol=1e-4)
    # the caption through the pooled path alone (no cross-attention): another caption, another prediction
    for block in list(wider.in_blocks) + list(wider.out_blocks):
        torch.nn.init.zeros_(block.cross_attn.to_out.weight)
        torch.nn.init.zeros_(block.cross_attn.to_out.bias)
    other_text, other_mask = pipe.text.encode(["a blue ring"])
    red = wider(**inputs)
    assert not torch.allclose(red, wider(**{**inputs, "text": other_text, "text_mask": other_mask}), atol=1e-4)
    # padding tokens are not averaged in
    text, mask = inputs["text"], inputs["text_mask"]
    padded = torch.cat([text, torch.randn(1, 5, text.shape[-1])], dim=1)
    padded_mask = torch.cat([mask, torch.zeros(1, 5, dtype=torch.bool)], dim=1)
    torch.testing.assert_close(pooled_tokens(padded, padded_mask), pooled_tokens(text, mask))
    torch.testing.assert_close(pooled_tokens(text, None), text.mean(dim=1))
    wider.save_pretrained(tmp_path / "tr")
    again = type(wider).from_pretrained(str(tmp_path / "tr"))
    assert again.config.pooled_text
    torch.testing.assert_close(again(**inputs), red)
    distilled = wider.guidance_student()
    assert distilled.config.pooled_text and distilled.config.guidance_embeds
    torch.testing.assert_close(distilled(**inputs, guidance=torch.tensor([4.0])), red)


def test_an_undistilled_copy_predicts_what_the_distilled_one_does_at_its_scale(pipe):
    """undistilled(w) folds the guidance embedding at scale w into the timestep embedder's bias: the copy takes
    no scale and answers as the distilled transformer at w, for any timestep, text and tokens."""
    distilled = pipe.transformer.guidance_student()
    torch.manual_seed(3)
    for p in distilled.guidance_embedder.parameters():  # a trained embedder: the scale changes the prediction
        torch.nn.init.normal_(p, std=0.05)
    inputs = _decoder_inputs(pipe)
    for scale in (1.0, 4.0):
        plain = distilled.undistilled(scale)
        assert not plain.config.guidance_embeds and not hasattr(plain, "guidance_embedder")
        want = distilled(**inputs, guidance=torch.full((inputs["noisy_tokens"].shape[0],), scale))
        torch.testing.assert_close(plain(**inputs), want, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(distilled.undistilled(1.0)(**inputs), distilled.undistilled(4.0)(**inputs))
    with pytest.raises(ValueError, match="not guidance-distilled"):
        pipe.transformer.undistilled()


def test_tuners_start_as_identity(pipe):
    tuner = SCTuner(16, 4)
    x = torch.randn(2, 5, 16)
    assert torch.equal(tuner(x), x)
    inputs = _decoder_inputs(pipe)
    with torch.no_grad():
        plain = pipe.transformer(**inputs)
        csc = CSCTuner(**{**dict(pipe.sketch_tuner.config)})
        sketch = torch.rand(1, 4, 64, 64) * 2 - 1
        tuned = pipe.transformer(**inputs, skip_adapter=csc.adapter([(sketch, 1.0), (sketch, 0.5)], inputs["token_index"]))
    assert torch.equal(plain, tuned)


def test_frozen_backbone_gets_no_gradient_in_first_half(pipe):
    transformer = type(pipe.transformer).from_config(pipe.transformer.config)
    transformer.requires_grad_(False)
    csc = CSCTuner(**dict(pipe.sketch_tuner.config))
    for hint in csc.hints:  # leave the zero init so gradients are not trivially zero
        torch.nn.init.normal_(hint.weight, std=0.1)
    torch.nn.init.normal_(transformer.final_layer.linear.weight, std=0.1)
    entered_first_half_backward = []
    transformer.in_blocks[0].register_full_backward_hook(lambda *a: entered_first_half_backward.append(1))
    inputs = _decoder_inputs(pipe)
    inputs["noisy_tokens"].requires_grad_(True)
    sketch = torch.rand(1, 4, 64, 64) * 2 - 1
    out = transformer(**inputs, skip_adapter=csc.adapter([(sketch, 1.0)], inputs["token_index"]))
    out.square().mean().backward()
    assert all(p.grad is None for p in transformer.parameters())
    assert inputs["noisy_tokens"].grad is None  # the graph stops at the skip inputs
    assert not entered_first_half_backward
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in csc.parameters())


def test_asymmetric_decoder_is_given_the_mask(pipe):
    pipe.clear_caches()
    recorded = []
    hook = pipe.asym_vae.decoder.condition_encoder.register_forward_hook(lambda m, args, out: recorded.append(args))
    try:
        img, mask = canvas(), box_mask()
        pipe.edit(img, mask, "a red star", seed=0)
    finally:
        hook.remove()
    ((masked_image, m),) = recorded  # the conditional branch sees the unmasked pixels and the mask
    m = m[0, 0].numpy().astype(bool)
    assert m.shape == masked_image.shape[-2:]
    assert m.sum() == mask.sum()  # the user's mask, cropped to the decoded box
    assert (masked_image[0][:, torch.from_numpy(m)] == 0).all()
    # the box is the mask's, grown by the margin and widened to whole latent pixels, not the hole's token box
    f, margin = pipe.vae_factor, pipe.decode_margin
    side = lambda lo, hi: (-(-(hi + margin) // f) - (lo - margin) // f) * f  # noqa: E731
    assert tuple(masked_image.shape[-2:]) == (side(20, 40), side(30, 50))
    # and the decoder's output really depends on it
    z = torch.randn(1, 4, 4, 4)
    image = torch.rand(1, 3, 32, 32) * 2 - 1
    full, half = torch.ones(1, 1, 32, 32), torch.ones(1, 1, 32, 32)
    half[..., :16] = 0
    with torch.no_grad():
        a = pipe.asym_vae.decode(z, image=image, mask=full).sample
        b = pipe.asym_vae.decode(z, image=image, mask=half).sample
    assert not torch.allclose(a, b)


def test_decoding_with_known_pixel_features_is_diffusers_decode_exactly(pipe):
    from lazyedit.engine.asymmetric import decode_with_known_pixels, known_pixel_features

    g = torch.Generator().manual_seed(0)
    vae = pipe.asym_vae
    for h, w in ((32, 32), (40, 24)):
        z = torch.randn(2, 4, h // 8, w // 8, generator=g)
        image = torch.rand(2, 3, h, w, generator=g) * 2 - 1
        mask = (torch.rand(2, 1, h, w, generator=g) > 0.6).float()
        with torch.no_grad():
            want = vae.decode(z, image=image, mask=mask).sample
            got = decode_with_known_pixels(vae, z, known_pixel_features(vae, image, mask), mask)
        assert torch.equal(got, want)


@pytest.mark.parametrize("seed", range(6))
def test_decode_box_covers_the_mask_and_margin_in_whole_latents(seed):
    from lazyedit.engine.holes import decode_box, mask_box

    rng = np.random.default_rng(seed)
    h, w, f, margin = 70, 90, 8, int(rng.integers(0, 20))
    mask = np.zeros((h, w), bool)
    x0, y0 = rng.integers(0, w - 1), rng.integers(0, h - 1)
    mask[y0 : rng.integers(y0 + 1, h + 1), x0 : rng.integers(x0 + 1, w + 1)] = True
    mask[rng.integers(0, h), rng.integers(0, w)] = True  # a stray dab anywhere
    bx0, by0, bx1, by1 = decode_box(mask_box(mask), margin, f, (96, 80))
    assert all(v % f == 0 for v in (bx0, by0, bx1, by1)) and 0 <= bx0 < bx1 <= 96 and 0 <= by0 < by1 <= 80
    ys, xs = np.nonzero(mask)
    # every masked pixel has its margin inside the box (where the canvas has it) ...
    assert bx0 <= max(xs.min() - margin, 0) and bx1 >= min(xs.max() + 1 + margin, 96)
    assert by0 <= max(ys.min() - margin, 0) and by1 >= min(ys.max() + 1 + margin, 80)
    # ... and no side could move a latent pixel inward
    assert bx0 + f > xs.min() - margin and by0 + f > ys.min() - margin
    assert bx1 - f < min(xs.max() + 1 + margin, 96) and by1 - f < min(ys.max() + 1 + margin, 80)


@pytest.mark.parametrize("seed", range(8))
def test_context_window_holds_the_mask_and_its_context_within_the_canvas(seed):
    from lazyedit.engine.holes import context_window

    rng = np.random.default_rng(seed)
    side, unit = 256, 16
    w, h = int(rng.integers(100, 900)), int(rng.integers(100, 900))
    mw, mh = int(rng.integers(1, min(w, 400))), int(rng.integers(1, min(h, 400)))
    mx, my = int(rng.integers(0, w - mw + 1)), int(rng.integers(0, h - mh + 1))
    x0, y0, x1, y1 = context_window((mx, my, mx + mw, my + mh), (w, h), side, unit)
    assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
    for lo, hi, m0, m1, length in ((x0, x1, mx, mx + mw, w), (y0, y1, my, my + mh, h)):
        if length <= side:
            assert (lo, hi) == (0, length)  # an axis that fits is read whole
            continue
        # the window is `side` long unless the mask and its context need more; it keeps that context
        assert hi - lo == min(max(side, -(-(m1 - m0 + side // 4) // unit) * unit), length)
        assert lo <= max(m0 - side // 8, 0) and hi >= min(m1 + side // 8, length)


def test_context_windows_are_shared_by_nearby_masks():
    from lazyedit.engine.holes import context_window

    size = (2000, 1500)
    first = context_window((900, 700, 960, 760), size, 1024, 16)
    assert first == context_window((910, 690, 980, 770), size, 1024, 16)  # a touched-up mask: the same window
    assert first[0] % 256 == 0 and first[1] % 256 == 0
    assert context_window((1700, 700, 1760, 760), size, 1024, 16) != first


def test_a_context_window_edits_a_large_canvas_as_its_own_canvas(pipe):
    """An edit read through a window is the edit of the window cut out as a canvas, pasted back in place;
    nothing outside the mask changes, and the window's encodings are cached for the next mask near it."""
    img = canvas(200, 150, seed=7)
    mask = box_mask(200, 150, box=(150, 40, 170, 60))
    pipe.clear_caches()
    pipe.context_window = 64
    try:
        assert pipe.prepare(img, canvas_key="w") == {}  # the window follows the mask: nothing to encode yet
        res = pipe.edit(img, mask, "a red star", seed=5, canvas_key="w")
        near = pipe.edit(img, box_mask(200, 150, box=(152, 42, 168, 58)), "a red star", seed=5, canvas_key="w")
    finally:
        pipe.context_window = None
    assert res.total_tokens == 16 and near.timings["latent_cache_hit"]  # a 64x64 window of 16 px tokens
    before, after = np.asarray(img), np.asarray(res.image)
    assert (before[~mask] == after[~mask]).all() and (before[mask] != after[mask]).any()
    assert res.box == (150, 40, 170, 60)
    from lazyedit.engine.holes import context_window

    x0, y0, x1, y1 = context_window((150, 40, 170, 60), (200, 150), 64, pipe.unit)
    cut = pipe.edit(img.crop((x0, y0, x1, y1)), mask[y0:y1, x0:x1], "a red star", seed=5)
    assert np.array_equal(np.asarray(cut.image), after[y0:y1, x0:x1])
    whole = pipe.edit(img, mask, "a red star", seed=5)  # without the window every token is read
    assert whole.total_tokens == 130 and not np.array_equal(np.asarray(whole.image), after)


def test_full_mask_equals_regenerating_the_image(pipe):
    img = canvas(64, 48)
    mask = np.ones((48, 64), bool)
    lazy = pipe.edit(img, mask, "a red star", seed=2)
    regen = pipe.edit(img, mask, "a red star", seed=2, strategy="regenerate_image")
    assert lazy.hole_tokens == lazy.total_tokens == regen.hole_tokens
    assert (np.asarray(lazy.image) == np.asarray(regen.image)).all()


def test_baselines_keep_pixels_outside_mask(pipe):
    img, mask = canvas(), box_mask()
    for strategy in ("regenerate_image", "regenerate_crop"):
        res = pipe.edit(img, mask, "a red star", seed=2, strategy=strategy)
        assert (np.asarray(res.image)[~mask] == np.asarray(img)[~mask]).all()
    crop = pipe.edit(img, mask, "x", seed=2, strategy="regenerate_crop")
    regen = pipe.edit(img, mask, "x", seed=2, strategy="regenerate_image")
    lazy = pipe.edit(img, mask, "x", seed=2)
    assert lazy.hole_tokens < crop.hole_tokens < regen.hole_tokens


def test_batched_edits_match_single_edits(pipe):
    img_a, img_b = canvas(seed=1), canvas(seed=2)
    ma, mb = box_mask(box=(30, 20, 50, 40)), box_mask(box=(0, 0, 70, 30))
    single = [pipe.edit(img_a, ma, "a red star", seed=4), pipe.edit(img_b, mb, "a blue ring", seed=5)]
    batched = pipe.edit_batch([EditRequest(img_a, ma, "a red star", seed=4), EditRequest(img_b, mb, "a blue ring", seed=5)])
    # requests may share one image object (two masks on one canvas)
    same = pipe.edit_batch([EditRequest(img_a, ma, "a red star", seed=4), EditRequest(img_a, mb, "a blue ring", seed=5)])
    assert np.abs(np.asarray(same[0].image).astype(int) - np.asarray(single[0].image)).max() <= 2
    for s, b, m, img in zip(single, batched, (ma, mb), (img_a, img_b)):
        sb, bb = np.asarray(s.image).astype(int), np.asarray(b.image).astype(int)
        assert np.abs(sb - bb).max() <= 2  # packed matmuls may round differently
        assert (bb[~m] == np.asarray(img)[~m]).all()


def test_callback_previews_and_cancel(pipe):
    previews = []
    res = pipe.edit(canvas(), box_mask(), "a red star", seed=0, steps=3, callback=previews.append)
    assert [p.step for p in previews] == [1, 2, 3] and all(p.total == 3 for p in previews)
    assert previews[0].box == res.box and previews[0].image.size == (20, 20)

    stop_after = []

    def cancel_at_two(p):
        stop_after.append(p.step)
        return p.step < 2

    with pytest.raises(EditCancelled):
        pipe.edit(canvas(), box_mask(), "a red star", seed=0, steps=5, callback=cancel_at_two)
    assert stop_after == [1, 2]


def test_ddim_scheduler_runs_the_flow_model(pipe):
    pipe.use_scheduler("ddim")
    try:
        img, mask = canvas(), box_mask()
        res = pipe.edit(img, mask, "a red star", seed=0, steps=3)
        assert (np.asarray(res.image)[~mask] == np.asarray(img)[~mask]).all()
    finally:
        pipe.use_scheduler("euler")


def test_switching_back_to_euler_keeps_the_models_timestep_shift():
    from lazyedit.engine import flow_scheduler

    pipe = build_pipeline("tiny")
    pipe.scheduler = flow_scheduler(3.0)             # as loaded from a model folder whose sampler is shifted
    pipe.use_scheduler("ddim")
    pipe.use_scheduler("euler")
    assert pipe.scheduler.config.shift == 3.0
    assert build_pipeline("demo").scheduler.config.shift == get_config("demo").sampling_shift == 3.0


def test_sketch_condition_changes_a_trained_tuner(pipe):
    img, mask = canvas(), box_mask()
    sketch = np.zeros((70, 90, 4), np.uint8)
    sketch[25:35, 35:45] = (255, 255, 255, 255)
    sketch = Image.fromarray(sketch, "RGBA")
    plain = np.asarray(pipe.edit(img, mask, "x", seed=1).image)
    with_untrained = np.asarray(pipe.edit(img, mask, "x", seed=1, sketch=sketch).image)
    assert (plain == with_untrained).all()  # zero-init tuner: identity
    saved = [h.weight.detach().clone() for h in pipe.sketch_tuner.hints]
    try:
        for h in pipe.sketch_tuner.hints:
            torch.nn.init.normal_(h.weight, std=0.5)
        guided = np.asarray(pipe.edit(img, mask, "x", seed=1, sketch=sketch).image)
        weak = np.asarray(pipe.edit(img, mask, "x", seed=1, sketch=sketch, sketch_strength=0.0).image)
    finally:
        for h, w in zip(pipe.sketch_tuner.hints, saved):
            h.weight.data.copy_(w)
    assert (guided != plain).any()
    assert (weak == plain).all()


@pytest.mark.parametrize(
    "change, code",
    [
        (dict(mask=np.ones((10, 10), bool)), "mask_size"),
        (dict(mask=np.zeros((70, 90), bool)), "empty_mask"),
        (dict(sketch=Image.new("RGBA", (10, 10))), "sketch_size"),
        (dict(steps=0), "out_of_range"),
        (dict(steps=1000), "out_of_range"),
        (dict(guidance=-1.0), "out_of_range"),
        (dict(guidance=100.0), "out_of_range"),
        (dict(sketch_strength=5.0), "out_of_range"),
        (dict(prompt=" <null> "), "reserved_prompt"),
        (dict(image=Image.new("RGB", (5000, 5000)), mask=np.ones((5000, 5000), bool)), "image_too_large"),
    ],
)
def test_bad_input_is_named(pipe, change, code):
    args = dict(image=canvas(), mask=box_mask(), prompt="x")
    args.update(change)
    with pytest.raises(EditInputError) as err:
        pipe.edit(**args)
    assert err.value.code == code
    assert str(err.value)


def test_image_decoding_refuses_garbage_and_bombs(tmp_path):
    with pytest.raises(EditInputError) as err:
        decode_canvas(b"not an image at all", max_bytes=1 << 20, max_pixels=4096 * 4096)
    assert err.value.code == "bad_image"
    import io

    buf = io.BytesIO()
    Image.new("L", (6000, 6000)).save(buf, "PNG")  # compresses to a few KB
    with pytest.raises(EditInputError) as err:
        decode_canvas(buf.getvalue(), max_bytes=1 << 20, max_pixels=4096 * 4096)
    assert err.value.code == "image_too_large" and "6000x6000" in err.value.message
    with pytest.raises(EditInputError) as err:
        read_file(str(tmp_path / "missing.png"), "image")
    assert err.value.code == "bad_image" and "missing.png" in err.value.message


def test_hf_text_encoder_loads_from_a_local_folder(tmp_path):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from lazyedit.engine.models import HFTextEncoder

    vocab = ["<|startoftext|>", "<|endoftext|>"] + [c + s for c in "abcdefghijklmnopqrstuvwxyz" for s in ("", "</w>")]
    (tmp_path / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"))
    cfg = CLIPTextConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    folder = tmp_path / "clip"
    CLIPTextModel(cfg).save_pretrained(folder / "text_encoder")
    tok.save_pretrained(folder / "tokenizer")
    enc = HFTextEncoder.from_folder(folder)
    emb, mask = enc.encode(["a red star", "ab"])
    assert emb.shape == (2, 77, 32) and mask.dtype == torch.bool
    assert mask[0].sum() > mask[1].sum()
    # a pipeline built around it edits, with the CLIP tokenizer and encoder as its components
    pipe = load_pipeline("tiny", text_encoder=str(folder))
    assert pipe.tokenizer is not None
    res = pipe.edit(canvas(), box_mask(), "a red star", seed=0)
    assert (np.asarray(res.image)[~box_mask()] == np.asarray(canvas())[~box_mask()]).all()


def test_real_vae_folders_replace_the_pipeline_vaes(pipe, tmp_path):
    from diffusers import AsymmetricAutoencoderKL, AutoencoderKL

    torch.manual_seed(123)
    vae = AutoencoderKL.from_config(pipe.vae.config)
    asym = AsymmetricAutoencoderKL.from_config(pipe.asym_vae.config)
    vae.save_pretrained(tmp_path / "vae")
    asym.save_pretrained(tmp_path / "asym")
    loaded = load_pipeline("tiny", vae=str(tmp_path / "vae"), asym_vae=str(tmp_path / "asym"))
    assert torch.equal(loaded.vae.encoder.conv_in.weight, vae.encoder.conv_in.weight)
    assert torch.equal(loaded.asym_vae.decoder.conv_out.weight, asym.decoder.conv_out.weight)


def test_cli_edit_and_errors(tmp_path):
    out = tmp_path / "out.png"
    ok = subprocess.run([sys.executable, "-m", "lazyedit.cli", "edit", "--model", "tiny", "--seed", "1", "-o", str(out)],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert Image.open(out).size == (512, 512)
    windowed = subprocess.run([sys.executable, "-m", "lazyedit.cli", "edit", "--model", "tiny", "--seed", "1",
                               "--context-window", "256", "-o", str(tmp_path / "w.png")], capture_output=True, text=True)
    assert windowed.returncode == 0, windowed.stderr
    whole_tokens, window_tokens = (int(r.stdout.split(" tokens")[0].rsplit("/", 1)[1]) for r in (ok, windowed))
    assert window_tokens * 4 == whole_tokens  # a 256 px window of the 512 px sample
    (tmp_path / "small.png").write_bytes(b"")
    Image.new("L", (10, 10), 255).save(tmp_path / "small.png")
    bad = subprocess.run([sys.executable, "-m", "lazyedit.cli", "edit", "--model", "tiny", "--mask", str(tmp_path / "small.png"),
                          "-o", str(out)], capture_output=True, text=True)
    assert bad.returncode == 2
    assert "mask_size" in bad.stderr and "10x10" in bad.stderr


def test_bench_reports_speed_table(tmp_path):
    from lazyedit.engine.bench import format_table, plot, run_against, run_bench

    report = run_bench("tiny", size=128, quick=True, progress=lambda m: None)
    fractions = [r["mask_fraction"] for r in report["decoder_step"]]
    assert fractions == [0.01, 0.05, 0.10, 0.25, 0.50, 1.00]
    small, full = report["decoder_step"][0], report["decoder_step"][-1]
    assert small["lazy_tokens"] < full["lazy_tokens"] == report["tokens_full"]
    assert small["flop_ratio_vs_image"] > 5 and abs(full["flop_ratio_vs_image"] - 1) < 1e-6
    assert report["cache"]["hit_ran_vae_encoder"] is False and report["cache"]["hit_ran_context_encoder"] is False
    assert report["cache"]["hit_ran_known_pixels"] is False
    assert "end to end" in format_table(report)
    plot(report, str(tmp_path / "p.png"))
    assert Image.open(tmp_path / "p.png").size[0] > 500
    # side by side: the tiny model and a guidance-distilled copy of it take turns; the report says which is which
    _distilled_copy(load_pipeline("tiny")).save_pretrained(tmp_path / "distilled")
    report["against"] = against = run_against("tiny", str(tmp_path / "distilled"), size=128, reps=2, progress=lambda m: None)
    medians = against["median_ms"]
    assert medians["tiny"]["guidance_distilled"] is False and medians[str(tmp_path / "distilled")]["guidance_distilled"] is True
    assert all(m["total_ms"] >= m["denoise_ms"] > 0 and m["prepared_total_ms"] > 0 for m in medians.values())
    assert "side by side" in format_table(report)


def test_window_bench_times_a_large_canvas_read_whole_and_through_a_window(tmp_path):
    from lazyedit.engine.bench import format_window_table, plot_window, run_window_bench

    report = run_window_bench("tiny", size=256, side=128, quick=True, progress=lambda m: None)
    assert [r["mask_fraction"] for r in report["new_mask"]] == [0.01, 0.03, 0.10]
    for r in report["new_mask"]:
        assert r["whole_tokens_read"] == 256 and r["window_tokens_read"] == 64  # 16 px tokens: 16x16 against 8x8
        assert r["window_vae_encode_ms"] == r["whole_vae_encode_ms"] == 0  # a new mask on an encoded canvas
        assert r["whole_context_ms"] > 0 and r["speedup"] == r["whole_total_ms"] / r["window_total_ms"]
    assert report["new_canvas_3pct"]["window_ms"] > 0 and "context window" in format_window_table(report)
    plot_window(report, str(tmp_path / "w.png"))
    assert Image.open(tmp_path / "w.png").size[0] > 500


def test_position_offset_places_a_crop_inside_a_larger_canvas():
    """Training crops at an offset see exactly the positional embeddings of those tokens on the big canvas."""
    from lazyedit.engine.models.layers import sincos_positions

    index = torch.tensor([[0, 5, 15], [3, 4, 12]])  # flat indices on a 4x4 crop grid
    offset = torch.tensor([[2, 3], [0, 7]])
    shifted = sincos_positions(16, (4, 4), index, offset)
    rows, cols = index // 4 + offset[:, :1], index % 4 + offset[:, 1:]
    on_canvas = sincos_positions(16, (12, 12), rows * 12 + cols)
    assert torch.equal(shifted, on_canvas)
    assert torch.equal(sincos_positions(16, (4, 4), index, torch.zeros(2, 2, dtype=torch.long))[0],
                       sincos_positions(16, (4, 4), index)[0])


def test_shipped_demo_model_is_trained_and_loads_in_fp32():
    """The bundled demo weights (backend/lazyedit/weights/demo) load by name, are not the random fallback,
    and edit the bundled sample with every pixel outside the mask kept."""
    from lazyedit.engine.loading import DEMO_MODEL_DIR

    assert (DEMO_MODEL_DIR / "model_index.json").is_file(), "the demo model is not shipped"
    pipe = load_pipeline("demo")
    assert pipe.config.model_name == "demo" and not pipe.random_weights
    cfg = get_config("demo")
    assert pipe.scheduler.config.shift == cfg.sampling_shift   # the sampler it was tuned with
    # the served defaults are the ones the demo config trains the decoder's generated latents with
    assert (pipe.default_steps, pipe.config.default_guidance) == (cfg.default_steps, cfg.default_guidance)
    assert pipe.transformer.dtype == torch.float32 and pipe.sketch_tuner is not None and pipe.asym_vae is not None
    image = Image.new("RGB", (96, 80), (90, 140, 200))
    mask = np.zeros((80, 96), bool)
    mask[20:50, 30:70] = True
    res = pipe.edit(image, mask, prompt="a red circle", seed=0, steps=2)
    out, src = np.asarray(res.image), np.asarray(image)
    assert np.array_equal(out[~mask], src[~mask])


def test_the_base_config_needs_its_text_encoder_except_on_a_stand_in_for_benchmarks():
    """base takes T5-XXL from a folder; without one only a benchmark may run it, on random text features of
    T5's width and length (docs/benchmarks.md, GPU)."""
    from lazyedit.engine.loading import T5_TOKENS

    with pytest.raises(ValueError, match="CLIP/T5 text encoder"):
        load_pipeline("base")
    pipe = load_pipeline("base", text_stand_in=True)
    assert (pipe.text_encoder.config.width, pipe.text_encoder.config.max_length) == (4096, T5_TOKENS)
    assert pipe.text_stand_in and not load_pipeline("tiny", text_stand_in=True).text_stand_in
    img = Image.fromarray((np.random.RandomState(0).rand(64, 64, 3) * 255).astype(np.uint8))
    mask = np.zeros((64, 64), bool)
    mask[16:40, 16:48] = True
    out = np.asarray(pipe.edit(img, mask, "a red star", seed=0, steps=2).image)
    assert (out[~mask] == np.asarray(img)[~mask]).all()


def test_plan_holes_batch_matches_plan_holes():
    from lazyedit.engine.holes import plan_holes, plan_holes_batch

    rng = np.random.default_rng(0)
    masks = np.zeros((3, 64, 64), bool)
    masks[0, 5:20, 30:60] = True
    masks[1, 40:41, 3:4] = True
    masks[2] = rng.random((64, 64)) > 0.995
    tok, index, valid = plan_holes_batch(torch.from_numpy(masks)[:, None].float(), 16)
    for i in range(3):
        plan = plan_holes(masks[i], 16)
        n = plan.num_tokens
        assert int(valid[i].sum()) == n
        assert torch.equal(index[i, :n], plan.index)
        assert torch.equal(tok[i], plan.token_mask)
    # dilation grows the hole by whole tokens, clipped at the canvas edge
    one = np.zeros((64, 64), bool)
    one[0, 40] = True
    grown = plan_holes(one, 16, dilation=1).token_mask
    expected = torch.zeros(4, 4, dtype=torch.bool)
    expected[0:2, 1:4] = True
    assert torch.equal(grown, expected)
