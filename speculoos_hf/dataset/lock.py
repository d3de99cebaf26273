"""One writer per output: an exclusive lock on `<output>.lock`, taken by the run's main process before the output is
read and held until the run ends. A second run on the same output is refused at once, whatever its options; the
processes of one `accelerate launch` run share their main process's lock.

The lock is the operating system's (`flock`): a run that dies releases it, so a `.lock` file left behind by a
crash never blocks the next run. Where `fcntl` does not exist (Windows) no lock is taken."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from .distributed import broadcast
from .store import OutputPathError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None


class OutputBusyError(RuntimeError):
    """Another run is writing this output."""


class OutputLock:
    """The held lock of one output (on the main process; the other processes of the run hold none)."""

    def __init__(self, path: Path | None = None, handle=None, made: tuple[Path, ...] = ()):
        self.path, self.handle = path, handle
        self.made = made  # folders made for the lock file: removed with it where still empty (a refused run)

    @classmethod
    def take(cls, output: Path, state) -> OutputLock:
        """The lock of `output`, taken by the main process; every process raises OutputBusyError (another run
        holds it) or OutputPathError (it cannot be created) alike."""
        lock, problem = cls(), None
        if state.is_main_process:
            try:
                lock = cls._acquire(output)
            except (OutputBusyError, OutputPathError) as e:
                problem = (type(e).__name__, str(e))
        problem = broadcast(state, problem)
        if problem is not None:
            raise {"OutputBusyError": OutputBusyError, "OutputPathError": OutputPathError}[problem[0]](problem[1])
        return lock

    @classmethod
    def _acquire(cls, output: Path) -> OutputLock:
        if fcntl is None:  # pragma: no cover - Windows
            return cls()
        path = output.with_name(output.name + ".lock")
        made = tuple(p for p in [path.parent, *path.parent.parents] if not p.exists())
        while True:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                handle = open(path, "a+", encoding="utf-8")
            except OSError as e:
                raise OutputPathError(f"cannot create the lock file {path}: {e.strerror or e}") from None
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = _holder(handle)
                handle.close()
                raise OutputBusyError(f"{output} is being written by another run{holder}; wait for it to "
                                      "finish, or write to another output") from None
            if _same_file(handle, path):  # not a lock file its last holder removed meanwhile
                break
            handle.close()
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        return cls(path, handle, made)

    def release(self) -> None:
        """Remove the lock file, then let go (a run that opened the file meanwhile finds it gone and starts over)."""
        if self.handle is None:
            return
        self.path.unlink(missing_ok=True)
        self.handle.close()
        self.handle = None
        for folder in self.made:  # deepest first
            try:
                folder.rmdir()
            except OSError:
                break


def _holder(handle) -> str:
    handle.seek(0)
    text = handle.read().strip()
    return f" ({text})" if text else ""


def _same_file(handle, path: Path) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
    except FileNotFoundError:
        return False
