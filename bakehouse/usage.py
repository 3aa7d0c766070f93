"""Requests per API key and UTC hour: counted in memory on the request path (a lock and an addition),
written to storage by a background thread, so recording usage never waits on storage."""

from __future__ import annotations

import logging
import threading
import time
import uuid

from repo_store.keys import HourlyCount, KeyStore, usage_hour

log = logging.getLogger("bakehouse.usage")


class UsageRecorder:
    def __init__(self, keys: KeyStore, flush_every: float):
        self.keys = keys
        self.flush_every = flush_every
        # Names this process's own usage files: a restarted process starts new files rather than
        # overwriting the totals its predecessor left.
        self.process_id = uuid.uuid4().hex
        self._counts: dict[tuple[str, str], HourlyCount] = {}  # (key_id, hour) -> running total
        self._unwritten: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._flusher: threading.Thread | None = None

    def record(self, key_id: str) -> None:
        now = time.time()
        slot = (key_id, usage_hour(now))
        with self._lock:
            before = self._counts.get(slot)
            self._counts[slot] = HourlyCount((before.requests if before else 0) + 1, now)
            self._unwritten.add(slot)

    def flush(self) -> None:
        """Write the running totals that changed since the last flush; a failed write is tried
        again at the next one."""
        with self._lock:
            pending = {slot: self._counts[slot] for slot in self._unwritten}
            self._unwritten.clear()
        failed = set()
        for (key_id, hour), count in pending.items():
            try:
                self.keys.record_usage(key_id, hour, self.process_id, count)
            except Exception:  # noqa: BLE001 - any storage client error; the count stays in memory
                failed.add((key_id, hour))
        if failed:
            log.warning("could not write the usage of %d key-hours; trying again at the next flush", len(failed))
        with self._lock:
            self._unwritten |= failed
            self._forget_written_past_hours()

    def _forget_written_past_hours(self) -> None:
        # No request adds to an hour that has ended, and its total is on storage: memory stays small.
        current = usage_hour(time.time())
        for slot in [s for s in self._counts if s[1] < current and s not in self._unwritten]:
            del self._counts[slot]

    def start(self) -> None:
        self._stopping.clear()

        def flush_until_stopped() -> None:
            while not self._stopping.wait(self.flush_every):
                self.flush()

        self._flusher = threading.Thread(target=flush_until_stopped, name="key-usage-flusher", daemon=True)
        self._flusher.start()

    def close(self) -> None:
        """Stop the background thread and write what it had not written yet."""
        self._stopping.set()
        if self._flusher is not None:
            self._flusher.join()
        self.flush()
