// Wire format of docs/protocol.md (version 1). Pure: no DOM, no sockets.

export const PROTOCOL_VERSION = 1;

export interface PartSpec {
  name: string;
  bytes: number;
  mime: string;
}

export interface Part {
  name: string;
  mime: string;
  data: Uint8Array;
}

export interface FrameHeader {
  type: string;
  id: string | null;
  parts: PartSpec[];
  [key: string]: unknown;
}

export interface DecodedFrame {
  header: FrameHeader;
  parts: Map<string, Part>;
}

export class FrameError extends Error {
  constructor(
    public code: "bad_frame" | "bad_parts" | "bad_json",
    message: string,
  ) {
    super(message);
    this.name = "FrameError";
  }
}

const enc = new TextEncoder();
const dec = new TextDecoder("utf-8", { fatal: true });

/**
 * Build a binary frame: uint32 big-endian header length, UTF-8 JSON header, then the parts.
 * `fields` must start with `type` and `id` (their order is kept in the JSON); `parts` is appended.
 */
export function encodeFrame(
  fields: { type: string; id: string } & Record<string, unknown>,
  parts: Part[],
): Uint8Array {
  const header = {
    ...fields,
    parts: parts.map((p) => ({ name: p.name, bytes: p.data.byteLength, mime: p.mime })),
  };
  const headerBytes = enc.encode(JSON.stringify(header));
  let total = 4 + headerBytes.byteLength;
  for (const p of parts) total += p.data.byteLength;
  const out = new Uint8Array(total);
  new DataView(out.buffer).setUint32(0, headerBytes.byteLength, false);
  out.set(headerBytes, 4);
  let off = 4 + headerBytes.byteLength;
  for (const p of parts) {
    out.set(p.data, off);
    off += p.data.byteLength;
  }
  return out;
}

/** Parse a binary frame, checking it the way the server does (header length, part sizes). */
export function decodeFrame(buf: ArrayBuffer | Uint8Array): DecodedFrame {
  const bytes = buf instanceof Uint8Array ? buf : new Uint8Array(buf);
  if (bytes.byteLength < 4) throw new FrameError("bad_frame", "frame shorter than its length prefix");
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const n = view.getUint32(0, false);
  if (4 + n > bytes.byteLength) throw new FrameError("bad_frame", "header length past the end of the frame");
  let header: unknown;
  try {
    header = JSON.parse(dec.decode(bytes.subarray(4, 4 + n)));
  } catch {
    throw new FrameError("bad_json", "frame header is not UTF-8 JSON");
  }
  if (typeof header !== "object" || header === null || Array.isArray(header)) {
    throw new FrameError("bad_json", "frame header is not a JSON object");
  }
  const h = header as Record<string, unknown>;
  if (typeof h.type !== "string") throw new FrameError("bad_json", "frame header has no type");
  if (!Array.isArray(h.parts)) throw new FrameError("bad_parts", "frame header has no parts list");
  const parts = new Map<string, Part>();
  let off = 4 + n;
  for (const spec of h.parts as unknown[]) {
    const s = spec as Partial<PartSpec>;
    if (
      typeof s !== "object" || s === null ||
      typeof s.name !== "string" || typeof s.mime !== "string" ||
      typeof s.bytes !== "number" || !Number.isInteger(s.bytes) || s.bytes < 0
    ) {
      throw new FrameError("bad_parts", "malformed part description");
    }
    if (off + s.bytes > bytes.byteLength) throw new FrameError("bad_parts", `part ${s.name} runs past the frame`);
    parts.set(s.name, { name: s.name, mime: s.mime, data: bytes.subarray(off, off + s.bytes) });
    off += s.bytes;
  }
  if (off !== bytes.byteLength) throw new FrameError("bad_parts", "part sizes do not add up to the frame size");
  return { header: h as FrameHeader, parts };
}

export function encodeText(msg: { type: string; id: string } & Record<string, unknown>): string {
  return JSON.stringify(msg);
}

export function decodeText(text: string): ServerMessage {
  const m = JSON.parse(text) as unknown;
  if (typeof m !== "object" || m === null || typeof (m as { type?: unknown }).type !== "string") {
    throw new FrameError("bad_json", "text message is not a JSON object with a type");
  }
  return m as ServerMessage;
}

// ---- message shapes (server -> client) ----

export interface Limits {
  max_pixels: number;
  max_image_bytes: number;
  max_message_bytes: number;
  max_prompt_chars: number;
  min_steps: number;
  max_steps: number;
  min_guidance: number;
  max_guidance: number;
  results_kept?: number; // un-accepted results of the session that stay acceptable (absent: 1)
}

export interface HistoryEntry {
  index: number;
  prompt: string;
  seed: number | null;
  created: string | number;
}

export type Box = [number, number, number, number];

export interface ReadyMsg {
  type: "ready";
  id: string | null;
  protocol: number;
  session: string;
  model: string;
  device: string;
  limits: Limits;
  canvas: { version: number; width: number; height: number } | null;
  history: HistoryEntry[];
  position: number;
  default_steps: number;
  default_guidance: number;
}

export interface AckMsg {
  type: "ack";
  id: string | null;
  of: "canvas" | "accept";
  version: number;
  width: number;
  height: number;
  position: number;
  history: HistoryEntry[];
}

export interface PreparedMsg {
  type: "prepared";
  id: string | null;
  timings: Record<string, number>;
}

export interface CancelledMsg {
  type: "cancelled";
  id: string | null;
}

export interface ErrorMsg {
  type: "error";
  id: string | null;
  code: string;
  message: string;
}

export interface CanvasFrame {
  type: "canvas";
  id: string | null;
  version: number;
  width: number;
  height: number;
  position: number;
  history: HistoryEntry[];
  image: Part;
}

export interface ProgressFrame {
  type: "progress";
  id: string | null;
  step: number;
  total: number;
  box: Box;
  preview: Part;
}

export interface ResultFrame {
  type: "result";
  id: string | null;
  seed: number;
  box: Box;
  timings: Record<string, number>;
  steps: number;
  image: Part;
}

export type ServerMessage =
  | ReadyMsg
  | AckMsg
  | PreparedMsg
  | CancelledMsg
  | ErrorMsg
  | CanvasFrame
  | ProgressFrame
  | ResultFrame
  | { type: string; id: string | null; [k: string]: unknown };

const BINARY_PART: Record<string, string> = { canvas: "image", progress: "preview", result: "image" };

/** Turn a decoded binary frame into a message object with its single image part attached. */
export function binaryToMessage(frame: DecodedFrame): ServerMessage {
  const partName = BINARY_PART[frame.header.type];
  if (!partName) throw new FrameError("bad_parts", `unexpected binary message type ${frame.header.type}`);
  const part = frame.parts.get(partName);
  if (!part) throw new FrameError("bad_parts", `${frame.header.type} frame without ${partName} part`);
  const { parts: _parts, ...rest } = frame.header;
  return { ...rest, [partName]: part } as ServerMessage;
}

// ---- client -> server builders ----

export interface EditParams {
  prompt: string;
  seed: number | null;
  steps?: number;
  guidance?: number;
  sketch_strength?: number;
}

export function helloMsg(id: string, session?: string | null, owner?: string | null): string {
  const m: { type: string; id: string; protocol: number; session?: string; owner?: string } = {
    type: "hello", id, protocol: PROTOCOL_VERSION,
  };
  if (session) m.session = session;
  if (owner) m.owner = owner;
  return encodeText(m);
}

/** The REST header that carries the browser's owner key (the `owner` of hello). */
export const OWNER_HEADER = "X-Lazyedit-Owner";

/** An owner key from 16 random bytes: base64url without padding, 22 characters (the server's rule). The
 *  sessions this browser creates are listed and deleted with it only (docs/service.md, "Whose sessions"). */
export function ownerKeyFrom(bytes: Uint8Array): string {
  if (bytes.length !== 16) throw new Error(`an owner key needs 16 random bytes, got ${bytes.length}`);
  let bin = "";
  for (const b of bytes) bin += String.fromCharCode(b);
  return btoa(bin).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

/** The owner key kept in storage if it has the server's form (22 to 64 URL-safe characters), else a new one. */
export function ownerKeyOr(stored: string | null, randomBytes: () => Uint8Array): string {
  return stored && /^[A-Za-z0-9_-]{22,64}$/.test(stored) ? stored : ownerKeyFrom(randomBytes());
}

export function canvasFrame(id: string, png: Uint8Array): Uint8Array {
  return encodeFrame({ type: "canvas", id }, [{ name: "image", mime: "image/png", data: png }]);
}

/** The mask being painted, so that the server encodes its context before the edit is asked for. */
export function prepareFrame(id: string, mask: Uint8Array): Uint8Array {
  return encodeFrame({ type: "prepare", id }, [{ name: "mask", mime: "image/png", data: mask }]);
}

export function editFrame(id: string, params: EditParams, mask: Uint8Array, sketch?: Uint8Array | null): Uint8Array {
  const parts: Part[] = [{ name: "mask", mime: "image/png", data: mask }];
  if (sketch) parts.push({ name: "sketch", mime: "image/png", data: sketch });
  const fields: { type: string; id: string } & Record<string, unknown> = { type: "edit", id, prompt: params.prompt, seed: params.seed };
  if (params.steps !== undefined) fields.steps = params.steps;
  if (params.guidance !== undefined) fields.guidance = params.guidance;
  if (params.sketch_strength !== undefined && sketch) fields.sketch_strength = params.sketch_strength;
  return encodeFrame(fields, parts);
}

export const cancelMsg = (id: string, target: string) => encodeText({ type: "cancel", id, target });
export const acceptMsg = (id: string, target: string) => encodeText({ type: "accept", id, target });
export const undoMsg = (id: string) => encodeText({ type: "undo", id });
export const redoMsg = (id: string) => encodeText({ type: "redo", id });
export const gotoMsg = (id: string, index: number) => encodeText({ type: "goto", id, index });

/** Pixels to add on each side of the canvas (`expand`). */
export interface Margins {
  left: number;
  top: number;
  right: number;
  bottom: number;
}

export const expandMsg = (id: string, m: Margins) =>
  encodeText({ type: "expand", id, left: m.left, top: m.top, right: m.right, bottom: m.bottom });

/** Human-readable text for a server error code (falls back to the server's own message). */
export function describeError(code: string, message: string): string {
  const known: Record<string, string> = {
    image_too_large: "Image too large",
    bad_image: "Not a readable image",
    empty_mask: "Paint a mask first",
    prompt_too_long: "Prompt too long",
    reserved_prompt: "That prompt is reserved",
    out_of_range: "Setting out of range",
    no_canvas: "Open an image first",
    nothing_to_undo: "Nothing to undo",
    queue_full: "Server busy, try again",
    too_many_sessions: "Server has too many sessions",
    unknown_target: "That edit is no longer available",
    unknown_session: "Session expired",
    unauthorized: "Not authorised (check the token)",
    bad_origin: "Origin not allowed by the server",
    message_too_large: "Message too large",
    mask_size: "Mask size does not match the image",
    sketch_size: "Sketch size does not match the image",
    internal: "Server error",
  };
  const title = known[code] ?? code;
  return message ? `${title}: ${message}` : title;
}
