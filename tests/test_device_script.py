"""scripts/device_run.sh, the one command a lent GPU machine runs, run here on the CPU with a few steps: every
step passes, the packed parts come back together into a pipeline folder that loads, and only the trained
stages' weights changed."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image
from safetensors.numpy import load_file

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "device_run.sh"
SHIPPED = ROOT / "backend" / "lazyedit" / "weights" / "demo"
WEIGHTS = "diffusion_pytorch_model.safetensors"


def _run(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    full = {**os.environ, "DEVICE": "cpu", "PY": sys.executable, "RUN": str(tmp_path / "run"), **env}
    return subprocess.run(["bash", str(SCRIPT)], env=full, capture_output=True, text=True, timeout=280)


def test_device_script_on_the_cpu_trains_ships_evaluates_and_packs(tmp_path):
    out = tmp_path / "out"
    few = "--resolution 64 --batch-size 2 --num-workers 0 --mixed-precision no --steps 2 --save-every 2 --sample-every 2"
    # two stages in turn, the second on what the first left (a plan line: stage, minutes, arguments)
    plan = f"asym-decoder 5 {few} --generated-latents 0.5\n\nsketch 5 {few}\n"
    r = _run(tmp_path, OUT=str(out), PLAN=plan, BENCH_ARGS="--config tiny --size 128 --quick",
             EVAL_ARGS="--cases 6 --size 128")
    log = (out / "log.txt").read_text()
    assert r.returncode == 0, log[-4000:]
    for name in ("environment", "gpu-tests", "bench", "train-asym-decoder", "train-sketch", "ship", "eval-trained",
                 "eval-shipped", "roundtrip-trained", "pack"):
        assert f"<== {name}: exit 0" in log
    # what comes back stays inside the device tool's limits: 8 files of 16 MiB at most
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and all((out / f).stat().st_size <= 16 * 2**20 for f in files)
    assert json.loads((out / "bench.json").read_text())["device"] == "cpu"
    assert Image.open(out / "bench.png").size[0] > 0

    unpacked = tmp_path / "unpacked"
    unpacked.mkdir()
    archive = tmp_path / "results.tar.gz"
    archive.write_bytes(b"".join((out / f).read_bytes() for f in files if f.startswith("results.tar.gz.part-")))
    with tarfile.open(archive) as tar:
        tar.extractall(unpacked, filter="data")
    model = unpacked / "model-fp16"
    assert all(Image.open(unpacked / f"samples-{stage}.png").size[0] > 0 for stage in ("asym-decoder", "sketch"))
    for name in ("eval-trained", "eval-shipped"):
        report = json.loads((unpacked / f"{name}.json").read_text())
        assert report["cases"] == 6 and report["preserved_error_max"] == 0
    roundtrip = json.loads((unpacked / "roundtrip-trained.json").read_text())["autoencoder"]
    assert roundtrip["asym"]["removal_psnr"] > 0 and roundtrip["plain"]["removal_psnr"] > 0

    # the two stages moved the decoder and the sketch tuner, and nothing else
    def weights(folder: Path, part: str) -> dict:
        return load_file(str(folder / part / WEIGHTS))

    trained, shipped = weights(model, "asym_vae"), weights(SHIPPED, "asym_vae")
    assert any(not np.array_equal(trained[k], shipped[k]) for k in shipped if k.startswith("decoder."))
    trained, shipped = weights(model, "sketch_tuner"), weights(SHIPPED, "sketch_tuner")
    assert any(not np.array_equal(trained[k], shipped[k]) for k in shipped)
    for part in ("transformer", "context_encoder", "vae"):
        a, b = weights(model, part), weights(SHIPPED, part)
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)

    from lazyedit.engine import load_pipeline

    pipe = load_pipeline(str(model), device="cpu")
    img = Image.new("RGB", (128, 128), (90, 140, 200))
    mask = np.zeros((128, 128), bool)
    mask[40:80, 40:80] = True
    edited = np.asarray(pipe.edit(img, mask, "a red circle", seed=0).image)
    assert (edited[~mask] == np.asarray(img)[~mask]).all()


def test_device_script_without_out_says_what_is_missing(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    r = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "OUT must name the folder" in r.stderr


def test_every_prepared_plan_is_a_valid_training_command():
    """A GPU visit is one try: each line of scripts/plans/*.txt must parse as `lazyedit train` arguments and pass
    the checks a run makes before it loads anything (flags that need each other, the folders it names)."""
    from lazyedit.training.cli import _args_for, build_parser
    from lazyedit.training.trainer import _defaults

    plans = sorted((ROOT / "scripts" / "plans").glob("*.txt"))
    assert plans
    for plan in plans:
        lines = [line.split() for line in plan.read_text().splitlines() if line.strip()]
        assert lines, plan
        for stage, minutes, *args in lines:
            assert float(minutes) > 0
            ns = build_parser().parse_args([stage, "--config", "demo", "--max-minutes", minutes, *args])
            here = {k: str(ROOT / v) if k in ("init_from", "components_from") and v else v for k, v in vars(ns).items()}
            _defaults(_args_for(argparse.Namespace(**here), stage))


def test_device_script_fits_its_steps_into_the_budget(tmp_path):
    """A call is cut off at 600 s, and then the pack would never come back: with no budget left the script skips
    the bounded steps and the plan's stages (saying so) and still ends with the pack."""
    out = tmp_path / "out"
    r = _run(tmp_path, OUT=str(out), BUDGET="0", PLAN="lazy 5 --steps 2\nsketch 5 --steps 2\n",
             BENCH_ARGS="--config tiny --size 128 --quick", EVAL_ARGS="--cases 6 --size 128")
    log = (out / "log.txt").read_text()
    for name in ("gpu-tests", "bench", "train-lazy", "train-sketch", "eval-trained", "eval-shipped", "roundtrip-trained"):
        assert f"--- {name}: skipped, 0s of the budget left" in log, log[-3000:]
    assert "skipped for time: gpu-tests bench train-lazy train-sketch eval-trained eval-shipped roundtrip-trained" in log
    assert "<== pack: exit 0" in log
    assert "<== ship: exit 0" not in log  # nothing was trained to ship: a failed step, reported
    assert r.returncode == 1 and "failed steps: ship" in log
