// Capped undo/redo stack. Pure: no DOM.

export class UndoStack<T> {
  private done: T[] = [];
  private undone: T[] = [];

  /** `onEvict` receives the oldest entry when the cap pushes it out (e.g. to flatten it into a base). */
  constructor(
    public readonly cap: number,
    private onEvict?: (entry: T) => void,
  ) {
    if (!(cap >= 1)) throw new Error("cap must be at least 1");
  }

  push(entry: T): void {
    this.done.push(entry);
    this.undone.length = 0;
    while (this.done.length > this.cap) {
      const old = this.done.shift() as T;
      this.onEvict?.(old);
    }
  }

  undo(): T | undefined {
    const e = this.done.pop();
    if (e !== undefined) this.undone.push(e);
    return e;
  }

  redo(): T | undefined {
    const e = this.undone.pop();
    if (e !== undefined) this.done.push(e);
    return e;
  }

  /** Put back an entry that `undo()` returned but could not be applied. */
  restoreUndone(): void {
    const e = this.undone.pop();
    if (e !== undefined) this.done.push(e);
  }

  /** Put back an entry that `redo()` returned but could not be applied. */
  restoreRedone(): void {
    const e = this.done.pop();
    if (e !== undefined) this.undone.push(e);
  }

  peekUndo(): T | undefined {
    return this.done[this.done.length - 1];
  }

  peekRedo(): T | undefined {
    return this.undone[this.undone.length - 1];
  }

  get canUndo(): boolean {
    return this.done.length > 0;
  }

  get canRedo(): boolean {
    return this.undone.length > 0;
  }

  get size(): number {
    return this.done.length;
  }

  /** Entries currently applied, oldest first. */
  entries(): readonly T[] {
    return this.done;
  }

  /** Remove every entry matching `pred` (from both stacks) without evicting it. */
  removeWhere(pred: (e: T) => boolean): void {
    this.done = this.done.filter((e) => !pred(e));
    this.undone = this.undone.filter((e) => !pred(e));
  }

  clear(): void {
    this.done.length = 0;
    this.undone.length = 0;
  }
}
