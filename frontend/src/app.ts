// The editor application: UI, protocol state machine, undo/redo, live mode.
import { CLOSE_TAKEN_OVER, Connection, sessionLink, socketUrl, takeLinkedSession, type ConnState } from "./connection";
import { downloadBlob, h, isTextField } from "./dom";
import { Editor, type Tool } from "./editor";
import { UndoStack } from "./history";
import { expandPlan, fitPixels, rectPolygon } from "./geometry";
import { canvasToPNG, ctx2d, decodeImage, makeCanvas, MASK_COLOR, type LayerOp } from "./layers";
import { countMasked, maskFromRGBA, maskToRGBA } from "./mask";
import { RecentDialog } from "./recent";
import {
  acceptMsg, binaryToMessage, cancelMsg, decodeFrame, decodeText, describeError, editFrame, expandMsg,
  gotoMsg, helloMsg, OWNER_HEADER, ownerKeyOr, prepareFrame, redoMsg, undoMsg,
  type AckMsg, type Box, type CanvasFrame, type EditParams, type ErrorMsg, type HistoryEntry, type Limits, type Margins,
  type ProgressFrame, type ReadyMsg, type ResultFrame, type ServerMessage,
} from "./protocol";

export type UndoEntry = { kind: "layer"; op: LayerOp } | { kind: "server" };

type Slot = "open" | "edit" | "result" | "history" | "mask" | "global";
// where a request's error is shown; "prepare": nowhere (a head start whose edit reports its own errors)
type ErrorTarget = Slot | "prepare";

const SESSION_KEY = "lazyedit.session";
const OWNER_KEY = "lazyedit.owner";
const UNDO_CAP = 100;
const LIVE_DELAY_MS = 600;
/** Pause after a mask change before the server is asked to encode the mask's context (a head start on the edit). */
const PREPARE_DELAY_MS = 150;
const RESUME_WATCH_MS = 20_000;

interface RunningEdit {
  id: string;
  params: EditParams;
  previews: number;
  heard: number; // messages received for this edit
  sent: boolean;
  cancelling: boolean;
}

interface PendingResult {
  editId: string;
  box: Box;
  bitmap: ImageBitmap;
  seed: number;
  steps: number;
  timings: Record<string, number>;
}

const PNG_MAGIC = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];

export class App {
  private conn: Connection;
  private editor!: Editor;
  private stack: UndoStack<UndoEntry>;
  private token: string | null;
  /** This browser's owner key: the sessions it creates are listed (Recent) and deleted with it only. */
  private owner: string;
  session: string | null;
  ready: ReadyMsg | null = null;
  limits: Limits | null = null;
  history: HistoryEntry[] = [];
  position = 0;
  version = 0;
  connState: ConnState = "closed";
  private seq = 0;
  private slots = new Map<string, ErrorTarget>();
  private helloId: string | null = null;
  private pendingCanvas: { id: string; bmp: ImageBitmap; name: string } | null = null;
  private gotoIds = new Set<string>();
  /** An expand sent and not answered yet: the border its canvas gets masked with. */
  private pendingExpand: { id: string; border: Box[] } | null = null;
  private serverUndo: { id: string; dir: "undo" | "redo"; fromStack: boolean } | null = null;
  edit: RunningEdit | null = null;
  lastEdit: RunningEdit | null = null;
  result: PendingResult | null = null; // the result shown, one of the candidates
  /**
   * The results of one edit and its Try agains, oldest first: the person picks which to accept. The server
   * keeps the session's last `results_kept` un-accepted results, so no more are offered.
   */
  candidates: PendingResult[] = [];
  lastResultBox: Box | null = null;
  private accepting: string | null = null;
  private live = false;
  private liveTimer: ReturnType<typeof setTimeout> | null = null;
  private prepareTimer: ReturnType<typeof setTimeout> | null = null;
  private preparedCount = 0;
  private liveWanted = false;
  private thumbCache = new Map<string, string>();

  // DOM
  private ui!: {
    root: HTMLElement;
    fileInput: HTMLInputElement;
    maskInput: HTMLInputElement;
    tools: Record<Tool, HTMLButtonElement>;
    brushSize: HTMLInputElement;
    brushSizeLabel: HTMLElement;
    sketchColor: HTMLInputElement;
    sketchSize: HTMLInputElement;
    sketchStrength: HTMLInputElement;
    sketchStrengthLabel: HTMLElement;
    prompt: HTMLInputElement;
    promptHint: HTMLElement;
    generate: HTMLButtonElement;
    seedRandom: HTMLInputElement;
    seed: HTMLInputElement;
    steps: HTMLInputElement;
    guidance: HTMLInputElement;
    progress: HTMLProgressElement;
    progressText: HTMLElement;
    cancel: HTMLButtonElement;
    resultBox: HTMLElement;
    resultInfo: HTMLElement;
    candidates: HTMLElement;
    accept: HTMLButtonElement;
    discard: HTMLButtonElement;
    retry: HTMLButtonElement;
    history: HTMLOListElement;
    undo: HTMLButtonElement;
    redo: HTMLButtonElement;
    live: HTMLInputElement;
    status: HTMLElement;
    conn: HTMLElement;
    model: HTMLElement;
    info: HTMLElement;
    zoom: HTMLElement;
    stage: HTMLElement;
    empty: HTMLElement;
    help: HTMLElement;
    expand: HTMLElement;
    expandSides: Record<keyof Margins, HTMLInputElement>;
    expandSize: HTMLElement;
    expandApply: HTMLButtonElement;
    errorSlots: Record<Slot, HTMLElement>;
  };

  private recent!: RecentDialog;

  constructor(private mount: HTMLElement) {
    const params = new URLSearchParams(location.search);
    this.token = params.get("token");
    this.session = localStorage.getItem(SESSION_KEY);
    const linked = takeLinkedSession(location.search);
    if (linked.session) {  // a link to an image (Link): open it here, and keep it on reload
      this.session = linked.session;
      localStorage.setItem(SESSION_KEY, linked.session);
      history.replaceState(history.state, "", `${location.pathname}${linked.rest}${location.hash}`);
    }
    this.owner = ownerKeyOr(localStorage.getItem(OWNER_KEY), () => crypto.getRandomValues(new Uint8Array(16)));
    localStorage.setItem(OWNER_KEY, this.owner);
    this.stack = new UndoStack<UndoEntry>(UNDO_CAP, (old) => {
      if (old.kind === "layer") this.editor.layer(old.op.layer)?.flatten(old.op);
    });
    this.buildUI();
    this.conn = new Connection(() => socketUrl(location, this.token, this.session), {
      onOpen: () => this.sendHello(),
      onText: (t) => this.onText(t),
      onBinary: (b) => this.onBinary(b),
      onState: (s, info) => this.onConnState(s, info),
    });
    this.conn.start();
    window.addEventListener("online", () => this.conn.retryNow());
    this.installTestHook();
    this.refresh();
  }

  private nextId(prefix: string, slot: ErrorTarget): string {
    const id = `${prefix}${++this.seq}`;
    this.slots.set(id, slot);
    if (this.slots.size > 500) this.slots.delete(this.slots.keys().next().value as string);
    return id;
  }

  // =====================================================================================
  // UI construction
  // =====================================================================================

  private buildUI(): void {
    const errorSlot = (slot: Slot) => h("div", { class: "error-slot", "data-slot": slot });
    const toolBtn = (tool: Tool, label: string, key: string) =>
      h("button", { class: "tool", testid: `tool-${tool}`, title: `${label} (${key})`, "aria-pressed": "false", onclick: () => this.setTool(tool) }, label);
    const tools: Record<Tool, HTMLButtonElement> = {
      brush: toolBtn("brush", "Brush", "M"),
      eraser: toolBtn("eraser", "Eraser", "E"),
      rect: toolBtn("rect", "Rect", "R"),
      lasso: toolBtn("lasso", "Lasso", "L"),
      sketch: toolBtn("sketch", "Sketch", "S"),
    };
    const fileInput = h("input", { type: "file", accept: "image/*", testid: "file-input", class: "hidden-input" });
    fileInput.addEventListener("change", () => {
      const f = fileInput.files?.[0];
      if (f) void this.openFile(f);
      fileInput.value = "";
    });
    const maskInput = h("input", { type: "file", accept: "image/png,image/*", testid: "mask-import-input", class: "hidden-input" });
    maskInput.addEventListener("change", () => {
      const f = maskInput.files?.[0];
      if (f) void this.importMask(f);
      maskInput.value = "";
    });
    const brushSize = h("input", { type: "range", min: 1, max: 1024, value: 40, testid: "brush-size", title: "Brush size ([ and ])" });
    const brushSizeLabel = h("span", { class: "num" }, "40");
    brushSize.addEventListener("input", () => {
      const v = Number(brushSize.value);
      if (this.editor.tool === "sketch") this.editor.sketchSize = v;
      else this.editor.brushSize = v;
      this.refresh();
    });
    const sketchColor = h("input", { type: "color", value: "#1e64ff", testid: "sketch-color", title: "Sketch colour", "aria-label": "Sketch colour" });
    sketchColor.addEventListener("input", () => (this.editor.sketchColor = sketchColor.value));
    const sketchSize = h("input", { type: "range", min: 1, max: 256, value: 8, testid: "sketch-size", title: "Sketch pen size" });
    sketchSize.addEventListener("input", () => {
      this.editor.sketchSize = Number(sketchSize.value);
      this.refresh();
    });
    const sketchStrength = h("input", { type: "range", min: 0, max: 1, step: 0.05, value: 1, testid: "sketch-strength", title: "How strongly the sketch guides the edit" });
    const sketchStrengthLabel = h("span", { class: "num" }, "1.00");
    sketchStrength.addEventListener("input", () => (sketchStrengthLabel.textContent = Number(sketchStrength.value).toFixed(2)));

    const prompt = h("input", { type: "text", testid: "prompt", placeholder: "Describe the edit (leave empty to remove), press Enter", autocomplete: "off", spellcheck: "false" });
    prompt.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.isComposing) {
        e.preventDefault();
        void this.generate();
      } else if (e.key === "Escape") {
        e.preventDefault();
        this.cancelEdit();
        prompt.blur();
      }
    });
    prompt.addEventListener("input", () => this.scheduleLive());
    const generate = h("button", { class: "primary", testid: "generate", onclick: () => void this.generate() }, "Generate");
    const seedRandom = h("input", { type: "checkbox", testid: "seed-random", checked: true });
    const seed = h("input", { type: "number", testid: "seed", min: 0, step: 1, placeholder: "random", disabled: true });
    seedRandom.addEventListener("change", () => {
      seed.disabled = seedRandom.checked;
      if (!seedRandom.checked && seed.value === "" && this.result) seed.value = String(this.result.seed);
    });
    const steps = h("input", { type: "number", testid: "steps", min: 1, step: 1 });
    const guidance = h("input", { type: "number", testid: "guidance", min: 0, step: 0.5 });
    const progress = h("progress", { testid: "progress", max: 1, value: 0 });
    const progressText = h("span", { class: "progress-text", testid: "progress-text" }, "idle");
    const cancel = h("button", { testid: "cancel", title: "Cancel (Esc)", onclick: () => this.cancelEdit() }, "Cancel");
    const accept = h("button", { class: "primary", testid: "accept", title: "Accept (A)", onclick: () => this.accept() }, "Accept");
    const discard = h("button", { testid: "discard", title: "Discard (D)", onclick: () => this.discard() }, "Discard");
    const retry = h("button", { testid: "retry", title: "Try again with a new seed (T)", onclick: () => void this.generate({ newSeed: true }) }, "Try again");
    const resultInfo = h("div", { class: "result-info", testid: "result-info" });
    const candidates = h("div", { class: "candidates", testid: "candidates" });
    // held, not clicked: the original shows while a finger or the mouse button is down (a touch screen has no B key)
    const compare = h("button", { class: "hold", testid: "compare", title: "Hold to see the image without this edit (or hold B)" }, "Compare");
    compare.addEventListener("pointerdown", (e) => {
      if (e.button !== 0) return;
      compare.setPointerCapture(e.pointerId);
      this.setComparing(true);
    });
    for (const end of ["pointerup", "pointercancel", "lostpointercapture"] as const) compare.addEventListener(end, () => this.setComparing(false));
    compare.addEventListener("contextmenu", (e) => e.preventDefault()); // a long press would open the menu
    // from the keyboard: held Space or Enter on the focused button, as the pointer holds it
    const compareKey = (down: boolean) => (e: KeyboardEvent) => {
      if (e.key !== " " && e.key !== "Enter") return;
      e.preventDefault();
      e.stopPropagation(); // not the canvas's Space-to-pan
      if (!e.repeat) this.setComparing(down);
    };
    compare.addEventListener("keydown", compareKey(true));
    compare.addEventListener("keyup", compareKey(false));
    compare.addEventListener("blur", () => this.setComparing(false));
    const resultBox = h("section", { class: "result", testid: "result" }, h("h2", {}, "Result"), resultInfo, candidates, h("div", { class: "row" }, accept, discard, retry, compare), h("div", { class: "hint" }, "Hold Compare or B to see the image without the edit"), errorSlot("result"));
    const history = h("ol", { class: "history", testid: "history" });
    const undo = h("button", { testid: "undo", title: "Undo (Ctrl+Z)", onclick: () => this.undo() }, "Undo");
    const redo = h("button", { testid: "redo", title: "Redo (Ctrl+Shift+Z)", onclick: () => this.redo() }, "Redo");
    const live = h("input", { type: "checkbox", testid: "live-toggle" });
    live.addEventListener("change", () => {
      this.live = live.checked;
      if (this.live) this.scheduleLive();
    });
    const conn = h("span", { class: "conn", testid: "connection" }, "connecting");
    const model = h("span", { class: "model", testid: "model" }, "");
    const info = h("span", { class: "info", testid: "canvas-info" }, "");
    const zoom = h("span", { class: "zoom", testid: "zoom" }, "");
    const status = h("footer", { class: "status", testid: "status" }, conn, model, info, zoom);
    const promptHint = h("p", { class: "hint", testid: "prompt-hint", hidden: true });
    const empty = h("div", { class: "empty", testid: "empty" }, h("p", {}, "Open an image (O), drop one here, or paste it."),
      h("div", { class: "row" }, h("button", { class: "primary", onclick: () => fileInput.click() }, "Open image"),
        h("button", { testid: "empty-example", title: "A scene of the world the demo model learned", onclick: () => void this.openExample() }, "Try an example"),
        h("button", { testid: "empty-recent", title: "Images opened in this browser, stored on the server (H)", onclick: () => void this.recent.show() }, "Recent images")));
    const stage = h("div", { class: "stage", testid: "stage" }, empty);
    const errorSlots: Record<Slot, HTMLElement> = {
      open: errorSlot("open"), edit: errorSlot("edit"), result: resultBox.querySelector(".error-slot") as HTMLElement,
      history: errorSlot("history"), mask: errorSlot("mask"), global: errorSlot("global"),
    };
    const help = h("div", { class: "modal", testid: "help", hidden: true, onclick: (e: Event) => { if (e.target === help) this.toggleHelp(false); } },
      h("div", { class: "modal-card help-card", role: "dialog", "aria-modal": "true", "aria-labelledby": "help-title" }, h("h2", { id: "help-title" }, "Keyboard shortcuts"), h("dl", {}, ...SHORTCUTS.flatMap(([k, d]) => [h("dt", {}, k), h("dd", {}, d)])), h("button", { onclick: () => this.toggleHelp(false) }, "Close (Esc)")));

    const sideNames: (keyof Margins)[] = ["left", "top", "right", "bottom"];
    const expandSides = Object.fromEntries(sideNames.map((side) => [side, h("input", {
      type: "number", min: 0, max: 4096, step: 1, value: 0, testid: `expand-${side}`, "aria-label": `Pixels to add on the ${side}`,
      oninput: () => this.expandPlan(),
    })])) as Record<keyof Margins, HTMLInputElement>;
    const expandSize = h("p", { class: "hint", testid: "expand-size", "aria-live": "polite" });
    const expandApply = h("button", { class: "primary", testid: "expand-apply", onclick: () => this.expandCanvas() }, "Expand");
    const expand = h("div", { class: "modal", testid: "expand", hidden: true,
      onclick: (e: Event) => { if (e.target === expand) this.toggleExpand(false); },
      onkeydown: (e: Event) => {
        const key = (e as KeyboardEvent).key;
        if (key === "Escape") this.toggleExpand(false);
        else if (key === "Enter" && e.target instanceof HTMLInputElement) this.expandCanvas();  // buttons click themselves
      } },
      h("div", { class: "modal-card", role: "dialog", "aria-modal": "true", "aria-labelledby": "expand-title" },
        h("h2", { id: "expand-title" }, "Expand canvas"),
        h("p", { class: "hint" }, "Pixels to add on each side. The new border is masked, ready for a prompt (or none, to continue the picture); undo takes the expansion back."),
        h("div", { class: "expand-sides" }, ...sideNames.map((side) => h("label", {}, side, expandSides[side]))),
        expandSize,
        h("div", { class: "row" }, expandApply, h("button", { testid: "expand-cancel", onclick: () => this.toggleExpand(false) }, "Cancel"))));

    const btn = (label: string, testid: string, title: string, fn: () => void) => h("button", { testid, title, onclick: fn }, label);
    const toolbar = h("header", { class: "toolbar" }, h("h1", { class: "sr-only" }, "lazyedit image editor"),
      h("div", { class: "group" },
        h("button", { testid: "open", title: "Open image (O)", onclick: () => fileInput.click() }, "Open"), fileInput,
        btn("Example", "example", "Open an example scene of the world the demo model learned", () => void this.openExample()),
        btn("Download", "download", "Download the current image as PNG", () => void this.downloadImage()),
        btn("Expand", "expand-button", "Add pixels around the image and fill them (X)", () => this.toggleExpand()),
        btn("Link", "share", "Copy a link that opens this image and its history (for another device or person)", () => void this.copyLink()),
        btn("Recent", "recent-button", "Images opened in this browser, stored on the server: go back to one (H)", () => void this.recent.show()),
        errorSlots.open),
      h("div", { class: "group" }, tools.brush, tools.eraser, tools.rect, tools.lasso,
        h("label", { class: "inline" }, "Size", brushSize, brushSizeLabel)),
      h("div", { class: "group" },
        btn("Invert", "mask-invert", "Invert mask (I)", () => this.maskOp({ kind: "invert", layer: "mask" })),
        btn("Clear", "mask-clear", "Clear mask (Del)", () => this.maskOp({ kind: "clear", layer: "mask" })),
        btn("Import", "mask-import", "Import a mask PNG", () => maskInput.click()), maskInput,
        btn("Export", "mask-export", "Export the mask as PNG", () => void this.exportMask()),
        errorSlots.mask),
      h("div", { class: "group" }, tools.sketch, sketchColor,
        h("label", { class: "inline" }, "Pen", sketchSize),
        h("label", { class: "inline" }, "Strength", sketchStrength, sketchStrengthLabel),
        btn("Clear sketch", "sketch-clear", "Clear sketch (Shift+Del)", () => this.maskOp({ kind: "clear", layer: "sketch" }))),
      h("div", { class: "group" }, undo, redo,
        btn("Fit", "fit", "Fit to screen (F)", () => this.editor.fit()),
        h("label", { class: "inline", title: "Generate automatically after a pause" }, live, "Live"),
        btn("?", "help-button", "Keyboard shortcuts (?)", () => this.toggleHelp())),
    );
    const panel = h("aside", { class: "panel" },
      h("section", {}, h("h2", {}, "Prompt"), h("div", { class: "row" }, prompt, generate), promptHint,
        h("div", { class: "params" },
          h("label", {}, seedRandom, "random seed"), seed,
          h("label", {}, "steps", steps), h("label", {}, "guidance", guidance)),
        h("div", { class: "row" }, progress, progressText, cancel), errorSlots.edit),
      resultBox,
      h("section", { class: "history-section" }, h("h2", {}, "History"), history, errorSlots.history),
      errorSlots.global);
    this.recent = new RecentDialog({
      current: () => this.session,
      headers: () => this.authHeaders(),
      open: (session) => this.switchSession(session),
      closed: () => this.editor.el.focus({ preventScroll: true }),
    });
    const root = h("div", { class: "app" }, toolbar, h("main", {}, stage, panel), status, help, expand, this.recent.el);
    this.mount.append(root);

    this.ui = {
      root, fileInput, maskInput, tools, brushSize, brushSizeLabel, sketchColor, sketchSize, sketchStrength, sketchStrengthLabel,
      prompt, promptHint, generate, seedRandom, seed, steps, guidance, progress, progressText, cancel, resultBox, resultInfo, candidates, accept, discard,
      retry, history, undo, redo, live, status, conn, model, info, zoom, stage, empty, help, expand, expandSides, expandSize, expandApply, errorSlots,
    };

    this.editor = new Editor(stage);
    this.editor.onOp = (op) => {
      this.stack.push({ kind: "layer", op });
      this.refresh();
      this.layerChanged(op.layer);
      this.scheduleLive();
    };
    this.editor.onViewChange = () => (this.ui.zoom.textContent = `${Math.round(this.editor.view.scale * 100)}%`);
    this.bindGlobalEvents();
    this.setTool("brush");
  }

  private bindGlobalEvents(): void {
    const stage = this.ui.stage;
    stage.addEventListener("dragover", (e) => {
      e.preventDefault();
      stage.classList.add("drop");
    });
    stage.addEventListener("dragleave", () => stage.classList.remove("drop"));
    stage.addEventListener("drop", (e) => {
      e.preventDefault();
      stage.classList.remove("drop");
      const f = [...(e.dataTransfer?.files ?? [])].find((x) => x.type.startsWith("image/"));
      if (f) void this.openFile(f);
    });
    window.addEventListener("paste", (e) => {
      const items = [...(e.clipboardData?.items ?? [])];
      const it = items.find((x) => x.kind === "file" && x.type.startsWith("image/"));
      const f = it?.getAsFile();
      if (f) {
        e.preventDefault();
        void this.openFile(f);
      }
    });
    window.addEventListener("keydown", (e) => this.onKey(e, true));
    window.addEventListener("keyup", (e) => this.onKey(e, false));
    window.addEventListener("blur", () => {
      this.editor.setSpace(false);
      this.setComparing(false);
    });
  }

  private onKey(e: KeyboardEvent, down: boolean): void {
    if (!down) {
      if (e.code === "Space") this.editor.setSpace(false);
      if (e.key === "Alt") this.editor.setAlt(false);
      if (e.key === "b" || e.key === "B") this.setComparing(false);
      return;
    }
    const mod = e.ctrlKey || e.metaKey;
    if (isTextField(e.target)) return; // typing never triggers shortcuts (the prompt handles Enter/Esc itself)
    const key = e.key;
    if (mod && (key === "z" || key === "Z")) {
      e.preventDefault();
      if (e.shiftKey) this.redo();
      else this.undo();
      return;
    }
    if (mod && (key === "y" || key === "Y")) {
      e.preventDefault();
      this.redo();
      return;
    }
    if (mod && key === "Enter") {
      e.preventDefault();
      void this.generate();
      return;
    }
    if (mod || e.altKey) {
      if (key === "Alt") this.editor.setAlt(true);
      return;
    }
    switch (key) {
      case " ":
        e.preventDefault();
        this.editor.setSpace(true);
        return;
      case "?":
        this.toggleHelp();
        return;
      case "Escape":
        if (this.recent.isOpen) this.recent.close();
        else if (!this.ui.help.hidden) this.toggleHelp(false);
        else if (!this.ui.expand.hidden) this.toggleExpand(false);
        else if (this.editor.drawing) this.editor.abortDrawing();
        else this.cancelEdit();
        return;
      case "h": case "H": void this.recent.show(); return;
      case "x": case "X": this.toggleExpand(); return;
      case "m": case "M": this.setTool("brush"); return;
      case "e": case "E": this.setTool("eraser"); return;
      case "r": case "R": this.setTool("rect"); return;
      case "l": case "L": this.setTool("lasso"); return;
      case "s": case "S": this.setTool("sketch"); return;
      case "[": this.bumpSize(1 / 1.2); return;
      case "]": this.bumpSize(1.2); return;
      case "i": case "I": this.maskOp({ kind: "invert", layer: "mask" }); return;
      case "Delete": case "Backspace":
        this.maskOp({ kind: "clear", layer: e.shiftKey ? "sketch" : "mask" });
        return;
      case "b": case "B":
        if (!e.repeat) this.setComparing(true);
        return;
      case "a": case "A": this.accept(); return;
      case "1": case "2": case "3": case "4": case "5": case "6": case "7": case "8": case "9": {
        const c = this.candidates[Number(key) - 1];
        if (c) this.showCandidate(c);
        return;
      }
      case "d": case "D": this.discard(); return;
      case "t": case "T": void this.generate({ newSeed: true }); return;
      case "g": case "G": void this.generate(); return;
      case "f": case "F": this.editor.fit(); return;
      case "+": case "=": this.editor.zoomBy(1.25); return;
      case "-": case "_": this.editor.zoomBy(0.8); return;
      case "o": case "O": this.ui.fileInput.click(); return;
      case "/": case "p": case "P":
        e.preventDefault();
        this.ui.prompt.focus();
        return;
    }
  }

  private toggleHelp(show = this.ui.help.hidden): void {
    this.ui.help.hidden = !show;
    // focus follows the dialog (a keyboard or screen-reader user lands in it), and goes back to the canvas
    if (show) this.ui.help.querySelector("button")?.focus();
    else this.editor.el.focus({ preventScroll: true });
  }

  private toggleExpand(show = this.ui.expand.hidden): void {
    if (show && !this.editor.image) return;
    this.ui.expand.hidden = !show;
    if (show) {
      this.expandPlan();
      this.ui.expandSides.right.focus();
      this.ui.expandSides.right.select();
    } else this.editor.el.focus({ preventScroll: true });
  }

  private expandMargins(): Margins {
    const v = (side: keyof Margins) => Number(this.ui.expandSides[side].value || 0);
    return { left: v("left"), top: v("top"), right: v("right"), bottom: v("bottom") };
  }

  /** The expand the dialog describes, shown as the size it leads to or as what is wrong with it. */
  private expandPlan(): ReturnType<typeof expandPlan> {
    const { width: w, height: h } = this.editor;
    const plan = expandPlan(w, h, this.expandMargins(), this.limits?.max_pixels ?? Infinity);
    this.ui.expandSize.textContent = "error" in plan ? plan.error : `${w}×${h} → ${plan.width}×${plan.height}`;
    this.ui.expandSize.classList.toggle("invalid", "error" in plan);
    this.ui.expandApply.disabled = "error" in plan;
    return plan;
  }

  private expandCanvas(): void {
    const plan = this.expandPlan();
    if ("error" in plan) return;
    const id = this.nextId("x", "open");
    if (!this.conn.send(expandMsg(id, this.expandMargins()))) {
      this.showError("open", "Not connected to the server.", "disconnected");
      return;
    }
    this.pendingExpand = { id, border: plan.border };
    this.toggleExpand(false);
  }

  private setComparing(on: boolean): void {
    if (this.editor.comparing === on) return;
    this.editor.comparing = on;
    this.ui.root.classList.toggle("comparing", on);
    this.editor.requestRender();
  }

  setTool(t: Tool): void {
    this.editor.tool = t;
    for (const [k, b] of Object.entries(this.ui.tools)) {
      b.classList.toggle("active", k === t);
      b.setAttribute("aria-pressed", String(k === t));
    }
    this.refresh();
    this.editor.requestRender();
  }

  private bumpSize(f: number): void {
    if (this.editor.tool === "sketch") this.editor.sketchSize = clampSize(this.editor.sketchSize, f, 256);
    else this.editor.brushSize = clampSize(this.editor.brushSize, f, 1024);
    this.refresh();
    this.editor.requestRender();
  }

  // =====================================================================================
  // errors
  // =====================================================================================

  showError(slot: Slot, text: string, code = "client", action?: { label: string; run: () => void }): void {
    this.showMessage("error", slot, text, code, action);
  }

  /** Something the editor did for the user that they should know of (not a failure): neutral, not an alert. */
  showNotice(slot: Slot, text: string, code: string): void {
    this.showMessage("notice", slot, text, code);
  }

  private showMessage(kind: "error" | "notice", slot: Slot, text: string, code: string, action?: { label: string; run: () => void }): void {
    const el = this.ui.errorSlots[slot];
    el.replaceChildren();
    const msg = h("div", { class: kind, testid: kind, role: kind === "error" ? "alert" : "status", "data-code": code, "data-slot": slot },
      h("span", {}, text),
      action ? h("button", { testid: "error-action", onclick: () => { msg.remove(); action.run(); } }, action.label) : null,
      h("button", { class: "close", title: "Dismiss", onclick: () => msg.remove() }, "×"));
    el.append(msg);
  }

  clearError(slot: Slot): void {
    this.ui.errorSlots[slot].replaceChildren();
  }

  // =====================================================================================
  // connection and messages
  // =====================================================================================

  private sendHello(): void {
    this.helloId = this.nextId("h", "global");
    this.conn.send(helloMsg(this.helloId, this.session, this.owner));
  }

  private onConnState(s: ConnState, info: { attempt: number; retryInMs?: number; code?: number; reason?: string }): void {
    this.connState = s;
    const el = this.ui.conn;
    el.dataset.state = s;
    this.ui.status.dataset.state = s;
    if (s === "open") {
      el.textContent = "connected";
      this.clearError("global");
    } else if (s === "connecting") el.textContent = info.attempt ? `reconnecting (try ${info.attempt + 1})` : "connecting";
    else if (s === "waiting") {
      el.textContent = `offline, retrying in ${Math.ceil((info.retryInMs ?? 0) / 1000)} s`;
      this.connectionLost();
    } else if (info.code === CLOSE_TAKEN_OVER) {
      el.textContent = "session open in another tab";
      this.showError("global", "This session was opened in another tab or window.", "taken_over",
        { label: "Use it here", run: () => this.conn.start() });
      this.connectionLost();
    } else {
      el.textContent = "disconnected";
      const why = info.code === 4401 ? describeError("unauthorized", "") : info.code === 4403 ? describeError("bad_origin", "") : "Disconnected";
      this.showError("global", `${why}. Reload the page to try again.`, info.code === 4401 ? "unauthorized" : info.code === 4403 ? "bad_origin" : "closed");
      this.connectionLost();
    }
    this.refresh();
  }

  /** Requests in flight are lost with the socket; the session itself is resumed on reconnect. */
  private connectionLost(): void {
    if (this.edit && !this.edit.sent) this.edit = null;
    if (this.edit) {
      // the server keeps running it and delivers the outcome when the session is resumed
      this.ui.progressText.textContent = "offline; edit continues on the server";
    }
    if (this.accepting) {
      this.accepting = null;
      this.showError("result", "Connection lost while accepting; check the history once reconnected.", "disconnected");
    }
    if (this.serverUndo) {
      if (this.serverUndo.fromStack) {
        if (this.serverUndo.dir === "undo") this.stack.restoreUndone();
        else this.stack.restoreRedone();
      }
      this.serverUndo = null;
    }
    this.liveWanted = false;
    this.refresh();
  }

  private onText(text: string): void {
    let m: ServerMessage;
    try {
      m = decodeText(text);
    } catch {
      this.showError("global", "The server sent a message this page cannot read.", "bad_json");
      return;
    }
    this.dispatch(m);
  }

  private onBinary(buf: ArrayBuffer): void {
    let m: ServerMessage;
    try {
      m = binaryToMessage(decodeFrame(buf));
    } catch (e) {
      this.showError("global", `The server sent a malformed frame (${(e as Error).message}).`, "bad_frame");
      return;
    }
    this.dispatch(m);
  }

  private dispatch(m: ServerMessage): void {
    switch (m.type) {
      case "ready": return this.onReady(m as ReadyMsg);
      case "ack": return this.onAck(m as AckMsg);
      case "canvas": return void this.onCanvas(m as CanvasFrame);
      case "progress": return void this.onProgress(m as ProgressFrame);
      case "result": return void this.onResult(m as ResultFrame);
      case "prepared": this.preparedCount++; return;
      case "cancelled": return this.onCancelled(m.id);
      case "error": return this.onError(m as ErrorMsg);
    }
  }

  private setHistory(history: HistoryEntry[] | undefined, position: number | undefined, version?: number): void {
    if (Array.isArray(history)) this.history = history;
    if (typeof position === "number") this.position = position;
    if (typeof version === "number") this.version = version;
    this.renderHistory();
  }

  private onReady(m: ReadyMsg): void {
    if (this.edit) this.watchResumedEdit(this.edit);
    this.ready = m;
    this.limits = m.limits;
    this.session = m.session;
    localStorage.setItem(SESSION_KEY, m.session);
    this.ui.model.textContent = `${m.model} · ${m.device}`;
    this.ui.model.title = `model ${m.model} on ${m.device}`;
    const L = m.limits;
    if (L) {
      this.ui.prompt.maxLength = L.max_prompt_chars;
      this.ui.steps.min = String(L.min_steps);
      this.ui.steps.max = String(L.max_steps);
      this.ui.guidance.min = String(L.min_guidance);
      this.ui.guidance.max = String(L.max_guidance);
    }
    if (this.ui.steps.value === "") this.ui.steps.value = String(m.default_steps);
    if (this.ui.guidance.value === "") this.ui.guidance.value = String(m.default_guidance);
    this.setHistory(m.history, m.position, m.canvas?.version);
    if (!m.canvas && this.editor.image && !this.pendingCanvas) {
      // the server no longer has our image (new session after a restart): upload what we are showing
      void this.reuploadCurrent();
    }
    this.refresh();
  }

  /**
   * After a reconnect the server sends a still-running edit's previews again, and a finished edit's
   * outcome right away. If neither comes, the edit was lost (e.g. the server restarted).
   */
  private watchResumedEdit(ed: RunningEdit): void {
    const heard = ed.heard;
    setTimeout(() => {
      if (this.edit === ed && ed.heard === heard) {
        this.showError("edit", "The running edit was lost while offline; generate again.", "lost");
        this.ui.progressText.textContent = "lost";
        this.finishEdit();
      }
    }, RESUME_WATCH_MS);
  }

  private async reuploadCurrent(): Promise<void> {
    if (!this.editor.image) return;
    const png = await canvasToPNG(this.editor.image);
    const bmp = await decodeImage(png);
    await this.sendCanvas(png, bmp, "current image");
  }

  private onAck(m: AckMsg): void {
    if (m.of === "canvas") {
      this.setHistory(m.history, m.position, m.version); // (this page uploads images over REST: see sendCanvas)
    } else if (m.of === "accept") {
      if (m.id === this.accepting) {
        this.accepting = null;
        if (this.result) {
          this.editor.pasteIntoImage({ bitmap: this.result.bitmap, box: this.result.box });
        }
        this.clearCandidates(); // the canvas moved on: the others no longer apply (the pasted one stays open)
        this.result = null;
        this.editor.result = null;
        // the mask and sketch did their job: clear them (undoable) so the accepted edit is visible
        for (const layer of ["mask", "sketch"] as const) {
          if (this.editor.layer(layer)?.hasContent) this.pushLayerOp({ kind: "clear", layer });
        }
        this.stack.push({ kind: "server" });
      }
      this.setHistory(m.history, m.position, m.version);
    }
    this.refresh();
  }

  private async onCanvas(m: CanvasFrame): Promise<void> {
    let bmp: ImageBitmap;
    try {
      bmp = await decodeImage(m.image.data, m.image.mime);
    } catch {
      this.showError("global", "Could not decode the image the server sent.", "bad_image");
      return;
    }
    const sizeChanged = this.editor.setImage(bmp);
    if (sizeChanged) this.stack.clear();
    this.ui.empty.hidden = true;
    this.discardResultState();
    if (m.id && this.gotoIds.has(m.id)) {
      this.gotoIds.delete(m.id);
      this.stack.removeWhere((e) => e.kind === "server"); // the server's undo chain changed under us
    }
    if (this.serverUndo && m.id === this.serverUndo.id) this.serverUndo = null;
    this.setHistory(m.history, m.position, m.version);
    if (this.pendingExpand && m.id === this.pendingExpand.id) {
      // the new border is what the person expanded for: mask it, so that Generate fills it
      for (const [x0, y0, x1, y1] of this.pendingExpand.border)
        this.maskOp({ kind: "poly", layer: "mask", erase: false, poly: rectPolygon(x0, y0, x1, y1), color: MASK_COLOR });
      this.pendingExpand = null;
      this.showNotice("open", "The new border is masked: describe what belongs there, or leave the prompt empty to continue the picture, then Generate.", "expanded");
      this.ui.prompt.focus();
    }
    this.refresh();
  }

  private async onProgress(m: ProgressFrame): Promise<void> {
    const ed = this.edit;
    if (!ed || m.id !== ed.id) return;
    ed.previews++;
    ed.heard++;
    this.ui.progress.max = m.total;
    this.ui.progress.value = m.step;
    this.ui.progressText.textContent = `step ${m.step}/${m.total}`;
    try {
      const bmp = await decodeImage(m.preview.data, m.preview.mime);
      if (this.edit !== ed) return;
      this.editor.preview?.bitmap.close();
      this.editor.preview = { bitmap: bmp, box: m.box };
      this.editor.requestRender();
    } catch {
      /* a preview that does not decode is simply skipped */
    }
  }

  private async onResult(m: ResultFrame): Promise<void> {
    const ed = this.edit;
    if (!ed || m.id !== ed.id) return;
    ed.heard++;
    let bmp: ImageBitmap;
    try {
      bmp = await decodeImage(m.image.data, m.image.mime);
    } catch {
      this.showError("edit", "Could not decode the result image.", "bad_image");
      this.finishEdit();
      return;
    }
    if (this.edit !== ed) return;
    const res: PendingResult = { editId: ed.id, box: m.box, bitmap: bmp, seed: m.seed, steps: m.steps, timings: m.timings ?? {} };
    this.candidates.push(res);
    while (this.candidates.length > Math.max(1, this.limits?.results_kept ?? 1)) this.candidates.shift()!.bitmap.close();
    this.showCandidate(res);
    this.ui.progress.value = this.ui.progress.max;
    const t = m.timings ?? {};
    const nums = Object.values(t).filter((v): v is number => typeof v === "number");
    const total = t.service_total_ms ?? t.total_ms ?? (nums.length ? Math.max(...nums) : 0);
    this.ui.progressText.textContent = `done${total ? ` in ${Math.round(total)} ms` : ""}`;
    this.clearError("result");
    this.finishEdit();
  }

  /** Shows one of the candidates on the canvas; Accept takes that one. */
  private showCandidate(c: PendingResult): void {
    if (!this.candidates.includes(c) || this.accepting) return;
    this.result = c;
    this.lastResultBox = c.box;
    this.editor.result = { bitmap: c.bitmap, box: c.box };
    const [x0, y0, x1, y1] = c.box;
    this.ui.resultInfo.textContent = `seed ${c.seed} · ${c.steps} steps · ${x1 - x0}×${y1 - y0} px at ${x0}, ${y0}`;
    this.renderCandidates();
    this.editor.requestRender();
    this.refresh();
  }

  private clearCandidates(): void {
    for (const c of this.candidates) if (c !== this.result) c.bitmap.close();
    this.candidates = [];
    this.renderCandidates();
  }

  /** Thumbnails of the candidates' boxes (only when there is a choice), the shown one marked. */
  private renderCandidates(): void {
    const strip = this.ui.candidates;
    strip.replaceChildren();
    if (this.candidates.length < 2) return;
    this.candidates.forEach((c, i) => {
      const thumb = makeCanvas(48, 48);
      const s = Math.min(48 / c.bitmap.width, 48 / c.bitmap.height);
      const w = c.bitmap.width * s, hgt = c.bitmap.height * s;
      ctx2d(thumb).drawImage(c.bitmap, (48 - w) / 2, (48 - hgt) / 2, w, hgt);
      strip.append(h("button", {
        class: `candidate${c === this.result ? " current" : ""}`, testid: "candidate", "data-index": i,
        title: `seed ${c.seed} (${i + 1})`, onclick: () => this.showCandidate(c),
      }, thumb));
    });
  }

  private onCancelled(id: string | null): void {
    if (this.edit && id === this.edit.id) {
      this.ui.progressText.textContent = "cancelled";
      this.finishEdit();
    }
  }

  private onError(m: ErrorMsg): void {
    const target = (m.id && this.slots.get(m.id)) || "global";
    if (target === "prepare") return;
    const slot: Slot = target;
    if (m.id && m.id === this.pendingExpand?.id) this.pendingExpand = null;
    if (m.id && m.id === this.helloId && m.code === "unknown_session") {
      // the server forgot our session: start a fresh one
      this.session = null;
      localStorage.removeItem(SESSION_KEY);
      this.history = [];
      this.renderHistory();
      this.conn.reconnect(); // a socket opened with ?session= serves that session only: open an unbound one
      this.showError("history", "The previous session is gone on the server; a new one was started.", m.code);
      return;
    }
    this.showError(slot, describeError(m.code, m.message), m.code);
    if (this.edit && m.id === this.edit.id) {
      this.ui.progressText.textContent = "failed";
      this.finishEdit();
    }
    if (m.id && m.id === this.accepting) this.accepting = null;
    if (this.serverUndo && m.id === this.serverUndo.id) {
      if (this.serverUndo.fromStack) {
        if (this.serverUndo.dir === "undo") this.stack.restoreUndone();
        else this.stack.restoreRedone();
      }
      this.serverUndo = null;
    }
    this.refresh();
  }

  private finishEdit(): void {
    if (this.edit) this.lastEdit = this.edit;
    this.edit = null;
    this.editor.preview?.bitmap.close();
    this.editor.preview = null;
    this.editor.requestRender();
    this.refresh();
    if (this.liveWanted) {
      this.liveWanted = false;
      void this.generate({ live: true });
    }
  }

  private discardResultState(): void {
    this.clearCandidates();
    this.result = null;
    this.editor.result = null;
    this.editor.preview = null;
    this.accepting = null;
  }

  // =====================================================================================
  // actions
  // =====================================================================================

  /** Opens an image file; true once it is the canvas of a new session. */
  async openFile(file: Blob & { name?: string }): Promise<boolean> {
    this.clearError("open");
    const bytes = new Uint8Array(await file.arrayBuffer());
    let bmp: ImageBitmap;
    try {
      bmp = await createImageBitmap(file);
    } catch {
      this.showError("open", `${file.name ?? "That file"} is not an image this browser can read.`, "bad_image");
      return false;
    }
    let png: Uint8Array = bytes;
    let note: string | null = null;
    const fit = this.limits ? fitPixels(bmp.width, bmp.height, this.limits.max_pixels) : null;
    if (fit || !PNG_MAGIC.every((b, i) => bytes[i] === b)) {
      const [w, h] = fit ?? [bmp.width, bmp.height];
      const c = makeCanvas(w, h);
      const cx = ctx2d(c);
      cx.imageSmoothingQuality = "high";
      cx.drawImage(bmp, 0, 0, w, h);
      png = await canvasToPNG(c);
      if (fit) {
        const mp = (this.limits!.max_pixels / 1e6).toFixed(1);
        note = `${file.name ?? "The image"} is ${bmp.width}×${bmp.height}, over the server's ${mp} megapixels: opened scaled to ${w}×${h}.`;
        bmp.close();
        bmp = await createImageBitmap(c);
      }
    }
    const opened = await this.sendCanvas(png, bmp, file.name ?? "image");
    if (opened) {
      this.editor.clearLayers(); // a mask painted on the other image means nothing on this one
      this.ui.promptHint.hidden = true;
      if (note) this.showNotice("open", note, "image_scaled");
    }
    return opened;
  }

  /**
   * A scene of the procedural world from the server (the demo model knows nothing else), opened as a file
   * would be; the prompt it suggests, a shape and colour the scene lacks, becomes the prompt box's hint.
   */
  async openExample(): Promise<void> {
    this.clearError("open");
    const seed = Math.floor(Math.random() * 2 ** 31);
    let res: Response;
    try {
      res = await fetch(`/api/example?seed=${seed}`, { headers: this.authHeaders() });
    } catch {
      this.showError("open", "Could not reach the server for an example; try again once reconnected.", "disconnected");
      return;
    }
    if (!res.ok) return this.showHttpError("open", res);
    const suggestion = res.headers.get("X-Lazyedit-Prompt");
    const opened = await this.openFile(new File([await res.blob()], `example-${seed}.png`, { type: "image/png" }));
    if (opened && suggestion) {
      // the demo model takes an object's shape from the mask more than from the prompt (a box comes back box-shaped:
      // `lazyedit eval --kinds box`, the model card), so the hint asks for the shape to be painted
      this.ui.promptHint.textContent = `Paint the shape you want where it should go and try “${suggestion}”, or paint over an object and leave the prompt empty to remove it.`;
      this.ui.promptHint.hidden = false;
    }
  }

  private async showHttpError(slot: Slot, res: Response): Promise<void> {
    const body = await res.json().catch(() => null);
    const detail = body?.detail ?? {};
    const code = typeof detail.code === "string" ? detail.code : `http_${res.status}`;
    this.showError(slot, describeError(code, typeof detail.message === "string" ? detail.message : res.statusText), code);
  }

  /**
   * A new image starts a new session (the old one stays stored on the server). It is created over REST,
   * then the socket is reopened with the session's routing key (`/ws?session=<id>`), so behind a proxy
   * with several replicas every edit of the session reaches the replica that holds its state.
   */
  private async sendCanvas(png: Uint8Array, bmp: ImageBitmap, name: string): Promise<boolean> {
    const upload = { id: this.nextId("c", "open"), bmp, name };
    this.pendingCanvas = upload;
    this.refresh();
    let created: { session: string } | null = null;
    try {
      const form = new FormData();
      form.append("image", new Blob([png as Uint8Array<ArrayBuffer>], { type: "image/png" }), "image.png");
      const res = await fetch("/api/sessions", { method: "POST", body: form, headers: this.authHeaders() });
      if (res.ok) created = await res.json();
      else await this.showHttpError("open", res);
    } catch {
      this.showError("open", "Could not reach the server to upload the image; try again once reconnected.", "disconnected");
    }
    if (this.pendingCanvas !== upload) return false; // another image was opened meanwhile
    this.pendingCanvas = null;
    if (!created) {
      this.refresh();
      return false;
    }
    this.enterSession(created.session, bmp);
    return true;
  }

  /** Go back to a stored session (Recent images): its canvas and history arrive on the reopened socket. */
  switchSession(session: string): void {
    if (session === this.session) return;
    this.ui.promptHint.hidden = true;
    this.enterSession(session);
    this.editor.clearLayers(); // a mask painted on the other image means nothing on this one
  }

  /** Leave the current session for another; with `bmp` the new session's image is shown at once. */
  private enterSession(session: string, bmp?: ImageBitmap): void {
    this.cancelEdit();
    this.edit = null; // its outcome belongs to the old session, on the old socket
    this.ui.progressText.textContent = "";
    this.stack.clear();
    this.discardResultState();
    if (bmp) {
      this.editor.setImage(bmp);
      this.ui.empty.hidden = true;
    }
    this.clearError("open");
    this.session = session;
    localStorage.setItem(SESSION_KEY, session);
    this.history = [];
    this.renderHistory();
    this.conn.reconnect(); // hello on the new socket resumes the new session: ready, then its canvas and history
    this.refresh();
  }

  private authHeaders(): Record<string, string> {
    const headers: Record<string, string> = { [OWNER_HEADER]: this.owner };
    if (this.token) headers.Authorization = `Bearer ${this.token}`;
    return headers;
  }

  private readParams(newSeed: boolean): EditParams {
    const seedText = this.ui.seed.value.trim();
    const seed = newSeed || this.ui.seedRandom.checked || seedText === "" ? null : Number.parseInt(seedText, 10);
    const p: EditParams = { prompt: this.ui.prompt.value, seed: Number.isFinite(seed as number) ? seed : null };
    const steps = Number.parseInt(this.ui.steps.value, 10);
    if (Number.isFinite(steps)) p.steps = steps;
    const guidance = Number.parseFloat(this.ui.guidance.value);
    if (Number.isFinite(guidance)) p.guidance = guidance;
    p.sketch_strength = Number.parseFloat(this.ui.sketchStrength.value);
    return p;
  }

  /** Send an edit. A newer call supersedes the running one (the server cancels it). */
  async generate(opts: { newSeed?: boolean; live?: boolean } = {}): Promise<void> {
    this.clearError("edit");
    if (!this.editor.image || !this.editor.mask) {
      this.showError("edit", "Open an image first.", "no_canvas");
      return;
    }
    if (!this.conn.isOpen) {
      this.showError("edit", "Not connected to the server; the edit will need to be sent again once reconnected.", "disconnected");
      return;
    }
    const params = this.readParams(!!opts.newSeed);
    const id = this.nextId("e", "edit");
    const ed: RunningEdit = { id, params, previews: 0, heard: 0, sent: false, cancelling: false };
    this.edit = ed;
    if (!opts.newSeed) this.clearCandidates(); // a new edit; Try again adds a candidate to this one's
    this.result = null;
    this.editor.result = null;
    this.editor.preview = null;
    this.ui.progress.value = 0;
    this.ui.progressText.textContent = "encoding…";
    this.refresh();
    const mask = await this.editor.mask.toPNG();
    const sketch = this.editor.sketch?.hasContent ? await this.editor.sketch.toPNG() : null;
    if (this.edit !== ed) return; // superseded while encoding
    ed.sent = this.conn.send(editFrame(id, params, mask, sketch));
    if (!ed.sent) {
      this.showError("edit", "Not connected to the server.", "disconnected");
      this.edit = null;
    } else this.ui.progressText.textContent = "queued";
    this.refresh();
  }

  cancelEdit(): void {
    const ed = this.edit;
    if (!ed) return;
    this.liveWanted = false;
    if (!ed.sent) {
      this.edit = null;
      this.ui.progressText.textContent = "cancelled";
      this.refresh();
      return;
    }
    ed.cancelling = true;
    this.conn.send(cancelMsg(this.nextId("x", "edit"), ed.id));
    this.ui.progressText.textContent = "cancelling…";
  }

  accept(): void {
    if (!this.result || this.accepting) return;
    const id = this.nextId("a", "result");
    if (!this.conn.send(acceptMsg(id, this.result.editId))) {
      this.showError("result", "Not connected to the server.", "disconnected");
      return;
    }
    this.accepting = id;
    this.refresh();
  }

  discard(): void {
    if (!this.result || this.accepting) return;
    this.result = null;
    this.clearCandidates(); // every candidate: discarding rejects the edit, not one try of it
    this.editor.result = null;
    this.editor.requestRender();
    this.refresh();
  }

  private maskOp(op: LayerOp): void {
    if (this.pushLayerOp(op)) this.scheduleLive();
  }

  private pushLayerOp(op: LayerOp): boolean {
    const layer = this.editor.layer(op.layer);
    if (!layer || this.editor.drawing) return false;
    if (op.kind === "clear" && !layer.hasContent) return false;
    layer.apply(op);
    this.stack.push({ kind: "layer", op });
    this.editor.requestRender();
    this.refresh();
    this.layerChanged(op.layer);
    return true;
  }

  undo(): void {
    if (this.editor.drawing || this.serverUndo) return;
    const top = this.stack.peekUndo();
    if (!top) {
      if (this.position > 0) this.sendServerUndo("undo", false);
      return;
    }
    if (top.kind === "layer") {
      this.stack.undo();
      this.rebuildLayer(top.op.layer);
      this.layerChanged(top.op.layer);
    } else {
      this.stack.undo();
      this.sendServerUndo("undo", true);
    }
    this.refresh();
  }

  redo(): void {
    if (this.editor.drawing || this.serverUndo) return;
    const top = this.stack.peekRedo();
    if (!top) {
      if (this.position < this.history.length - 1) this.sendServerUndo("redo", false);
      return;
    }
    this.stack.redo();
    if (top.kind === "layer") {
      this.editor.layer(top.op.layer)?.apply(top.op);
      this.editor.requestRender();
      this.layerChanged(top.op.layer);
    } else this.sendServerUndo("redo", true);
    this.refresh();
  }

  private sendServerUndo(dir: "undo" | "redo", fromStack: boolean): void {
    const id = this.nextId(dir === "undo" ? "u" : "r", "history");
    if (!this.conn.send(dir === "undo" ? undoMsg(id) : redoMsg(id))) {
      if (fromStack) {
        if (dir === "undo") this.stack.restoreUndone();
        else this.stack.restoreRedone();
      }
      this.showError("history", "Not connected to the server.", "disconnected");
      return;
    }
    this.serverUndo = { id, dir, fromStack };
  }

  private rebuildLayer(name: LayerOp["layer"]): void {
    const ops = this.stack.entries().flatMap((e) => (e.kind === "layer" ? [e.op] : []));
    this.editor.layer(name)?.rebuild(ops);
    this.editor.requestRender();
  }

  goto(index: number): void {
    if (index === this.position) return;
    const id = this.nextId("g", "history");
    if (!this.conn.send(gotoMsg(id, index))) {
      this.showError("history", "Not connected to the server.", "disconnected");
      return;
    }
    this.gotoIds.add(id);
  }

  private async importMask(file: File): Promise<void> {
    this.clearError("mask");
    const { width: w, height: h } = this.editor;
    if (!w) {
      this.showError("mask", "Open an image before importing a mask.", "no_canvas");
      return;
    }
    let bmp: ImageBitmap;
    try {
      bmp = await createImageBitmap(file);
    } catch {
      this.showError("mask", `${file.name} is not an image.`, "bad_image");
      return;
    }
    if (bmp.width !== w || bmp.height !== h) this.showNotice("mask", `Mask is ${bmp.width}×${bmp.height}, image is ${w}×${h}: scaled to fit.`, "mask_scaled");
    const c = makeCanvas(w, h);
    const cx = ctx2d(c, true);
    cx.imageSmoothingEnabled = false;
    cx.drawImage(bmp, 0, 0, w, h);
    const src = cx.getImageData(0, 0, w, h);
    const bits = maskFromRGBA(src.data, w, h);
    const out = new ImageData(w, h);
    maskToRGBA(bits, out.data);
    this.maskOp({ kind: "bitmap", layer: "mask", pixels: out });
  }

  private async exportMask(): Promise<void> {
    const m = this.editor.mask;
    if (!m) {
      this.showError("mask", "Nothing to export: open an image first.", "no_canvas");
      return;
    }
    // white where masked, transparent elsewhere: reads the same by alpha or by grey level
    const c = makeCanvas(m.width, m.height);
    const cx = ctx2d(c);
    cx.drawImage(m.canvas, 0, 0);
    cx.globalCompositeOperation = "source-in";
    cx.fillStyle = "#fff";
    cx.fillRect(0, 0, m.width, m.height);
    const png = await canvasToPNG(c);
    downloadBlob(new Blob([png as Uint8Array<ArrayBuffer>], { type: "image/png" }), "mask.png");
  }

  private async copyLink(): Promise<void> {
    if (!this.session || !this.editor.image) {
      this.showError("open", "Open an image first: a link opens a stored image.", "no_canvas");
      return;
    }
    const link = sessionLink(location, this.session);
    const copied = await navigator.clipboard?.writeText(link).then(() => true, () => false);
    // whoever opens it edits this image (not a copy); it stays in this browser's Recent only
    this.showNotice("open", copied ? `Link copied: ${link}` : `Copy this link: ${link}`, copied ? "link_copied" : "link");
  }

  private async downloadImage(): Promise<void> {
    if (!this.editor.image) {
      this.showError("open", "Nothing to download yet.", "no_canvas");
      return;
    }
    const png = await canvasToPNG(this.editor.image);
    downloadBlob(new Blob([png as Uint8Array<ArrayBuffer>], { type: "image/png" }), `lazyedit-${this.session?.slice(0, 8) ?? "image"}-v${this.version}.png`);
  }

  // ---------- head start: the server encodes a painted mask's context before the edit ----------

  private layerChanged(layer: LayerOp["layer"]): void {
    if (layer !== "mask") return;
    if (this.prepareTimer) clearTimeout(this.prepareTimer);
    this.prepareTimer = setTimeout(() => {
      this.prepareTimer = null;
      void this.sendPrepare();
    }, PREPARE_DELAY_MS);
  }

  private async sendPrepare(): Promise<void> {
    const mask = this.editor.mask;
    if (!mask?.hasContent || this.editor.drawing || !this.conn.isOpen || this.pendingCanvas) return;
    const png = await mask.toPNG();
    this.conn.send(prepareFrame(this.nextId("p", "prepare"), png));
  }

  // ---------- live mode ----------

  private scheduleLive(): void {
    if (!this.live) return;
    if (this.liveTimer) clearTimeout(this.liveTimer);
    this.liveTimer = setTimeout(() => {
      this.liveTimer = null;
      if (!this.live || this.editor.drawing) return;
      if (!this.editor.mask?.hasContent || this.ui.prompt.value.trim() === "") return;
      if (this.edit) this.liveWanted = true; // one job in flight; the latest request runs next
      else void this.generate({ live: true });
    }, LIVE_DELAY_MS);
  }

  // =====================================================================================
  // rendering of panels
  // =====================================================================================

  private refresh(): void {
    const ui = this.ui;
    const ed = this.editor;
    const size = ed.tool === "sketch" ? ed.sketchSize : ed.brushSize;
    ui.brushSize.max = String(ed.tool === "sketch" ? 256 : 1024);
    ui.brushSize.value = String(size);
    ui.brushSizeLabel.textContent = String(Math.round(size));
    ui.sketchSize.value = String(ed.sketchSize);
    ui.info.textContent = this.pendingCanvas
      ? `uploading ${this.pendingCanvas.name}…`
      : ed.image ? `${ed.width}×${ed.height} · v${this.version}` : "no image";
    ui.zoom.textContent = ed.image ? `${Math.round(ed.view.scale * 100)}%` : "";
    ui.empty.hidden = !!ed.image || !!this.pendingCanvas;
    const open = this.connState === "open";
    ui.generate.disabled = !open || !ed.image;
    ui.cancel.disabled = !this.edit;
    ui.root.classList.toggle("busy", !!this.edit);
    ui.resultBox.hidden = !this.result && this.candidates.length === 0;
    ui.accept.disabled = !this.result || !!this.accepting || !open;
    ui.discard.disabled = !this.result || !!this.accepting;
    ui.retry.disabled = !this.result || !open;
    ui.undo.disabled = !(this.stack.canUndo || this.position > 0);
    ui.redo.disabled = !(this.stack.canRedo || this.position < this.history.length - 1);
    ui.progress.dataset.state = this.edit ? "running" : "idle";
  }

  private renderHistory(): void {
    const list = this.ui.history;
    list.replaceChildren();
    for (const entry of this.history) {
      const img = h("img", { alt: `history ${entry.index}`, loading: "lazy" });
      const label = entry.prompt ? entry.prompt : entry.index === 0 ? "original" : "(no prompt)";
      const item = h("li", {
        class: `history-item${entry.index === this.position ? " current" : ""}`,
        testid: "history-item",
        "data-index": entry.index,
        title: `Go to #${entry.index}${entry.seed !== null && entry.seed !== undefined ? ` (seed ${entry.seed})` : ""}`,
        onclick: () => this.goto(entry.index),
      }, img, h("span", { class: "label" }, `#${entry.index} ${label}`));
      list.append(item);
      void this.loadThumb(entry, img);
    }
    list.querySelector(".current")?.scrollIntoView?.({ block: "nearest" });
  }

  private async loadThumb(entry: HistoryEntry, img: HTMLImageElement): Promise<void> {
    if (!this.session) return;
    const key = `${this.session}/${entry.index}/${entry.created}`;
    let url = this.thumbCache.get(key);
    if (!url) {
      try {
        const res = await fetch(`/api/sessions/${encodeURIComponent(this.session)}/history/${entry.index}/image`, {
          headers: this.authHeaders(),
        });
        if (!res.ok) return;
        const blob = await res.blob();
        const bmp = await createImageBitmap(blob);
        const scale = Math.min(1, 96 / Math.max(bmp.width, bmp.height));
        const c = makeCanvas(Math.max(1, Math.round(bmp.width * scale)), Math.max(1, Math.round(bmp.height * scale)));
        ctx2d(c).drawImage(bmp, 0, 0, c.width, c.height);
        bmp.close();
        const small = await new Promise<Blob | null>((r) => c.toBlob(r, "image/png"));
        if (!small) return;
        url = URL.createObjectURL(small);
        this.thumbCache.set(key, url);
      } catch {
        return;
      }
    }
    img.src = url;
  }

  // =====================================================================================
  // read-only test hook
  // =====================================================================================

  private installTestHook(): void {
    // eslint-disable-next-line @typescript-eslint/no-this-alias
    const app = this;
    const ed = () => this.editor;
    const hook = {
      get canvasSize() {
        return ed().image ? { width: ed().width, height: ed().height } : null;
      },
      get sessionId() {
        return app.session;
      },
      get historyLength() {
        return app.history.length;
      },
      get position() {
        return app.position;
      },
      get version() {
        return app.version;
      },
      get lastResultBox() {
        return app.lastResultBox ? [...app.lastResultBox] : null;
      },
      get resultShown() {
        return app.result !== null;
      },
      get candidates() {
        return app.candidates.map((c) => ({ seed: c.seed, shown: c === app.result }));
      },
      get busy() {
        return app.edit !== null;
      },
      get preparedCount() {
        return app.preparedCount;
      },
      get previewCount() {
        return (app.edit ?? app.lastEdit)?.previews ?? 0;
      },
      get connection() {
        return app.connState;
      },
      get model() {
        return app.ready ? { model: app.ready.model, device: app.ready.device } : null;
      },
      get undoDepth() {
        return app.stack.size;
      },
      get undoCap() {
        return app.stack.cap;
      },
      get tool() {
        return ed().tool;
      },
      get view() {
        return { ...ed().view };
      },
      get comparing() {
        return ed().comparing;
      },
      /** Number of pixels the server would treat as masked. */
      maskCoverage(): number {
        const m = ed().mask;
        if (!m) return 0;
        return countMasked(ctx2d(m.canvas).getImageData(0, 0, m.width, m.height).data);
      },
      /** RGBA of the current image at (x, y), image coordinates. */
      pixel(x: number, y: number): number[] | null {
        const img = ed().image;
        if (!img) return null;
        return Array.from(ctx2d(img).getImageData(x, y, 1, 1).data);
      },
      /** Timings (ms) of recent pointermove handlers, pointerdown/up handlers and frame renders. */
      perf() {
        return { events: ed().eventTimes.values(), edges: ed().edgeTimes.values(), frames: ed().frameTimes.values() };
      },
      /** Where image pixel (x, y) currently is on screen (client coordinates). */
      imageToClient(x: number, y: number) {
        const r = ed().el.getBoundingClientRect();
        const v = ed().view;
        return { x: r.left + x * v.scale + v.ox, y: r.top + y * v.scale + v.oy };
      },
    };
    Object.defineProperty(window, "__lazyedit", { value: Object.freeze(hook), configurable: false, writable: false });
  }
}

function clampSize(v: number, f: number, max: number): number {
  const n = f > 1 ? Math.max(v + 1, Math.round(v * f)) : Math.min(v - 1, Math.round(v * f));
  return Math.min(max, Math.max(1, n));
}

const SHORTCUTS: [string, string][] = [
  ["M / E", "mask brush / eraser"],
  ["R / L", "rectangle / lasso (hold Alt to subtract)"],
  ["S", "sketch pen"],
  ["[ / ]", "smaller / bigger brush"],
  ["I", "invert mask"],
  ["Del / Shift+Del", "clear mask / clear sketch"],
  ["Enter (in prompt), G, Ctrl+Enter", "generate"],
  ["Esc", "cancel the running edit"],
  ["A / D / T", "accept / discard / try again with a new seed (kept beside the others)"],
  ["1 … 9", "show that candidate of the result (Accept takes the one shown)"],
  ["hold B (or the Compare button)", "compare before / after"],
  ["H", "recent images stored on the server"],
  ["X", "expand the canvas (the new border comes masked)"],
  ["Ctrl+Z / Ctrl+Shift+Z", "undo / redo (strokes and accepted edits)"],
  ["wheel, pinch, + / -", "zoom"],
  ["Space+drag, middle drag", "pan"],
  ["F", "fit to screen"],
  ["O / P", "open image / focus prompt"],
  ["?", "this help"],
];
