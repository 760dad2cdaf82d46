import { describe, expect, it } from "vitest";
import { UndoStack } from "../src/history";
import { backoffDelay, sessionLink, socketUrl, takeLinkedSession } from "../src/connection";

describe("UndoStack", () => {
  it("undoes and redoes in order", () => {
    const s = new UndoStack<number>(10);
    s.push(1);
    s.push(2);
    s.push(3);
    expect(s.undo()).toBe(3);
    expect(s.undo()).toBe(2);
    expect(s.entries()).toEqual([1]);
    expect(s.redo()).toBe(2);
    expect(s.entries()).toEqual([1, 2]);
    expect(s.canRedo).toBe(true);
  });
  it("a new push clears the redo branch", () => {
    const s = new UndoStack<string>(10);
    s.push("a");
    s.push("b");
    s.undo();
    s.push("c");
    expect(s.canRedo).toBe(false);
    expect(s.redo()).toBeUndefined();
    expect(s.entries()).toEqual(["a", "c"]);
  });
  it("caps its size and hands the evicted entries over oldest first", () => {
    const evicted: number[] = [];
    const s = new UndoStack<number>(3, (e) => evicted.push(e));
    for (let i = 1; i <= 7; i++) s.push(i);
    expect(s.size).toBe(3);
    expect(s.entries()).toEqual([5, 6, 7]);
    expect(evicted).toEqual([1, 2, 3, 4]);
    expect(s.undo()).toBe(7);
    expect(s.undo()).toBe(6);
    expect(s.undo()).toBe(5);
    expect(s.undo()).toBeUndefined();
    expect(s.canUndo).toBe(false);
  });
  it("a long session keeps bounded memory", () => {
    let evicted = 0;
    const s = new UndoStack<object>(100, () => evicted++);
    for (let i = 0; i < 10_000; i++) s.push({ i });
    expect(s.size).toBe(100);
    expect(evicted).toBe(9_900);
  });
  it("restores entries whose server round trip failed", () => {
    const s = new UndoStack<number>(5);
    s.push(1);
    s.push(2);
    s.undo();
    s.restoreUndone();
    expect(s.entries()).toEqual([1, 2]);
    s.undo();
    s.redo();
    s.restoreRedone();
    expect(s.entries()).toEqual([1]);
    expect(s.peekRedo()).toBe(2);
  });
  it("removes entries by predicate without evicting", () => {
    let ev = 0;
    const s = new UndoStack<number>(5, () => ev++);
    [1, 2, 3, 4].forEach((x) => s.push(x));
    s.undo();
    s.removeWhere((x) => x % 2 === 0);
    expect(s.entries()).toEqual([1, 3]);
    expect(s.canRedo).toBe(false);
    expect(ev).toBe(0);
  });
  it("rejects a zero cap", () => {
    expect(() => new UndoStack<number>(0)).toThrow();
  });
});

describe("reconnect backoff", () => {
  it("grows exponentially with jitter and is capped", () => {
    expect(backoffDelay(0, 500, 10000, () => 0)).toBe(250);
    expect(backoffDelay(0, 500, 10000, () => 1)).toBe(500);
    expect(backoffDelay(3, 500, 10000, () => 1)).toBe(4000);
    expect(backoffDelay(30, 500, 10000, () => 1)).toBe(10000);
    expect(backoffDelay(30, 500, 10000, () => 0)).toBe(5000);
  });
});

describe("socket URL", () => {
  it("carries the session as the routing key, and the token", () => {
    const loc = { protocol: "http:", host: "127.0.0.1:7860" };
    expect(socketUrl(loc, null, null)).toBe("ws://127.0.0.1:7860/ws");
    expect(socketUrl(loc, null, "AbC-_9")).toBe("ws://127.0.0.1:7860/ws?session=AbC-_9");
    expect(socketUrl({ protocol: "https:", host: "edit.example" }, "t&k", "s1")).toBe("wss://edit.example/ws?session=s1&token=t%26k");
  });
});

describe("session links", () => {
  const id = "AbCdEfGhIjKlMnOpQrSt-_";
  it("open a session at the page's address, without the page's token", () => {
    expect(sessionLink({ origin: "https://edit.example", pathname: "/" }, id)).toBe(`https://edit.example/?session=${id}`);
    expect(sessionLink({ origin: "http://127.0.0.1:7860", pathname: "/app/" }, id)).toBe(`http://127.0.0.1:7860/app/?session=${id}`);
  });
  it("are taken from the query once, which keeps the rest", () => {
    expect(takeLinkedSession(`?session=${id}`)).toEqual({ session: id, rest: "" });
    expect(takeLinkedSession(`?token=t&session=${id}`)).toEqual({ session: id, rest: "?token=t" });
    expect(takeLinkedSession("?token=t")).toEqual({ session: null, rest: "?token=t" });
    expect(takeLinkedSession("?session=../../etc")).toEqual({ session: null, rest: "" });
    expect(takeLinkedSession("")).toEqual({ session: null, rest: "" });
  });
});
