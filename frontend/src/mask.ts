// Pure mask operations on RGBA pixel buffers and one-byte masks. No DOM.

export interface Rgb {
  r: number;
  g: number;
  b: number;
}

/** The colour the mask layer is painted in (opaque); it is shown with a global alpha. */
export const MASK_TINT: Rgb = { r: 255, g: 48, b: 96 };

/**
 * Read a mask out of decoded RGBA pixels the way the server reads a mask PNG:
 * edited where alpha > 127 if the image uses alpha at all, else where the grey level > 127.
 */
export function maskFromRGBA(data: Uint8ClampedArray | Uint8Array, width: number, height: number): Uint8Array {
  const n = width * height;
  if (data.length < n * 4) throw new Error("pixel buffer smaller than width*height*4");
  let hasAlpha = false;
  for (let i = 3; i < n * 4; i += 4) {
    if (data[i] !== 255) {
      hasAlpha = true;
      break;
    }
  }
  const out = new Uint8Array(n);
  for (let p = 0, i = 0; p < n; p++, i += 4) {
    let on: boolean;
    if (hasAlpha) on = data[i + 3] > 127;
    else on = Math.round(0.299 * data[i] + 0.587 * data[i + 1] + 0.114 * data[i + 2]) > 127;
    out[p] = on ? 255 : 0;
  }
  return out;
}

/** Paint a one-byte mask into RGBA pixels: tint colour where set (opaque), transparent elsewhere. */
export function maskToRGBA(mask: Uint8Array, out: Uint8ClampedArray | Uint8Array, tint: Rgb = MASK_TINT): void {
  for (let p = 0, i = 0; p < mask.length; p++, i += 4) {
    const a = mask[p];
    out[i] = tint.r;
    out[i + 1] = tint.g;
    out[i + 2] = tint.b;
    out[i + 3] = a;
  }
}

/** Invert the coverage of a mask layer held as RGBA pixels (alpha' = 255 - alpha), in place. */
export function invertRGBA(data: Uint8ClampedArray | Uint8Array, tint: Rgb = MASK_TINT): void {
  for (let i = 0; i < data.length; i += 4) {
    data[i] = tint.r;
    data[i + 1] = tint.g;
    data[i + 2] = tint.b;
    data[i + 3] = 255 - data[i + 3];
  }
}

export function invertMask(mask: Uint8Array): Uint8Array {
  const out = new Uint8Array(mask.length);
  for (let i = 0; i < mask.length; i++) out[i] = mask[i] > 127 ? 0 : 255;
  return out;
}

/** Number of pixels the server would treat as edited (alpha > 127) in RGBA pixels. */
export function countMasked(data: Uint8ClampedArray | Uint8Array): number {
  let c = 0;
  for (let i = 3; i < data.length; i += 4) if (data[i] > 127) c++;
  return c;
}

/** Bounding box [x0, y0, x1, y1] (end exclusive) of set pixels in a one-byte mask, or null. */
export function maskBounds(mask: Uint8Array, width: number, height: number): [number, number, number, number] | null {
  let x0 = width, y0 = height, x1 = -1, y1 = -1;
  for (let y = 0; y < height; y++) {
    const row = y * width;
    for (let x = 0; x < width; x++) {
      if (mask[row + x] > 127) {
        if (x < x0) x0 = x;
        if (x > x1) x1 = x;
        if (y < y0) y0 = y;
        y1 = y;
      }
    }
  }
  return x1 < 0 ? null : [x0, y0, x1 + 1, y1 + 1];
}
