import { describe, expect, it } from "vitest";
import { expandPlan, fitPixels, fitView, polygonBounds, rasterizePolygon, rectPolygon, screenToImage, strokeOutline, zoomAt, type Point } from "../src/geometry";

const count = (m: Uint8Array) => m.reduce((a, v) => a + (v > 127 ? 1 : 0), 0);

describe("stroke outline", () => {
  it("is empty for no points", () => {
    expect(strokeOutline([], { size: 10, pressure: false })).toEqual([]);
  });

  it("a single point becomes a disc of the brush diameter", () => {
    const poly = strokeOutline([[50, 50, 0.5]], { size: 20, pressure: false });
    expect(poly.length).toBeGreaterThan(8);
    for (const [x, y] of poly) expect(Math.hypot(x - 50, y - 50)).toBeLessThan(11.5);
    const m = new Uint8Array(100 * 100);
    rasterizePolygon(poly, 100, 100, m);
    const area = count(m);
    expect(area).toBeGreaterThan(Math.PI * 8 * 8);
    expect(area).toBeLessThan(Math.PI * 11 * 11);
    expect(m[50 * 100 + 50]).toBe(255);
    expect(m[50 * 100 + 75]).toBe(0);
  });

  it("a horizontal mouse stroke covers a capsule of constant width", () => {
    const pts: Point[] = [];
    for (let x = 20; x <= 180; x += 4) pts.push([x, 50, 0.5]);
    const poly = strokeOutline(pts, { size: 20, pressure: false });
    const m = new Uint8Array(200 * 100);
    rasterizePolygon(poly, 200, 100, m);
    // inside the body: full height of ~20 px at every x
    for (const x of [40, 100, 160]) {
      let col = 0;
      for (let y = 0; y < 100; y++) col += m[y * 200 + x] ? 1 : 0;
      expect(col).toBeGreaterThanOrEqual(18);
      expect(col).toBeLessThanOrEqual(22);
    }
    expect(m[50 * 200 + 5]).toBe(0);
    expect(m[50 * 200 + 195]).toBe(0);
    expect(m[10 * 200 + 100]).toBe(0);
    const area = count(m);
    expect(area).toBeGreaterThan(160 * 18);
    expect(area).toBeLessThan(160 * 22 + Math.PI * 11 * 11);
  });

  it("pen pressure thins the stroke", () => {
    const light: Point[] = [], heavy: Point[] = [];
    for (let x = 20; x <= 180; x += 4) {
      light.push([x, 50, 0.1]);
      heavy.push([x, 50, 1]);
    }
    const a = new Uint8Array(200 * 100), b = new Uint8Array(200 * 100);
    rasterizePolygon(strokeOutline(light, { size: 20, pressure: true }), 200, 100, a);
    rasterizePolygon(strokeOutline(heavy, { size: 20, pressure: true }), 200, 100, b);
    expect(count(a)).toBeLessThan(count(b) * 0.7);
  });

  it("drawing the stroke in overlapping tail pieces covers the same pixels as the whole outline", () => {
    const pts: Point[] = [];
    for (let i = 0; i <= 60; i++) pts.push([30 + i * 2.5, 60 + 30 * Math.sin(i / 8), 0.5]);
    const style = { size: 16, pressure: false };
    const whole = new Uint8Array(220 * 120);
    rasterizePolygon(strokeOutline(pts, style), 220, 120, whole);
    const pieces = new Uint8Array(220 * 120);
    let drawnTo = 0;
    for (let n = 1; n <= pts.length; n += 3) {
      const from = Math.max(0, drawnTo - 2);
      rasterizePolygon(strokeOutline(pts.slice(from, n), style), 220, 120, pieces);
      drawnTo = n;
    }
    rasterizePolygon(strokeOutline(pts.slice(Math.max(0, drawnTo - 2)), style), 220, 120, pieces);
    let diff = 0;
    for (let i = 0; i < whole.length; i++) if ((whole[i] > 0) !== (pieces[i] > 0)) diff++;
    expect(diff / count(whole)).toBeLessThan(0.03);
  });
});

describe("polygon rasterisation", () => {
  it("fills an axis-aligned rectangle exactly (pixel centres)", () => {
    const m = new Uint8Array(20 * 20);
    const n = rasterizePolygon(rectPolygon(12, 15, 2, 5), 20, 20, m);
    expect(n).toBe(10 * 10);
    expect(m[5 * 20 + 2]).toBe(255);
    expect(m[14 * 20 + 11]).toBe(255);
    expect(m[15 * 20 + 11]).toBe(0);
    expect(m[5 * 20 + 12]).toBe(0);
  });
  it("clips to the image", () => {
    const m = new Uint8Array(10 * 10);
    expect(rasterizePolygon(rectPolygon(-5, -5, 5, 5), 10, 10, m)).toBe(25);
    expect(rasterizePolygon(rectPolygon(-50, -50, 50, 50), 10, 10, m)).toBe(75);
  });
  it("uses the non-zero winding rule for self-overlapping lassos", () => {
    // a square traced twice in the same direction stays filled
    const sq: [number, number][] = [[0, 0], [10, 0], [10, 10], [0, 10], [0, 0], [10, 0], [10, 10], [0, 10]];
    const m = new Uint8Array(10 * 10);
    expect(rasterizePolygon(sq, 10, 10, m)).toBe(100);
  });
  it("ignores degenerate polygons", () => {
    const m = new Uint8Array(4);
    expect(rasterizePolygon([[0, 0], [1, 1]], 2, 2, m)).toBe(0);
  });
  it("computes clamped bounds", () => {
    expect(polygonBounds([[1.5, 2.5], [8.2, 3]], 1, 8, 8)).toEqual([0, 1, 8, 4]);
    expect(polygonBounds([], 1, 8, 8)).toEqual([0, 0, 0, 0]);
  });
});

describe("view transform", () => {
  it("fits a 4096 image into a small view, centred", () => {
    const v = fitView(4096, 4096, 1000, 800, 0);
    expect(v.scale).toBeCloseTo(800 / 4096);
    expect(v.ox).toBeCloseTo((1000 - 800) / 2);
    expect(v.oy).toBeCloseTo(0);
  });
  it("zooms around a fixed screen point", () => {
    const v = { scale: 0.5, ox: 10, oy: 20 };
    const before = screenToImage(v, 300, 200);
    const z = zoomAt(v, 2, 300, 200);
    expect(z.scale).toBe(1);
    const after = screenToImage(z, 300, 200);
    expect(after[0]).toBeCloseTo(before[0]);
    expect(after[1]).toBeCloseTo(before[1]);
  });
});

describe("fitting an image to a pixel budget", () => {
  it("leaves an image that fits alone", () => {
    expect(fitPixels(2048, 2048, 2048 * 2048)).toBeNull();
    expect(fitPixels(640, 480, 2048 * 2048)).toBeNull();
  });

  it("scales a camera photo to the budget, keeping its aspect ratio", () => {
    const [w, h] = fitPixels(4032, 3024, 2048 * 2048)!;
    expect(w * h).toBeLessThanOrEqual(2048 * 2048);
    expect(w * h).toBeGreaterThan(2048 * 2048 * 0.998);
    expect(Math.abs(w / h - 4032 / 3024)).toBeLessThan(0.002);
  });

  it("never rounds over the budget, and keeps a very thin image at least a pixel across", () => {
    for (const [w, h, max] of [[3001, 2999, 1_000_003], [7, 5, 34], [99_999, 1, 1000], [1, 50_000, 999]]) {
      const [fw, fh] = fitPixels(w, h, max)!;
      expect(fw * fh).toBeLessThanOrEqual(max);
      expect(Math.min(fw, fh)).toBeGreaterThanOrEqual(1);
    }
  });
});

describe("expandPlan", () => {
  it("covers exactly the pixels outside the old image, once each", () => {
    for (const m of [{ left: 3, top: 0, right: 5, bottom: 2 }, { left: 0, top: 4, right: 0, bottom: 0 }, { left: 1, top: 1, right: 1, bottom: 1 }]) {
      const plan = expandPlan(10, 7, m, 1e6);
      if ("error" in plan) throw new Error(plan.error);
      expect([plan.width, plan.height]).toEqual([10 + m.left + m.right, 7 + m.top + m.bottom]);
      const hits = new Uint8Array(plan.width * plan.height);
      for (const [x0, y0, x1, y1] of plan.border) for (let y = y0; y < y1; y++) for (let x = x0; x < x1; x++) hits[y * plan.width + x]++;
      for (let y = 0; y < plan.height; y++)
        for (let x = 0; x < plan.width; x++) {
          const inside = x >= m.left && x < m.left + 10 && y >= m.top && y < m.top + 7;
          expect(hits[y * plan.width + x]).toBe(inside ? 0 : 1);
        }
    }
  });

  it("names what is wrong", () => {
    expect(expandPlan(10, 10, { left: 0, top: 0, right: 0, bottom: 0 }, 1e6)).toEqual({ error: "Give at least one side some pixels." });
    expect("error" in expandPlan(10, 10, { left: -1, top: 0, right: 0, bottom: 0 }, 1e6)).toBe(true);
    expect("error" in expandPlan(10, 10, { left: 1.5, top: 0, right: 0, bottom: 0 }, 1e6)).toBe(true);
    expect("error" in expandPlan(10, 10, { left: 5000, top: 0, right: 0, bottom: 0 }, 1e9)).toBe(true);
    const over = expandPlan(100, 100, { left: 0, top: 0, right: 1, bottom: 0 }, 100 * 100);
    expect("error" in over && over.error).toContain("101×100");
  });
});
