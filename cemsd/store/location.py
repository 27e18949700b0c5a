"""Where the state directory and the database live, checked before anything is created.

- `location_problems` (check-config, every command): what the configuration alone shows
  is wrong: a state_dir that is a file, a device or a virtual file system (/proc, /sys,
  /dev), a path too long for the file system or for the control socket inside it, a
  `storage.url` that is not a URL of a supported database (SQLite, PostgreSQL).
- `prepare_storage` (only `cemsd run` and `cemsd db-upgrade`, the commands that may
  create a database): the state directory is created if missing and must be writable, and
  so must an existing SQLite file and its folder; a refusal names the path and the cause.
- Every other command opens an existing database or fails (database.open_existing).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from cemsd.errors import StorageError

MAX_SOCKET_PATH = 100  # a Unix socket path: sun_path holds 108 bytes on Linux

if TYPE_CHECKING:
    from cemsd.config import Storage

SUPPORTED_BACKENDS = ("sqlite", "postgresql")
VIRTUAL_FILESYSTEMS = (Path("/proc"), Path("/sys"), Path("/dev"))
SOCKET_NAME = "cemsd.sock"  # the control socket's default place: <state_dir>/cemsd.sock
PATH_MAX = os.pathconf("/", "PC_PATH_MAX")
NAME_MAX = os.pathconf("/", "PC_NAME_MAX")


def location_problems(storage: Storage, control_socket: Path | None) -> list[tuple[str, str]]:
    """(key, message) for each problem of [storage] that the configuration alone shows."""
    problems = [("storage.state_dir", m) for m in directory_problems(storage.state_dir)]
    socket = control_socket or storage.state_dir / SOCKET_NAME
    key = "storage.state_dir" if control_socket is None else "qaqc.control_socket"
    if problems and control_socket is None:
        pass  # the state_dir's own problem says it
    elif len(str(socket)) > MAX_SOCKET_PATH:
        problems.append((key, f"too long for the control socket {socket} "
                         f"({len(str(socket))} > {MAX_SOCKET_PATH} characters): use a "
                         "shorter path or set [qaqc] control_socket"))
    elif control_socket is not None:
        problems += [(key, m) for m in directory_problems(control_socket.parent)]
    if storage.url is not None:
        problems += [("storage.url", m) for m in url_problems(storage.url)]
    return problems


def directory_problems(path: Path) -> list[str]:
    """Why `path` cannot be (or become) a directory cemsd keeps files in."""
    if len(str(path)) > PATH_MAX or any(len(part) > NAME_MAX for part in path.parts):
        return [f"path too long ({len(str(path))} characters; at most {PATH_MAX}, "
                f"{NAME_MAX} per name)"]
    resolved = path.resolve()
    if any(resolved == v or v in resolved.parents for v in VIRTUAL_FILESYSTEMS):
        return [f"{path} is on a virtual file system (/proc, /sys, /dev): nothing stored "
                "there survives; use a directory on disk such as /var/lib/cemsd"]
    existing, mode = _nearest_existing(resolved)
    if mode is not None and not stat.S_ISDIR(mode):
        what = "a file" if stat.S_ISREG(mode) else "not a directory"
        return [f"{existing} is {what}: state_dir must be a directory"]
    return []  # None: hidden from this user; the user who runs cemsd may see it


def url_problems(url: str) -> list[str]:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        return [f"not a database URL: {url!r} (e.g. sqlite:////var/lib/cemsd/cemsd.db or "
                "postgresql+psycopg://user@host/cemsd)"]
    backend = parsed.get_backend_name()
    if backend not in SUPPORTED_BACKENDS:
        return [f"unsupported database {backend!r}: cemsd stores in "
                f"{' or '.join(SUPPORTED_BACKENDS)}"]
    try:
        parsed.get_dialect().import_dbapi()
    except (ImportError, NoSuchModuleError) as exc:
        return [f"no driver for {parsed.drivername!r} is installed: {exc}"]
    if backend == "sqlite":
        database = parsed.database or ""
        if database in ("", ":memory:") or database.startswith("file:"):
            return ["an in-memory SQLite database keeps nothing: give a file path "
                    "(sqlite:////var/lib/cemsd/cemsd.db)"]
        problems = directory_problems(Path(database).parent)
        found, mode = _nearest_existing(Path(database))
        if not problems and found == Path(database) and mode is not None and \
                not stat.S_ISREG(mode):
            problems.append(f"{database} is not a regular file")
        return problems
    return []


def _nearest_existing(path: Path) -> tuple[Path, int | None]:
    """The path or its nearest existing parent, with its mode (None: not visible)."""
    while True:
        try:
            return path, os.stat(path).st_mode
        except FileNotFoundError:
            if path == path.parent:
                return path, None
            path = path.parent
        except OSError:  # permission denied, or a parent that is a file (ENOTDIR)
            if path.parent != path and _is_file(path.parent):
                return path.parent, stat.S_IFREG
            return path, None


def _is_file(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL (None for another database)."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return None
    return Path(parsed.database)


def prepare_storage(storage: Storage) -> None:
    """Before `cemsd run` or `db-upgrade` touches anything: the state directory exists (it
    is created if missing) and is writable, and so is the SQLite file and its folder."""
    _writable_directory(storage.state_dir, "state_dir")
    database = sqlite_file(storage.database_url)
    if database is None:
        return
    _writable_directory(database.parent, "database folder")
    if database.exists() and not os.access(database, os.R_OK | os.W_OK):
        raise StorageError(f"the database file {database} is read-only for this user "
                           f"(uid {os.getuid()}): cemsd must be able to write it")


def _writable_directory(path: Path, what: str) -> None:
    problems = directory_problems(path)
    if problems:
        raise StorageError(f"{what}: {problems[0]}")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(f"cannot create the {what} {path}: "
                           f"{exc.strerror or errno.errorcode.get(exc.errno or 0)}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise StorageError(f"the {what} {path} is not writable for this user "
                           f"(uid {os.getuid()})")
