"""Eval metrics on hand-made cases: perfect answers score perfectly, wrong ones score zero."""

import json
from dataclasses import replace

import numpy as np
import pytest

from lazyedit.training.eval import (
    PSNR_CAP, classify_shape, compare_reports, eval_cases, eval_main, object_fraction, preserved_error, psnr,
    Totals, case_canvas, case_truth, run_eval, score_case, score_insert, seam_error,
)
from lazyedit.training.masks import object_mask
from lazyedit.training.world import COLOURS, SHAPES, STYLES, Background, Scene, SceneObject, sample_from_scene, shape_mask

BG = Background("flat", ((120, 125, 118), (120, 125, 118)))


def _case(shape="star", colour="red", style="plain", rot=0.1, size=0.34):
    scene = Scene(BG, style, (SceneObject(shape, colour, 0.5, 0.5, size, rot),
                              SceneObject("circle", "blue", 0.18, 0.18, 0.16)))
    s = sample_from_scene(scene, 0, 128)
    hole = object_mask(s.mask, np.random.default_rng(0))
    return scene, s, hole


@pytest.mark.parametrize("style", STYLES)
def test_perfect_fill_scores_perfectly(style):
    _, s, hole = _case(style=style)
    sc = score_insert(np.asarray(s.image), np.asarray(s.removed), hole, s)
    assert sc["colour_ok"] and sc["shape_ok"] and sc["style_ok"], sc
    assert sc["sketch_iou"] > 0.8


@pytest.mark.parametrize("colour", list(COLOURS))
def test_colours_are_recognised(colour):
    _, s, hole = _case(shape="square", colour=colour)
    assert score_insert(np.asarray(s.image), np.asarray(s.removed), hole, s)["colour"] == colour


@pytest.mark.parametrize("shape", SHAPES)
def test_shapes_are_recognised(shape):
    _, s, _ = _case(shape=shape, rot=0.2 if shape not in ("circle", "ring") else 0.0)
    assert classify_shape(shape_mask(s.scene.objects[0], 128))[0] == shape


def test_wrong_colour_scores_zero():
    scene, s, hole = _case(colour="red")
    _, wrong, _ = _case(colour="green")  # same scene, the object painted green
    sc = score_insert(np.asarray(wrong.image), np.asarray(s.removed), hole, s)
    assert sc["colour_ok"] is False and sc["colour"] == "green"
    assert sc["shape_ok"]  # only the colour is wrong


def test_wrong_shape_and_nothing_score_zero():
    _, s, hole = _case(shape="star")
    _, circle, _ = _case(shape="circle")
    sc = score_insert(np.asarray(circle.image), np.asarray(s.removed), hole, s)
    assert not sc["shape_ok"] and sc["colour_ok"]
    # an empty fill (background only) is wrong on everything but style "plain" has nothing to judge
    empty = score_insert(np.asarray(s.removed), np.asarray(s.removed), hole, s)
    assert not empty["colour_ok"] and not empty["shape_ok"] and empty["sketch_iou"] == 0.0


def test_wrong_style_is_detected():
    _, s, hole = _case(style="outlined")
    _, plain, _ = _case(style="shadowed")
    sc = score_insert(np.asarray(plain.image), np.asarray(s.removed), hole, s)
    assert sc["style"] == "shadowed" and not sc["style_ok"]


def test_psnr_preserved_and_seam():
    _, s, hole = _case()
    truth = np.asarray(s.removed)
    assert psnr(truth, truth, hole) == PSNR_CAP
    noisy = np.clip(truth.astype(int) + 10, 0, 255).astype(np.uint8)
    assert 25 < psnr(noisy, truth, hole) < 30  # 10 grey levels everywhere: 28.1 dB
    assert seam_error(truth, truth, hole) == 0.0 and seam_error(noisy, truth, hole) == pytest.approx(10, abs=0.5)
    # a removal that leaves the object in place is mostly object; a clean or slightly off fill is none
    assert object_fraction(truth, truth, hole) == 0.0 and object_fraction(noisy, truth, hole) == 0.0
    left = object_fraction(np.asarray(s.image), truth, hole)
    assert left == pytest.approx(np.count_nonzero(s.mask & hole) / np.count_nonzero(hole), abs=0.1) and left > 0.3
    canvas = np.asarray(s.image)
    out = canvas.copy()
    out[hole] = 0
    assert preserved_error(out, canvas, hole) == 0
    out[0, 0] = canvas[0, 0] ^ 1
    assert preserved_error(out, canvas, hole) == 1


def test_totals_report_means_counts_and_standard_errors():
    from lazyedit.training.eval import Totals

    t = Totals()
    for v in (0, 1, 1, 0):
        t.add("colour_acc", v)
    t.add("removal_psnr", 30.0)
    s = t.summary()
    assert (s["colour_acc"], s["n_colour_acc"], s["removal_psnr"]) == (0.5, 4, 30.0)
    assert s["se_colour_acc"] == pytest.approx(np.std([0, 1, 1, 0], ddof=1) / 2, abs=1e-4)   # 0.2887
    assert "se_removal_psnr" not in s            # one value: no error estimate


def test_held_out_set_is_seeded():
    a, b = eval_cases(6, 77, 64), eval_cases(6, 77, 64)
    assert [c.sample.caption for c in a] == [c.sample.caption for c in b]
    assert all(np.array_equal(x.mask, y.mask) for x, y in zip(a, b))
    assert {c.kind for c in a} == {"insert", "remove", "sketch"}


def test_run_eval_plumbing_on_tiny(tmp_path):
    from lazyedit.engine import load_pipeline

    pipe = load_pipeline("tiny")
    grid = tmp_path / "grid.png"
    report = run_eval(pipe, eval_cases(3, 5, 64), steps=2, progress=False, grid=str(grid))
    assert grid.exists()
    assert report["preserved_error_max"] == 0
    assert "removal_psnr" in report["lazy"] and "seam_error_plain" in report["lazy"]
    assert 0 <= report["lazy"]["removal_object_frac"] <= 1
    assert "colour_acc" in report["regenerate_crop"]


def test_eval_main_ground_truth(capsys):
    assert eval_main(["--ground-truth", "--cases", "6", "--size", "96"]) == 0
    assert '"colour_acc": 1.0' in capsys.readouterr().out


@pytest.mark.parametrize("attr, cases_n, unfailable", [("shape", 12, None), ("colour", 24, None), ("style", 24, "plain")])
def test_accuracy_is_split_by_the_asked_shape_colour_and_scene_style(attr, cases_n, unfailable):
    """``<attr>_acc_<value>`` per prompted shape and colour and per scene style: the entries add up to the
    insert cases, and a blank answer (the canvas back) fails its case's own entry (a blank reads as plain, so
    the style check takes a styled scene)."""
    from lazyedit.training.eval import Totals, ground_truth_report, score_case

    cases = eval_cases(cases_n, 5, 96)
    report = ground_truth_report(cases)
    split = {k: v for k, v in report.items() if k.startswith(f"{attr}_acc_")}
    inserts = [c for c in cases if c.kind == "insert"]
    assert set(split) == {f"{attr}_acc_{getattr(c.sample, attr)}" for c in inserts} and len(split) > 1
    assert sum(report[f"n_{k}"] for k in split) == report[f"n_{attr}_acc"] == len(inserts)
    case = next(c for c in inserts if getattr(c.sample, attr) != unfailable)
    t = Totals()
    score_case(t, case, np.asarray(case.sample.removed))
    assert t.summary()[f"{attr}_acc_{getattr(case.sample, attr)}"] == 0.0


def test_eval_main_autoencoder_ceiling_scores_every_case_through_both_decoders(capsys):
    assert eval_main(["--model", "tiny", "--autoencoder", "--cases", "6", "--size", "64", "--no-progress"]) == 0
    report = json.loads(capsys.readouterr().out)["autoencoder"]
    assert set(report) == {"plain", "asym"}
    for scores in report.values():
        # 6 cases: 2 insert, 2 remove, 2 sketch
        assert scores["n_removal_psnr"] == 2 and scores["n_colour_acc"] == 2 and scores["n_sketch_colour_acc"] == 2
        assert 0 < scores["removal_psnr"] <= PSNR_CAP
        assert scores["n_seam_error"] == 2 and scores["seam_error"] > 0


def test_eval_main_runs_only_the_asked_kinds_and_names_a_wrong_one(capsys):
    assert eval_main(["--ground-truth", "--cases", "9", "--size", "96", "--kinds", "sketch"]) == 0
    report = json.loads(capsys.readouterr().out)["ground_truth"]
    assert report["n_sketch_iou"] == 3 and "n_removal_psnr" not in report and "n_colour_acc" not in report
    assert eval_main(["--ground-truth", "--cases", "9", "--kinds", "sketch,erase"]) == 2
    assert "--kinds 'sketch,erase'" in capsys.readouterr().err


def extra_cases(kind: str, size: int) -> tuple[list, list]:
    """The default cases and the extra ``kind`` cases of 9 held-out cases; checks the default ones are those of a
    run without the extra kind."""
    plain, mixed = eval_cases(9, 5, size), eval_cases(9, 5, size, **{kind: True})
    kept = [c for c in mixed if c.kind != kind]
    assert [(c.index, c.kind) for c in kept] == [(c.index, c.kind) for c in plain]
    assert all(np.array_equal(a.mask, b.mask) for a, b in zip(kept, plain))
    return kept, [c for c in mixed if c.kind == kind]


def test_box_cases_are_the_insert_cases_in_a_loose_box_and_a_filled_box_reads_as_a_square(capsys):
    from lazyedit.training.eval import Totals, score_case

    kept, boxes = extra_cases("box", 128)
    inserts = [c for c in kept if c.kind == "insert"]
    assert [c.index for c in boxes] == [c.index for c in inserts] and len(boxes) == 3
    for box, insert in zip(boxes, inserts):
        assert box.sample is insert.sample
        assert np.all(box.mask[insert.sample.mask])  # the object lies inside its box
        ys, xs = np.nonzero(box.mask)  # a rectangle
        assert box.mask.sum() == (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
    # the truth scores as in insert cases; painting the whole box in the asked colour is a square filling it
    case = boxes[0]
    truth, painted = Totals(), Totals()
    score_case(truth, case, np.asarray(case.sample.image))
    fill = np.asarray(case.sample.removed).copy()
    fill[case.mask] = COLOURS[case.sample.colour]
    score_case(painted, case, fill)
    t, p = truth.summary(), painted.summary()
    assert t["box_colour_acc"] == 1 and t["box_shape_acc"] == 1 and t["box_fill"] < 0.6 and "colour_acc" not in t
    assert p["box_colour_acc"] == 1 and p["box_fill"] > 0.95 and p["box_object_iou"] < t["box_object_iou"]
    assert p["box_shape_acc"] == (case.sample.shape == "square")
    assert eval_main(["--ground-truth", "--cases", "9", "--size", "96", "--kinds", "box"]) == 0
    report = json.loads(capsys.readouterr().out)["ground_truth"]
    assert report["n_box_colour_acc"] == 3 and "n_colour_acc" not in report and report["box_shape_acc"] == 1.0


def test_box_cases_measure_how_far_a_shape_or_colour_word_moves_the_edit():
    import torch

    from lazyedit.engine import load_pipeline
    from lazyedit.training.eval import next_word, word_change

    assert next_word(("a", "b", "c"), "b") == "c" and next_word(("a", "b", "c"), "c") == "a"
    hole = np.zeros((4, 4), bool)
    hole[1:3, 1:3] = True
    a, b = np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4, 3), np.uint8)
    b[~hole] = 255  # outside the hole does not count
    assert word_change(a, b, hole) == 0
    b[1, 1] = (255, 0, 0)  # one of the hole's 12 channel values moves by 255
    assert word_change(a, b, hole) == 255 / 12

    pipe = load_pipeline("tiny")
    cases = [c for c in eval_cases(6, 5, 64, box=True) if c.kind == "box"]
    untrained = run_eval(pipe, cases, steps=2, strategies=("lazy",), progress=False)["lazy"]
    # the untrained transformer's output layer is zero: every prompt gives the same edit
    assert untrained["box_shape_word_change"] == untrained["box_colour_word_change"] == 0
    torch.manual_seed(0)
    for p in pipe.transformer.parameters():
        torch.nn.init.normal_(p, std=0.2)
    listening = run_eval(pipe, cases, steps=2, strategies=("lazy",), progress=False)["lazy"]
    assert listening["box_shape_word_change"] > 0 and listening["box_colour_word_change"] > 0
    assert listening["n_box_shape_word_change"] == len(cases)


def test_sketch_strength_reaches_the_edits(tmp_path):
    # strength 0 turns the sketch off (the edits equal the same edits without a sketch); strength 2 changes them
    import torch
    from PIL import Image

    from lazyedit.engine import load_pipeline

    pipe = load_pipeline("tiny")
    torch.manual_seed(0)
    for module in (pipe.sketch_tuner, pipe.transformer):  # untrained, both output zeros: give them an effect
        for p in module.parameters():
            torch.nn.init.normal_(p, std=0.2)
    cases = [c for c in eval_cases(6, 5, 64) if c.kind == "sketch"]
    plain_cases = [type(c)(c.index, "insert", c.sample, c.mask) for c in cases]

    def grid(name, cases, strength=1.0):
        path = tmp_path / f"{name}.png"
        run_eval(pipe, cases, steps=2, strategies=("lazy",), progress=False, grid=str(path), sketch_strength=strength)
        return np.asarray(Image.open(path))

    off, on, plain = grid("off", cases, 0.0), grid("on", cases, 2.0), grid("plain", plain_cases)
    assert np.array_equal(off, plain)
    assert not np.array_equal(on, off)


def test_eval_main_scores_a_candidate_vae_in_place_of_the_models(capsys, tmp_path):
    """--vae: the round trip of another VAE (here one with twice the latent channels) through its own decoder
    only, on the model's decode boxes; misuse is named."""
    import torch

    from lazyedit.engine.configs import _vae, get_config
    from lazyedit.training.trainer import build_vae

    cfg = get_config("tiny")
    torch.manual_seed(0)
    build_vae(replace(cfg, vae={**cfg.vae, "latent_channels": 8})).save_pretrained(tmp_path / "vae8")
    args = ["--model", "tiny", "--autoencoder", "--cases", "6", "--size", "64", "--no-progress"]
    assert eval_main([*args, "--vae", str(tmp_path / "vae8")]) == 0
    out = json.loads(capsys.readouterr().out)
    report, model_report = out["autoencoder"], None
    assert set(report) == {"plain"} and out["vae"] == str(tmp_path / "vae8")
    assert report["plain"]["n_removal_psnr"] == 2 and report["plain"]["n_seam_error"] == 2
    assert eval_main(args) == 0
    model_report = json.loads(capsys.readouterr().out)["autoencoder"]["plain"]
    assert model_report["removal_psnr"] != report["plain"]["removal_psnr"]   # another VAE's round trip, not the model's

    assert eval_main([*args, "--vae", str(tmp_path / "nothing")]) == 2
    assert f"--vae {tmp_path / 'nothing'}: not a VAE folder" in capsys.readouterr().err
    build_vae(replace(cfg, vae=_vae((8, 16, 16), 1, 4))).save_pretrained(tmp_path / "vae4x")
    assert eval_main([*args, "--vae", str(tmp_path / "vae4x")]) == 2
    assert "downsamples 4x, the model's VAE 8x" in capsys.readouterr().err
    assert eval_main(["--model", "tiny", "--vae", str(tmp_path / "vae8")]) == 2
    assert "it needs --autoencoder" in capsys.readouterr().err


def test_eval_reads_through_a_context_window_when_asked(capsys):
    args = ["--model", "tiny", "--cases", "3", "--size", "96", "--kinds", "insert", "--strategies", "lazy", "--no-progress",
            "--steps", "1"]
    assert eval_main(args + ["--context-window", "48"]) == 0
    windowed = json.loads(capsys.readouterr().out)
    assert windowed["context_window"] == 48 and windowed["lazy"]["preserved_error_max"] == 0
    assert eval_main(args) == 0
    assert json.loads(capsys.readouterr().out)["context_window"] is None
    assert eval_main(args + ["--context-window", "0"]) == 2
    assert "--context-window 0" in capsys.readouterr().err


def test_outpaint_cases_band_a_side_of_the_removal_scenes_and_score_the_band(capsys):
    kept, strips = extra_cases("outpaint", 96)
    assert [c.index for c in strips] == [c.index for c in kept if c.kind == "remove"] and len(strips) == 3
    case = strips[0]
    truth = np.asarray(case_truth(case))
    assert np.array_equal(np.asarray(case_canvas(case))[~case.mask], truth[~case.mask])  # the band alone is asked
    perfect, blank = Totals(), Totals()
    score_case(perfect, case, truth)
    black = truth.copy()
    black[case.mask] = 0
    score_case(blank, case, black)
    assert perfect.summary()["outpaint_psnr"] == 100 and blank.summary()["outpaint_psnr"] < 15
    assert perfect.summary()["outpaint_seam"] == 0 < blank.summary()["outpaint_seam"]
    assert eval_main(["--ground-truth", "--cases", "9", "--size", "96", "--kinds", "outpaint"]) == 0
    report = json.loads(capsys.readouterr().out)["ground_truth"]
    assert report["n_outpaint_psnr"] == 3 and report["outpaint_psnr"] == 100 and "n_removal_psnr" not in report


def _report(colour, shape, style, rc_style, se=0.02, preserved=0):
    scores = {"colour_acc": colour, "se_colour_acc": se, "shape_acc": shape, "se_shape_acc": se,
              "removal_psnr": 29.0, "se_removal_psnr": 0.5, "sketch_iou": 0.71, "style_acc": style,
              "seam_error_asym": 4.0, "seam_error_plain": 16.0}
    return {"lazy": scores, "regenerate_crop": {"style_acc": rc_style}, "preserved_error_max": preserved}


def test_compare_reads_two_reports_against_the_targets(tmp_path, capsys):
    old, new = _report(0.92, 0.71, 0.30, 0.31), _report(0.88, 0.75, 0.40, 0.31, preserved=3)
    rows = {r["key"]: r for r in compare_reports(old, new)}
    assert (rows["colour_acc"]["old_met"], rows["colour_acc"]["new_met"]) == (True, False)
    assert rows["colour_acc"]["change_se"] == -2.0  # (0.88 - 0.92) / 0.02
    assert (rows["shape_acc"]["old_met"], rows["shape_acc"]["new_met"], rows["shape_acc"]["change_se"]) == (True, True, 2.0)
    assert (rows["style_acc"]["old_met"], rows["style_acc"]["new_met"]) == (False, True)  # against RegenerateCrop's 0.31
    assert rows["seam_ratio"]["new"] == 0.25 and rows["seam_ratio"]["new_met"] is True
    assert (rows["preserved_error_max"]["old_met"], rows["preserved_error_max"]["new_met"]) == (True, False)
    assert "object_iou" not in rows  # in neither report

    (tmp_path / "old.json").write_text(json.dumps(old))
    (tmp_path / "new.json").write_text(json.dumps(new))
    (tmp_path / "same.json").write_text(json.dumps(old))
    capsys.readouterr()
    assert eval_main(["--compare", str(tmp_path / "old.json"), str(tmp_path / "new.json")]) == 1
    out = capsys.readouterr().out
    assert "| colour | 0.920 → 0.880 | -2.0 | >= 0.9 | yes → NO |" in out
    assert "misses what" in out and "colour, preserved" in out
    assert eval_main(["--compare", str(tmp_path / "old.json"), str(tmp_path / "same.json")]) == 0
    # bad input names what is wrong
    (tmp_path / "broken.json").write_text("{not json")
    assert eval_main(["--compare", str(tmp_path / "old.json"), str(tmp_path / "broken.json")]) == 2
    assert "broken.json: not a readable JSON report" in capsys.readouterr().err
    assert eval_main(["--compare", str(tmp_path / "old.json"), str(tmp_path / "new.json"), "--strategies", "regenerate_image"]) == 2
    assert "no 'regenerate_image' scores (it holds lazy, regenerate_crop)" in capsys.readouterr().err
    (tmp_path / "list.json").write_text("[1, 2]")
    assert eval_main(["--compare", str(tmp_path / "list.json"), str(tmp_path / "new.json")]) == 2
    assert "list.json: not an eval report" in capsys.readouterr().err
