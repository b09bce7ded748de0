"""A run directory belongs to one training process at a time.

Two trainings writing into one folder lose a checkpoint and interleave their TensorBoard events, and
nothing in either process notices. So a training claims its directory before it writes anything:
it takes an exclusive `flock` on `<run>/.lock` and holds it for the run's life. The lock is the
kernel's, tied to the open file, so it dies with the process however the process dies (Ctrl-C,
SIGKILL, a crash): a crashed run never blocks its own resume, and no stale-lock cleanup exists.
The lock file also names its holder (pid, host, start time) so that the refusal can say who.

A new run needs a directory no training has written into (no TensorBoard events, no checkpoint);
continuing a run (`--resume`) needs the directory its checkpoint lives in, unheld.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path

from breakout_ppo.events import EVENT_FILE_GLOB

LOCK_NAME = ".lock"


class RunDirectoryError(Exception):
    """The run directory cannot be claimed; the message is one line meant for the user."""


class RunDirectory:
    """A claimed run directory: `path` is ours until `release()` (or the process ends)."""

    def __init__(self, path: Path, lock_file, created: bool):
        self.path = path
        self._lock_file = lock_file
        self._created = created

    @classmethod
    def claim(cls, path, new: bool) -> "RunDirectory":
        """Claim `path` for a new run (`new=True`: no training has written there) or to continue the
        run in it."""
        path = Path(path)
        holder = _holder(path)
        if holder is not None:
            raise RunDirectoryError(_in_use(path, holder))
        if new:
            _refuse_if_used(path)  # before creating anything in a folder that is not ours
        created = new and not path.exists()
        try:
            if new:
                path.mkdir(parents=True, exist_ok=True)
            elif not path.is_dir():
                raise RunDirectoryError(f"run directory not found: {path}")
            lock_file = open(path / LOCK_NAME, "a+")
        except (FileExistsError, NotADirectoryError):
            raise RunDirectoryError(f"cannot use {path} as a run directory: a file is in the way") from None
        except OSError as error:
            raise RunDirectoryError(f"cannot use {path} as a run directory: {error.strerror or error}") from None
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # another training claimed it since `_holder` looked
            lock_file.seek(0)
            holder = lock_file.read().strip()
            lock_file.close()
            raise RunDirectoryError(_in_use(path, holder)) from None
        claimed = cls(path, lock_file, created)
        if new:
            try:  # checked under the lock, so no other training can write here between check and use
                _refuse_if_used(path)
            except RunDirectoryError:
                claimed.release()
                raise
        lock_file.seek(0)
        lock_file.truncate()
        lock_file.write(f"pid {os.getpid()} on {socket.gethostname()} since "
                        f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}\n")
        lock_file.flush()
        return claimed

    def release(self) -> None:
        """Unlock; a directory this claim created and nothing was written into goes too."""
        if self._lock_file.closed:
            return
        self._lock_file.truncate(0)
        if self._created and [p.name for p in self.path.iterdir()] == [LOCK_NAME]:
            try:
                (self.path / LOCK_NAME).unlink()
                self.path.rmdir()
            except OSError:  # another process is claiming the name right now: it is theirs
                pass
        fcntl.flock(self._lock_file, fcntl.LOCK_UN)
        self._lock_file.close()

    def __enter__(self) -> "RunDirectory":
        return self

    def __exit__(self, *exc) -> bool:
        self.release()
        return False


def _holder(path: Path) -> str | None:
    """Who holds `path`'s lock ("" if its holder has not named itself yet), or None if nobody does."""
    try:
        with open(path / LOCK_NAME) as lock_file:
            try:
                fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return lock_file.read().strip()
            fcntl.flock(lock_file, fcntl.LOCK_UN)
            return None
    except OSError:  # no lock file (or no folder): nobody holds it
        return None


def _in_use(path: Path, holder: str) -> str:
    return (f"{path} is in use by a training that is still running ({holder or 'another process'}); "
            f"wait for it, stop it, or choose another --run-name")


def _refuse_if_used(path: Path) -> None:
    """A new run may not start where a training has written: its events would mix with the old ones
    and its checkpoint replace theirs. Other files (a launcher's config.json or log) may be there."""
    if not path.is_dir():
        if path.exists():
            raise RunDirectoryError(f"cannot use {path} as a run directory: a file is in the way")
        return
    if not any(path.glob(EVENT_FILE_GLOB)) and not any(path.glob("*.pt")):
        return
    checkpoint = path / "checkpoint.pt"
    if checkpoint.exists():
        raise RunDirectoryError(f"{path} already holds a run; choose another --run-name or continue it "
                                f"with --resume {checkpoint}")
    raise RunDirectoryError(f"{path} already holds a run's events but no checkpoint (a run that stopped before "
                            f"its first save?); remove it or choose another --run-name")
