"""`lazyedit train`: train the stages of a lazyedit model (see docs/training.md).

    lazyedit train vae          --config demo --output runs/demo
    lazyedit train asym-decoder --config demo --output runs/demo
    lazyedit train lazy         --config demo --output runs/demo
    lazyedit train sketch       --config demo --output runs/demo
    lazyedit train all          --config demo --output runs/demo    # the four in order, each resumable

Multi-GPU: `accelerate launch --multi_gpu -m lazyedit.training.cli lazy --config base ...` (same flags).
Several processes on a CPU: `torchrun --standalone --nproc_per_node 2 -m lazyedit.training.cli lazy ...`
(`accelerate launch --cpu` starts only one process).
The result, <output>/model, is a LazyEditPipeline folder: load_pipeline("<output>/model").
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import logging
import os
import signal
import sys

from .data import batch_sizes, canvas_sizes
from .masks import REMOVAL_FRACTION
from .world import colour_names, shape_names
from .trainer import BACKBONE_COMPONENTS, CORE_STAGES, STAGE_DEFAULTS, STAGES, TrainArgs, average_pipelines, export_pipeline, ship_pipeline


def fraction(text: str) -> float:
    """argparse type of the probability / fraction flags: a number from 0 to 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a fraction from 0 to 1")
    return value


def every(text: str) -> int:
    """argparse type of the --*-every flags: a whole number of steps, at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of steps") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: the period must be at least 1 step")
    return value


def _sizes(text: str) -> tuple[int, ...]:
    """argparse type of --resolution: one size in pixels, or several separated by commas."""
    try:
        return canvas_sizes(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _counts(text: str) -> tuple[int, ...]:
    """argparse type of --batch-size: one count, or several separated by commas (checked against --resolution later)."""
    try:
        return batch_sizes(text, len(text.split(",")))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _world_names_type(parse):
    """argparse type from a world names parser (shape_names, colour_names): its ValueError as argparse's error."""
    def names(text: str) -> tuple[str, ...]:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return names


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="lazyedit train", description="Train a lazyedit model stage by stage.")
    p.add_argument("stage", choices=(*STAGES, "all", "export", "ship", "average"),
                   help="stage to train; 'all' runs vae, asym-decoder, lazy, sketch in order (distill is optional); 'export' only writes the pipeline "
                        "index; 'ship' copies <output>/model as fp16 to --dest (default: the bundled demo model's folder); "
                        "'average' writes to --dest the first of --average's two pipeline folders with its --average-components "
                        "averaged with the second's (fp16)")
    p.add_argument("--dest", help="with 'ship' and 'average': destination folder")
    p.add_argument("--average", metavar="FIRST,SECOND", help="with 'average': two pipeline folders of one architecture")
    p.add_argument("--average-weight", type=fraction, default=0.5, help="with 'average': the second folder's share (0..1)")
    p.add_argument("--average-components", default=",".join(BACKBONE_COMPONENTS),
                   help="with 'average': the components averaged (the others are the first folder's)")
    p.add_argument("--config", default="demo", help="model config: tiny, demo (default), demo-light (demo with a lighter decoder), base")
    p.add_argument("--output", default="runs/demo", help="run folder; the model goes to <output>/model")
    p.add_argument("--data", default="world", help="'world' (procedural, default) or a folder of images with .txt captions")
    p.add_argument("--resolution", type=_sizes, help="training canvas size in pixels (a multiple of 16), or several "
                   "separated by commas (128,256) that take turns batch by batch; default per stage: "
                   + ", ".join(f"{k} {v[0]}" for k, v in STAGE_DEFAULTS.items()))
    p.add_argument("--batch-size", type=_counts, help="per-process batch size (default per stage), or one per --resolution "
                   "size (4,4,1 with 128,256,512: fewer items on the larger canvases)")
    p.add_argument("--steps", type=int, help="total optimizer steps of the stage (default per stage: "
                   + ", ".join(f"{k} {v[2]}" for k, v in STAGE_DEFAULTS.items()) + ")")
    p.add_argument("--lr", type=float, help="learning rate (default per stage)")
    p.add_argument("--warmup", type=int, default=100, help="linear warm-up steps")
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--max-minutes", type=float, help="stop (after a checkpoint) once this much wall clock has passed; rerun to resume")
    p.add_argument("--save-every", type=every, default=200, help="checkpoint + export every N steps")
    p.add_argument("--sample-every", type=every, default=200, help="write a sample grid PNG every N steps")
    p.add_argument("--log-every", type=every, default=10, help="TensorBoard scalars every N steps")
    p.add_argument("--keep-checkpoints", type=int, default=2)
    p.add_argument("--mixed-precision", default="auto", choices=("auto", "no", "fp16", "bf16"),
                   help="auto: bf16 on GPUs that support it, fp16 on other GPUs, none on CPU")
    p.add_argument("--seed", type=int, default=0, help="world seed and torch seed")
    p.add_argument("--num-workers", type=int, default=0, help="data-loader worker processes (0 on a shared CPU)")
    p.add_argument("--resume", default="auto", help="'auto' (latest checkpoint of the stage), 'never', or a checkpoint folder")
    p.add_argument("--text-dropout", type=fraction, default=0.1, help="lazy and distill stages: the probability that a caption is replaced by the model's null prompt (lazy: the unconditional row of guidance; distill: its guided velocity is the unconditional one)")
    p.add_argument("--position-grid", type=int, default=0,
                   help="lazy/sketch/distill: train the token positions of canvases up to this many tokens wide by placing each "
                        "crop at a random offset (demo: 32 = 512 px); 0 = the crop's own positions only")
    p.add_argument("--large-objects", type=fraction, default=0.0,
                   help="lazy/sketch/distill on the world: the fraction of scenes drawn with objects 2-3x larger, as big as "
                        "they are on a canvas 4x the training size (demo: 0.4 at 128 px for 512 px canvases)")
    p.add_argument("--generated-latents", type=fraction, default=0.0,
                   help="asym-decoder: the fraction of batches that decode edits whose hole latents the trained backbone "
                        "sampled (with the model's steps, guidance and shift), so the decoder learns to join the "
                        "generator's latents, not only the encoder's, to the known pixels; needs the lazy stage")
    p.add_argument("--generated-sketches", type=fraction, default=0.0,
                   help="asym-decoder with --generated-latents: the fraction of those edits (the ones with an object "
                        "and its outline) sampled with their sketch through the frozen sketch tuner, so the decoder "
                        "also learns the latents sketches steer; needs the sketch stage")
    p.add_argument("--decoder-teacher", type=float, default=0.0, metavar="WEIGHT",
                   help="asym-decoder with --init-from: the weight of the decoder's loss against the --init-from model's "
                        "decoder on the same latents and pixels (a narrower decoder learning from the wider one it "
                        "was cut from; scored as against the truth, hole and rim weighted); 0 = none")
    p.add_argument("--adversarial", type=float, default=0.0, metavar="WEIGHT",
                   help="asym-decoder: the weight of a PatchGAN term on the decoded hole (a discriminator trained beside "
                        "the decoder), for sharp outlines and stripes where L1 paints their blurred mean; 0 = none")
    p.add_argument("--adversarial-start", type=int, default=100, metavar="STEP",
                   help="asym-decoder with --adversarial: the step the decoder's adversarial term starts at (the "
                        "discriminator trains alone before it)")
    p.add_argument("--edge-weight", type=float, default=0.0, metavar="WEIGHT",
                   help="vae / asym-decoder: the weight of an L1 term on the image's pixel differences (edges), so "
                        "thin outlines and shadow edges weigh more than their share of pixels; 0 = none")
    p.add_argument("--init-from", metavar="DIR",
                   help="fine-tune a pipeline folder (e.g. backend/lazyedit/weights/demo): it fills in the components "
                        "<output>/model lacks, and the stage's trained components start from its weights (the lazy stage "
                        "starts a guidance-distilled transformer, as the demo's, from its prediction at guidance 1)")
    p.add_argument("--components-from", metavar="DIR",
                   help="retrain a stage from scratch on another model's frozen parts: the pipeline folder fills in the "
                        "components <output>/model lacks, but the stage's own components start from a fresh init "
                        "(asym-decoder, lazy, sketch; exclusive with --init-from)")
    p.add_argument("--focus-shapes", type=_world_names_type(shape_names), default=(),
                   help="lazy/sketch on the world: comma-separated shapes (e.g. star,ring,cross) that --focus-fraction "
                        "of the scenes are drawn from, to oversample the shapes a model misses")
    p.add_argument("--focus-colours", type=_world_names_type(colour_names), default=(),
                   help="lazy/sketch on the world: comma-separated colours (e.g. orange,yellow) that --focus-fraction "
                        "of the scenes are drawn from (with --focus-shapes too: both), to oversample the colours a "
                        "model misses")
    p.add_argument("--focus-fraction", type=fraction, default=0.0,
                   help="the fraction of scenes drawn from --focus-shapes and/or --focus-colours")
    p.add_argument("--loose-masks", type=fraction, default=0.0,
                   help="lazy/sketch/distill on the world: the fraction of named-object edits masked by a loose box "
                        "around the object instead of its grown shape, so the caption must give the shape (a box "
                        "is what people drag); 0 = none")
    p.add_argument("--strip-masks", type=fraction, default=0.0,
                   help="lazy/distill on the world: the fraction of edits that outpaint a band along one side (10 to "
                        "40%% deep, no caption), as the editor's Expand asks; 0 = none")
    p.add_argument("--removal-fraction", type=fraction, default=REMOVAL_FRACTION,
                   help="lazy/distill on the world: the fraction of object-masked edits that are removals (empty "
                        "caption, the scene without the object for a target); default %(default)s")
    p.add_argument("--timestep-shift", type=float, default=1.0,
                   help="lazy/sketch/distill: move the training noise levels toward pure noise by this factor, with "
                        "the map the sampler's shift applies (the demo config samples with 3), so the first sampling "
                        "steps, where a shape is decided, are trained as often as they are taken; 1 = logit-normal")
    p.add_argument("--pooled-text", action="store_true",
                   help="lazy: also feed the transformer the mean of the caption's tokens through its timestep "
                        "vector (a global condition, as SD3's pooled text), beside cross-attention; added "
                        "zero-initialised to a transformer from --init-from")
    p.add_argument("--hole-positions", action="store_true",
                   help="lazy: also give each hole token its place in the hole's box (-1..1 across it) and the box's "
                        "size, so a shape the caption names can be drawn to fit the box a person masked; added "
                        "zero-initialised to a transformer from --init-from")
    p.add_argument("--mask-detail", action="store_true",
                   help="lazy: also give the context encoder which pixels of each token are masked (4x4 cells a "
                        "token), so the outline a person paints reaches the generator finer than whole tokens; "
                        "added zero-initialised to a context encoder from --init-from")
    p.add_argument("--added-input-lr", type=float, default=None,
                   help="lazy: learning rate of the added inputs (--pooled-text, --hole-positions, --mask-detail); "
                        "default --lr (a zero-initialised module grows slowly at a fine-tune's rate)")
    p.add_argument("--sample-steps", type=int, default=12)
    p.add_argument("--sample-guidance", type=float, default=2.0)
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    p.add_argument("--steps-per-stage", default=None,
                   help="with 'all': JSON dict stage -> steps, e.g. '{\"vae\": 2000, \"lazy\": 9000}'")
    return p


def _args_for(ns: argparse.Namespace, stage: str) -> TrainArgs:
    steps = ns.steps
    if ns.stage == "all" and ns.steps_per_stage:
        steps = json.loads(ns.steps_per_stage).get(stage, steps)
    return TrainArgs(
        stage=stage,
        config=ns.config,
        output=ns.output,
        data=ns.data,
        resolution=ns.resolution if ns.stage != "all" else None,
        batch_size=ns.batch_size,
        steps=steps,
        lr=ns.lr,
        warmup=ns.warmup,
        grad_clip=ns.grad_clip,
        ema_decay=ns.ema_decay,
        max_minutes=ns.max_minutes,
        save_every=ns.save_every,
        sample_every=ns.sample_every,
        log_every=ns.log_every,
        keep_checkpoints=ns.keep_checkpoints,
        mixed_precision=ns.mixed_precision,
        seed=ns.seed,
        num_workers=ns.num_workers,
        resume=ns.resume,
        text_dropout=ns.text_dropout,
        position_grid=ns.position_grid,
        large_objects=ns.large_objects,
        generated_latents=ns.generated_latents,
        generated_sketches=ns.generated_sketches,
        decoder_teacher=ns.decoder_teacher,
        adversarial=ns.adversarial,
        adversarial_start=ns.adversarial_start,
        edge_weight=ns.edge_weight,
        sample_steps=ns.sample_steps,
        sample_guidance=ns.sample_guidance,
        progress=not ns.no_progress,
        init_from=ns.init_from,
        components_from=ns.components_from,
        focus_shapes=ns.focus_shapes,
        focus_colours=ns.focus_colours,
        focus_fraction=ns.focus_fraction,
        loose_masks=ns.loose_masks,
        strip_masks=ns.strip_masks,
        removal_fraction=ns.removal_fraction,
        timestep_shift=ns.timestep_shift,
        pooled_text=ns.pooled_text,
        hole_positions=ns.hole_positions,
        mask_detail=ns.mask_detail,
        added_input_lr=ns.added_input_lr,
    )


def run(ns: argparse.Namespace) -> int:
    from .trainer import train_stage

    if hasattr(signal, "SIGUSR1"):  # a run that seems stuck: `kill -USR1 PID` prints where every thread is
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    main_process = int(os.environ.get("RANK", "0")) == 0
    logging.basicConfig(level=logging.INFO if main_process else logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for noisy in ("accelerate", "diffusers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if ns.stage == "export":
        ok = export_pipeline(ns.output, ns.config)
        print(f"{ns.output}/model: {'pipeline written' if ok else 'vae, text_encoder, context_encoder and transformer are not all trained yet'}")
        return 0 if ok else 1
    if ns.stage == "average":
        folders = [f for f in (ns.average or "").split(",") if f]
        if len(folders) != 2 or not ns.dest:
            print("lazyedit train average: give --average FIRST,SECOND (two pipeline folders) and --dest", file=sys.stderr)
            return 2
        components = tuple(c for c in ns.average_components.split(",") if c)
        try:
            dest = average_pipelines(*folders, ns.dest, ns.average_weight, components)
        except (OSError, ValueError) as exc:
            print(f"lazyedit train average: {exc}", file=sys.stderr)
            return 2
        print(f"{folders[0]} + {ns.average_weight} x ({folders[1]} - {folders[0]}) [{', '.join(components)}] -> {dest} (fp16)")
        return 0
    if ns.stage == "ship":
        dest = ship_pipeline(ns.output, ns.dest)
        size = sum(f.stat().st_size for f in dest.rglob("*") if f.is_file())
        print(f"{ns.output}/model -> {dest} (fp16, {size / 2**20:.1f} MiB)")
        return 0
    stages = CORE_STAGES if ns.stage == "all" else (ns.stage,)
    for stage in stages:
        result = train_stage(_args_for(ns, stage))
        if main_process:  # one line per stage, not one per training process
            print(f"[lazyedit train] {stage}: step {result['step']}"
                  + (" (done)" if result["done"] else " (stopped, rerun to resume)"), flush=True)
        if not result["done"]:
            return 0
    return 0


def train_main(argv: list[str] | None = None) -> int:
    """Entry point of `lazyedit train` (argv without the leading 'train')."""
    ns = build_parser().parse_args(argv)
    return run(ns)


if __name__ == "__main__":
    sys.exit(train_main())
