import { describe, expect, it } from "vitest";
import {
  binaryToMessage, canvasFrame, decodeFrame, editFrame, encodeFrame, FrameError, helloMsg, ownerKeyFrom, ownerKeyOr, prepareFrame,
  cancelMsg, acceptMsg, gotoMsg, undoMsg, redoMsg, expandMsg,
} from "../src/protocol";

const hex = (b: Uint8Array) => Array.from(b, (x) => x.toString(16).padStart(2, "0")).join(" ");

describe("binary frame encoding (docs/protocol.md example)", () => {
  // The header exactly as docs/protocol.md writes it. NOTE: the document says this header is
  // "79 bytes" and the frame "00 00 00 4f ... (86 bytes in all)", but the header string it shows is
  // 83 bytes of UTF-8 (compact JSON, as both this client and backend/lazyedit/service/framing.py
  // write it), so the frame is 4 + 83 + 3 = 90 bytes with length prefix 00 00 00 53. We reproduce
  // the documented header byte for byte and the documented frame layout; the counts in the prose
  // are off by 4 (reported to the protocol owner).
  const header = '{"type":"canvas","id":"c1","parts":[{"name":"image","bytes":3,"mime":"image/png"}]}';
  const headerBytes = new TextEncoder().encode(header);

  it("header of the documented example, as written, is 83 bytes", () => {
    expect(headerBytes.byteLength).toBe(83);
  });

  it("reproduces the example frame byte for byte: length prefix + header + 01 02 03", () => {
    const frame = canvasFrame("c1", new Uint8Array([1, 2, 3]));
    const expected = new Uint8Array(4 + headerBytes.byteLength + 3);
    new DataView(expected.buffer).setUint32(0, headerBytes.byteLength, false);
    expected.set(headerBytes, 4);
    expected.set([1, 2, 3], 4 + headerBytes.byteLength);
    expect(hex(frame)).toBe(hex(expected));
    expect(frame.byteLength).toBe(90);
    expect(hex(frame.subarray(0, 4))).toBe("00 00 00 53");
    expect(new TextDecoder().decode(frame.subarray(4, 87))).toBe(header);
    expect(hex(frame.subarray(87))).toBe("01 02 03");
  });

  it("the frame is 7 bytes longer than its header (4-byte prefix + 3 part bytes), as in the document", () => {
    const frame = canvasFrame("c1", new Uint8Array([1, 2, 3]));
    expect(frame.byteLength - headerBytes.byteLength).toBe(86 - 79);
  });

  it("decodes the example back", () => {
    const d = decodeFrame(canvasFrame("c1", new Uint8Array([1, 2, 3])));
    expect(d.header.type).toBe("canvas");
    expect(d.header.id).toBe("c1");
    expect(d.header.parts).toEqual([{ name: "image", bytes: 3, mime: "image/png" }]);
    expect(Array.from(d.parts.get("image")!.data)).toEqual([1, 2, 3]);
  });

  it("encodes an edit with mask and sketch parts in order", () => {
    const f = editFrame("e1", { prompt: "a red star", seed: null, steps: 8, guidance: 3.5, sketch_strength: 0.7 },
      new Uint8Array([9, 9]), new Uint8Array([7, 7, 7]));
    const n = new DataView(f.buffer).getUint32(0, false);
    const h = JSON.parse(new TextDecoder().decode(f.subarray(4, 4 + n)));
    expect(h).toEqual({
      type: "edit", id: "e1", prompt: "a red star", seed: null, steps: 8, guidance: 3.5, sketch_strength: 0.7,
      parts: [{ name: "mask", bytes: 2, mime: "image/png" }, { name: "sketch", bytes: 3, mime: "image/png" }],
    });
    expect(Array.from(f.subarray(4 + n))).toEqual([9, 9, 7, 7, 7]);
    expect(f.byteLength).toBe(4 + n + 5);
  });

  it("encodes a prepare: the mask alone, no edit fields", () => {
    const d = decodeFrame(prepareFrame("p3", new Uint8Array([4, 5])));
    expect(d.header).toEqual({ type: "prepare", id: "p3", parts: [{ name: "mask", bytes: 2, mime: "image/png" }] });
    expect(Array.from(d.parts.get("mask")!.data)).toEqual([4, 5]);
  });

  it("omits sketch_strength when there is no sketch", () => {
    const f = editFrame("e2", { prompt: "x", seed: 5, sketch_strength: 1 }, new Uint8Array([1]));
    const h = decodeFrame(f).header;
    expect(h.sketch_strength).toBeUndefined();
    expect(h.seed).toBe(5);
    expect(h.parts.map((p) => p.name)).toEqual(["mask"]);
  });

  it("handles multi-byte UTF-8 in the header length", () => {
    const f = encodeFrame({ type: "edit", id: "ü" }, []);
    const n = new DataView(f.buffer).getUint32(0, false);
    expect(n).toBe(f.byteLength - 4);
    expect(n).toBe(JSON.stringify({ type: "edit", id: "ü", parts: [] }).length + 1);
  });
});

describe("binary frame decoding errors", () => {
  it("rejects a truncated length prefix", () => {
    expect(() => decodeFrame(new Uint8Array([0, 0]))).toThrow(FrameError);
  });
  it("rejects a header length past the frame", () => {
    expect(() => decodeFrame(new Uint8Array([0, 0, 1, 0, 0x7b]))).toThrowError(/header length/);
  });
  it("rejects part sizes that do not add up", () => {
    const f = canvasFrame("c1", new Uint8Array([1, 2, 3]));
    expect(() => decodeFrame(f.subarray(0, f.byteLength - 1))).toThrow(FrameError);
    const longer = new Uint8Array(f.byteLength + 1);
    longer.set(f);
    try {
      decodeFrame(longer);
      throw new Error("no throw");
    } catch (e) {
      expect((e as FrameError).code).toBe("bad_parts");
    }
  });
  it("maps server binary frames to messages", () => {
    const f = encodeFrame({ type: "progress", id: "e1", step: 2, total: 4, box: [0, 0, 8, 8] },
      [{ name: "preview", mime: "image/jpeg", data: new Uint8Array([0xff, 0xd8]) }]);
    const m = binaryToMessage(decodeFrame(f)) as { type: string; step: number; box: number[]; preview: { mime: string; data: Uint8Array } };
    expect(m.type).toBe("progress");
    expect(m.step).toBe(2);
    expect(m.box).toEqual([0, 0, 8, 8]);
    expect(m.preview.mime).toBe("image/jpeg");
    expect(Array.from(m.preview.data)).toEqual([0xff, 0xd8]);
  });
  it("decodes a frame that sits inside a larger buffer", () => {
    const f = canvasFrame("c9", new Uint8Array([4, 5]));
    const big = new Uint8Array(f.byteLength + 10);
    big.set(f, 5);
    const d = decodeFrame(big.subarray(5, 5 + f.byteLength));
    expect(Array.from(d.parts.get("image")!.data)).toEqual([4, 5]);
  });
});

describe("text messages", () => {
  it("hello with and without session", () => {
    expect(JSON.parse(helloMsg("h1"))).toEqual({ type: "hello", id: "h1", protocol: 1 });
    expect(JSON.parse(helloMsg("h2", "abc"))).toEqual({ type: "hello", id: "h2", protocol: 1, session: "abc" });
    expect(JSON.parse(helloMsg("h3", null, "k".repeat(22)))).toEqual({ type: "hello", id: "h3", protocol: 1, owner: "k".repeat(22) });
  });
  it("cancel, accept, undo, redo, goto", () => {
    expect(JSON.parse(cancelMsg("x1", "e1"))).toEqual({ type: "cancel", id: "x1", target: "e1" });
    expect(JSON.parse(acceptMsg("a1", "e1"))).toEqual({ type: "accept", id: "a1", target: "e1" });
    expect(JSON.parse(undoMsg("u1"))).toEqual({ type: "undo", id: "u1" });
    expect(JSON.parse(redoMsg("r1"))).toEqual({ type: "redo", id: "r1" });
    expect(JSON.parse(gotoMsg("g1", 3))).toEqual({ type: "goto", id: "g1", index: 3 });
    expect(JSON.parse(expandMsg("x1", { left: 0, top: 8, right: 16, bottom: 0 }))).toEqual({ type: "expand", id: "x1", left: 0, top: 8, right: 16, bottom: 0 });
  });
});

describe("owner key", () => {
  it("is 22 URL-safe characters, the same for the same bytes and different for others", () => {
    const all = new Uint8Array(16).fill(255); // base64 of 0xff.. is all '/', the character URLs cannot carry
    expect(ownerKeyFrom(all)).toBe("_".repeat(21) + "w");
    const some = Uint8Array.from({ length: 16 }, (_, i) => i * 17);
    expect(ownerKeyFrom(some)).toMatch(/^[A-Za-z0-9_-]{22}$/);
    expect(ownerKeyFrom(some)).toBe(ownerKeyFrom(some.slice()));
    expect(ownerKeyFrom(some)).not.toBe(ownerKeyFrom(all));
    expect(() => ownerKeyFrom(new Uint8Array(8))).toThrow(/16 random bytes/);
  });
  it("is kept when stored in the server's form, made anew otherwise", () => {
    const fresh = () => new Uint8Array(16).fill(255);
    expect(ownerKeyOr("k".repeat(22), fresh)).toBe("k".repeat(22));
    for (const bad of [null, "", "short", "no spaces allowed here!"]) expect(ownerKeyOr(bad, fresh)).toBe("_".repeat(21) + "w");
  });
});
