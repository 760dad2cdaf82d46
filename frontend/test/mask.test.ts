import { describe, expect, it } from "vitest";
import { countMasked, invertMask, invertRGBA, MASK_TINT, maskBounds, maskFromRGBA, maskToRGBA } from "../src/mask";

function rgba(pixels: number[][]): Uint8ClampedArray {
  return new Uint8ClampedArray(pixels.flat());
}

describe("mask import (maskFromRGBA)", () => {
  it("uses alpha when the image has transparency", () => {
    const d = rgba([[0, 0, 0, 255], [255, 255, 255, 0], [10, 10, 10, 128], [200, 200, 200, 127]]);
    expect(Array.from(maskFromRGBA(d, 4, 1))).toEqual([255, 0, 255, 0]);
  });
  it("uses grey level when every pixel is opaque", () => {
    const d = rgba([[0, 0, 0, 255], [255, 255, 255, 255], [128, 128, 128, 255], [127, 127, 127, 255]]);
    expect(Array.from(maskFromRGBA(d, 4, 1))).toEqual([0, 255, 255, 0]);
  });
  it("weights colour channels like a grey conversion", () => {
    // pure red is dark (~76), pure green is light (~150)
    const d = rgba([[255, 0, 0, 255], [0, 255, 0, 255]]);
    expect(Array.from(maskFromRGBA(d, 2, 1))).toEqual([0, 255]);
  });
  it("rejects a short buffer", () => {
    expect(() => maskFromRGBA(new Uint8ClampedArray(4), 2, 1)).toThrow();
  });
  it("round-trips through maskToRGBA (tinted, alpha = mask)", () => {
    const bits = new Uint8Array([0, 255, 255, 0, 255, 0]);
    const out = new Uint8ClampedArray(bits.length * 4);
    maskToRGBA(bits, out);
    expect(Array.from(out.subarray(4, 8))).toEqual([MASK_TINT.r, MASK_TINT.g, MASK_TINT.b, 255]);
    expect(out[3]).toBe(0);
    expect(Array.from(maskFromRGBA(out, 3, 2))).toEqual(Array.from(bits));
    expect(countMasked(out)).toBe(3);
  });
});

describe("mask invert", () => {
  it("inverts a one-byte mask by threshold", () => {
    expect(Array.from(invertMask(new Uint8Array([0, 255, 127, 128])))).toEqual([255, 0, 255, 0]);
  });
  it("inverts layer alpha in place, keeping the tint, and is an involution", () => {
    const d = rgba([[1, 2, 3, 0], [MASK_TINT.r, MASK_TINT.g, MASK_TINT.b, 255], [0, 0, 0, 100]]);
    invertRGBA(d);
    expect(Array.from(d)).toEqual([
      MASK_TINT.r, MASK_TINT.g, MASK_TINT.b, 255,
      MASK_TINT.r, MASK_TINT.g, MASK_TINT.b, 0,
      MASK_TINT.r, MASK_TINT.g, MASK_TINT.b, 155,
    ]);
    expect(countMasked(d)).toBe(2);
    invertRGBA(d);
    expect([d[3], d[7], d[11]]).toEqual([0, 255, 100]);
  });
  it("invert then import gives the complement", () => {
    const bits = new Uint8Array(16).map((_, i) => (i % 3 === 0 ? 255 : 0));
    const px = new Uint8ClampedArray(64);
    maskToRGBA(bits, px);
    invertRGBA(px);
    expect(Array.from(maskFromRGBA(px, 4, 4))).toEqual(Array.from(invertMask(bits)));
  });
});

describe("mask bounds", () => {
  it("finds the end-exclusive box of set pixels", () => {
    const m = new Uint8Array(5 * 4);
    m[1 * 5 + 2] = 255;
    m[2 * 5 + 3] = 255;
    expect(maskBounds(m, 5, 4)).toEqual([2, 1, 4, 3]);
    expect(maskBounds(new Uint8Array(20), 5, 4)).toBeNull();
  });
});
