"""Profiles of real instrument families (drivers/profiles/teledyne-t300.toml, suto-s430.toml):
each cites its published source, and the shipped scenario serves it so that `cemsd run
--once` and `cemsd probe` read it as the manual says (issue 12, item 3)."""

from __future__ import annotations

import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from drivers.registry import BUILTIN_DIR, load_profile
from helpers import cli, free_port, listening, simulator_process, write_toml

CONFIG = Path(__file__).resolve().parent.parent / "config"
VENDOR = {"teledyne-t300": "stack-analyzer", "suto-s430": "stack-flow"}  # profile -> device


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The shipped scenario and configuration on a free port, served by `cemsd sim`."""
    tmp = tmp_path_factory.mktemp("vendor")
    port = free_port()
    scenario = tomllib.loads((CONFIG / "vendor-profiles-scenario.toml").read_text())
    config = tomllib.loads((CONFIG / "vendor-profiles.toml").read_text())
    for bus in scenario["buses"] + config["buses"]:
        bus["port"] = port
    config["storage"]["state_dir"] = str(tmp / "state")
    with simulator_process(write_toml(tmp / "scenario.toml", scenario),
                           lambda: listening(port)):
        yield write_toml(tmp / "cemsd.toml", config)


def test_every_vendor_profile_cites_its_source_and_is_served_by_the_scenario() -> None:
    scenario = tomllib.loads((CONFIG / "vendor-profiles-scenario.toml").read_text())
    served = {d["profile"] for d in scenario["devices"]}
    generic = {"n2o-analyzer", "n2o-analyzer-percent", "n2o-analyzer-ppm", "stack-flow-meter",
               "plant-io"}
    for path in BUILTIN_DIR.glob("*.toml"):
        if path.stem in generic:
            continue
        first = path.read_text().splitlines()[0]
        assert first.startswith("# Source: "), path.name
        assert "http" in path.read_text().split("description")[0], path.name
        assert path.stem in served and path.stem in VENDOR
        assert load_profile(path.stem).channels  # loads, with channels


@pytest.mark.parametrize(("profile", "lines"), [
    ("teledyne-t300", ["co                    4      18 float32  ABCD",
                       "o2                    4     100 float32  ABCD",
                       "sample_pressure       4      34 float32  ABCD  3.38639"]),
    ("suto-s430", ["velocity              3       4 float32  CDAB",
                   "flow                  3       6 float32  CDAB"]),
])
def test_profiles_name_prints_the_manuals_layout(profile: str, lines: list[str]) -> None:
    code, out, err = cli("profiles", profile)
    assert code == 0, err
    for line in lines:
        assert any(ln.startswith(line) for ln in out.splitlines()), line


def test_run_once_reads_every_vendor_channel_as_valid(stack: Path) -> None:
    code, out, err = cli("run", "--config", str(stack), "--once")
    assert code == 0, out + err
    rows = {ln.split()[0]: ln.split() for ln in out.splitlines() if ln.startswith("  ")}
    expected = {"co": (50.0, 5.0, "ppm"), "o2": (3.0, 0.1, "%vol"), "co2": (10.0, 0.3, "%vol"),
                "sample_temperature": (48.0, 1.0, "degC"),
                "sample_pressure": (96.0, 1.0, "kPa"),  # inHg in the register, scaled
                "temperature": (25.0, 1.0, "degC"), "velocity": (14.0, 0.5, "m/s"),
                "flow": (2016.0, 60.0, "m3/h")}  # agrees with velocity x area: N
    assert set(rows) == set(expected)
    for key, (value, tolerance, unit) in expected.items():
        assert float(rows[key][1]) == pytest.approx(value, abs=tolerance), key
        assert rows[key][2:] == [unit, "N"], key


@pytest.mark.parametrize(("device", "start", "order", "value"), [
    ("stack-analyzer", 18, "ABCD", 50.0), ("stack-flow", 4, "CDAB", 14.0)])
def test_probe_finds_the_manuals_byte_order(stack: Path, device: str, start: int, order: str,
                                            value: float) -> None:
    code, out, err = cli("probe", "--config", str(stack), "--device", device)
    assert code == 0, err
    block = out.split(f"decoded from @{start}", 1)[1]
    line = next(ln for ln in block.splitlines() if ln.split()[:1] == ["float32"])
    cells = dict(zip(["ABCD", "CDAB", "BADC", "DCBA"], line.split()[1:], strict=True))
    assert cells[order].endswith("*<")  # in range, and the profile's order
    assert float(cells[order].rstrip("*<")) == pytest.approx(value, rel=0.1)
    assert [o for o, c in cells.items() if c.endswith("<")] == [order]
