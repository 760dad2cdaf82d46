// WebSocket with automatic reconnection (exponential backoff with jitter).

/**
 * The socket URL. With a session it carries `?session=<id>`, the routing key a proxy in front of several
 * replicas hashes so every socket of a session reaches the replica holding its state (docs/protocol.md).
 * Pure.
 */
export function socketUrl(loc: { protocol: string; host: string }, token: string | null, session: string | null): string {
  const params = new URLSearchParams();
  if (session) params.set("session", session);
  if (token) params.set("token", token);
  const query = params.toString();
  return `${loc.protocol === "https:" ? "wss:" : "ws:"}//${loc.host}/ws${query ? `?${query}` : ""}`;
}

/** A link that opens `session` in the editor at this page's address. The page's own query (a token among it)
 *  is left out: a link passed on is not a way to hand out the server's token. Pure. */
export function sessionLink(loc: { origin: string; pathname: string }, session: string): string {
  return `${loc.origin}${loc.pathname}?session=${encodeURIComponent(session)}`;
}

/** The page's query without `session` (what the address bar keeps once a link's session is taken), and that
 *  session if it has the form of one (22 URL-safe characters). Pure. */
export function takeLinkedSession(search: string): { session: string | null; rest: string } {
  const params = new URLSearchParams(search);
  const given = params.get("session");
  params.delete("session");
  const rest = params.toString();
  return { session: given && /^[A-Za-z0-9_-]{22}$/.test(given) ? given : null, rest: rest ? `?${rest}` : "" };
}

/** Delay before reconnect attempt `attempt` (0-based), in ms. Pure. */
export function backoffDelay(attempt: number, base = 500, max = 10000, random: () => number = Math.random): number {
  const exp = Math.min(max, base * 2 ** Math.min(attempt, 16));
  return Math.round(exp / 2 + (random() * exp) / 2);
}

/**
 * Close codes after which the page does not reconnect by itself: 4401 unauthorized and 4403 bad
 * origin (docs/protocol.md), and 4409, which the server uses when another tab takes the session over
 * (reconnecting would just take it back and start a tug of war).
 */
export const FATAL_CLOSE_CODES = new Set([4401, 4403, 4409]);
export const CLOSE_TAKEN_OVER = 4409;

export type ConnState = "connecting" | "open" | "waiting" | "closed";

export interface ConnectionHandlers {
  onOpen(): void;
  onText(text: string): void;
  onBinary(buf: ArrayBuffer): void;
  onState(state: ConnState, info: { attempt: number; retryInMs?: number; code?: number; reason?: string }): void;
}

export class Connection {
  private ws: WebSocket | null = null;
  private attempt = 0;
  private timer: ReturnType<typeof setTimeout> | null = null;
  private stopped = false;
  state: ConnState = "closed";

  /** `url` is asked again at every (re)connection, so it can follow the session. */
  constructor(
    private url: () => string,
    private h: ConnectionHandlers,
  ) {}

  start(): void {
    this.stopped = false;
    this.open();
  }

  stop(): void {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.ws?.close(1000);
  }

  /** Reconnect now (e.g. the user clicked "retry", or the tab came back online). */
  retryNow(): void {
    if (this.state === "waiting") {
      if (this.timer) clearTimeout(this.timer);
      this.open();
    }
  }

  /** Close the socket (if any) and open a new one at once, at the URL as it is now. */
  reconnect(): void {
    if (this.timer) clearTimeout(this.timer);
    const old = this.ws;
    this.ws = null; // its close event is then ignored
    old?.close(1000);
    this.stopped = false;
    this.open();
  }

  get isOpen(): boolean {
    return this.ws !== null && this.ws.readyState === WebSocket.OPEN;
  }

  send(data: string | Uint8Array): boolean {
    if (!this.isOpen) return false;
    this.ws!.send(data as string | ArrayBufferView<ArrayBuffer>);
    return true;
  }

  private setState(state: ConnState, info: { retryInMs?: number; code?: number; reason?: string } = {}): void {
    this.state = state;
    this.h.onState(state, { attempt: this.attempt, ...info });
  }

  private open(): void {
    this.timer = null;
    this.setState("connecting");
    let ws: WebSocket;
    try {
      ws = new WebSocket(this.url());
    } catch {
      this.scheduleRetry(1006, "could not open socket");
      return;
    }
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    ws.onopen = () => {
      this.attempt = 0;
      this.setState("open");
      this.h.onOpen();
    };
    ws.onmessage = (ev) => {
      if (typeof ev.data === "string") this.h.onText(ev.data);
      else this.h.onBinary(ev.data as ArrayBuffer);
    };
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      this.ws = null;
      if (this.stopped || FATAL_CLOSE_CODES.has(ev.code)) {
        this.setState("closed", { code: ev.code, reason: ev.reason });
        return;
      }
      this.scheduleRetry(ev.code, ev.reason);
    };
  }

  private scheduleRetry(code: number, reason: string): void {
    const delay = backoffDelay(this.attempt++);
    this.setState("waiting", { retryInMs: delay, code, reason });
    this.timer = setTimeout(() => this.open(), delay);
  }
}
