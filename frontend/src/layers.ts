// Image-resolution layers kept as offscreen canvases, plus the vector ops that draw into them.
import { strokeOutline, type Point, type Polygon, type StrokeStyle } from "./geometry";
import { invertRGBA, MASK_TINT } from "./mask";

export type LayerName = "mask" | "sketch";

export type LayerOp =
  | { kind: "stroke"; layer: LayerName; erase: boolean; points: Point[]; style: StrokeStyle; color: string }
  | { kind: "poly"; layer: LayerName; erase: boolean; poly: Polygon; color: string }
  | { kind: "invert"; layer: LayerName }
  | { kind: "clear"; layer: LayerName }
  | { kind: "bitmap"; layer: LayerName; pixels: ImageData };

export const MASK_COLOR = `rgb(${MASK_TINT.r},${MASK_TINT.g},${MASK_TINT.b})`;

export function makeCanvas(w: number, h: number): HTMLCanvasElement {
  const c = document.createElement("canvas");
  c.width = w;
  c.height = h;
  return c;
}

export function ctx2d(c: HTMLCanvasElement, willRead = false): CanvasRenderingContext2D {
  const ctx = c.getContext("2d", { willReadFrequently: willRead });
  if (!ctx) throw new Error("Canvas 2D is not available");
  return ctx;
}

export function fillPolygon(ctx: CanvasRenderingContext2D, poly: Polygon, color: string, erase: boolean): void {
  if (poly.length < 3) return;
  ctx.save();
  ctx.globalCompositeOperation = erase ? "destination-out" : "source-over";
  ctx.fillStyle = color;
  ctx.beginPath();
  ctx.moveTo(poly[0][0], poly[0][1]);
  for (let i = 1; i < poly.length; i++) ctx.lineTo(poly[i][0], poly[i][1]);
  ctx.closePath();
  ctx.fill();
  ctx.restore();
}

/** Apply one op to a canvas (the layer itself, or its flattened base). */
export function applyOp(canvas: HTMLCanvasElement, op: LayerOp): void {
  const ctx = ctx2d(canvas);
  switch (op.kind) {
    case "stroke":
      fillPolygon(ctx, strokeOutline(op.points, op.style), op.color, op.erase);
      break;
    case "poly":
      fillPolygon(ctx, op.poly, op.color, op.erase);
      break;
    case "clear":
      ctx.clearRect(0, 0, canvas.width, canvas.height);
      break;
    case "invert": {
      const img = ctx.getImageData(0, 0, canvas.width, canvas.height);
      invertRGBA(img.data);
      ctx.putImageData(img, 0, 0);
      break;
    }
    case "bitmap":
      ctx.putImageData(op.pixels, 0, 0);
      break;
  }
}

/** Whether an op leaves the layer with visible content for sure / clears it. */
function contentAfter(prev: boolean, op: LayerOp): boolean {
  if (op.kind === "clear") return false;
  if (op.kind === "stroke" || op.kind === "poly") return prev || !op.erase;
  return true; // invert and bitmap: assume content (cheap, conservative)
}

let nextVersion = 1;

export class Layer {
  readonly canvas: HTMLCanvasElement;
  /** Ops that fell off the capped undo stack are flattened here; null = blank. */
  private base: HTMLCanvasElement | null = null;
  private baseHasContent = false;
  hasContent = false;
  /** New on every change of the pixels, so views can cache what they drew from it; unique across layers, so a
   * layer that replaces another (a new image, another session) never matches a cache of the old one. */
  version = nextVersion++;

  constructor(
    public readonly name: LayerName,
    public readonly width: number,
    public readonly height: number,
  ) {
    this.canvas = makeCanvas(width, height);
  }

  apply(op: LayerOp): void {
    applyOp(this.canvas, op);
    this.hasContent = contentAfter(this.hasContent, op);
    this.version = nextVersion++;
  }

  flatten(op: LayerOp): void {
    if (!this.base) this.base = makeCanvas(this.width, this.height);
    applyOp(this.base, op);
    this.baseHasContent = contentAfter(this.baseHasContent, op);
  }

  /** Redraw from the flattened base and the given ops (those of other layers are skipped). */
  rebuild(ops: readonly LayerOp[]): void {
    const ctx = ctx2d(this.canvas);
    ctx.clearRect(0, 0, this.width, this.height);
    if (this.base) ctx.drawImage(this.base, 0, 0);
    let has = this.baseHasContent;
    for (const op of ops) {
      if (op.layer !== this.name) continue;
      applyOp(this.canvas, op);
      has = contentAfter(has, op);
    }
    this.hasContent = has;
    this.version = nextVersion++;
  }

  private png: { version: number; bytes: Promise<Uint8Array> } | null = null;

  /** The layer as PNG, encoded once per version: the prepare sent after a stroke and the edit sent after it
   * share one encoding (a large mask takes a while to compress). */
  toPNG(): Promise<Uint8Array> {
    if (this.png?.version !== this.version) {
      const entry = { version: this.version, bytes: canvasToPNG(this.canvas) };
      entry.bytes.catch(() => {
        if (this.png === entry) this.png = null; // a failed encoding is retried next time
      });
      this.png = entry;
    }
    return this.png.bytes;
  }
}

export function canvasToPNG(c: HTMLCanvasElement): Promise<Uint8Array> {
  return new Promise((resolve, reject) => {
    c.toBlob(async (b) => {
      if (!b) return reject(new Error("PNG encoding failed"));
      resolve(new Uint8Array(await b.arrayBuffer()));
    }, "image/png");
  });
}

export async function decodeImage(bytes: Uint8Array | Blob, mime = "image/png"): Promise<ImageBitmap> {
  const blob = bytes instanceof Blob ? bytes : new Blob([bytes as Uint8Array<ArrayBuffer>], { type: mime });
  return createImageBitmap(blob);
}
