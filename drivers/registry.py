"""Register maps (profiles) by name.

A profile is a TOML file in `drivers/profiles/` (or in a folder named by the environment
variable CEMSD_PROFILE_PATH, colon-separated) describing a device's channels: function
code, address, data type, byte order, scale, unit, measuring range, status bits. A
profile may `extends` another and override some of its channels, so variants of one
instrument family share one register layout.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from cemsd.errors import DriverError

BUILTIN_DIR = Path(__file__).parent / "profiles"


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    channels: dict[str, dict[str, Any]]
    remote_calibration: dict[str, Any] = field(default_factory=dict)  # valve coils, if any
    path: Path | None = None
    extends: str | None = None


def search_path() -> list[Path]:
    extra = [Path(p) for p in os.environ.get("CEMSD_PROFILE_PATH", "").split(":") if p]
    return [*extra, BUILTIN_DIR]


def available_profiles() -> list[str]:
    names = {p.stem for d in search_path() if d.is_dir() for p in d.glob("*.toml")}
    return sorted(names)


def load_profile(name: str) -> Profile:
    return _load(name, ())


@lru_cache(maxsize=64)
def _load(name: str, chain: tuple[str, ...]) -> Profile:
    if name in chain:
        raise DriverError(f"profile {name!r} extends itself through {' -> '.join(chain)}")
    path = _find(name)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise DriverError(f"profile {name!r} ({path}) cannot be read: {exc}") from None
    channels: dict[str, dict[str, Any]] = {}
    remote: dict[str, Any] = {}
    if base_name := raw.get("extends"):
        base = _load(str(base_name), (*chain, name))
        channels = {k: dict(v) for k, v in base.channels.items()}
        remote = dict(base.remote_calibration)
    for key, spec in raw.get("channels", {}).items():
        channels[key] = {**channels.get(key, {}), **spec}
    remote.update(raw.get("remote_calibration", {}))
    return Profile(
        name=name,
        description=str(raw.get("description", "")),
        channels=channels,
        remote_calibration=remote,
        path=path,
        extends=str(base_name) if base_name else None,
    )


def _find(name: str) -> Path:
    if not name or "/" in name or name.startswith("."):
        raise DriverError(f"invalid profile name {name!r}")
    for folder in search_path():
        candidate = folder / f"{name}.toml"
        if candidate.is_file():
            return candidate
    known = ", ".join(available_profiles()) or "none"
    raise DriverError(f"unknown profile {name!r} (available: {known})")
