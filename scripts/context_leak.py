"""Does a model copy the answer from the canvas around the hole? The lazy stage encodes the whole canvas, the
object included, and hides the hole only at the token level, after the VAE; latents beside the hole could carry
the object's shape into the context. This edits the held-out insert and box cases twice, on the clean canvas (as
the editor and `lazyedit eval` do) and on the truth (the object under the hole), and prints the scores of both.
A model that leans on such a leak scores far better on the second (docs/training.md, "From scratch").

    OMP_NUM_THREADS=2 python scripts/context_leak.py --model demo --size 256 --cases 90
"""
from __future__ import annotations

import argparse

import numpy as np

from lazyedit.engine import load_pipeline
from lazyedit.training.eval import case_canvas, case_truth, eval_cases, score_insert


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="demo")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--cases", type=int, default=90, help="held-out cases to draw from (a third are inserts)")
    a = p.parse_args()
    pipe = load_pipeline(a.model, device="cpu")
    scores: dict[tuple[str, str], list] = {}
    for case in (c for c in eval_cases(a.cases, size=a.size, box=True) if c.kind in ("insert", "box")):
        s = case.sample
        for canvas_name, canvas in (("clean canvas", case_canvas(case)), ("answer under the hole", case_truth(case))):
            out = np.asarray(pipe.edit(canvas, case.mask, prompt=s.caption, seed=case.index).image)
            sc = score_insert(out, np.asarray(s.removed), case.mask, s)
            scores.setdefault((case.kind, canvas_name), []).append((sc["shape_ok"], sc["colour_ok"], sc["sketch_iou"]))
    for (kind, canvas_name), rows in sorted(scores.items()):
        r = np.asarray(rows, float)
        print(f"{kind:6s} {canvas_name:22s} n={len(r)}  shape {r[:, 0].mean():.3f}  colour {r[:, 1].mean():.3f}  "
              f"object IoU {r[:, 2].mean():.3f}")


if __name__ == "__main__":
    main()
