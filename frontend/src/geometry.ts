// Pure geometry: stroke -> outline polygon, polygon rasterisation. No DOM.
import { getStroke } from "perfect-freehand";

export type Point = [number, number, number]; // x, y, pressure (0..1)
export type Polygon = [number, number][];

export interface StrokeStyle {
  size: number; // diameter in image pixels
  pressure: boolean; // true when the input device reports real pressure (pen)
  smooth?: boolean; // sketch pen: a little streamlining
}

/** Outline polygon of a freehand stroke, in image coordinates. */
export function strokeOutline(points: readonly Point[], style: StrokeStyle, complete = true): Polygon {
  if (points.length === 0) return [];
  const outline = getStroke(points as Point[], {
    size: style.size,
    thinning: style.pressure ? 0.6 : 0,
    smoothing: 0.5,
    streamline: style.smooth ? 0.3 : 0,
    simulatePressure: false,
    start: { cap: true, taper: 0 },
    end: { cap: true, taper: 0 },
    last: complete,
  });
  return outline as Polygon;
}

/** Axis-aligned bounds [x0, y0, x1, y1] of a polygon grown by `pad`, clamped to the image. */
export function polygonBounds(poly: Polygon, pad: number, width: number, height: number): [number, number, number, number] {
  let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
  for (const [x, y] of poly) {
    if (x < x0) x0 = x;
    if (y < y0) y0 = y;
    if (x > x1) x1 = x;
    if (y > y1) y1 = y;
  }
  if (x0 > x1) return [0, 0, 0, 0];
  return [
    Math.max(0, Math.floor(x0 - pad)),
    Math.max(0, Math.floor(y0 - pad)),
    Math.min(width, Math.ceil(x1 + pad)),
    Math.min(height, Math.ceil(y1 + pad)),
  ];
}

export function rectPolygon(ax: number, ay: number, bx: number, by: number): Polygon {
  const x0 = Math.min(ax, bx), x1 = Math.max(ax, bx), y0 = Math.min(ay, by), y1 = Math.max(ay, by);
  return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]];
}

/**
 * Fill a polygon (non-zero winding, like Canvas 2D's default) into a one-byte-per-pixel mask:
 * a pixel is inside when its centre is. Returns the number of pixels set.
 */
export function rasterizePolygon(poly: Polygon, width: number, height: number, out: Uint8Array, value = 255): number {
  const n = poly.length;
  if (n < 3) return 0;
  let minY = Infinity, maxY = -Infinity;
  for (const [, y] of poly) {
    if (y < minY) minY = y;
    if (y > maxY) maxY = y;
  }
  const yStart = Math.max(0, Math.ceil(minY - 0.5));
  const yEnd = Math.min(height - 1, Math.floor(maxY - 0.5));
  const xs: number[] = [];
  const dirs: number[] = [];
  let count = 0;
  for (let py = yStart; py <= yEnd; py++) {
    const cy = py + 0.5;
    xs.length = 0;
    dirs.length = 0;
    for (let i = 0; i < n; i++) {
      const [ax, ay] = poly[i];
      const [bx, by] = poly[(i + 1) % n];
      if (ay === by) continue;
      const up = ay < by;
      const lo = up ? ay : by, hi = up ? by : ay;
      if (cy < lo || cy >= hi) continue;
      xs.push(ax + ((cy - ay) / (by - ay)) * (bx - ax));
      dirs.push(up ? 1 : -1);
    }
    if (xs.length < 2) continue;
    const order = xs.map((_, i) => i).sort((a, b) => xs[a] - xs[b]);
    let winding = 0;
    for (let k = 0; k < order.length - 1; k++) {
      winding += dirs[order[k]];
      if (winding === 0) continue;
      const xa = Math.max(0, Math.ceil(xs[order[k]] - 0.5));
      const xb = Math.min(width - 1, Math.floor(xs[order[k + 1]] - 0.5));
      const row = py * width;
      for (let px = xa; px <= xb; px++) {
        if (out[row + px] !== value) count++;
        out[row + px] = value;
      }
    }
  }
  return count;
}

/** Scale factor and offsets of a pan/zoom view: screen = image * scale + offset. */
export interface ViewTransform {
  scale: number;
  ox: number;
  oy: number;
}

export function fitView(imgW: number, imgH: number, viewW: number, viewH: number, margin = 16): ViewTransform {
  if (imgW <= 0 || imgH <= 0 || viewW <= 0 || viewH <= 0) return { scale: 1, ox: 0, oy: 0 };
  const scale = Math.min((viewW - 2 * margin) / imgW, (viewH - 2 * margin) / imgH, 8);
  const s = scale > 0 ? scale : Math.min(viewW / imgW, viewH / imgH);
  return { scale: s, ox: (viewW - imgW * s) / 2, oy: (viewH - imgH * s) / 2 };
}

/** Zoom by `factor` keeping the screen point (sx, sy) fixed. */
export function zoomAt(v: ViewTransform, factor: number, sx: number, sy: number, min = 0.02, max = 32): ViewTransform {
  const scale = Math.min(max, Math.max(min, v.scale * factor));
  const f = scale / v.scale;
  return { scale, ox: sx - (sx - v.ox) * f, oy: sy - (sy - v.oy) * f };
}

export function screenToImage(v: ViewTransform, sx: number, sy: number): [number, number] {
  return [(sx - v.ox) / v.scale, (sy - v.oy) / v.scale];
}

/**
 * The largest size with the image's aspect ratio and at most `maxPixels` pixels, or null when it already
 * fits (a camera photo is scaled down to what the server accepts instead of being refused).
 */
export function fitPixels(w: number, h: number, maxPixels: number): [number, number] | null {
  if (w * h <= maxPixels) return null;
  const k = Math.sqrt(maxPixels / (w * h));
  let fw = Math.max(1, Math.floor(w * k));
  let fh = Math.max(1, Math.floor(h * k));
  while (fw * fh > maxPixels) (fw >= fh ? fw-- : fh--); // floating-point rounding can leave it one row over
  return [fw, fh];
}

/** Where an expand of a w x h canvas by `m` leads: the new size, and the new border as up to four
 * rectangles [x0, y0, x1, y1] (end exclusive) in the new canvas, which together cover exactly the pixels
 * outside the old image; or why it cannot be done. */
export function expandPlan(
  w: number,
  h: number,
  m: { left: number; top: number; right: number; bottom: number },
  maxPixels: number,
  maxSide = 4096,
): { width: number; height: number; border: [number, number, number, number][] } | { error: string } {
  const sides = [m.left, m.top, m.right, m.bottom];
  if (sides.some((v) => !Number.isInteger(v) || v < 0 || v > maxSide)) return { error: `Each side takes a whole number of pixels from 0 to ${maxSide}.` };
  if (sides.every((v) => v === 0)) return { error: "Give at least one side some pixels." };
  const width = w + m.left + m.right, height = h + m.top + m.bottom;
  if (width * height > maxPixels) return { error: `${width}×${height} is over the server's limit of ${maxPixels.toLocaleString("en")} pixels.` };
  const border: [number, number, number, number][] = [];
  if (m.top) border.push([0, 0, width, m.top]);
  if (m.bottom) border.push([0, m.top + h, width, height]);
  if (m.left) border.push([0, m.top, m.left, m.top + h]);
  if (m.right) border.push([m.left + w, m.top, width, m.top + h]);
  return { width, height, border };
}
