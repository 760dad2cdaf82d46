"""`lazyedit bench`: LazyDiffusion's speed table, measured side by side in one run.

Per-step decoder time against mask size for the lazy decoder (hole tokens only), RegenerateImage (every
token) and RegenerateCrop (every token of a crop around the mask), each beside its FLOP-count ratio;
the components (context encoder, VAE encode, crop decode, text encoder); end-to-end edits; cache hit
against miss; peak memory.
"""

from __future__ import annotations

import json
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula

from .holes import plan_holes
from .loading import load_pipeline

MASK_FRACTIONS = (0.01, 0.05, 0.10, 0.25, 0.50, 1.00)


@register_flop_formula(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu)
def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    # The CPU flash-attention kernel has no formula in torch: QK^T and PV, 2 FLOPs per multiply-add.
    b, h, lq, d = query_shape
    return 4 * b * h * lq * key_shape[-2] * d


def square_mask(size: int, fraction: float) -> np.ndarray:
    """A centred square covering `fraction` of a size x size canvas."""
    side = max(1, round(size * fraction**0.5))
    mask = np.zeros((size, size), bool)
    o = (size - side) // 2
    mask[o : o + side, o : o + side] = True
    return mask


def sample_canvas(size: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    base = np.stack([x, y, 1 - x * y], -1) * 200 + rng.normal(0, 8, (size, size, 3))
    return Image.fromarray(base.clip(0, 255).astype(np.uint8))


class Timer:
    def __init__(self, device: str, min_time: float, min_reps: int, max_reps: int):
        self.device, self.min_time, self.min_reps, self.max_reps = device, min_time, min_reps, max_reps

    def __call__(self, fn) -> float:
        """Median milliseconds of fn() after one warm-up call."""
        fn()
        times, start = [], time.perf_counter()
        while len(times) < self.min_reps or (time.perf_counter() - start < self.min_time and len(times) < self.max_reps):
            if self.device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if self.device == "cuda":
                torch.cuda.synchronize()
            times.append((time.perf_counter() - t0) * 1000)
        return statistics.median(times)


def _decoder_inputs(pipe, num_tokens: int, grid: tuple[int, int]):
    tr = pipe.transformer
    dev, dtype = pipe.device, tr.dtype
    token_dim = tr.config.latent_channels * tr.config.patch_size**2
    text, text_mask = pipe.text.encode(["a red star"], dev)
    return dict(
        noisy_tokens=torch.randn(1, num_tokens, token_dim, device=dev, dtype=dtype),
        context=torch.randn(1, num_tokens, tr.config.context_dim, device=dev, dtype=dtype),
        token_index=torch.arange(num_tokens, device=dev)[None] % (grid[0] * grid[1]),
        grid=grid,
        timestep=torch.full((1,), 500.0, device=dev, dtype=dtype),
        text=text.to(dtype),
        text_mask=text_mask,
        guidance=torch.full((1,), pipe.default_guidance, device=dev, dtype=dtype) if pipe.guidance_distilled else None,
    )


def _flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def run_bench(config: str = "demo", size: int = 1024, device: str = "cpu", steps: int | None = None,
              quick: bool = False, model: str | None = None, progress=print, text_encoder: str | None = None) -> dict:
    # without a T5 folder the base config is timed on stand-in text features of T5's width and length: the
    # decoder's cost is the same, and encoding a prompt happens once per edit, not once per step
    pipe = load_pipeline(model or config, device=device, text_encoder=text_encoder, text_stand_in=True)
    pipe.set_progress_bar_config(disable=True)
    timer = Timer(device, min_time=0.2 if quick else 1.0, min_reps=1 if quick else 3, max_reps=50)
    unit = pipe.unit
    grid = (-(-size // unit), -(-size // unit))
    n_all = grid[0] * grid[1]
    steps = steps or pipe.default_steps
    image = sample_canvas(size)
    report: dict = {
        "config": config, "model": pipe.model_name, "random_weights": pipe.random_weights, "size": size,
        "device": device, "torch": torch.__version__, "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(), "tokens_full": n_all, "steps": steps,
        "guidance_distilled": pipe.guidance_distilled,  # one forward row per edit and step instead of two
        "text_encoder": "stand-in" if pipe.text_stand_in else text_encoder or "own",
        "date": time.strftime("%Y-%m-%d"),
    }
    if device == "cuda":
        report["gpu"] = torch.cuda.get_device_name()
        torch.cuda.reset_peak_memory_stats()

    # Per-step decoder: one forward of the transformer (batch 1, no guidance) at each mask size.
    rows = []
    full_inputs = _decoder_inputs(pipe, n_all, grid)
    with torch.no_grad():
        full_flops = _flops(lambda: pipe.transformer(**full_inputs))
        for fraction in MASK_FRACTIONS:
            progress(f"bench: decoder step at {fraction:.0%} mask")
            mask = square_mask(size, fraction)
            lazy_tokens = plan_holes(np.pad(mask, ((0, grid[0] * unit - size), (0, grid[1] * unit - size))), unit).num_tokens
            x0, y0, x1, y1 = pipe.crop_box(mask)
            crop_tokens = -(-(x1 - x0) // unit) * -(-(y1 - y0) // unit)
            row = {"mask_fraction": fraction, "lazy_tokens": lazy_tokens, "crop_tokens": crop_tokens, "image_tokens": n_all}
            for name, n in (("lazy", lazy_tokens), ("crop", crop_tokens)):
                inputs = _decoder_inputs(pipe, n, grid)
                row[f"{name}_ms"] = timer(lambda: pipe.transformer(**inputs))
                row[f"{name}_gflops"] = _flops(lambda: pipe.transformer(**inputs)) / 1e9
            # Timed again beside each row, so a ratio never mixes measurements far apart in time.
            row["image_ms"] = full_ms = timer(lambda: pipe.transformer(**full_inputs))
            row["image_gflops"] = full_flops / 1e9
            row["speedup_vs_image"] = full_ms / row["lazy_ms"]
            row["flop_ratio_vs_image"] = full_flops / 1e9 / row["lazy_gflops"]
            row["speedup_vs_crop"] = row["crop_ms"] / row["lazy_ms"]
            row["flop_ratio_vs_crop"] = row["crop_gflops"] / row["lazy_gflops"]
            rows.append(row)
    report["decoder_step"] = rows

    # Components at a 10% mask: stage timings of cold-cache edits (the pipeline's own code path), median.
    mask10 = square_mask(size, 0.10)
    progress("bench: components")
    cold = []
    for rep in range(1 if quick else 3):
        pipe.clear_caches()
        cold.append(pipe.edit(image, mask10, "a red star", steps=steps, seed=0, canvas_key="bench").timings)
    comps = {name: statistics.median(t[key] for t in cold) for name, key in
             (("vae_encode_ms", "vae_encode_ms"), ("context_encoder_ms", "context_ms"), ("crop_decode_ms", "decode_ms"))}
    with torch.no_grad():
        comps["text_encoder_ms"] = timer(lambda: pipe.text.encode(["a small blue heart"], pipe.device))
    report["components"] = comps

    # End to end at a 10% mask: a new mask on a cached canvas (what a user's next stroke costs), all three ways.
    progress("bench: end-to-end edits at a 10% mask")
    e2e = {}
    for strategy in ("lazy", "regenerate_crop", "regenerate_image"):
        def run(s=strategy):
            pipe.clear_mask_caches()  # a new mask each time: context and known pixels recomputed
            return pipe.edit(image, mask10, "a red star", steps=steps, seed=0, canvas_key="bench", strategy=s)
        e2e[f"{strategy}_ms"] = Timer(device, 0.0, 1 if quick else 2, 3)(run)
    e2e["speedup_vs_image"] = e2e["regenerate_image_ms"] / e2e["lazy_ms"]
    e2e["speedup_vs_crop"] = e2e["regenerate_crop_ms"] / e2e["lazy_ms"]
    report["end_to_end_10pct"] = e2e

    # Cache: the same canvas and mask with a new prompt (what Generate costs after a prepare) runs neither the
    # VAE encoder nor the context encoder nor the decoder's known-pixel branch.
    progress("bench: cache hit against miss")
    pipe.clear_caches()
    miss = pipe.edit(image, mask10, "a red star", steps=steps, seed=1, canvas_key="cache")
    hit = pipe.edit(image, mask10, "a blue ring", steps=steps, seed=1, canvas_key="cache")
    report["cache"] = {
        "miss_ms": miss.timings["total_ms"], "hit_ms": hit.timings["total_ms"],
        "hit_ran_vae_encoder": not hit.timings["latent_cache_hit"], "hit_ran_context_encoder": not hit.timings["context_cache_hit"],
        "hit_ran_known_pixels": hit.timings.get("known_pixels_ms", 0) > 0,
        "stats": pipe.cache_stats(),
    }

    # The interactive target: demo config, 512x512, 10% mask, default steps, new mask on a cached canvas.
    if size != 512 and config == "demo":
        progress("bench: 512x512 interactive edit")
        small, m512 = sample_canvas(512), square_mask(512, 0.10)
        pipe.edit(small, m512, "a red star", seed=0, canvas_key="small")

        def interactive():
            pipe.clear_mask_caches()
            return pipe.edit(small, m512, "a red star", seed=0, canvas_key="small")

        report["interactive_512_10pct_ms"] = Timer(device, 1.0, 3, 10)(interactive)

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report["peak_memory_mb"] = {"process_rss": round(peak, 1)}
    if device == "cuda":
        report["peak_memory_mb"]["cuda_allocated"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return report


def run_against(model: str, other: str, size: int = 512, device: str = "cpu", steps: int | None = None,
                reps: int = 5, progress=print) -> dict:
    """Two models side by side: the same 10%-mask edit, the models taking turns rep by rep so that a noisy
    machine slows both alike. Each turn edits a new mask on a cached canvas, then the same mask again with
    another prompt (``prepared_total_ms``: what Generate costs once the mask was prepared). Medians of each
    stage, and the ratios."""
    pipes = {name: load_pipeline(name, device=device) for name in (model, other)}
    image, mask = sample_canvas(size), square_mask(size, 0.10)
    stages = ("context_ms", "denoise_ms", "decode_ms", "total_ms")
    times: dict = {name: {k: [] for k in (*stages, "prepared_total_ms")} for name in pipes}
    for rep in range(reps + 1):  # the first is a warm-up (it also encodes and caches the canvas)
        progress(f"bench: side by side, round {rep} of {reps}")
        for name, pipe in pipes.items():
            pipe.clear_mask_caches()
            t = pipe.edit(image, mask, "a red star", steps=steps, seed=0, canvas_key="against").timings
            prepared = pipe.edit(image, mask, "a blue ring", steps=steps, seed=0, canvas_key="against").timings
            if rep:
                for k in stages:
                    times[name][k].append(t[k])
                times[name]["prepared_total_ms"].append(prepared["total_ms"])
    out = {name: {"guidance_distilled": pipe.guidance_distilled, "steps": steps or pipe.default_steps,
                  **{k: statistics.median(v) for k, v in times[name].items()}}
           for name, pipe in pipes.items()}
    return {"models": [model, other], "size": size, "reps": reps, "median_ms": out,
            "total_ratio": out[model]["total_ms"] / out[other]["total_ms"],
            "prepared_total_ratio": out[model]["prepared_total_ms"] / out[other]["prepared_total_ms"]}


WINDOW_MASK_FRACTIONS = (0.01, 0.03, 0.10)


def run_window_bench(config: str = "demo", size: int = 2048, side: int = 1024, device: str = "cpu",
                     steps: int | None = None, quick: bool = False, model: str | None = None, progress=print) -> dict:
    """A large canvas read whole (as in the paper) against read through a context window of `side` pixels,
    the two taking turns rep by rep: a new mask on an encoded canvas (the person's next stroke) at a few mask
    sizes, and the first edit of a new canvas. Medians of the pipeline's stage timings, and the ratios."""
    pipe = load_pipeline(model or config, device=device, text_stand_in=True)
    pipe.set_progress_bar_config(disable=True)
    image = sample_canvas(size)
    reps = 1 if quick else 3
    modes = {"whole": None, "window": side}
    stages = ("vae_encode_ms", "context_ms", "denoise_ms", "decode_ms", "total_ms", "tokens_read")

    def edit(mask, mode, key):
        pipe.context_window = modes[mode]
        try:
            result = pipe.edit(image, mask, "a red star", steps=steps, seed=0, canvas_key=key)
            return {**result.timings, "tokens_read": result.total_tokens}
        finally:
            pipe.context_window = None

    rows = []
    for fraction in WINDOW_MASK_FRACTIONS:
        mask = square_mask(size, fraction)
        times = {mode: {k: [] for k in stages} for mode in modes}
        for rep in range(reps + 1):  # the first encodes each mode's canvas (or window) and is not counted
            progress(f"bench: {fraction:.0%} mask, round {rep} of {reps}")
            for mode in modes:
                pipe.clear_mask_caches()
                t = edit(mask, mode, "window-bench")
                if rep:
                    for k in stages:
                        times[mode][k].append(t.get(k, 0.0))
        row = {"mask_fraction": fraction,
               **{f"{mode}_{k}": statistics.median(v) for mode in modes for k, v in times[mode].items()}}
        row["speedup"] = row["whole_total_ms"] / row["window_total_ms"]
        rows.append(row)

    progress("bench: the first edit of a new canvas, each way")
    mask = square_mask(size, 0.03)
    new_canvas = {}
    for mode in modes:
        pipe.clear_caches()
        new_canvas[f"{mode}_ms"] = edit(mask, mode, f"new-{mode}")["total_ms"]
    new_canvas["speedup"] = new_canvas["whole_ms"] / new_canvas["window_ms"]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"config": config, "model": pipe.model_name, "size": size, "context_window": side, "device": device,
            "steps": steps or pipe.default_steps, "reps": reps, "threads": torch.get_num_threads(),
            "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "new_mask": rows,
            "new_canvas_3pct": new_canvas, "peak_memory_mb": {"process_rss": round(peak, 1)}}


def format_window_table(report: dict) -> str:
    lines = [f"lazyedit bench: {report['size']}x{report['size']} canvas read whole against a {report['context_window']} px "
             f"context window ({report['model']}, {report['device']}, {report['steps']} steps; median ms of {report['reps']})",
             "", "new mask      whole: context  denoise  decode  total | window: context  denoise  decode  total | speedup"]
    for r in report["new_mask"]:
        lines.append(f"  {r['mask_fraction']:>4.0%}        " + " | ".join(
            f"{r[f'{m}_context_ms']:>14.0f} {r[f'{m}_denoise_ms']:>8.0f} {r[f'{m}_decode_ms']:>7.0f} {r[f'{m}_total_ms']:>6.0f}"
            for m in ("whole", "window")) + f" | {r['speedup']:.2f}x")
    n = report["new_canvas_3pct"]
    lines += ["", f"first edit of a new canvas, 3% mask: whole {n['whole_ms']:.0f} ms, window {n['window_ms']:.0f} ms "
                  f"({n['speedup']:.2f}x)", f"peak memory (MB): {report['peak_memory_mb']}"]
    return "\n".join(lines)


def format_table(report: dict) -> str:
    lines = [f"lazyedit bench: config={report['config']} size={report['size']} device={report['device']} "
             f"tokens={report['tokens_full']} steps={report['steps']}" + ("  (RANDOM weights)" if report["random_weights"] else ""),
             "", "per-step decoder (ms)            lazy   crop  image | speedup vs image (FLOP ratio) | vs crop (FLOP ratio)"]
    for r in report["decoder_step"]:
        lines.append(
            f"  mask {r['mask_fraction']:>5.0%} {r['lazy_tokens']:>6} tok {r['lazy_ms']:>9.1f} {r['crop_ms']:>6.1f} {r['image_ms']:>6.1f} |"
            f" {r['speedup_vs_image']:>6.2f}x ({r['flop_ratio_vs_image']:>6.2f}x)         | {r['speedup_vs_crop']:>5.2f}x ({r['flop_ratio_vs_crop']:>5.2f}x)"
        )
    c = report["components"]
    lines += ["", "components (ms): " + ", ".join(f"{k[:-3]} {v:.1f}" for k, v in c.items() if v is not None)]
    e = report["end_to_end_10pct"]
    lines += [f"end to end, 10% mask (ms): lazy {e['lazy_ms']:.0f}, regenerate crop {e['regenerate_crop_ms']:.0f}, "
              f"regenerate image {e['regenerate_image_ms']:.0f}  -> {e['speedup_vs_image']:.2f}x vs image, {e['speedup_vs_crop']:.2f}x vs crop"]
    k = report["cache"]
    lines += [f"cache: miss {k['miss_ms']:.0f} ms, hit {k['hit_ms']:.0f} ms (hit ran VAE encoder: {k['hit_ran_vae_encoder']}, "
              f"context encoder: {k['hit_ran_context_encoder']}, known-pixel branch: {k['hit_ran_known_pixels']})"]
    if "interactive_512_10pct_ms" in report:
        lines += [f"interactive edit, 512x512, 10% mask, new mask on a cached canvas: {report['interactive_512_10pct_ms']:.0f} ms"]
    lines += [f"peak memory (MB): {report['peak_memory_mb']}"]
    if "against" in report:
        a = report["against"]
        lines += ["", f"side by side, {a['size']}x{a['size']}, 10% mask, new mask on a cached canvas (median ms of {a['reps']}):"]
        for name, m in a["median_ms"].items():
            lines.append(f"  {name}: context {m['context_ms']:.0f}, denoise {m['denoise_ms']:.0f}, decode {m['decode_ms']:.0f}, "
                         f"total {m['total_ms']:.0f}; prepared mask {m['prepared_total_ms']:.0f} ({m['steps']} steps"
                         + (", guidance-distilled)" if m["guidance_distilled"] else ")"))
        lines.append(f"  total {a['models'][0]} / {a['models'][1]}: {a['total_ratio']:.2f}x; "
                     f"prepared {a['prepared_total_ratio']:.2f}x")
    return "\n".join(lines)


def plot(report: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["decoder_step"]
    f = [r["mask_fraction"] * 100 for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    a.plot(f, [r["lazy_ms"] for r in rows], "o-", label="LazyDiffusion (hole tokens)")
    a.plot(f, [r["crop_ms"] for r in rows], "s-", label="RegenerateCrop")
    a.plot(f, [r["image_ms"] for r in rows], "^-", label="RegenerateImage")
    a.set_xscale("log"); a.set_yscale("log")
    a.set_xlabel("mask (% of image)"); a.set_ylabel("ms per denoising step"); a.legend(); a.grid(alpha=0.3)
    a.set_title(f"{report['config']} config, {report['size']}x{report['size']}, {report['device']}")
    b.plot(f, [r["speedup_vs_image"] for r in rows], "o-", label="measured speedup vs image")
    b.plot(f, [r["flop_ratio_vs_image"] for r in rows], "k--", label="FLOP ratio vs image")
    b.plot(f, [r["speedup_vs_crop"] for r in rows], "s-", label="measured speedup vs crop")
    b.plot(f, [r["flop_ratio_vs_crop"] for r in rows], "k:", label="FLOP ratio vs crop")
    b.axhline(1, color="grey", lw=0.8)
    b.set_xscale("log"); b.set_yscale("log"); b.set_xlabel("mask (% of image)"); b.set_ylabel("x faster per step")
    b.legend(); b.grid(alpha=0.3); b.set_title("speedup per step")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_window(report: dict, path: str) -> None:
    """Stacked stage times of a new mask, whole canvas beside context window, per mask size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["new_mask"]
    stages = (("context_ms", "context encoder"), ("denoise_ms", "denoising"), ("decode_ms", "decoding"))
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for i, r in enumerate(rows):
        for j, mode in enumerate(("whole", "window")):
            x, bottom = i * 3 + j, 0.0
            for k, (key, label) in enumerate(stages):
                v = r[f"{mode}_{key}"] / 1000
                ax.bar(x, v, bottom=bottom, color=f"C{k}", label=label if i == 0 and j == 0 else None)
                bottom += v
            rest = r[f"{mode}_total_ms"] / 1000 - bottom
            ax.bar(x, max(rest, 0), bottom=bottom, color="0.8", label="the rest (medians of the total and stages differ)" if i == 0 and j == 0 else None)
    ax.set_xticks([i * 3 + j for i in range(len(rows)) for j in (0, 1)],
                  [f"{r['mask_fraction']:.0%}\n{m}" for r in rows for m in ("whole", f"{report['context_window']} px")])
    ax.set_ylabel("seconds for a new mask")
    ax.set_title(f"{report['size']}x{report['size']} canvas, {report['model']} model, {report['device']}")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def bench_main(args) -> int:
    def progress(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    if args.context_window:
        report = run_window_bench(args.config, args.size, args.context_window, args.device, args.steps, args.quick,
                                  args.model, progress)
        table, draw = format_window_table(report), plot_window
    else:
        report = run_bench(args.config, args.size, args.device, args.steps, args.quick, args.model, progress,
                           text_encoder=args.text_encoder)
        if args.against:
            report["against"] = run_against(args.against, args.model or args.config, args.size, args.device,
                                            args.steps, 3 if args.quick else 7, progress)
        table, draw = format_table(report), plot
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    if args.plot:
        draw(report, args.plot)
        print(f"wrote {args.plot}")
    return 0
