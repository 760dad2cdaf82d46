// Canvas view: pan/zoom, tools, incremental stroke drawing, compositing. Framework-free.
import {
  fitView, polygonBounds, rectPolygon, screenToImage, strokeOutline, zoomAt,
  type Point, type Polygon, type StrokeStyle, type ViewTransform,
} from "./geometry";
import { ctx2d, fillPolygon, Layer, makeCanvas, MASK_COLOR, type LayerName, type LayerOp } from "./layers";
import type { Box } from "./protocol";

export type Tool = "brush" | "eraser" | "rect" | "lasso" | "sketch";

interface ActiveStroke {
  layer: LayerName;
  erase: boolean;
  points: Point[];
  style: StrokeStyle;
  color: string;
  drawnTo: number; // points before this index are already drawn into the live canvas
  bounds: [number, number, number, number];
}

interface ActiveShape {
  kind: "rect" | "lasso";
  erase: boolean;
  start: [number, number];
  points: [number, number][];
}

export interface Overlay {
  bitmap: ImageBitmap;
  box: Box;
}

class Ring {
  private a: number[] = [];
  constructor(private n: number) {}
  push(v: number) {
    this.a.push(v);
    if (this.a.length > this.n) this.a.shift();
  }
  values() {
    return this.a.slice();
  }
  clear() {
    this.a.length = 0;
  }
  get length() {
    return this.a.length;
  }
}

const MASK_ALPHA = 0.45;

export class Editor {
  readonly el: HTMLCanvasElement;
  private ctx: CanvasRenderingContext2D;
  image: HTMLCanvasElement | null = null;
  mask: Layer | null = null;
  sketch: Layer | null = null;
  // Screen-resolution buffers. Image-resolution canvases (up to 4096x4096) are only read when the
  // view or their content changes; while a stroke is drawn only the screen-size live buffer changes.
  private live: HTMLCanvasElement; // the stroke being drawn, screen resolution
  private liveKey = ""; // view the live buffer was drawn with
  private scratch: HTMLCanvasElement; // compositing buffer for the mask overlay
  private baseCache: HTMLCanvasElement; // image + preview/result
  private maskCache: HTMLCanvasElement; // opaque mask layer
  private sketchCache: HTMLCanvasElement; // sketch layer
  private baseKey = "";
  private maskKey = "";
  private sketchKey = "";
  private imageVersion = 0;
  view: ViewTransform = { scale: 1, ox: 0, oy: 0 };
  private dpr = 1;
  private cssW = 0;
  private cssH = 0;

  tool: Tool = "brush";
  brushSize = 40;
  sketchSize = 8;
  sketchColor = "#1e64ff";
  comparing = false;
  preview: Overlay | null = null;
  result: Overlay | null = null;

  private stroke: ActiveStroke | null = null;
  private shape: ActiveShape | null = null;
  private panning: { x: number; y: number; ox: number; oy: number } | null = null;
  private pointers = new Map<number, { x: number; y: number }>();
  private pinch: { d: number; cx: number; cy: number } | null = null;
  private spaceDown = false;
  private altDown = false;
  private cursor: [number, number] | null = null;
  private frame = 0;
  private userMovedView = false;

  /** Handler times (ms) of pointermove events, and of pointerdown/up (stroke start and commit). */
  readonly eventTimes = new Ring(5000);
  readonly edgeTimes = new Ring(500);
  readonly frameTimes = new Ring(5000);

  /** Called when a finished op (stroke, rect, lasso) should enter the undo history. */
  onOp: (op: LayerOp) => void = () => {};
  onViewChange: () => void = () => {};

  constructor(parent: HTMLElement) {
    this.el = document.createElement("canvas");
    this.el.className = "stage-canvas";
    this.el.dataset.testid = "canvas";
    this.el.tabIndex = 0;
    parent.appendChild(this.el);
    this.ctx = ctx2d(this.el);
    this.scratch = makeCanvas(1, 1);
    this.live = makeCanvas(1, 1);
    this.baseCache = makeCanvas(1, 1);
    this.maskCache = makeCanvas(1, 1);
    this.sketchCache = makeCanvas(1, 1);
    new ResizeObserver(() => this.resize()).observe(parent);
    this.resize();
    this.bindPointer();
  }

  // ---------- image and layers ----------

  get width(): number {
    return this.image?.width ?? 0;
  }
  get height(): number {
    return this.image?.height ?? 0;
  }

  /** Replace the image. Layers are kept when the size is unchanged (undo/goto/reconnect), else reset. */
  setImage(bmp: ImageBitmap | HTMLCanvasElement): boolean {
    const w = bmp.width, h = bmp.height;
    const sizeChanged = !this.image || this.image.width !== w || this.image.height !== h;
    if (sizeChanged) {
      this.image = makeCanvas(w, h);
      this.mask = new Layer("mask", w, h);
      this.sketch = new Layer("sketch", w, h);
      this.brushSize = Math.max(4, Math.round(Math.max(w, h) / 16));
      this.sketchSize = Math.max(2, Math.round(Math.max(w, h) / 100));
      this.userMovedView = false;
    }
    const c = ctx2d(this.image!);
    c.clearRect(0, 0, w, h);
    c.drawImage(bmp, 0, 0);
    this.imageVersion++;
    this.result = null;
    this.preview = null;
    if (sizeChanged) this.fit();
    this.requestRender();
    return sizeChanged;
  }

  /** Blank mask and sketch for another session's image (not an undoable op: the undo stack went with the
   * session that was left). */
  clearLayers(): void {
    if (!this.image) return;
    this.mask = new Layer("mask", this.image.width, this.image.height);
    this.sketch = new Layer("sketch", this.image.width, this.image.height);
    this.requestRender();
  }

  /** Paste an accepted result into the image. */
  pasteIntoImage(o: Overlay): void {
    if (!this.image) return;
    const c = ctx2d(this.image);
    const [x0, y0, x1, y1] = o.box;
    c.clearRect(x0, y0, x1 - x0, y1 - y0);
    c.drawImage(o.bitmap, x0, y0, x1 - x0, y1 - y0);
    this.imageVersion++;
    this.requestRender();
  }

  layer(name: LayerName): Layer | null {
    return name === "mask" ? this.mask : this.sketch;
  }

  // ---------- view ----------

  fit(): void {
    this.view = fitView(this.width, this.height, this.cssW, this.cssH);
    this.userMovedView = false;
    this.onViewChange();
    this.requestRender();
  }

  zoomBy(factor: number, sx = this.cssW / 2, sy = this.cssH / 2): void {
    this.view = zoomAt(this.view, factor, sx, sy);
    this.userMovedView = true;
    this.onViewChange();
    this.requestRender();
  }

  private resize(): void {
    const parent = this.el.parentElement!;
    this.dpr = window.devicePixelRatio || 1;
    this.cssW = parent.clientWidth;
    this.cssH = parent.clientHeight;
    this.el.width = Math.max(1, Math.round(this.cssW * this.dpr));
    this.el.height = Math.max(1, Math.round(this.cssH * this.dpr));
    this.el.style.width = `${this.cssW}px`;
    this.el.style.height = `${this.cssH}px`;
    for (const c of [this.scratch, this.live, this.baseCache, this.maskCache, this.sketchCache]) {
      c.width = this.el.width;
      c.height = this.el.height;
    }
    this.baseKey = this.maskKey = this.sketchKey = this.liveKey = "";
    if (!this.userMovedView && this.image) this.view = fitView(this.width, this.height, this.cssW, this.cssH);
    this.requestRender();
  }

  // ---------- keyboard state used by pointer handling ----------

  setSpace(down: boolean): void {
    this.spaceDown = down;
    this.el.style.cursor = down ? "grab" : "";
  }
  setAlt(down: boolean): void {
    this.altDown = down;
  }

  /** True while a stroke or shape is being drawn. */
  get drawing(): boolean {
    return this.stroke !== null || this.shape !== null;
  }

  // ---------- pointer handling ----------

  private local(e: PointerEvent | WheelEvent): [number, number] {
    const r = this.el.getBoundingClientRect();
    return [e.clientX - r.left, e.clientY - r.top];
  }

  private bindPointer(): void {
    const el = this.el;
    el.addEventListener("contextmenu", (e) => e.preventDefault());
    el.addEventListener("pointerdown", (e) => this.timed(this.edgeTimes, () => this.down(e)));
    el.addEventListener("pointermove", (e) => this.timed(this.eventTimes, () => this.move(e)));
    el.addEventListener("pointerup", (e) => this.timed(this.edgeTimes, () => this.up(e, false)));
    el.addEventListener("pointercancel", (e) => this.timed(this.edgeTimes, () => this.up(e, true)));
    el.addEventListener("pointerleave", () => {
      this.cursor = null;
      this.requestRender();
    });
    el.addEventListener(
      "wheel",
      (e) => {
        e.preventDefault();
        const [sx, sy] = this.local(e);
        const k = e.ctrlKey ? 0.01 : 0.0015; // ctrl+wheel is a trackpad pinch
        const dy = e.deltaMode === 1 ? e.deltaY * 16 : e.deltaY;
        this.zoomBy(Math.exp(-dy * k), sx, sy);
      },
      { passive: false },
    );
  }

  private timed(ring: Ring, fn: () => void): void {
    const t0 = performance.now();
    fn();
    ring.push(performance.now() - t0);
  }

  private capture(id: number): void {
    try {
      this.el.setPointerCapture(id);
    } catch {
      /* the pointer is already gone (or was synthetic): drawing works without capture */
    }
  }

  private down(e: PointerEvent): void {
    this.el.focus({ preventScroll: true });
    const [sx, sy] = this.local(e);
    this.pointers.set(e.pointerId, { x: sx, y: sy });
    if (this.pointers.size === 2 && e.pointerType === "touch") {
      // second finger: abandon any stroke and start pinching
      this.abortDrawing();
      const [a, b] = [...this.pointers.values()];
      this.pinch = { d: Math.hypot(a.x - b.x, a.y - b.y), cx: (a.x + b.x) / 2, cy: (a.y + b.y) / 2 };
      return;
    }
    if (e.button === 1 || (e.button === 0 && this.spaceDown)) {
      e.preventDefault();
      this.panning = { x: sx, y: sy, ox: this.view.ox, oy: this.view.oy };
      this.capture(e.pointerId);
      this.el.style.cursor = "grabbing";
      return;
    }
    if (e.button !== 0 || !this.image) return;
    this.capture(e.pointerId);
    const [ix, iy] = screenToImage(this.view, sx, sy);
    const erase = this.tool === "eraser" || ((this.tool === "rect" || this.tool === "lasso") && (e.altKey || this.altDown));
    if (this.tool === "rect" || this.tool === "lasso") {
      this.shape = { kind: this.tool, erase, start: [ix, iy], points: [[ix, iy]] };
      this.requestRender();
      return;
    }
    const sketch = this.tool === "sketch";
    const pen = e.pointerType === "pen";
    this.stroke = {
      layer: sketch ? "sketch" : "mask",
      erase: this.tool === "eraser",
      points: [[ix, iy, pen ? e.pressure : 0.5]],
      style: { size: sketch ? this.sketchSize : this.brushSize, pressure: pen, smooth: sketch },
      color: sketch ? this.sketchColor : MASK_COLOR,
      drawnTo: 0,
      bounds: [ix, iy, ix, iy],
    };
    this.drawStrokeTail();
  }

  private move(e: PointerEvent): void {
    const [sx, sy] = this.local(e);
    if (this.pointers.has(e.pointerId)) this.pointers.set(e.pointerId, { x: sx, y: sy });
    if (this.pinch && this.pointers.size >= 2) {
      const [a, b] = [...this.pointers.values()];
      const d = Math.hypot(a.x - b.x, a.y - b.y);
      const cx = (a.x + b.x) / 2, cy = (a.y + b.y) / 2;
      this.view = zoomAt({ ...this.view, ox: this.view.ox + cx - this.pinch.cx, oy: this.view.oy + cy - this.pinch.cy }, d / Math.max(1, this.pinch.d), cx, cy);
      this.pinch = { d, cx, cy };
      this.userMovedView = true;
      this.onViewChange();
      this.requestRender();
      return;
    }
    if (this.panning) {
      this.view = { ...this.view, ox: this.panning.ox + sx - this.panning.x, oy: this.panning.oy + sy - this.panning.y };
      this.userMovedView = true;
      this.onViewChange();
      this.requestRender();
      return;
    }
    this.cursor = [sx, sy];
    const events = typeof e.getCoalescedEvents === "function" ? e.getCoalescedEvents() : [];
    const list = events.length ? events : [e];
    if (this.stroke) {
      const pen = e.pointerType === "pen";
      for (const ce of list) {
        const [cx, cy] = this.local(ce);
        const [ix, iy] = screenToImage(this.view, cx, cy);
        const last = this.stroke.points[this.stroke.points.length - 1];
        if (Math.abs(last[0] - ix) < 0.25 && Math.abs(last[1] - iy) < 0.25) continue;
        this.stroke.points.push([ix, iy, pen ? ce.pressure : 0.5]);
      }
      this.drawStrokeTail();
    } else if (this.shape) {
      const [ix, iy] = screenToImage(this.view, sx, sy);
      if (this.shape.kind === "rect") this.shape.points = [this.shape.start, [ix, iy]];
      else {
        for (const ce of list) {
          const [cx, cy] = this.local(ce);
          this.shape.points.push(screenToImage(this.view, cx, cy));
        }
      }
      this.requestRender();
    } else {
      this.requestRender(); // brush cursor
    }
  }

  private up(e: PointerEvent, cancelled: boolean): void {
    this.pointers.delete(e.pointerId);
    if (this.pinch) {
      if (this.pointers.size < 2) this.pinch = null;
      return;
    }
    if (this.panning) {
      this.panning = null;
      this.el.style.cursor = this.spaceDown ? "grab" : "";
      return;
    }
    if (cancelled) {
      this.abortDrawing();
      return;
    }
    if (this.stroke) this.commitStroke();
    else if (this.shape) this.commitShape();
  }

  abortDrawing(): void {
    if (this.stroke) this.clearLive();
    this.stroke = null;
    this.shape = null;
    this.requestRender();
  }

  private viewKey(): string {
    const v = this.view;
    return `${v.scale},${v.ox},${v.oy},${this.el.width},${this.el.height}`;
  }

  private liveCtx(): CanvasRenderingContext2D {
    const c = ctx2d(this.live);
    const v = this.view, d = this.dpr;
    c.setTransform(v.scale * d, 0, 0, v.scale * d, v.ox * d, v.oy * d);
    return c;
  }

  private clearLive(): void {
    const c = ctx2d(this.live);
    c.setTransform(1, 0, 0, 1, 0, 0);
    c.clearRect(0, 0, this.live.width, this.live.height);
    this.liveKey = "";
  }

  /**
   * Draw only the newest part of the stroke (overlapping the previous piece by two points) into the
   * screen-size live buffer: the cost per event does not grow with the stroke or the image size.
   */
  private drawStrokeTail(): void {
    const s = this.stroke;
    if (!s) return;
    if (this.liveKey !== this.viewKey()) {
      // the view moved mid-stroke (wheel zoom): redraw the whole stroke at the new view
      this.clearLive();
      s.drawnTo = 0;
      this.liveKey = this.viewKey();
    }
    const from = Math.max(0, s.drawnTo - 2);
    const poly = strokeOutline(from === 0 ? s.points : s.points.slice(from), s.style);
    fillPolygon(this.liveCtx(), poly, s.color, false);
    const b = polygonBounds(poly, 2, this.width, this.height);
    s.bounds = [Math.min(s.bounds[0], b[0]), Math.min(s.bounds[1], b[1]), Math.max(s.bounds[2], b[2]), Math.max(s.bounds[3], b[3])];
    s.drawnTo = s.points.length;
    this.requestRender();
  }

  private commitStroke(): void {
    const s = this.stroke!;
    this.stroke = null;
    this.clearLive();
    const op: LayerOp = { kind: "stroke", layer: s.layer, erase: s.erase, points: s.points, style: s.style, color: s.color };
    this.commitOp(op, strokeOutline(s.points, s.style));
    this.onOp(op);
  }

  private commitShape(): void {
    const sh = this.shape!;
    this.shape = null;
    this.requestRender();
    let poly: Polygon;
    if (sh.kind === "rect") {
      if (sh.points.length < 2) return;
      const [a, b] = sh.points;
      if (Math.abs(a[0] - b[0]) < 1 || Math.abs(a[1] - b[1]) < 1) return;
      poly = rectPolygon(a[0], a[1], b[0], b[1]);
    } else {
      if (sh.points.length < 3) return;
      poly = sh.points.map(([x, y]) => [x, y] as [number, number]);
    }
    const op: LayerOp = { kind: "poly", layer: "mask", erase: sh.erase, poly, color: MASK_COLOR };
    this.commitOp(op, poly);
    this.onOp(op);
  }

  /**
   * Apply a finished stroke or shape to its image-resolution layer and, when that layer's screen
   * cache is current, fill the same polygon into the cache too instead of re-reading the big layer
   * (reading it would make the next write copy the whole 4096x4096 buffer).
   */
  private commitOp(op: LayerOp & { erase: boolean; color: string }, poly: Polygon): void {
    const layer = this.layer(op.layer)!;
    const vk = this.viewKey();
    const isMask = op.layer === "mask";
    const current = (isMask ? this.maskKey : this.sketchKey) === `${vk}|${layer.version}`;
    layer.apply(op);
    if (current) {
      const cache = isMask ? this.maskCache : this.sketchCache;
      const cx = ctx2d(cache);
      const v = this.view, d = this.dpr;
      cx.setTransform(v.scale * d, 0, 0, v.scale * d, v.ox * d, v.oy * d);
      fillPolygon(cx, poly, op.color, op.erase);
      const key = `${vk}|${layer.version}`;
      if (isMask) this.maskKey = key;
      else this.sketchKey = key;
    }
    this.requestRender();
  }

  // ---------- rendering ----------

  requestRender(): void {
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = 0;
      const t0 = performance.now();
      this.render();
      this.frameTimes.push(performance.now() - t0);
    });
  }

  private overlayIds = new WeakMap<ImageBitmap, number>();
  private overlaySeq = 0;
  private overlayId(o: Overlay | null): number {
    if (!o) return 0;
    let id = this.overlayIds.get(o.bitmap);
    if (!id) {
      id = ++this.overlaySeq;
      this.overlayIds.set(o.bitmap, id);
    }
    return id;
  }

  /** Redraw a screen-size cache from image-resolution sources when its key changed. */
  private cache(c: HTMLCanvasElement, key: string, oldKey: string, draw: (cx: CanvasRenderingContext2D) => void): string {
    if (key === oldKey) return key;
    const cx = ctx2d(c);
    const v = this.view, d = this.dpr;
    cx.setTransform(1, 0, 0, 1, 0, 0);
    cx.globalAlpha = 1;
    cx.globalCompositeOperation = "source-over";
    cx.clearRect(0, 0, c.width, c.height);
    cx.setTransform(v.scale * d, 0, 0, v.scale * d, v.ox * d, v.oy * d);
    cx.imageSmoothingEnabled = v.scale < 2;
    draw(cx);
    return key;
  }

  private render(): void {
    const ctx = this.ctx;
    const d = this.dpr;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.globalAlpha = 1;
    ctx.globalCompositeOperation = "source-over";
    ctx.fillStyle = "#1b1d22";
    ctx.fillRect(0, 0, this.el.width, this.el.height);
    if (!this.image || !this.mask || !this.sketch) return;
    const v = this.view;
    const vk = this.viewKey();
    const over = this.comparing ? null : (this.result ?? this.preview);
    const image = this.image, mask = this.mask, sketch = this.sketch;
    this.baseKey = this.cache(this.baseCache, `${vk}|${this.imageVersion}|${over ? `${over.box}` : ""}|${this.overlayId(over)}`, this.baseKey, (cx) => {
      cx.drawImage(image, 0, 0);
      if (over) {
        const [x0, y0, x1, y1] = over.box;
        cx.drawImage(over.bitmap, x0, y0, x1 - x0, y1 - y0);
      }
    });
    ctx.drawImage(this.baseCache, 0, 0);
    if (!this.comparing) {
      this.maskKey = this.cache(this.maskCache, `${vk}|${mask.version}`, this.maskKey, (cx) => cx.drawImage(mask.canvas, 0, 0));
      this.sketchKey = this.cache(this.sketchCache, `${vk}|${sketch.version}`, this.sketchKey, (cx) => cx.drawImage(sketch.canvas, 0, 0));
      const liveOn = this.stroke !== null && this.liveKey === vk;
      // mask overlay: composite the opaque mask (and the live stroke) first, then apply the alpha once,
      // so overlapping strokes never darken
      let maskSrc = this.maskCache;
      if (liveOn && this.stroke!.layer === "mask") {
        const sc = ctx2d(this.scratch);
        sc.setTransform(1, 0, 0, 1, 0, 0);
        sc.globalCompositeOperation = "source-over";
        sc.clearRect(0, 0, this.scratch.width, this.scratch.height);
        sc.drawImage(this.maskCache, 0, 0);
        sc.globalCompositeOperation = this.stroke!.erase ? "destination-out" : "source-over";
        sc.drawImage(this.live, 0, 0);
        sc.globalCompositeOperation = "source-over";
        maskSrc = this.scratch;
      }
      ctx.globalAlpha = this.result ? MASK_ALPHA / 3 : MASK_ALPHA;
      ctx.drawImage(maskSrc, 0, 0);
      ctx.globalAlpha = this.result ? 0.35 : 1; // let the result show through the sketch that guided it
      ctx.drawImage(this.sketchCache, 0, 0);
      if (liveOn && this.stroke!.layer === "sketch") ctx.drawImage(this.live, 0, 0);
      ctx.globalAlpha = 1;
      if (over) {
        const [x0, y0, x1, y1] = over.box;
        ctx.strokeStyle = this.result ? "rgba(90,220,140,0.9)" : "rgba(255,255,255,0.6)";
        ctx.setLineDash([6, 4]);
        ctx.lineWidth = 1;
        ctx.strokeRect(Math.round((x0 * v.scale + v.ox) * d) + 0.5, Math.round((y0 * v.scale + v.oy) * d) + 0.5, Math.round((x1 - x0) * v.scale * d), Math.round((y1 - y0) * v.scale * d));
        ctx.setLineDash([]);
      }
    }
    ctx.setTransform(d, 0, 0, d, 0, 0);
    if (this.shape) {
      const pts = this.shape.kind === "rect" && this.shape.points.length === 2
        ? rectPolygon(this.shape.points[0][0], this.shape.points[0][1], this.shape.points[1][0], this.shape.points[1][1])
        : this.shape.points;
      ctx.beginPath();
      pts.forEach(([x, y], i) => {
        const px = x * v.scale + v.ox, py = y * v.scale + v.oy;
        if (i === 0) ctx.moveTo(px, py);
        else ctx.lineTo(px, py);
      });
      ctx.closePath();
      ctx.fillStyle = this.shape.erase ? "rgba(255,255,255,0.15)" : "rgba(255,48,96,0.25)";
      ctx.fill();
      ctx.setLineDash([5, 4]);
      ctx.strokeStyle = "#fff";
      ctx.lineWidth = 1;
      ctx.stroke();
      ctx.setLineDash([]);
    }
    if (this.cursor && !this.panning && !this.spaceDown && (this.tool === "brush" || this.tool === "eraser" || this.tool === "sketch")) {
      const r = ((this.tool === "sketch" ? this.sketchSize : this.brushSize) * v.scale) / 2;
      ctx.beginPath();
      ctx.arc(this.cursor[0], this.cursor[1], Math.max(1, r), 0, Math.PI * 2);
      ctx.strokeStyle = "rgba(0,0,0,0.7)";
      ctx.lineWidth = 3;
      ctx.stroke();
      ctx.strokeStyle = "rgba(255,255,255,0.95)";
      ctx.lineWidth = 1;
      ctx.stroke();
    }
  }
}
