"""The edge-box install (scripts/install) staged into a temporary root, and the unit file
checked by systemd's own tools (`systemd-analyze verify` and `security`, offline: this
machine has no running systemd to start the service under)."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

from cemsd.service import SHUTDOWN_DEADLINE_SECONDS
from cemsd.systemd import START_GRACE_SECONDS
from helpers import REPO

UNIT = REPO / "systemd" / "cemsd.service"
EXPOSURE_LIMIT = 20  # tenths: exposure 2.0 ("OK" is below 4.5; this unit scores 1.5)


def _directives(text: str) -> list[tuple[str, str]]:
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "[")) and "=" in line:
            key, value = line.split("=", 1)
            pairs.append((key, value))
    return pairs


def _seconds(value: str) -> float:
    return float(value.removesuffix("s"))


def test_the_unit_asks_for_what_operations_need() -> None:
    pairs = _directives(UNIT.read_text())
    unit = dict(pairs)
    assert unit["Type"] == "notify" and unit["NotifyAccess"] == "main"
    assert unit["WatchdogSec"] == "30" and unit["Restart"] == "on-failure"
    assert unit["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert unit["StateDirectory"] == "cemsd"
    assert unit["NoNewPrivileges"] == "yes" and unit["CapabilityBoundingSet"] == ""
    assert ("SystemCallFilter", "@system-service") in pairs
    assert unit["ProtectSystem"] == "strict"
    # serial ports stay reachable: the dialout group and tty devices, not PrivateDevices
    assert unit["SupplementaryGroups"] == "dialout"
    assert unit["DevicePolicy"] == "closed"
    assert {v for k, v in pairs if k == "DeviceAllow"} >= {"char-ttyUSB rw", "char-ttyS rw"}
    # and the UARTs of common ARM edge boxes (Raspberry Pi, i.MX, OMAP, SPI UART HATs, ...)
    assert {v for k, v in pairs if k == "DeviceAllow"} >= {
        f"char-{name} rw" for name in ("ttyAMA", "ttymxc", "ttyO", "ttySC", "ttyLP", "ttyGS",
                                       "ttyXRUSB")}
    assert "PrivateDevices" not in unit
    # systemd waits longer than the daemon's own bounds, so the daemon ends by itself
    assert _seconds(unit["TimeoutStopSec"]) > SHUTDOWN_DEADLINE_SECONDS
    assert _seconds(unit["TimeoutStartSec"]) >= START_GRACE_SECONDS


def test_install_stages_a_service_that_systemd_accepts(tmp_path: Path,
                                                     systemd_analyze: str) -> None:
    analyze = systemd_analyze
    root = tmp_path / "root"
    done = subprocess.run([str(REPO / "scripts" / "install"), "--root", str(root)],
                          capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr[-3000:]

    # The program: a venv whose cemsd checks the configuration the install put in place,
    # with the status page and the migrations shipped as package data.
    cemsd = root / "opt/cemsd/bin/cemsd"
    config = root / "etc/cemsd/cemsd.toml"
    checked = subprocess.run([str(cemsd), "check-config", str(config)], capture_output=True,
                             text=True, timeout=60)
    assert checked.returncode == 0 and ": OK: plant aa-plant-1" in checked.stdout
    shipped = subprocess.run(
        [str(root / "opt/cemsd/bin/python"), "-c",
         "from importlib.resources import files; s = files('cemsd.api') / 'static';"
         "m = files('cemsd') / 'migrations' / 'versions';"
         "print(sorted(p.name for p in s.iterdir()), len(list(m.iterdir())) >= 5)"],
        capture_output=True, text=True, timeout=60)
    assert shipped.stdout.strip() == "['status.css', 'status.html', 'status.js'] True"

    # The user, its serial-port group, the directories and their modes.
    assert "cemsd:x:" in (root / "etc/passwd").read_text()
    dialout = next(line for line in (root / "etc/group").read_text().splitlines()
                   if line.startswith("dialout:"))
    assert dialout.endswith(":cemsd")
    assert stat.S_IMODE(config.stat().st_mode) == 0o640
    assert stat.S_IMODE(config.parent.stat().st_mode) == 0o750
    assert (root / "var/lib/cemsd").is_dir()
    assert config.read_text() == (REPO / "config/example-plant.toml").read_text()

    # The unit, with this install's paths: systemd parses it without a single complaint.
    unit = (root / "etc/systemd/system/cemsd.service").read_text()
    assert "ExecStart=/opt/cemsd/bin/cemsd run --config /etc/cemsd/cemsd.toml" in unit
    staged = tmp_path / "cemsd.service"  # the same unit pointing into the staged root
    staged.write_text(unit.replace("/opt/cemsd", str(root / "opt/cemsd"))
                      .replace("/etc/cemsd", str(root / "etc/cemsd")))
    verify = subprocess.run([analyze, "verify", str(staged)], capture_output=True, text=True,
                            timeout=60)
    assert verify.returncode == 0 and verify.stdout + verify.stderr == "", verify.stderr
    security = subprocess.run([analyze, "security", "--offline=true",
                               f"--threshold={EXPOSURE_LIMIT}", "--no-pager", str(staged)],
                              capture_output=True, text=True, timeout=60)
    assert security.returncode == 0, security.stdout[-2000:]
    assert "Overall exposure level for cemsd.service" in security.stdout

    # A broken unit is caught by the same check (the test would notice a silent tool).
    broken = tmp_path / "broken" / "cemsd.service"
    broken.parent.mkdir()
    broken.write_text(staged.read_text().replace("WatchdogSec=30", "WatchdogSecs=30"))
    complaint = subprocess.run([analyze, "verify", str(broken)], capture_output=True, text=True,
                               timeout=60)
    assert "Unknown key 'WatchdogSecs'" in complaint.stderr
