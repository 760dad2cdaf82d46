"""`lazyedit train` on the tiny config: losses fall, checkpoints load as a pipeline, resume continues."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from lazyedit.training.cli import build_parser, train_main
from lazyedit.training.trainer import TrainArgs, _latest_checkpoint, flow_noising, train_stage
from lazyedit.training.world import make_sample

torch.set_num_threads(1)


def _args(out, stage, steps, **kw):
    base = dict(stage=stage, config="tiny", output=str(out), resolution=64, batch_size=4, steps=steps, lr=2e-3,
                warmup=1, save_every=1000, sample_every=1000, log_every=5, progress=False, ema_decay=0.9)
    base.update(kw)
    return TrainArgs(**base)


def test_flow_matching_convention():
    x0 = torch.randn(2, 3, 4)
    noise = torch.randn(2, 3, 4)
    t = torch.tensor([0.0, 1.0])
    xt, v = flow_noising(x0, noise, t)
    assert torch.allclose(xt[0], x0[0]) and torch.allclose(xt[1], noise[1])
    assert torch.allclose(v, noise - x0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    vae = train_stage(_args(out, "vae", 40))
    lazy = train_stage(_args(out, "lazy", 30, save_every=15))
    return out, vae, lazy


def _falls(losses, k=8):
    return np.mean(losses[-k:]) < np.mean(losses[:k])


def test_losses_fall(trained):
    _, vae, lazy = trained
    assert vae["done"] and lazy["done"]
    assert _falls(vae["losses"]), vae["losses"]
    assert _falls(lazy["losses"]), lazy["losses"]


def test_a_vae_stopped_by_the_clock_saves_its_measured_latent_scale(tmp_path):
    """--max-minutes ends a vae stage early; the stage after it (a device plan runs them in turn) encodes with
    the saved scaling factor, so it is measured then too, not left at the config's default."""
    from diffusers import AutoencoderKL

    result = train_stage(_args(tmp_path / "run", "vae", 1000, max_minutes=1e-6))
    assert result["stopped_early"] and not result["done"] and result["step"] < 1000
    scale = AutoencoderKL.from_pretrained(str(tmp_path / "run" / "model" / "vae")).config.scaling_factor
    assert scale != AutoencoderKL().config.scaling_factor and 0 < scale < 100


def test_checkpoint_loads_as_pipeline(trained):
    from lazyedit.engine import load_pipeline

    out, _, _ = trained
    pipe = load_pipeline(str(out / "model"))
    assert pipe.vae.config.scaling_factor != 0.18215  # measured at the end of the vae stage
    s = make_sample(0, 1, size=64)
    res = pipe.edit(s.image, s.mask, prompt=s.caption, seed=3, steps=2)
    a, b = np.asarray(res.image), np.asarray(s.image)
    assert a.shape == b.shape and np.array_equal(a[~s.mask], b[~s.mask])
    assert (out / "lazy" / "samples" / "latest.png").exists()
    assert list((out / "lazy" / "logs").rglob("events.out.tfevents*"))


def test_resume_continues_the_step_count(trained):
    out, _, _ = trained
    ckpts = sorted(p.name for p in (out / "lazy" / "checkpoints").iterdir())
    assert ckpts[-1] == "step_0000030"
    more = train_stage(_args(out, "lazy", 34, lr=5e-4))
    assert more["step"] == 34 and len(more["losses"]) == 4
    assert more["lr"] == pytest.approx(5e-4)  # the new --lr wins over the checkpoint's 2e-3
    state = json.loads((out / "lazy" / "checkpoints" / "step_0000034" / "trainer_state.json").read_text())
    assert state["step"] == 34
    # a finished stage is skipped when rerun with the same step count
    again = train_stage(_args(out, "lazy", 34))
    assert again["step"] == 34 and again["losses"] == []


def test_asym_and_sketch_stages_and_cli(trained):
    out, _, _ = trained
    assert train_main(["asym-decoder", "--config", "tiny", "--output", str(out), "--resolution", "64",
                       "--batch-size", "2", "--steps", "3", "--no-progress"]) == 0
    assert train_main(["sketch", "--config", "tiny", "--output", str(out), "--resolution", "64",
                       "--batch-size", "2", "--steps", "3", "--no-progress", "--position-grid", "16",
                       "--sample-every", "3"]) == 0
    assert (out / "sketch" / "samples" / "step_0000003.png").exists()  # the preview sampled with the sketch
    index = json.loads((out / "model" / "model_index.json").read_text())
    assert index["asym_vae"][1] == "AsymmetricAutoencoderKL" and index["sketch_tuner"][1] == "CSCTuner"
    from lazyedit.engine import load_pipeline

    pipe = load_pipeline(str(out / "model"))
    s = make_sample(0, 2, size=64)
    res = pipe.edit(s.image, s.mask, prompt=s.caption, sketch=s.sketch, seed=1, steps=2)
    assert res.image.size == (64, 64)


def test_sample_holes_changes_only_the_hole_tokens(trained):
    from lazyedit.engine import load_pipeline
    from lazyedit.training.trainer import sample_holes

    out, _, _ = trained
    pipe = load_pipeline(str(out / "model"))
    s = make_sample(0, 4, size=64)
    image = torch.from_numpy(np.asarray(s.image, np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    mask = torch.from_numpy(s.mask.astype(np.float32))[None, None]
    canvas = pipe.vae.encode(image).latent_dist.mode() * pipe.vae.config.scaling_factor
    unit = pipe.unit
    filled = sample_holes((pipe.text_encoder, pipe.context_encoder, pipe.transformer), canvas, mask, [s.caption],
                          unit=unit, steps=2, guidance=2.0, shift=1.0, generator=torch.Generator().manual_seed(0))
    from lazyedit.engine.holes import plan_holes

    patch = pipe.patch_size  # the engine's own hole plan, in latent pixels
    token_mask = plan_holes(s.mask, unit).token_mask
    hole = token_mask.repeat_interleave(patch, 0).repeat_interleave(patch, 1)[None, None].expand_as(canvas)
    assert hole.any() and (~hole).any()
    assert torch.equal(filled[~hole], canvas[~hole])
    assert not torch.allclose(filled[hole], canvas[hole])


def test_dropped_captions_become_the_null_prompt(trained):
    """Guidance's unconditional row is trained on the model's null prompt, not on "" (which removals use)."""
    from lazyedit.engine import load_pipeline
    from lazyedit.training.data import StageDataset
    from lazyedit.training.trainer import StageNet

    out, _, _ = trained
    pipe = load_pipeline(str(out / "model"))
    null = pipe.text_encoder.null_prompt
    assert null == "<null>"
    items = [StageDataset("lazy", size=64, seed=3)[i] for i in range(3)]
    batch = torch.utils.data.default_collate(items)
    models = {"text_encoder": pipe.text_encoder, "context_encoder": pipe.context_encoder, "transformer": pipe.transformer}

    def loss(captions, dropout):
        net = StageNet("lazy", models, {"vae": pipe.vae}, dropout, torch.Generator().manual_seed(0))
        with torch.no_grad():
            return float(net({**batch, "caption": captions})[0])

    # dropout 1e-9 draws the same random numbers as dropout 1 and keeps every caption
    dropped = loss(["a red star"] * 3, 1.0)
    assert dropped == loss([null] * 3, 1e-9)
    assert dropped != loss([""] * 3, 1e-9)


def test_decoder_trains_on_generated_latents(trained, tmp_path):
    from lazyedit.training.data import StageDataset
    from lazyedit.training.trainer import StageTrainer

    out, _, _ = trained
    vae_only = tmp_path / "vae-only"
    shutil.copytree(out / "model" / "vae", vae_only / "model" / "vae")
    with pytest.raises(FileNotFoundError, match="run the lazy stage first"):
        train_stage(_args(vae_only, "asym-decoder", 2, generated_latents=0.5))

    run = tmp_path / "run"
    shutil.copytree(out / "model", run / "model")
    trainer = StageTrainer(_args(run, "asym-decoder", 2, batch_size=2, generated_latents=1.0))
    trainer._setup()
    ds = StageDataset("asym-decoder", 64, decoder_edits=True)
    items = [ds[i] for i in range(2)]
    batch = torch.utils.data.default_collate(items)
    loss, logs = trainer.net_inner(batch)
    assert "generated" in logs and torch.isfinite(loss)
    loss.backward()  # the decoder learns from it; the frozen backbone gets no gradient
    assert any(p.grad is not None for p in trainer.unwrap("asym_vae").decoder.parameters())
    assert all(p.grad is None for p in trainer.frozen["transformer"].parameters())
    result = train_stage(_args(run, "asym-decoder", 2, batch_size=2, generated_latents=0.5))
    assert result["done"] and all(np.isfinite(result["losses"]))


def test_decoder_learns_the_latents_sketches_steer(trained, tmp_path):
    from lazyedit.training.data import StageDataset
    from lazyedit.training.trainer import StageTrainer, sample_holes, token_unit

    out, _, _ = trained
    run = tmp_path / "run"
    # no tuner, and no stage markers: the other tests may have trained the sketch and decoder stages of `out`
    shutil.copytree(out / "model", run / "model",
                    ignore=shutil.ignore_patterns("sketch_tuner", "sketch.json", "asym-decoder.json"))
    with pytest.raises(ValueError, match="needs --generated-latents"):
        train_stage(_args(run, "asym-decoder", 2, generated_sketches=0.5))
    with pytest.raises(FileNotFoundError, match="run the sketch stage first"):
        train_stage(_args(run, "asym-decoder", 2, generated_latents=0.5, generated_sketches=0.5))
    assert train_stage(_args(run, "sketch", 3, batch_size=2))["done"]

    trainer = StageTrainer(_args(run, "asym-decoder", 2, batch_size=2, generated_latents=1.0, generated_sketches=1.0))
    trainer._setup()
    ds = StageDataset("asym-decoder", 64, decoder_edits=True)
    items = [ds[i] for i in range(40)]
    with_sketch = next(it for it in items if it["edit_has_sketch"])
    without = next(it for it in items if not it["edit_has_sketch"])
    batch = torch.utils.data.default_collate([with_sketch, without])
    net = trainer.net_inner
    asym, backbone = net.models["asym_vae"], net.backbone()
    canvas = asym.encode(batch["edit_image"]).latent_dist.mode() * asym.config.scaling_factor

    def sample(adapter):
        return sample_holes(backbone, canvas, batch["edit_mask"], list(batch["edit_caption"]),
                            unit=token_unit(asym, backbone[2]), steps=2, guidance=2.0, shift=1.0,
                            generator=torch.Generator().manual_seed(0), adapter=adapter)

    with torch.no_grad():
        steered, plain = sample(net._generated_sketch_adapter(batch)), sample(None)
    assert not torch.equal(steered[0], plain[0])  # the sketch steers the edit that has one
    assert torch.equal(steered[1], plain[1])  # and leaves the other exactly as it was
    loss, logs = net(batch)
    assert "generated" in logs and torch.isfinite(loss)
    result = train_stage(_args(run, "asym-decoder", 2, batch_size=2, generated_latents=0.5, generated_sketches=0.5))
    assert result["done"] and all(np.isfinite(result["losses"]))


def test_ship_writes_fp16_safetensors_that_load_as_fp32(trained, tmp_path):
    from safetensors import safe_open

    from lazyedit.engine import load_pipeline

    out, _, _ = trained
    dest = tmp_path / "demo"
    (dest).mkdir()
    (dest / "README.md").write_text("model card")
    (dest / "eval.json").write_text("{}")
    (dest / "transformer").mkdir()
    (dest / "transformer" / "stale.safetensors").write_bytes(b"old")
    assert train_main(["ship", "--output", str(out), "--dest", str(dest)]) == 0
    # the card and the eval reports survive a re-ship; component folders are replaced whole
    assert (dest / "README.md").read_text() == "model card" and (dest / "eval.json").read_text() == "{}"
    assert not (dest / "transformer" / "stale.safetensors").exists()
    assert not dest.with_name("demo.tmp").exists()
    files = sorted(dest.rglob("*.safetensors"))
    assert {f.parent.name for f in files} >= {"vae", "text_encoder", "context_encoder", "transformer"}
    for f in files:
        with safe_open(str(f), "pt") as st:
            assert all(st.get_tensor(k).dtype == torch.float16 for k in st.keys()), f
    pipe = load_pipeline(str(dest))
    assert pipe.transformer.dtype == torch.float32 and pipe.config.model_name == "demo"
    s = make_sample(0, 3, size=64)
    res = pipe.edit(s.image, s.mask, prompt=s.caption, seed=1, steps=2)
    outside = ~np.asarray(s.mask, bool)
    assert np.array_equal(np.asarray(res.image)[outside], np.asarray(s.image.convert("RGB"))[outside])


def test_average_writes_the_first_pipeline_with_its_backbone_averaged_with_the_seconds(trained, tmp_path, capfd):
    from safetensors.torch import load_file, save_file

    from lazyedit.engine import load_pipeline

    out, _, _ = trained
    first, second, dest = tmp_path / "first", tmp_path / "second", tmp_path / "averaged"
    assert train_main(["ship", "--output", str(out), "--dest", str(first)]) == 0
    assert train_main(["ship", "--output", str(out), "--dest", str(second)]) == 0
    weights = second / "transformer" / "diffusion_pytorch_model.safetensors"
    moved = {k: (v.float() + 1.0).half() for k, v in load_file(str(weights)).items()}  # every weight of the second +1
    save_file(moved, str(weights), metadata={"format": "pt"})
    args = ["average", "--average", f"{first},{second}", "--dest", str(dest)]
    assert train_main(args + ["--average-weight", "0.25"]) == 0
    got = load_file(str(dest / "transformer" / "diffusion_pytorch_model.safetensors"))
    base = load_file(str(first / "transformer" / "diffusion_pytorch_model.safetensors"))
    assert all(got[k].dtype == torch.float16 for k in got)
    # a quarter of the way to the second: each weight about 0.25 above the first's (fp16 rounding aside)
    assert all(torch.allclose(got[k].float(), base[k].float() + 0.25, atol=0.02) for k in base)
    assert all(torch.equal(got[k], (0.75 * base[k].float() + 0.25 * moved[k].float()).half()) for k in base)
    # a component not named (the VAE) keeps the first folder's weights exactly
    a = load_file(str(first / "vae" / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(dest / "vae" / "diffusion_pytorch_model.safetensors"))
    assert a and all(torch.equal(a[k], b[k]) for k in a)
    pipe = load_pipeline(str(dest))
    s = make_sample(0, 3, size=64)
    res = pipe.edit(s.image, s.mask, prompt=s.caption, seed=1, steps=2)
    outside = ~np.asarray(s.mask, bool)
    assert np.array_equal(np.asarray(res.image)[outside], np.asarray(s.image.convert("RGB"))[outside])
    # what is wrong is named, and nothing is written
    capfd.readouterr()
    assert train_main(["average", "--average", str(first), "--dest", str(tmp_path / "x")]) == 2
    assert "--average FIRST,SECOND" in capfd.readouterr().err
    assert train_main(args[:-1] + [str(tmp_path / "y"), "--average-components", "transformer,nonesuch"]) == 2
    assert "'nonesuch' missing" in capfd.readouterr().err and not (tmp_path / "y").exists()
    assert train_main(args[:-1] + [str(tmp_path / "y"), "--average-components", "scheduler"]) == 2
    assert "not a model with weights" in capfd.readouterr().err
    with pytest.raises(SystemExit):
        train_main(args + ["--average-weight", "1.5"])


def test_large_object_fraction_draws_bigger_objects_into_training_items():
    from lazyedit.training.data import StageDataset

    def mean_object_size(large):
        ds = StageDataset("sketch", 64, 0, large_objects=large)  # sketch items: object masks only
        return np.mean([float(ds[i]["mask"].mean()) for i in range(12)])

    assert mean_object_size(1.0) > 2 * mean_object_size(0.0)
    assert build_parser().parse_args(["lazy", "--large-objects", "0.3"]).large_objects == 0.3


def test_mixed_sizes_take_turns_batch_by_batch():
    """--resolution 64,96: each batch is one size, the sizes alternate by the batch's step (the same on every
    process), and a single size keeps the index layout a resumed run depends on."""
    from torch.utils.data import DataLoader

    from lazyedit.training.data import StageDataset, StreamBatches

    ds = StageDataset("lazy", 64)
    for shard in (0, 1):
        loader = iter(DataLoader(ds, batch_sampler=StreamBatches(5, 2, shard, 2, (64, 96))))
        shapes = [tuple(next(loader)["image"].shape) for _ in range(3)]
        assert shapes == [(2, 3, 96, 96), (2, 3, 64, 64), (2, 3, 96, 96)]   # step 5 -> sizes[1], 6 -> sizes[0], ...
    # one size: batch j of shard p holds (j * batch + k) * shards + p, as before mixing existed
    assert next(iter(StreamBatches(5, 2, 1, 2, (64,)))) == [21, 23]
    mixed = next(iter(StreamBatches(5, 2, 1, 2, (64, 96))))
    assert mixed == [(21, 96), (23, 96)]
    # one batch size per canvas size: the stream is cut in turns of 3 + 1 items, none skipped or repeated
    uneven = iter(StreamBatches(0, (3, 1), 0, 1, (64, 96)))
    batches = [next(uneven) for _ in range(4)]
    assert batches == [[(0, 64), (1, 64), (2, 64)], [(3, 96)], [(4, 64), (5, 64), (6, 64)], [(7, 96)]]
    assert next(iter(StreamBatches(3, (3, 1), 1, 2, (64, 96)))) == [(15, 96)]   # resumed at batch 3: item 7 of shard 1
    shapes = [tuple(b["image"].shape) for _, b in zip(range(2), DataLoader(ds, batch_sampler=StreamBatches(0, (3, 1), 0, 1, (64, 96))))]
    assert shapes == [(3, 3, 64, 64), (1, 3, 96, 96)]
    # an item depends on its index and size only: the 96 px item is the same scene drawn larger
    big = ds[(21, 96)]
    assert big["image"].shape == (3, 96, 96)
    assert big["caption"] == ds[21]["caption"]


def test_focus_shapes_draw_scenes_from_the_named_shapes(capsys):
    """--focus-shapes star,ring --focus-fraction 1: every world scene holds only stars and rings; 0 leaves the
    data as it was."""
    from lazyedit.training.data import StageDataset

    focused = StageDataset("sketch", 64, 0, focus_shapes=("star", "ring"), focus_fraction=1.0)  # object masks only
    captions = [focused[i]["caption"] for i in range(12)]
    assert all(c.endswith((" star", " ring")) for c in captions if c), captions
    plain = StageDataset("sketch", 64, 0)
    off = StageDataset("sketch", 64, 0, focus_shapes=("star",), focus_fraction=0.0)
    assert {plain[i]["caption"].split(" ")[-1] for i in range(12)} - {"star", "ring", ""}  # other shapes exist
    assert all(torch.equal(plain[i]["target"], off[i]["target"]) for i in range(4))
    with pytest.raises(ValueError, match="hexagon"):
        StageDataset("lazy", 64, focus_shapes=("hexagon",), focus_fraction=0.5)
    ns = build_parser().parse_args(["lazy", "--focus-shapes", "star,ring,cross", "--focus-fraction", "0.3"])
    assert ns.focus_shapes == ("star", "ring", "cross") and ns.focus_fraction == 0.3
    with pytest.raises(SystemExit):
        build_parser().parse_args(["lazy", "--focus-shapes", "star,blob"])
    assert "--focus-shapes" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--focus-shapes"):
        train_stage(TrainArgs(stage="lazy", focus_fraction=0.5))


def test_focus_colours_draw_scenes_from_the_named_colours_alone_or_with_focus_shapes(capsys):
    """--focus-colours orange,yellow --focus-fraction 1: every named edit asks for an orange or yellow object;
    with --focus-shapes the scenes are drawn from both; errors name the flag and the unknown colour."""
    from lazyedit.training.data import StageDataset

    colours = StageDataset("sketch", 64, 0, focus_colours=("orange", "yellow"), focus_fraction=1.0)
    captions = [c for c in (colours[i]["caption"] for i in range(12)) if c]  # removals have none
    assert captions and all(c.split(" ")[-2] in ("orange", "yellow") for c in captions), captions
    assert {c.split(" ")[-1] for c in captions} - {"star"}  # shapes left free
    plain = StageDataset("sketch", 64, 0)
    assert {c.split(" ")[-2] for c in (plain[i]["caption"] for i in range(12)) if c} - {"orange", "yellow"}
    both = StageDataset("sketch", 64, 0, focus_shapes=("star",), focus_colours=("orange",), focus_fraction=1.0)
    named = [c for c in (both[i]["caption"] for i in range(8)) if c]
    assert named and all(c.endswith("orange star") for c in named), named
    with pytest.raises(ValueError, match="teal"):
        StageDataset("lazy", 64, focus_colours=("teal",), focus_fraction=0.5)
    ns = build_parser().parse_args(["lazy", "--focus-colours", "orange,yellow", "--focus-fraction", "0.3"])
    assert ns.focus_colours == ("orange", "yellow") and ns.focus_shapes == ()
    with pytest.raises(SystemExit):
        build_parser().parse_args(["lazy", "--focus-colours", "orange,teal"])
    assert "teal" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--focus-colours"):
        train_stage(TrainArgs(stage="lazy", focus_fraction=0.5))


def test_init_from_fine_tunes_a_pipeline_folder(trained, tmp_path):
    """--init-from: a fresh run folder gets the source's frozen parts, and the trained stage starts from the
    source's weights (at a vanishing learning rate the export still equals them), not from a new init."""
    from safetensors.torch import load_file

    src, _, _ = trained
    run = tmp_path / "ft"
    result = train_stage(_args(run, "lazy", 2, lr=1e-12, init_from=str(src / "model")))
    assert result["done"]
    assert (run / "model" / "vae" / "config.json").exists()  # copied, not trained
    before = load_file(str(src / "model" / "transformer" / "diffusion_pytorch_model.safetensors"))
    after = load_file(str(run / "model" / "transformer" / "diffusion_pytorch_model.safetensors"))
    assert before.keys() == after.keys()
    assert all(torch.allclose(before[k], after[k], atol=1e-6) for k in before)
    # (without --init-from the transformer would start from a fresh random init, far from these weights)
    with pytest.raises(ValueError, match="not a pipeline folder"):
        train_stage(_args(tmp_path / "bad", "lazy", 2, init_from=str(tmp_path)))


def test_components_from_lends_the_frozen_parts_and_the_stage_starts_fresh(trained, tmp_path):
    """--components-from: the run folder gets the source's other components (its VAE, bit for bit), but the lazy
    stage's own start from the same fresh init as a run from scratch, not from the source's weights."""
    from safetensors.torch import load_file

    src, _, _ = trained
    weights = "diffusion_pytorch_model.safetensors"
    lent = tmp_path / "lent"
    assert train_stage(_args(lent, "lazy", 2, lr=1e-12, components_from=str(src / "model")))["done"]
    assert (lent / "model" / "vae" / weights).read_bytes() == (src / "model" / "vae" / weights).read_bytes()
    scratch = tmp_path / "scratch"  # the same VAE put there by hand, nothing else
    shutil.copytree(src / "model" / "vae", scratch / "model" / "vae")
    assert train_stage(_args(scratch, "lazy", 2, lr=1e-12))["done"]
    source, fresh, own = (load_file(str(run / "model" / "transformer" / weights)) for run in (src, lent, scratch))
    assert fresh.keys() == own.keys() == source.keys()
    assert all(torch.equal(fresh[k], own[k]) for k in fresh)
    assert not all(torch.allclose(fresh[k], source[k], atol=1e-3) for k in fresh)
    with pytest.raises(ValueError, match="exclusive"):
        train_stage(_args(tmp_path / "both", "lazy", 2, init_from=str(src / "model"), components_from=str(src / "model")))
    with pytest.raises(ValueError, match="use --init-from"):
        train_stage(_args(tmp_path / "distill", "distill", 2, components_from=str(src / "model")))
    with pytest.raises(ValueError, match="--components-from .*not a pipeline folder"):
        train_stage(_args(tmp_path / "bad", "lazy", 2, components_from=str(tmp_path)))


def test_distill_stage_learns_the_guided_velocity_in_one_row(trained, tmp_path):
    """distill: a student with a guidance input learns the frozen teacher's guided velocity; the teacher is
    kept apart (the student's exports replace the model's transformer) and a resumed run still learns from it."""
    from safetensors.torch import load_file

    from lazyedit.engine import get_config, load_pipeline
    from lazyedit.engine.models import CSCTuner, LazyDiffusionTransformer
    from lazyedit.training.data import StageDataset
    from lazyedit.training.trainer import StageNet

    src, _, _ = trained
    source, run = tmp_path / "source", tmp_path / "distill"
    shutil.copytree(src / "model", source)
    # 30 steps leave the tiny model's text barely read: give its cross-attention weight, so guidance has
    # something to amplify
    teacher = LazyDiffusionTransformer.from_pretrained(str(source / "transformer"))
    torch.manual_seed(0)
    for block in (*teacher.in_blocks, *teacher.out_blocks):
        torch.nn.init.normal_(block.cross_attn.to_out.weight, std=0.2)
    teacher.save_pretrained(str(source / "transformer"))
    if not (source / "sketch_tuner").exists():  # the frozen tuner steers half the outlined edits
        CSCTuner(**get_config("tiny").sketch_tuner).save_pretrained(str(source / "sketch_tuner"))
    weights = "diffusion_pytorch_model.safetensors"
    teacher_weights = load_file(str(source / "transformer" / weights))
    first = train_stage(_args(run, "distill", 24, init_from=str(source), save_every=12))
    assert first["done"]
    kept = load_file(str(run / "distill" / "teacher" / weights))
    assert kept.keys() == teacher_weights.keys() and all(torch.equal(kept[k], teacher_weights[k]) for k in kept)
    pipe = load_pipeline(str(run / "model"))
    assert pipe.guidance_distilled and pipe.sketch_tuner is not None

    # on a batch it never saw, the trained student is closer to the guided velocity than its start (the teacher's
    # conditional row); the same generator seed draws the same noise, times and scales for both
    teacher = pipe.transformer.from_pretrained(str(run / "distill" / "teacher"))
    start = teacher.guidance_student()
    batch = torch.utils.data.default_collate([StageDataset("distill", size=64, seed=99)[i] for i in range(8)])
    frozen = {"vae": pipe.vae, "text_encoder": pipe.text_encoder, "context_encoder": pipe.context_encoder,
              "teacher": teacher, "sketch_tuner": pipe.sketch_tuner}

    def loss(student):
        net = StageNet("distill", {"transformer": student}, frozen, 0.1, torch.Generator().manual_seed(0))
        with torch.no_grad():
            return float(net(batch)[0])

    assert loss(pipe.transformer) < 0.5 * loss(start)

    # the stages after it sample with it (the decoder's --generated-latents, sample grids): one row a step,
    # the sketch tuner steering that row
    from lazyedit.training.data import sketch_tensor
    from lazyedit.training.trainer import guided_sketch_adapter, sample_holes

    s = make_sample(0, 5, size=64)
    image = torch.from_numpy(np.asarray(s.image, np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    canvas = pipe.vae.encode(image).latent_dist.mode() * pipe.vae.config.scaling_factor
    rows = []
    hook = pipe.transformer.register_forward_hook(lambda m, args, kwargs, out: rows.append(out.shape[0]), with_kwargs=True)
    try:
        filled = sample_holes((pipe.text_encoder, pipe.context_encoder, pipe.transformer), canvas,
                              torch.from_numpy(s.mask.astype(np.float32))[None, None], [s.caption], unit=pipe.unit,
                              steps=2, guidance=3.0, shift=1.0, generator=torch.Generator().manual_seed(0),
                              adapter=guided_sketch_adapter(pipe.sketch_tuner, sketch_tensor(s.sketch, (64, 64))[None]))
    finally:
        hook.remove()
    assert rows == [1, 1] and not torch.equal(filled, canvas)

    more = train_stage(_args(run, "distill", 26))
    assert more["step"] == 26 and len(more["losses"]) == 2
    again = load_file(str(run / "distill" / "teacher" / weights))
    assert all(torch.equal(again[k], teacher_weights[k]) for k in again)
    # a distilled transformer cannot be a teacher
    with pytest.raises(ValueError, match="already guidance-distilled"):
        train_stage(_args(tmp_path / "twice", "distill", 2, init_from=str(run / "model")))
    # a lazy stage started from it trains its prediction at scale 1, undistilled (guided by two rows again)
    lazy_run = tmp_path / "lazy-on-distilled"
    assert train_stage(_args(lazy_run, "lazy", 2, init_from=str(run / "model")))["done"]
    retrained = LazyDiffusionTransformer.from_pretrained(str(lazy_run / "model" / "transformer"))
    assert not retrained.config.guidance_embeds
    assert train_stage(_args(tmp_path / "sketch-on-distilled", "sketch", 2, init_from=str(run / "model")))["done"]


@pytest.mark.parametrize("value, why", [("100", "positive multiple of 16"), ("128,250", "positive multiple of 16"),
                                        ("128,big", "not a size in pixels")])
def test_resolution_flag_names_a_bad_size(value, why, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["lazy", "--resolution", value])
    err = capsys.readouterr().err
    assert "--resolution" in err and why in err
    assert build_parser().parse_args(["lazy", "--resolution", "128,256"]).resolution == (128, 256)


def test_batch_size_flag_takes_one_count_per_resolution(tmp_path, capsys):
    assert build_parser().parse_args(["lazy", "--batch-size", "4,4,1"]).batch_size == (4, 4, 1)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["lazy", "--batch-size", "4,0"])
    assert "--batch-size" in capsys.readouterr().err
    with pytest.raises(ValueError, match="2 counts for 3 --resolution sizes"):
        train_stage(_args(tmp_path / "run", "lazy", 2, resolution=(64, 96, 128), batch_size=(2, 1)))


def test_parser_knows_the_stages():
    p = build_parser()
    for stage in ("vae", "asym-decoder", "lazy", "sketch", "distill", "all", "export"):
        assert p.parse_args([stage]).stage == stage
    assert p.parse_args(["asym-decoder", "--generated-sketches", "0.25"]).generated_sketches == 0.25


@pytest.mark.parametrize("flag", ["--text-dropout", "--large-objects", "--generated-latents", "--generated-sketches",
                                  "--loose-masks", "--strip-masks"])
@pytest.mark.parametrize("value, why", [("1.5", "not a fraction from 0 to 1"), ("-0.1", "not a fraction"),
                                        ("half", "'half' is not a number")])
def test_fraction_flags_name_a_bad_value(flag, value, why, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["lazy", flag, value])
    err = capsys.readouterr().err
    assert flag in err and why in err


@pytest.mark.parametrize("flag", ["--save-every", "--sample-every", "--log-every"])
@pytest.mark.parametrize("value, why", [("0", "at least 1 step"), ("-5", "at least 1 step"),
                                        ("often", "not a whole number of steps")])
def test_period_flags_name_a_bad_value(flag, value, why, capsys):
    """A period of 0 steps was a ZeroDivisionError after the first step; now the parser names it."""
    with pytest.raises(SystemExit):
        build_parser().parse_args(["lazy", flag, value])
    err = capsys.readouterr().err
    assert flag in err and why in err
    assert getattr(build_parser().parse_args(["lazy", flag, "3"]), flag[2:].replace("-", "_")) == 3


PHOTOS = {  # real photographs bundled with scikit-image and matplotlib (test dependencies), with captions
    "astronaut.png": "an astronaut in front of a flag",       # RGB PNG, 512x512
    "chelsea.png": "a tabby cat",                              # RGB PNG, 451x300
    "coffee.png": "a cup of coffee on a saucer",                # RGB PNG, 600x400
    "rocket.jpg": "a rocket on the launch pad",                 # JPEG, 640x427
    "camera.png": "a man with a camera on a tripod",            # greyscale PNG
    "grace_hopper.jpg": "a portrait of a naval officer",        # matplotlib's sample JPEG
}


def _photo_path(name):
    import importlib.resources

    if name == "grace_hopper.jpg":
        import matplotlib

        return Path(matplotlib.get_data_path()) / "sample_data" / name
    return Path(str(importlib.resources.files("skimage") / "data" / name))


@pytest.fixture
def photo_folder(tmp_path):
    """Six real photos with .txt captions, one more that cannot be decoded, and one upright only through EXIF."""
    from PIL import Image

    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    for name, caption in PHOTOS.items():
        dest = folder / "sub" / name if name == "camera.png" else folder / name     # folders are searched recursively
        shutil.copy(_photo_path(name), dest)
        dest.with_suffix(".txt").write_text(caption)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    coffee = Image.open(_photo_path("coffee.png")).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6                                        # Orientation: rotate 90 degrees clockwise to display
    coffee.transpose(Image.Transpose.ROTATE_90).save(folder / "phone.jpg", quality=95, exif=exif)
    return folder, coffee


def test_photos_load_upright_in_rgb_and_broken_files_are_skipped(photo_folder, caplog):
    from PIL import Image

    from lazyedit.training.data import FolderImages, load_photo

    folder, coffee = photo_folder
    upright = load_photo(folder / "phone.jpg")
    assert upright.size == coffee.size == (600, 400)          # stored as 400x600, shown landscape
    assert np.abs(np.asarray(upright, np.int16) - np.asarray(coffee, np.int16)).mean() < 4   # JPEG, not rotated
    assert load_photo(folder / "sub" / "camera.png").mode == "RGB"          # greyscale in, RGB out
    half = Image.new("RGBA", (8, 8), (255, 0, 0, 255))
    half.paste((0, 0, 0, 0), (0, 0, 8, 4))
    half.save(folder / "transparent.png")
    a = np.asarray(load_photo(folder / "transparent.png"))
    assert (a[:4] == 255).all() and (a[4:] == (255, 0, 0)).all()           # transparency over white
    (folder / "transparent.png").unlink()
    big = load_photo(_photo_path("rocket.jpg"), min_side=100)            # JPEG draft: a reduced decode...
    assert 100 <= min(big.size) < 427 and big.size[0] > big.size[1]      # ...still big enough, still landscape

    images = FolderImages(folder)
    broken = images.files.index(folder / "broken.jpg")
    after = PHOTOS[images.files[broken + 1].name]
    assert len(images) == 8
    rng = np.random.default_rng(0)
    with caplog.at_level("WARNING"):
        img, caption = images.get(broken, 64, rng)                       # broken.jpg: the next photo instead
    assert "broken.jpg" in caplog.text and img.size == (64, 64) and caption == after
    assert images.get(broken + len(images), 64, rng)[1] == after         # skipped again, no second warning
    assert caplog.text.count("broken.jpg") == 1


def test_all_stages_train_on_real_photos(photo_folder, tmp_path):
    from lazyedit.engine import load_pipeline
    from lazyedit.training.data import StageDataset, load_photo

    folder, _ = photo_folder
    captions = set(PHOTOS.values()) | {""}
    for stage in ("vae", "asym-decoder", "lazy", "sketch"):
        for i in range(6):
            item = StageDataset(stage, 64, 0, str(folder))[i]
            assert item["image"].shape == (3, 64, 64) and -1 <= item["image"].min() < item["image"].max() <= 1
            if stage == "sketch":   # edges of the photo, inside the hole only
                assert item["has_sketch"] and item["caption"] in captions
                drawn = item["sketch"][3] > 0
                assert drawn.any() and not (drawn & (item["mask"][0] == 0)).any()
    out = tmp_path / "run"
    for stage, steps in (("vae", 3), ("asym-decoder", 2), ("lazy", 2), ("sketch", 2)):
        assert train_stage(_args(out, stage, steps, data=str(folder)))["done"], stage
    pipe = load_pipeline(str(out / "model"))
    photo = load_photo(_photo_path("chelsea.png")).crop((100, 40, 228, 168)).resize((64, 64))
    mask = np.zeros((64, 64), bool)
    mask[20:44, 16:40] = True
    res = pipe.edit(photo, mask, prompt="a tabby cat", seed=0, steps=2)
    a, b = np.asarray(res.image), np.asarray(photo)
    assert np.array_equal(a[~mask], b[~mask])                # a photo edit leaves the rest untouched


def _stop_hung_torchrun(proc) -> tuple[str, str]:
    """A hung torchrun: each trainer prints its threads' stacks (the CLI's SIGUSR1 handler) into the output,
    then the agent and its trainers (each in a session of its own) are killed, so none outlives the test."""
    import os
    import signal
    import time

    workers = [int(d) for d in os.listdir("/proc") if d.isdigit() and _parent_pid(int(d)) == proc.pid]
    for pid in workers:
        os.kill(pid, signal.SIGUSR1)
    time.sleep(3)
    for pid in [proc.pid, *workers]:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return proc.communicate()


def _parent_pid(pid: int) -> int | None:
    try:
        return int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


@pytest.mark.timeout(600)
def test_two_cpu_processes_train_one_model(trained, tmp_path):
    """torchrun with two processes on a CPU: one process group (each process saves its own RNG state into the
    same checkpoint), one progress line per stage, one model that edits; 64 and 96 px batches of 2 and 1 items."""
    import os
    import subprocess
    import sys

    from lazyedit.engine import load_pipeline

    src, _, _ = trained
    out = tmp_path / "ddp"
    shutil.copytree(src / "model" / "vae", out / "model" / "vae")
    # loopback only: the group never waits on resolving this machine's name
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    base = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "--local-addr", "127.0.0.1",
            "-m", "lazyedit.training.cli", "lazy", "--config", "tiny", "--output", str(out), "--resolution", "64,96",
            "--batch-size", "2,1", "--sample-every", "1000", "--no-progress", "--mixed-precision", "no", "--warmup", "1"]

    def torchrun(*flags):
        proc = subprocess.Popen([*base, *flags], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        try:
            out_, err_ = proc.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            out_, err_ = _stop_hung_torchrun(proc)
            pytest.fail(f"torchrun {' '.join(flags)} hung; its output, with the trainers' stacks:\n{out_[-3000:]}\n{err_[-12000:]}")
        return subprocess.CompletedProcess(proc.args, proc.returncode, out_, err_)

    run = torchrun("--steps", "4", "--save-every", "2")
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("[lazyedit train] lazy: step 4 (done)") == 1, run.stdout
    ckpt = out / "lazy" / "checkpoints" / "step_0000004"
    assert (ckpt / "random_states_0.pkl").exists() and (ckpt / "random_states_1.pkl").exists()
    assert json.loads((out / "model" / "lazy.json").read_text())["step"] == 4
    # --max-minutes: the processes agree on the step to stop at (one stopping alone hung both), and the
    # checkpoint they write there holds both processes' state
    late = torchrun("--steps", "400", "--save-every", "1000", "--max-minutes", "0.003")
    assert late.returncode == 0, late.stderr[-3000:]
    assert late.stdout.count("(stopped, rerun to resume)") == 1, late.stdout
    last = sorted((out / "lazy" / "checkpoints").iterdir())[-1]
    assert 4 < json.loads((last / "trainer_state.json").read_text())["step"] < 400
    assert (last / "random_states_0.pkl").exists() and (last / "random_states_1.pkl").exists()
    pipe = load_pipeline(str(out / "model"))
    s = make_sample(0, 5, size=64)
    res = pipe.edit(s.image, s.mask, prompt=s.caption, seed=0, steps=2)
    assert np.array_equal(np.asarray(res.image)[~s.mask], np.asarray(s.image)[~s.mask])


def _asym(up, layers=1):
    from diffusers import AsymmetricAutoencoderKL

    from lazyedit.engine.configs import _asym as asym_config

    torch.manual_seed(0)
    return AsymmetricAutoencoderKL(**asym_config((8, 8, 16, 16), 1, up, layers, 4))


def test_a_narrower_decoder_starts_from_the_same_channel_subset_in_every_layer():
    from lazyedit.training.narrow import kept_channels, narrowed_state_dict

    # the demo's cut: the wide decoder's third block keeps its width (no shortcut), the narrow one's halves it
    wide, narrow = _asym((16, 32, 32, 32)), _asym((8, 16, 32, 32))
    w = wide.state_dict()
    state = narrowed_state_dict(w, narrow, groups=4)
    narrow.load_state_dict(state)
    k16, k8 = kept_channels(32, 16, 4), kept_channels(16, 8, 4)
    assert k16.tolist() == [0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27]  # half of each group of 8
    up = "decoder.up_blocks.2.upsamplers.0.conv.weight"  # on the 16-channel stream, both sides
    assert torch.equal(state[up], w[up][k16][:, k16])
    # the known-pixel features blended into that stream are cut to the same channels
    cond = "decoder.condition_encoder.layers.1.weight"
    assert torch.equal(state[cond], w[cond][k16][:, k8])
    assert torch.equal(state["decoder.conv_out.weight"], w["decoder.conv_out.weight"][:, k8])
    # where the wide block added its input unchanged, the narrow one's new shortcut keeps the same channels
    x = torch.randn(1, 32, 5, 5)
    assert torch.equal(narrow.decoder.up_blocks[2].resnets[0].conv_shortcut(x), x[:, k16])
    assert all(torch.equal(state[k], w[k]) for k in w if k.startswith("encoder."))
    with pytest.raises(ValueError, match="multiples of 4 groups"):
        kept_channels(32, 10, 4)
    with pytest.raises(ValueError, match="cannot be narrowed"):
        narrowed_state_dict(narrow.state_dict(), wide, groups=4)
    with pytest.raises(KeyError, match="lacks"):
        narrowed_state_dict({**w, "decoder.extra.weight": torch.zeros(1)}, narrow, groups=4)


def test_a_shallower_decoder_keeps_each_blocks_first_layers_and_drops_only_residual_ones():
    from lazyedit.training.narrow import narrowed_state_dict

    wide, shallow = _asym((16, 32, 32, 32), layers=2), _asym((16, 32, 32, 32), layers=0)
    w = wide.state_dict()
    state = narrowed_state_dict(w, shallow, groups=4)
    shallow.load_state_dict(state)
    assert all(torch.equal(v, w[k]) for k, v in state.items())  # same widths: every kept weight as it was
    assert "decoder.up_blocks.3.resnets.0.conv_shortcut.weight" in state  # the width-changing first layer stays
    dropped = {k.split(".resnets.")[0] + ".resnets." + k.split(".resnets.")[1].split(".")[0]
               for k in w.keys() - state.keys()}
    assert dropped == {f"decoder.up_blocks.{b}.resnets.{j}" for b in range(4) for j in (1, 2)}
    # with the dropped layers' residual branches zeroed, the wide decoder is the shallow one
    with torch.no_grad():
        for b in range(4):
            for j in (1, 2):
                wide.decoder.up_blocks[b].resnets[j].conv2.weight.zero_()
                wide.decoder.up_blocks[b].resnets[j].conv2.bias.zero_()
        x, m = torch.rand(1, 3, 32, 32) * 2 - 1, torch.ones(1, 1, 32, 32)
        m[..., :8, :] = 0
        z = wide.encode(x).latent_dist.mode()
        assert torch.allclose(wide.decode(z, image=x, mask=m).sample, shallow.decode(z, image=x, mask=m).sample, atol=1e-6)
    # a dropped layer with a shortcut of its own changed the width: not a residual layer to drop
    with pytest.raises(KeyError, match="lacks"):
        narrowed_state_dict({**w, "decoder.up_blocks.0.resnets.3.conv_shortcut.weight": torch.zeros(1)}, shallow, groups=4)


def test_decoder_teacher_pulls_the_decoder_to_the_one_it_starts_from(trained, tmp_path):
    from lazyedit.training.data import StageDataset
    from lazyedit.training.trainer import StageTrainer

    out, _, _ = trained
    with pytest.raises(ValueError, match="needs --init-from"):
        train_stage(_args(tmp_path / "no-teacher", "asym-decoder", 2, decoder_teacher=1.0))
    source = tmp_path / "source"
    shutil.copytree(out / "model", source)
    _asym((8, 8, 16, 16)).save_pretrained(str(source / "asym_vae"))
    trainer = StageTrainer(_args(tmp_path / "run", "asym-decoder", 2, decoder_teacher=1.0, init_from=str(source)))
    trainer._setup()
    batch = torch.utils.data.default_collate([StageDataset("asym-decoder", 64)[i] for i in range(2)])
    loss, logs = trainer.net_inner(batch)
    assert float(logs["teacher_l1"]) < 1e-4 and float(logs["teacher_hole"]) < 1e-4  # it starts as its teacher
    with torch.no_grad():
        for p in trainer.unwrap("asym_vae").decoder.conv_out.parameters():
            p.add_(0.1)
    moved, logs = trainer.net_inner(batch)
    assert float(logs["teacher_l1"]) > 0.05 and float(moved.detach()) > float(loss.detach())
    # the hole is scored on its own (with its chroma), not only as its share of the image's mean
    assert float(logs["teacher_hole"]) > float(logs["teacher_l1"])


def test_adversarial_term_trains_a_discriminator_beside_the_decoder(trained, tmp_path):
    from safetensors.torch import load_file

    from lazyedit.training.data import StageDataset
    from lazyedit.training.discriminator import PatchDiscriminator, adversarial_losses
    from lazyedit.training.trainer import StageTrainer

    out, _, _ = trained
    with pytest.raises(ValueError, match="--adversarial"):
        train_stage(_args(tmp_path / "lazy", "lazy", 2, adversarial=0.1))
    # the hinge losses judge only the hole: a decode that differs from the truth outside it costs nothing
    torch.manual_seed(0)
    disc = PatchDiscriminator(channels=8)
    truth = torch.rand(2, 3, 32, 32) * 2 - 1
    mask = torch.zeros(2, 1, 32, 32)
    mask[..., 8:24, 8:24] = 1
    d_loss, g_loss, _ = adversarial_losses(disc, truth, truth, mask)
    d_same, g_same, _ = adversarial_losses(disc, truth * mask + 0.3 * (1 - mask), truth, mask)
    assert torch.allclose(d_loss, d_same) and torch.allclose(g_loss, g_same)
    # one backward of their sum: the decoder's term moves only the decode, the discriminator's only the judge
    rec = truth.clone().requires_grad_(True)
    d_loss, g_loss, _ = adversarial_losses(disc, rec, truth, mask)
    d_loss.backward(retain_graph=True)
    assert rec.grad is None and any(p.grad is not None for p in disc.parameters())
    disc.zero_grad()
    g_loss.backward()
    assert rec.grad is not None and all(p.grad is None or not p.grad.any() for p in disc.parameters())
    assert not rec.grad[mask.expand_as(rec) == 0].any()  # known pixels get no gradient

    run = tmp_path / "run"
    # without the shared fixture's asym-decoder marker, which an earlier test may have written
    shutil.copytree(out / "model", run / "model", ignore=shutil.ignore_patterns("asym-decoder.json"))
    trainer = StageTrainer(_args(run, "asym-decoder", 2, batch_size=2, adversarial=0.5, adversarial_start=1))
    trainer._setup()
    batch = torch.utils.data.default_collate([StageDataset("asym-decoder", 64)[i] for i in range(2)])
    trainer.net_inner.adversary_on = False
    plain, logs = trainer.net_inner(batch)
    assert {"d_real", "d_fake", "adv_g"} <= logs.keys()
    trainer.net_inner.adversary_on = True
    torch.manual_seed(0)
    with_g, logs_on = trainer.net_inner(batch)
    # VQGAN's adaptive weight: the adversarial gradient at the last layer, scaled to the reconstruction's
    assert float(logs["adv_weight"]) == 0 and float(logs_on["adv_weight"]) > 0
    assert float((with_g - plain).detach()) == pytest.approx(float(logs_on["adv_weight"] * logs_on["adv_g"]), abs=1e-4)
    last = trainer.unwrap("asym_vae").decoder.conv_out.weight
    g_rec = torch.autograd.grad(plain, last, retain_graph=True)[0].norm()
    g_adv = torch.autograd.grad(with_g - plain, last, retain_graph=True)[0].norm()
    assert float(g_adv / g_rec) == pytest.approx(0.5, rel=1e-3)
    before = {k: v.clone() for k, v in trainer.net_inner.discriminator.state_dict().items()}
    result = train_stage(_args(run, "asym-decoder", 3, batch_size=2, adversarial=0.5, adversarial_start=1,
                               save_every=3))
    assert result["done"] and all(np.isfinite(result["losses"]))
    # the discriminator is checkpointed (a resume continues the game) but never exported with the model
    ckpt = load_file(str(next((run / "asym-decoder" / "checkpoints").glob("step_*/model.safetensors"))))
    moved = [k for k, v in before.items() if not torch.equal(ckpt[f"discriminator.{k}"], v)]
    assert moved
    exported = load_file(str(run / "model" / "asym_vae" / "diffusion_pytorch_model.safetensors"))
    assert not [k for k in exported if "discriminator" in k]


def test_loose_masks_reach_the_edit_stages_only(tmp_path):
    from lazyedit.training.data import StageDataset

    with pytest.raises(ValueError, match="--loose-masks"):
        train_stage(_args(tmp_path / "vae", "vae", 2, loose_masks=0.5))
    tight, loose = StageDataset("lazy", 96), StageDataset("lazy", 96, loose_masks=1.0)
    differ = [i for i in range(24) if not torch.equal(tight[i]["mask"], loose[i]["mask"])]
    assert differ and all(loose[i]["caption"] for i in differ)  # only named objects get the box


def test_strip_masks_reach_the_filling_stages_only(tmp_path):
    from lazyedit.training.data import StageDataset

    for stage in ("vae", "sketch"):
        with pytest.raises(ValueError, match="--strip-masks"):
            train_stage(_args(tmp_path / stage, stage, 2, strip_masks=0.5))
    plain, strips = StageDataset("lazy", 96), StageDataset("lazy", 96, strip_masks=0.5)
    differ = [i for i in range(24) if not torch.equal(plain[i]["mask"], strips[i]["mask"])]
    assert differ and not any(strips[i]["caption"] for i in differ)  # outpaintings have no caption
    for i in differ:  # a band across the whole canvas along one side
        m = strips[i]["mask"][0].bool()
        assert m.all(dim=0).any() or m.all(dim=1).any()


def test_removal_fraction_turns_named_edits_into_removals_only_on_the_filling_stages(tmp_path):
    from lazyedit.training.data import StageDataset

    for stage in ("vae", "sketch"):
        with pytest.raises(ValueError, match="--removal-fraction"):
            train_stage(_args(tmp_path / stage, stage, 2, removal_fraction=0.5))
    usual, more = StageDataset("lazy", 96), StageDataset("lazy", 96, removal_fraction=1.0)
    differ = [i for i in range(32) if usual[i]["caption"] != more[i]["caption"]]
    assert differ
    for i in differ:  # the same object hole, now a removal: no caption, the object gone from the target
        assert usual[i]["caption"] and not more[i]["caption"]
        assert torch.equal(usual[i]["mask"], more[i]["mask"]) and torch.equal(usual[i]["image"], more[i]["image"])
        assert not torch.equal(usual[i]["target"], more[i]["target"])
    same = [i for i in range(32) if i not in differ]
    assert all(torch.equal(usual[i]["target"], more[i]["target"]) for i in same)  # other edits unchanged


def test_edge_term_scores_a_blurred_outline_not_a_flat_shift(trained, tmp_path):
    from lazyedit.training.data import StageDataset
    from lazyedit.training.trainer import StageTrainer, edge_error

    out, _, _ = trained
    with pytest.raises(ValueError, match="--edge-weight"):
        train_stage(_args(tmp_path / "lazy", "lazy", 2, edge_weight=1.0))
    # a one-pixel dark outline on a flat fill, and the same outline blurred to a grey rim three pixels wide
    truth = torch.full((1, 3, 32, 32), 0.5)
    truth[..., 8:24, 8] = -1.0
    blurred = truth.clone()
    blurred[..., 8:24, 7:10] = 0.5 - 1.5 / 3
    # the blur costs as much edge error as L1; a flat shift of 0.2 costs L1 0.2 and no edge error: the term
    # adds weight where edges are wrong, not where colours are
    assert float(edge_error(blurred, truth)) > float((blurred - truth).abs().mean()) > 0
    assert float(edge_error(truth, truth)) == 0 and float(edge_error(truth + 0.2, truth)) < 1e-6
    # with a hole, only the pixel pairs inside it count, as a mean over the hole (not diluted by the image)
    hole = torch.zeros(1, 1, 32, 32)
    hole[..., 4:28, 4:14] = 1
    assert float(edge_error(blurred, truth, hole)) > 2 * float(edge_error(blurred, truth))
    assert float(edge_error(blurred, truth, 1 - hole)) == 0

    run = tmp_path / "run"
    shutil.copytree(out / "model", run / "model", ignore=shutil.ignore_patterns("asym-decoder.json"))
    batch = torch.utils.data.default_collate([StageDataset("asym-decoder", 64)[i] for i in range(2)])
    losses = {}
    for weight in (0.0, 2.0):
        trainer = StageTrainer(_args(run, "asym-decoder", 2, batch_size=2, edge_weight=weight))
        trainer._setup()
        torch.manual_seed(0)
        losses[weight] = trainer.net_inner(batch)
    (plain, plain_logs), (with_edge, logs) = losses[0.0], losses[2.0]
    assert "edge" not in plain_logs and float(logs["edge"]) > 0
    assert float((with_edge - plain).detach()) == pytest.approx(2.0 * float(logs["edge"]), rel=1e-4, abs=1e-5)
    result = train_stage(_args(tmp_path / "vae", "vae", 3, batch_size=2, edge_weight=1.0))
    assert result["done"] and all(np.isfinite(result["losses"]))


@pytest.mark.parametrize("name, field", [("demo-light", "up_block_out_channels"), ("demo-shallow", "layers_per_up_block")])
def test_the_lighter_demo_decoders_differ_from_the_demo_in_one_field_and_can_be_cut_from_it(name, field):
    from dataclasses import asdict

    from lazyedit.engine import get_config
    from lazyedit.engine.loading import build_pipeline
    from lazyedit.training.narrow import narrowed_state_dict

    demo, light = asdict(get_config("demo")), asdict(get_config(name))
    assert {k for k in demo if demo[k] != light[k]} == {"name", "asym_vae"}
    assert {k for k in demo["asym_vae"] if demo["asym_vae"][k] != light["asym_vae"][k]} == {field}
    wide, narrow = build_pipeline("demo").asym_vae, build_pipeline(name).asym_vae
    narrow.load_state_dict(narrowed_state_dict(wide.state_dict(), narrow, groups=16))
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    m = torch.zeros(1, 1, 64, 64)
    m[..., 16:48, 16:48] = 1
    with torch.no_grad():
        z = wide.encode(x).latent_dist.mode()  # one latent space: the encoders are the same
        assert torch.equal(z, narrow.encode(x).latent_dist.mode())
        assert narrow.decode(z, image=x, mask=m).sample.shape == x.shape


def test_the_8_channel_demo_config_carries_its_latent_through_every_model():
    """demo-z8 differs from demo in the latent's channels only, and every model that meets the latent
    (VAE, asymmetric decoder, context encoder, transformer) agrees on them, so a whole edit runs."""
    from dataclasses import asdict

    from lazyedit.engine import get_config
    from lazyedit.engine.loading import build_pipeline

    demo, z8 = asdict(get_config("demo")), asdict(get_config("demo-z8"))
    assert {k for k in demo if demo[k] != z8[k]} == {"name", "vae", "asym_vae", "transformer", "context_encoder"}
    for part in ("vae", "asym_vae", "transformer", "context_encoder"):
        assert {k: v for k, v in z8[part].items() if demo[part][k] != v} == {"latent_channels": 8}, part
    pipe = build_pipeline("demo-z8")
    s = make_sample(3, 3, size=64)
    res = pipe.edit(s.image, s.mask, prompt=s.caption, seed=0, steps=1)
    assert np.array_equal(np.asarray(res.image)[~s.mask], np.asarray(s.image)[~s.mask])


def test_timestep_shift_trains_the_noise_levels_the_sampler_takes(trained, tmp_path):
    from lazyedit.engine import flow_scheduler
    from lazyedit.training.data import StageDataset
    from lazyedit.training.trainer import StageTrainer, sample_t

    with pytest.raises(ValueError, match="--timestep-shift"):
        train_stage(_args(tmp_path / "vae", "vae", 2, timestep_shift=3.0))
    with pytest.raises(ValueError, match="--timestep-shift"):
        train_stage(_args(tmp_path / "lazy", "lazy", 2, timestep_shift=-1.0))
    assert build_parser().parse_args(["lazy", "--timestep-shift", "3"]).timestep_shift == 3.0
    plain = sample_t(20000, "cpu", torch.Generator().manual_seed(0))
    shifted = sample_t(20000, "cpu", torch.Generator().manual_seed(0), shift=3.0)
    # the same draws, moved by the map the sampler applies to its sigmas
    lift = lambda s: 3.0 * s / (1 + 2.0 * s)  # noqa: E731
    assert torch.allclose(lift(flow_scheduler(1.0).sigmas), flow_scheduler(3.0).sigmas, atol=1e-6)
    assert torch.allclose(lift(plain), shifted, atol=1e-6)
    # the first sampling steps (sigma 1 and 0.9 at 5 steps) sit in t >= 0.9: trained about ten times as often
    assert float((plain >= 0.9).float().mean()) < 0.03 < 0.1 < float((shifted >= 0.9).float().mean())
    # the lazy stage noises its holes at the shifted levels: the same seed, the same draws, moved
    run = tmp_path / "run"
    shutil.copytree(trained[0] / "model", run / "model", ignore=shutil.ignore_patterns("lazy.json"))
    batch = torch.utils.data.default_collate([StageDataset("lazy", 64)[i] for i in range(4)])
    levels = {}
    for shift in (1.0, 3.0):
        trainer = StageTrainer(_args(run, "lazy", 2, timestep_shift=shift))
        trainer._setup()
        levels[shift] = trainer.net_inner._holes(batch)["t"]
    assert torch.allclose(lift(levels[1.0]), levels[3.0], atol=1e-6) and not torch.allclose(levels[1.0], levels[3.0])


@pytest.mark.parametrize("flag", ["pooled_text", "hole_positions", "mask_detail"])
def test_an_added_input_joins_a_model_from_init_from_and_is_kept_on_resume(trained, tmp_path, flag):
    """--pooled-text / --hole-positions (the transformer's) / --mask-detail (the context encoder's): the lazy stage
    starts from --init-from's backbone with the input added at zero (its first context and prediction are the
    source's), trains that input (at --added-input-lr: a group of its own), and a resumed run keeps it without
    the flag."""
    from lazyedit.engine.models import ContextEncoder, LazyDiffusionTransformer
    from lazyedit.training.data import StageDataset
    from lazyedit.training.trainer import StageTrainer

    option = "--" + flag.replace("_", "-")
    with pytest.raises(ValueError, match=option):
        train_stage(_args(tmp_path / "sk", "sketch", 2, **{flag: True}))
    with pytest.raises(ValueError, match="--added-input-lr"):
        train_stage(_args(tmp_path / "sk", "sketch", 2, added_input_lr=1e-3))
    assert getattr(build_parser().parse_args(["lazy", option]), flag)
    owner, cls = (("context_encoder", ContextEncoder) if flag in ContextEncoder.ADDED_INPUTS
                  else ("transformer", LazyDiffusionTransformer))
    module = cls.ADDED_INPUTS[flag]
    source = trained[0] / "model"
    run = tmp_path / "run"
    batch = torch.utils.data.default_collate([StageDataset("lazy", 64)[i] for i in range(4)])
    start = StageTrainer(_args(run, "lazy", 4, init_from=str(source), lr=1e-4, added_input_lr=1e-3, **{flag: True}))
    start._setup()
    model = start.net_inner.models[owner]
    last = [p for p in getattr(model, module).parameters()][-2]  # the zero-initialised output layer's weight
    assert model.config.get(flag) and not last.any()
    groups = start.optimizer.param_groups
    assert [g["lr"] for g in groups] == pytest.approx([1e-4, 1e-3])
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in getattr(model, module).parameters()}
    # the source's own backbone, on the same batch and the same draws (same seed): the same context and prediction
    base = StageTrainer(_args(tmp_path / "base", "lazy", 4, init_from=str(source), lr=1e-4))
    base._setup()
    predictions = []
    for trainer in (start, base):
        with torch.no_grad():
            h = trainer.net_inner._holes(batch)
            text, tmask = trainer.net_inner._captions(batch, 0.0)
            tr = trainer.net_inner.models["transformer"]
            pred = tr(h["xt"], h["context"], h["index"], h["grid"], h["t"] * 1000, text, tmask, h["valid"], None, h["offset"])
        predictions.append((h["context"], pred))
    torch.testing.assert_close(predictions[0], predictions[1], rtol=0, atol=0)
    result = train_stage(_args(run, "lazy", 4, init_from=str(source), save_every=2, lr=1e-4, added_input_lr=1e-3,
                               **{flag: True}))
    assert result["done"]
    saved = cls.from_pretrained(str(run / "model" / owner))
    assert saved.config.get(flag) and [p for p in getattr(saved, module).parameters()][-2].abs().sum() > 0
    resumed = train_stage(_args(run, "lazy", 6, save_every=2))
    assert resumed["step"] == 6 and len(resumed["losses"]) == 2
    assert cls.from_pretrained(str(run / "model" / owner)).config.get(flag)
    # resumed without --added-input-lr the group keeps its ratio to --lr (10 here); with it, the new rate wins
    again = StageTrainer(_args(run, "lazy", 8, lr=1e-4))
    again._setup()
    again.accelerator.load_state(str(_latest_checkpoint(run / "lazy")))
    again._apply_lr(1e-4)
    assert [g["lr"] for g in again.optimizer.param_groups] == pytest.approx([1e-4, 1e-3])
    again.args.added_input_lr = 5e-4
    again._apply_lr(1e-4)
    assert [g["lr"] for g in again.optimizer.param_groups] == pytest.approx([1e-4, 5e-4])


def test_every_stage_trains_under_bf16_autocast(tmp_path):
    """The GPU plans train in bf16 (scripts/plans): every stage runs a few steps under accelerate's bf16 autocast
    (here on the CPU) with finite losses, and its export loads as a pipeline that edits. A process of its own:
    accelerate keeps one precision per process."""
    import subprocess
    import sys

    from lazyedit.engine import load_pipeline
    from PIL import Image

    run = tmp_path / "bf16"
    plan = [("vae", {"steps": 6}), ("asym-decoder", {}), ("lazy", {"loose_masks": 0.5, "timestep_shift": 3.0}),
            ("asym-decoder", {"generated_latents": 0.5, "steps": 4}), ("sketch", {}), ("distill", {})]
    code = f"""
import json, sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from test_training import _args
from lazyedit.training.trainer import train_stage
out = []
for stage, extra in {plan!r}:
    kw = {{"mixed_precision": "bf16", "steps": 2, **extra}}
    r = train_stage(_args({str(run)!r}, stage, **kw))
    out.append([stage, r["done"], r["losses"]])
print("RESULT", json.dumps(out))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    results = json.loads(r.stdout.split("RESULT ", 1)[1])
    assert [stage for stage, _, _ in results] == [stage for stage, _ in plan]
    for stage, done, losses in results:
        assert done and losses and np.isfinite(losses).all(), (stage, losses)
    pipe = load_pipeline(str(run / "model"))
    mask = np.zeros((64, 64), bool)
    mask[16:48, 16:48] = True
    img = Image.new("RGB", (64, 64), (40, 90, 160))
    edited = np.asarray(pipe.edit(img, mask, "a red star", seed=0).image)
    assert (edited[~mask] == np.asarray(img)[~mask]).all()
