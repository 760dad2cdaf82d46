// The Recent images dialog: the sessions the server has stored, newest first, to go back to one or delete it.
import { h } from "./dom";

/** One row of `GET /api/sessions` (protocol: SessionSummary). */
export interface SessionSummary {
  session: string;
  width: number;
  height: number;
  created: string;
  updated: string;
  edits: number;
}

/** "just now", "5 min ago", "3 h ago", "2 days ago": how long before `now` an ISO time was. */
export function timeAgo(iso: string, now: number = Date.now()): string {
  const s = Math.max(0, (now - Date.parse(iso)) / 1000);
  if (!Number.isFinite(s) || s < 60) return "just now";
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  const days = Math.floor(s / 86400);
  return days === 1 ? "yesterday" : `${days} days ago`;
}

/** Newest sessions listed (each loads its image for a thumbnail). */
const SHOWN = 24;
const NONE_YET = "No stored images from this browser yet: open one.";

export interface RecentHost {
  current(): string | null;
  headers(): Record<string, string>;
  open(session: string): void;
  closed(): void;
}

export class RecentDialog {
  readonly el: HTMLElement;
  private list: HTMLOListElement;
  private status: HTMLElement;
  private urls: string[] = [];

  constructor(private host: RecentHost) {
    this.list = h("ol", { class: "recent-list" });
    this.status = h("p", { class: "hint", role: "status" });
    const card = h("div", { class: "modal-card recent-card", role: "dialog", "aria-modal": "true", "aria-labelledby": "recent-title" },
      h("h2", { id: "recent-title" }, "Recent images"), this.status, this.list,
      h("button", { testid: "recent-close", onclick: () => this.close() }, "Close (Esc)"));
    this.el = h("div", { class: "modal", testid: "recent", hidden: true, onclick: (e: Event) => { if (e.target === this.el) this.close(); } }, card);
  }

  get isOpen(): boolean {
    return !this.el.hidden;
  }

  async show(): Promise<void> {
    this.el.hidden = false;
    this.el.querySelector<HTMLButtonElement>("[data-testid=recent-close]")?.focus();
    this.status.textContent = "loading…";
    this.clear();
    let items: SessionSummary[];
    try {
      const res = await fetch("/api/sessions", { headers: this.host.headers() });
      if (!res.ok) throw new Error(res.statusText);
      items = await res.json();
    } catch {
      this.status.textContent = "Could not reach the server for the stored images.";
      return;
    }
    this.status.textContent = !items.length ? NONE_YET
      : items.length > SHOWN ? `The ${SHOWN} most recent of ${items.length}.` : "";
    const now = Date.now();
    for (const s of items.slice(0, SHOWN)) this.list.append(this.item(s, now));
  }

  close(): void {
    if (this.el.hidden) return;
    this.el.hidden = true;
    this.clear();
    this.host.closed();
  }

  private clear(): void {
    this.list.replaceChildren();
    for (const u of this.urls) URL.revokeObjectURL(u);
    this.urls = [];
  }

  private item(s: SessionSummary, now: number): HTMLElement {
    const current = s.session === this.host.current();
    const img = h("img", { alt: "", width: 72, height: 72 });
    const edits = s.edits === 1 ? "1 edit" : `${s.edits} edits`;
    const open = h("button", {
      class: "recent-open", testid: "recent-open", "aria-current": current ? "true" : undefined,
      title: current ? "The image open now" : "Open this image and its history",
      onclick: () => { this.close(); if (!current) this.host.open(s.session); },
    }, img, h("span", {}, `${s.width}×${s.height} · ${edits}`, h("br"), current ? "open now" : timeAgo(s.updated, now)));
    const del = current ? null : h("button", {
      class: "close", testid: "recent-delete", title: "Delete this image and its history from the server",
      "aria-label": `Delete the ${s.width}×${s.height} image`,
      onclick: () => void this.remove(s.session, li),
    }, "×");
    const li = h("li", { class: "recent-item", testid: "recent-item", "data-session": s.session }, open, del);
    void this.thumb(s.session, img);
    return li;
  }

  private async thumb(session: string, img: HTMLImageElement): Promise<void> {
    try {
      const res = await fetch(`/api/sessions/${encodeURIComponent(session)}/image`, { headers: this.host.headers() });
      if (!res.ok || this.el.hidden) return;
      const url = URL.createObjectURL(await res.blob());
      this.urls.push(url);
      img.src = url;
    } catch {
      /* no thumbnail: the size and time still say which image it is */
    }
  }

  private async remove(session: string, li: HTMLElement): Promise<void> {
    try {
      const res = await fetch(`/api/sessions/${encodeURIComponent(session)}`, { method: "DELETE", headers: this.host.headers() });
      if (!res.ok && res.status !== 404) throw new Error(res.statusText);
      li.remove();
      if (!this.list.children.length) this.status.textContent = NONE_YET;
    } catch {
      this.status.textContent = "Could not delete it; try again once reconnected.";
    }
  }
}
