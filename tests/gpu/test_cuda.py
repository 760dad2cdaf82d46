"""GPU checks: run where CUDA is present (the device machine when one is lent); skipped elsewhere."""

import numpy as np
import pytest
import torch
from PIL import Image

from lazyedit.engine import load_pipeline
from lazyedit.engine.models import layers, set_attention_backend

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")


def _edit_inputs(size=96):
    rng = np.random.RandomState(0)
    img = Image.fromarray((rng.rand(size, size, 3) * 255).astype(np.uint8))
    mask = np.zeros((size, size), bool)
    mask[20:60, 30:70] = True
    return img, mask


@pytest.mark.parametrize("model", ["tiny", "demo"])
def test_cuda_matches_cpu(model):
    img, mask = _edit_inputs()
    cpu = np.asarray(load_pipeline(model, device="cpu").edit(img, mask, "a red star", seed=1).image).astype(int)
    gpu = np.asarray(load_pipeline(model, device="cuda").edit(img, mask, "a red star", seed=1).image).astype(int)
    assert (gpu[~mask] == np.asarray(img)[~mask]).all()
    assert np.abs(cpu - gpu).mean() < 2.0


@pytest.mark.skipif(layers.xops is None, reason="xformers not installed")
def test_xformers_agrees_with_sdpa():
    q, k, v = (torch.randn(2, 4, 77, 64, device="cuda", dtype=torch.float16) for _ in range(3))
    key_mask = torch.ones(2, 77, dtype=torch.bool, device="cuda")
    key_mask[1, 50:] = False
    try:
        set_attention_backend("sdpa")
        ref = layers.attention(q, k, v, key_mask)
        set_attention_backend("xformers")
        out = layers.attention(q, k, v, key_mask)
    finally:
        set_attention_backend("auto")
    torch.testing.assert_close(out, ref, atol=2e-3, rtol=2e-3)


def test_bf16_edit_keeps_pixels_outside_mask():
    img, mask = _edit_inputs()
    pipe = load_pipeline("tiny", device="cuda", dtype=torch.bfloat16)
    res = pipe.edit(img, mask, "a red star", seed=1)
    assert (np.asarray(res.image)[~mask] == np.asarray(img)[~mask]).all()
