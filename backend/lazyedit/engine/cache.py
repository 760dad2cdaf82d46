"""A least-recently-used cache bounded in bytes, with hit and miss counts."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Callable

import torch


def nbytes(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (tuple, list)):
        return sum(nbytes(v) for v in value)
    if isinstance(value, dict):
        return sum(nbytes(v) for v in value.values())
    return 64


class ByteLRU:
    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.hits = 0
        self.misses = 0
        self._items: OrderedDict[Any, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get_or_compute(self, key: Any, compute: Callable[[], Any]) -> tuple[Any, bool]:
        """Returns (value, hit)."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self.hits += 1
                return self._items[key][0], True
            self.misses += 1
        value = compute()
        self.put(key, value)
        return value, False

    def put(self, key: Any, value: Any) -> None:
        size = nbytes(value)
        with self._lock:
            if key in self._items:
                self._bytes -= self._items.pop(key)[1]
            if size > self.max_bytes:
                return
            self._items[key] = (value, size)
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, (_, old) = self._items.popitem(last=False)
                self._bytes -= old

    def clear(self) -> None:
        """Forget every entry and the hit/miss counts."""
        with self._lock:
            self._items.clear()
            self._bytes = self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def stats(self) -> dict:
        return {"hits": self.hits, "misses": self.misses, "entries": len(self._items), "bytes": self._bytes}
