"""Peak resident memory (RSS, read from /proc/self/statm by a sampling thread) over a phase of the run.

tracemalloc does not see torch's CPU tensors (they are not allocated through Python's allocator), so we sample RSS.
Before the phase starts we `gc.collect()` and `malloc_trim(0)`, so heap freed by an earlier phase (the search, a
previous run in the same process) is handed back to the OS and does not hide or inflate this phase's growth.
"""

from __future__ import annotations

import ctypes
import gc
import os
import threading
import time

_PAGE = os.sysconf("SC_PAGE_SIZE")
try:
    _LIBC = ctypes.CDLL("libc.so.6")
except OSError:  # not glibc
    _LIBC = None


def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * _PAGE


def release_free_heap() -> None:
    gc.collect()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


class PeakRSS:
    def __init__(self, interval: float = 0.02):
        self.interval = interval
        self.start_rss = 0
        self.peak = 0
        self._stop = threading.Event()
        self._thread = None

    def start(self):
        release_free_heap()
        self.start_rss = self.peak = rss_bytes()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(self.interval)

    def stop(self) -> dict:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak = max(self.peak, rss_bytes())
        return {"peak_rss_mb": round(self.peak / 2**20, 1), "start_rss_mb": round(self.start_rss / 2**20, 1),
                "peak_growth_mb": round((self.peak - self.start_rss) / 2**20, 1)}
