"""A serial line that takes time: two pty pairs and a relay that paces bytes like a UART.

A pty pair (socat) hands bytes over at once, so a simulated RS-485 bus would be as fast
as the CPU. `PacedLine` puts a relay thread between two ptys: whatever one end writes
reaches the other end one character at a time, each no earlier than the moment its last
bit would have arrived on a line of `baudrate` baud with `bits_per_char` bits per
character (start + data + parity + stop: 11 for 8E1 and for 8N2, 10 for 8N1).

- Half duplex, as RS-485: one line for both directions. A character starts when the line
  is free, so a reply cannot overtake the end of the request.
- Turnaround: when the direction changes, the line first stays silent for `gap_chars`
  characters (3.5 for Modbus RTU, the end-of-frame silence t3.5; a receiver would merge
  anything sooner into the previous frame). Within one direction nothing extra is added.
- The pacing is the relay's; the termios settings of the two ends only have to agree with
  each other. Debian's ptys do not model parity, so a "9600 8E1" line is simulated with
  8N2 endpoints (also 11 bits per character) and `bits_per_char=11`.
- Characters are delivered by absolute schedule: a late wake-up (the thread sleeps in
  select) delays a character by the wake-up latency, typically about 0.1 ms, and never
  accumulates; no character is delivered early.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
import time
import tty
from collections import deque
from pathlib import Path

MODBUS_RTU_GAP_CHARS = 3.5  # Modbus over Serial Line V1.02 §2.5.1.1: t3.5 between frames
FAST_GAP_SECONDS = 0.00175  # same clause: above 19200 baud t3.5 is fixed at 1.75 ms


class PacedLine:
    """Two linked pty ends, `one` and `other` (symlinks), joined by a paced relay."""

    def __init__(
        self,
        one: Path,
        other: Path,
        baudrate: int,
        bits_per_char: int = 11,
        gap_chars: float = MODBUS_RTU_GAP_CHARS,
    ) -> None:
        self.paths = (Path(one), Path(other))
        self.baudrate = baudrate
        self.bits_per_char = bits_per_char
        self.char_seconds = bits_per_char / baudrate
        self.gap_seconds = gap_chars * self.char_seconds
        if baudrate > 19200 and gap_chars:
            self.gap_seconds = FAST_GAP_SECONDS
        self.chars_relayed = 0
        self.max_lateness = 0.0  # seconds a character came later than its due time
        self._fds: list[int] = []
        self._masters: tuple[int, int] = (-1, -1)
        self._stop_r, self._stop_w = -1, -1
        self._thread: threading.Thread | None = None
        # the line: when the last scheduled character ends, and in which direction it went
        self._line_free = 0.0
        self._last_direction: int | None = None
        self._due: deque[tuple[float, int, int]] = deque()  # (time, to master, byte)

    def start(self) -> PacedLine:
        masters = []
        for path in self.paths:
            master, slave = os.openpty()
            tty.setraw(slave)  # no echo, no line editing before a client opens it
            self._fds += [master, slave]  # the slave stays open: no hang-up between clients
            masters.append(master)
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.is_symlink() or path.exists():
                path.unlink()
            path.symlink_to(os.ttyname(slave))
        self._masters = (masters[0], masters[1])
        self._stop_r, self._stop_w = os.pipe()
        self._thread = threading.Thread(target=self._relay, name="paced-line", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            os.write(self._stop_w, b"x")
            self._thread.join(timeout=5)
            self._thread = None
        for fd in [*self._fds, self._stop_r, self._stop_w]:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds = []
        for path in self.paths:
            with contextlib.suppress(OSError):
                path.unlink()

    def __enter__(self) -> PacedLine:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- the relay thread --------------------------------------------------------------------

    def _relay(self) -> None:
        sources = [*self._masters, self._stop_r]
        while True:
            timeout = None
            if self._due:
                timeout = max(0.0, self._due[0][0] - time.monotonic())
            readable, _, _ = select.select(sources, [], [], timeout)
            if self._stop_r in readable:
                return
            for direction, master in enumerate(self._masters):
                if master in readable:
                    self._schedule(direction, self._read(master))
            self._deliver_due()

    @staticmethod
    def _read(master: int) -> bytes:
        try:
            return os.read(master, 4096)
        except OSError:  # EIO: no slave open (cannot happen while we hold it), be safe
            return b""

    def _schedule(self, direction: int, data: bytes) -> None:
        """Put each character on the line: after the previous one, after the turnaround
        gap when the direction changes, never before it was written."""
        target = self._masters[1 - direction]
        now = time.monotonic()
        for byte in data:
            start = max(now, self._line_free)
            if self._last_direction is not None and self._last_direction != direction:
                start = max(start, self._line_free + self.gap_seconds)
            self._last_direction = direction
            self._line_free = start + self.char_seconds
            self._due.append((self._line_free, target, byte))

    def _deliver_due(self) -> None:
        now = time.monotonic()
        batches: dict[int, bytearray] = {}
        while self._due and self._due[0][0] <= now:
            due, target, byte = self._due.popleft()
            self.max_lateness = max(self.max_lateness, now - due)
            batches.setdefault(target, bytearray()).append(byte)
        for target, chunk in batches.items():
            with contextlib.suppress(OSError):
                os.write(target, chunk)
            self.chars_relayed += len(chunk)
