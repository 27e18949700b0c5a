"""The paced serial line (simulators/line.py): bytes arrive intact, in order, both ways, and
never before their last bit would have arrived on a real line.

A correctness check of the pacing, not a performance test: only lower bounds on arrival
times are asserted (a late scheduler can only make arrivals later).
"""

from __future__ import annotations

import time
from pathlib import Path

import serial

from simulators.line import MODBUS_RTU_GAP_CHARS, PacedLine

BAUD = 2400
BITS = 11  # 8E1 timing, simulated with 8N2 endpoints
CHAR = BITS / BAUD


def _open(path: Path) -> serial.Serial:
    return serial.Serial(str(path), baudrate=BAUD, parity="N", stopbits=2, timeout=2)


def _receive(port: serial.Serial, count: int) -> tuple[bytes, list[float]]:
    """Read byte by byte, noting when each one became readable."""
    data, times = bytearray(), []
    while len(data) < count:
        chunk = port.read(1)
        assert chunk, f"only {len(data)} of {count} bytes arrived"
        times.append(time.monotonic())
        data += chunk
    return bytes(data), times


def test_a_frame_takes_its_wire_time_and_arrives_intact(tmp_path: Path) -> None:
    frame = bytes(range(1, 17)) + b"\x00\xff\x7e\x0d\x0a"  # binary, incl. bytes a tty edits
    with PacedLine(tmp_path / "a", tmp_path / "b", BAUD, BITS) as line, \
            _open(tmp_path / "a") as a, _open(tmp_path / "b") as b:
        sent = time.monotonic()
        a.write(frame)
        received, times = _receive(b, len(frame))
    assert received == frame
    for i, arrived in enumerate(times, start=1):
        assert arrived >= sent + i * CHAR, f"byte {i} came {sent + i * CHAR - arrived:.4f} s early"
    assert line.chars_relayed == len(frame)


def test_the_reply_waits_for_the_turnaround_gap_and_both_directions_work(tmp_path: Path) -> None:
    request, reply = b"\x01\x03\x00\x00\x00\x02\xc4\x0b", b"\x01\x03\x04\x41\x20\x00\x00\xee\x27"
    with PacedLine(tmp_path / "dev", tmp_path / "host", BAUD, BITS) as line, \
            _open(tmp_path / "dev") as device, _open(tmp_path / "host") as host:
        sent = time.monotonic()
        host.write(request)
        got_request, request_times = _receive(device, len(request))
        device.write(reply)  # at once: the line must still keep t3.5 of silence
        got_reply, reply_times = _receive(host, len(reply))
    assert got_request == request and got_reply == reply
    assert request_times[-1] >= sent + len(request) * CHAR
    gap = MODBUS_RTU_GAP_CHARS * CHAR
    for i, arrived in enumerate(reply_times, start=1):
        assert arrived >= sent + (len(request) + i) * CHAR + gap
    assert line.gap_seconds == gap


def test_a_client_can_reopen_its_end(tmp_path: Path) -> None:
    with PacedLine(tmp_path / "a", tmp_path / "b", 115200, 10) as line:
        assert line.gap_seconds == 0.00175  # above 19200 baud t3.5 is fixed
        with _open(tmp_path / "b") as b:
            for attempt in range(2):
                with _open(tmp_path / "a") as a:
                    a.write(b"hello %d" % attempt)
                    assert b.read(7) == b"hello %d" % attempt
