"""Files that survive kills, races and full disks: a directory's writer lock, whole-file
replaces through exclusive temporaries, appends of one complete line, and state files
read back or refused in one line.

Every write here turns an OSError into a WriteError, one line naming the file (`no space
left on device writing runs/x/results.jsonl`), and leaves no partial line and no
temporary behind.
"""

import contextlib
import datetime
import errno
import fcntl
import json
import os
import re
import secrets
import socket
import sys
import time

from batchlab.errors import ConfigError

LOCK = ".lock"  # in a directory while a writer holds it; {"pid", "host", "command", "since"}
QUARANTINE_SUFFIX = ".quarantine"  # where a file's torn tail is moved before an append
_TEMPORARY = re.compile(r"\..+\.[0-9a-f]{8}\.tmp")
_CHUNK = 1 << 16


class WriteError(ConfigError):
    """A file could not be written (a full disk, no permission): one line naming it."""


def describe(e: OSError, path: str, doing: str = "writing") -> str:
    """`no space left on device writing PATH`, `permission denied writing PATH`, ..."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"no space left on device {doing} {path}"
    return f"{(e.strerror or type(e).__name__).lower()} {doing} {path}"


@contextlib.contextmanager
def writing(path: str):
    """Raises any OSError of the block as a WriteError naming `path`."""
    try:
        yield
    except OSError as e:
        raise WriteError(describe(e, path)) from None


def _named(path: str, flag: str) -> str:
    """How an error names a directory: `--out_dir=runs/x`, or `runs/x` when no flag gave it."""
    return f"{flag}={path}" if flag.startswith("--") else path


def make_dir(path: str, flag: str = "") -> None:
    """`path` as a directory, made if missing; ConfigError naming `flag` when it cannot be."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(f"{_named(path, flag)}: exists and is not a directory")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        why = describe(e, path, "making")
        raise ConfigError(f"{_named(path, flag)}: cannot create it ({why})") from None


def write_all(fd: int, data: bytes) -> None:
    """os.write until all of `data` is written."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def write_atomic(path: str, data: bytes | str, durable: bool = True) -> None:
    """Replaces `path` with `data` whole, or leaves it as it was: the data goes to a
    temporary beside it (a unique name, created with O_EXCL, never through a link), which
    is then renamed over `path` (replacing a link there, never writing through it)."""
    data = data.encode() if isinstance(data, str) else data
    directory, name = os.path.split(path)
    tmp = os.path.join(directory, f".{name}.{secrets.token_hex(4)}.tmp")
    with writing(path):
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(tmp, flags, 0o666)
        try:
            try:
                write_all(fd, data)
                if durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


def copy_atomic(src: str, dst: str) -> None:
    """`src`'s bytes at `dst`, written by write_atomic: a full disk leaves no half copy."""
    with open(src, "rb") as f:
        write_atomic(dst, f.read())


def remove_temporaries(directory: str) -> list[str]:
    """Removes the temporaries write_atomic leaves when killed between create and rename;
    only the writer holding `directory`'s lock may call it. Returns their names."""
    removed = []
    for entry in os.scandir(directory):
        if _TEMPORARY.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
                removed.append(entry.name)
    return removed


# ---- appending whole lines ----------------------------------------------------------------


def _last_line_end(fd: int, size: int) -> int:
    """The offset just past the last newline before `size`; 0 when there is none."""
    end = size
    while end > 0:
        start = max(0, end - _CHUNK)
        at = os.pread(fd, end - start, start).rfind(b"\n")
        if at >= 0:
            return start + at + 1
        end = start
    return 0


def repair_tail(fd: int, path: str, warn=None) -> int:
    """Cuts off what follows the last complete line of the open file `fd` (a write cut
    short by a kill or a full disk, NULs after a power cut), after copying it to
    PATH.quarantine; `warn` is told both names. Returns the file's size after."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return size
    keep = _last_line_end(fd, size)
    quarantine = path + QUARANTINE_SUFFIX
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    with writing(quarantine):
        q = os.open(quarantine, flags, 0o666)
        try:
            for start in range(keep, size, _CHUNK):
                write_all(q, os.pread(fd, min(_CHUNK, size - start), start))
            write_all(q, b"\n")
            os.fsync(q)
        finally:
            os.close(q)
    os.ftruncate(fd, keep)
    os.fsync(fd)
    if warn:
        warn(
            f"{path}: {size - keep} bytes after its last complete line (a write cut short) "
            f"moved to {quarantine}; the file now ends at its last complete line"
        )
    return keep


def append_line(path: str, line: bytes, warn=None) -> None:
    """Appends `line` (one complete line, newline included) in one write and forces it to
    disk. A torn tail is first moved aside (repair_tail), so the line always starts a line;
    a write that fails or is cut short is undone, so no partial line is left."""
    assert line.endswith(b"\n") and b"\n" not in line[:-1], "one complete line"
    flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    with writing(path):
        fd = os.open(path, flags, 0o666)
        try:
            size = repair_tail(fd, path, warn)
            try:
                if os.write(fd, line) != len(line):  # the disk filled up mid-line
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                os.fsync(fd)
            except OSError:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, size)
                raise
        finally:
            os.close(fd)


# ---- state files ----------------------------------------------------------------------------


def read_state(path: str, way_out: str, check=None) -> dict:
    """The JSON object saved at `path`, {} when there is none. One that cannot be read, is
    not JSON, not an object, or in which `check(obj)` finds a problem (a string) is a
    ConfigError naming the file and `way_out` ("use --recalibrate or a new --out_dir")."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise ConfigError(f"{describe(e, path, 'reading')}; {way_out}") from None
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as e:
        why = e.msg if isinstance(e, json.JSONDecodeError) else type(e).__name__
        raise ConfigError(f"{path}: not valid JSON ({why}); {way_out}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: not a JSON object (a {type(data).__name__}); {way_out}")
    problem = check(data) if check else None
    if problem:
        raise ConfigError(f"{path}: {problem}; {way_out}")
    return data


# ---- the directory lock -------------------------------------------------------------------


def _holder_text(fd: int) -> str:
    """Who holds the lock open at `fd`, from what the holder wrote in it."""
    for _ in range(20):  # the holder writes who it is just after it takes the lock
        try:
            info = json.loads(os.pread(fd, 4096, 0) or b"null")
        except ValueError:
            info = None
        if isinstance(info, dict):
            return (
                f"{info.get('what', 'process')} pid {info.get('pid')} on host "
                f"{info.get('host')} (since {info.get('since')}: {info.get('command')})"
            )
        time.sleep(0.01)
    return "another process"


def _gone(fd: int) -> bool:
    """Whether the lock's holder, as it wrote itself down, is a process of this host that
    no longer runs (its measuring child is dying with it and about to let go)."""
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"null")
        if not isinstance(info, dict) or info.get("host") != socket.gethostname():
            return False
        os.kill(int(info["pid"]), 0)
    except ProcessLookupError:
        return True
    except (ValueError, KeyError, TypeError, OSError):
        return False
    return False


class DirLock:
    """The one writer of a directory: an exclusive flock on DIR/.lock, released by the
    kernel when the last process holding it dies, so a crash never leaves a stale lock.
    A child given `fd` (pass_fds) holds it too. A second writer is refused in one line
    naming the holder (pid, host, command). Use as a context manager."""

    def __init__(self, directory: str, flag: str = "", what: str = "sweep"):
        self.directory, self.flag, self.what = directory, flag, what
        self.path = os.path.join(directory, LOCK)
        self.fd = -1

    def __enter__(self) -> "DirLock":
        # A holder that just died may still have a dying child holding the lock: give it
        # a moment. A reader's momentary shared probe (holder()) gets one too.
        start = time.monotonic()
        while True:
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                waited = time.monotonic() - start
                if waited < 0.2 or (waited < 5.0 and _gone(fd)):
                    os.close(fd)
                    time.sleep(0.02)
                    continue
                who = _holder_text(fd)
                os.close(fd)
                other = f" or choose another {self.flag}" if self.flag.startswith("--") else ""
                raise ConfigError(
                    f"{_named(self.directory, self.flag)}: {who} is writing there; wait for "
                    f"it to finish{other}"
                ) from None
            if self._still_at_path(fd):
                break
            os.close(fd)  # its holder removed that file as it let go: lock the new one
        self.fd = fd
        info = {
            "what": self.what,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": " ".join(sys.argv),
            "since": datetime.datetime.now().isoformat(timespec="seconds"),
        }
        try:
            with writing(self.path):
                os.ftruncate(fd, 0)
                write_all(fd, json.dumps(info).encode())
        except BaseException:
            self.release()
            raise
        return self

    def _open(self) -> int:
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            return os.open(self.path, flags, 0o666)
        except OSError as e:
            where = _named(self.directory, self.flag)
            raise ConfigError(f"{where}: cannot lock it ({describe(e, self.path)})") from None

    def _still_at_path(self, fd: int) -> bool:
        try:
            return os.stat(self.path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            return False

    def release(self) -> None:
        """Removes the lock file, then lets go (a waiting writer then locks a new file)."""
        if self.fd < 0:
            return
        if self._still_at_path(self.fd):
            with contextlib.suppress(OSError):
                os.unlink(self.path)
        os.close(self.fd)
        self.fd = -1

    def __exit__(self, *exc) -> None:
        self.release()


def holder(directory: str) -> str | None:
    """Who is writing `directory` now (DirLock), or None; creates nothing."""
    try:
        fd = os.open(os.path.join(directory, LOCK), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _holder_text(fd)
    finally:
        os.close(fd)  # also lets go of the shared lock, if taken
    return None


@contextlib.contextmanager
def held(directory: str, flag: str, what: str, lock: DirLock | None = None):
    """`lock` when the caller already holds `directory`'s, else a DirLock for the block."""
    if lock is not None and os.path.samefile(lock.directory, directory):
        yield lock
        return
    with DirLock(directory, flag, what) as mine:
        yield mine
