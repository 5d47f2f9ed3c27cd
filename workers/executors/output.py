"""Bounded capture of an agent's output: a log file up to a size cap, and the tail kept in memory."""

from __future__ import annotations

from typing import BinaryIO

from orch.redaction import Redactor


class OutputSink:
    """Writes output to a capped log file and keeps the last `tail_bytes` in memory."""

    def __init__(self, log: BinaryIO, max_bytes: int, tail_bytes: int, redactor: Redactor | None = None) -> None:
        self._log = log
        self._redactor = redactor if redactor else None
        self._carry = b""  # held back: a secret may straddle two chunks
        self._room = max_bytes
        self._tail = bytearray()
        self._tail_bytes = tail_bytes
        self.truncated = False
        self.total = 0

    def write(self, chunk: bytes) -> None:
        if self._redactor is not None:
            data = self._redactor.data(self._carry + chunk)
            keep = self._redactor.longest - 1
            self._carry, chunk = (data[-keep:], data[:-keep]) if keep and len(data) > keep else (data, b"")
            if not chunk:
                return
        self._emit(chunk)

    def close(self) -> None:
        """Write what is held back for redaction; call once the output has ended."""
        if self._carry:
            carry, self._carry = self._carry, b""
            self._emit(carry)

    def _emit(self, chunk: bytes) -> None:
        self.total += len(chunk)
        kept = chunk[: max(self._room, 0)]
        if kept:
            self._log.write(kept)
            self._room -= len(kept)
        if len(kept) < len(chunk) and not self.truncated:
            self.truncated = True
            self._log.write(b"\n[orch: log truncated at the ORCH_LOG_MAX_BYTES cap]\n")
        self._tail += chunk
        if len(self._tail) > self._tail_bytes:
            del self._tail[: len(self._tail) - self._tail_bytes]

    @property
    def tail(self) -> str:
        return self._tail.decode("utf-8", errors="replace")
