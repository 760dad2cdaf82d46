"""The `lazyedit` command: edit, bench, serve, train, eval."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

ASSETS = Path(__file__).resolve().parent / "assets"

# Sub-commands that own their argument parsers, imported only when used (they pull in heavy modules).
DELEGATED = {
    "serve": ("lazyedit.service.cli", "serve_main"),
    "train": ("lazyedit.training.cli", "train_main"),
    "eval": ("lazyedit.training.eval", "eval_main"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lazyedit", description="Interactive local image editing (LazyDiffusion).")
    sub = parser.add_subparsers(dest="command", required=True)

    e = sub.add_parser("edit", help="edit an image inside a mask")
    e.add_argument("image", nargs="?", default=str(ASSETS / "sample.png"), help="input image (default: the bundled sample)")
    e.add_argument("--mask", default=None, help="mask PNG, white = edit (default: the bundled sample's mask)")
    e.add_argument("--prompt", default="a red star")
    e.add_argument("--sketch", default=None, help="RGBA sketch PNG of the image's size (strokes where opaque)")
    e.add_argument("--sketch-strength", type=float, default=1.0)
    e.add_argument("--steps", type=int, default=None)
    e.add_argument("--guidance", type=float, default=None)
    e.add_argument("--seed", type=int, default=None)
    e.add_argument("--scheduler", choices=("euler", "ddim"), default="euler")
    e.add_argument("--strategy", choices=("lazy", "regenerate_image", "regenerate_crop"), default="lazy")
    e.add_argument("--context-window", type=int, default=None, metavar="PX",
                   help="read at most PX x PX pixels of the image around the mask (default: the whole image)")
    _model_args(e)
    e.add_argument("-o", "--output", default="edited.png")

    b = sub.add_parser("bench", help="speed benchmark: lazy decoding against regenerating the image or a crop")
    b.add_argument("--config", choices=("tiny", "demo", "base"), default="demo")
    b.add_argument("--model", default=None, help="a model folder to time instead of the config's own weights")
    b.add_argument("--text-encoder", default=None, metavar="DIR",
                   help="a CLIP/T5 folder for the base config (default: stand-in features of T5's width and length)")
    b.add_argument("--size", type=int, default=1024)
    b.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    b.add_argument("--steps", type=int, default=None)
    b.add_argument("--quick", action="store_true", help="fewer repetitions")
    b.add_argument("--json", default=None, help="write the full report as JSON")
    b.add_argument("--plot", default=None, help="write a PNG plot of time against mask size")
    b.add_argument("--against", metavar="MODEL", default=None,
                   help="also time this model's 10%%-mask edit beside the benchmarked one, taking turns (JSON 'against')")
    b.add_argument("--context-window", type=int, default=None, metavar="PX",
                   help="instead: a --size canvas read whole against read through a window of PX pixels (the "
                        "service's --context-window), new masks and a new canvas, taking turns")

    for name in DELEGATED:
        sub.add_parser(name, help=f"see `lazyedit {name} --help`", add_help=False)
    return parser


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="demo", help="demo (default), tiny, or a model folder")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--vae", default=None, help="folder of a real AutoencoderKL (e.g. the SD-1.x VAE)")
    p.add_argument("--asym-vae", default=None, help="folder of an AsymmetricAutoencoderKL checkpoint")
    p.add_argument("--text-encoder", default=None, help="folder of a CLIP or T5 text encoder (+ tokenizer)")


def run_edit(args) -> int:
    from .engine import EditInputError, load_pipeline
    from .images import decode_canvas, decode_mask, decode_sketch, read_file

    limit = 1 << 30  # files named on the command line are the user's own: only the pixel cap applies
    try:
        image = decode_canvas(read_file(args.image, "image"), max_bytes=limit, max_pixels=4096 * 4096)
        mask_path = args.mask or (str(ASSETS / "sample_mask.png") if args.image == str(ASSETS / "sample.png") else None)
        if mask_path is None:
            raise EditInputError("empty_mask", "--mask is required for your own image")
        mask = decode_mask(read_file(mask_path, "mask"), size=image.size, max_bytes=limit)
        sketch = decode_sketch(read_file(args.sketch, "sketch"), size=image.size, max_bytes=limit) if args.sketch else None
        pipe = load_pipeline(args.model, device=args.device, vae=args.vae, asym_vae=args.asym_vae, text_encoder=args.text_encoder)
        if pipe.random_weights:
            print(f"warning: model {args.model!r} has no trained weights yet: the edit uses RANDOM weights", file=sys.stderr)
        pipe.use_scheduler(args.scheduler)
        pipe.context_window = args.context_window
        result = pipe.edit(
            image, mask, args.prompt, sketch=sketch, sketch_strength=args.sketch_strength, steps=args.steps,
            guidance=args.guidance, seed=args.seed, strategy=args.strategy,
            callback=lambda p: print(f"\rstep {p.step}/{p.total}", end="", file=sys.stderr, flush=True),
        )
    except EditInputError as err:
        print(f"\nerror [{err.code}]: {err.message}", file=sys.stderr)
        return 2
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(file=sys.stderr)
    result.image.save(args.output)
    timings = ", ".join(f"{k} {v}" for k, v in result.timings.items())
    print(f"wrote {args.output}: seed {result.seed}, box {result.box}, {result.hole_tokens}/{result.total_tokens} tokens; {timings}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if argv and argv[0] in DELEGATED:
        import importlib

        module, func = DELEGATED[argv[0]]
        return getattr(importlib.import_module(module), func)(argv[1:]) or 0
    args = build_parser().parse_args(argv)
    if args.command == "edit":
        return run_edit(args)
    if args.command == "bench":
        from .engine.bench import bench_main

        return bench_main(args)
    return 1


if __name__ == "__main__":
    sys.exit(main())
