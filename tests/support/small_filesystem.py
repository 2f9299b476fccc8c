"""A real filesystem that runs out of space when a test says so: a size-limited tmpfs in a temp folder.

``small_filesystem()`` mounts it (root or CAP_SYS_ADMIN: where that is not allowed the test is skipped,
with the reason), ``fill()`` writes a ballast file until the kernel answers ENOSPC, ``free()`` deletes
it. The mount is always undone on the way out, lazily if something still holds a file open there.
"""

import contextlib
import errno
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

BALLAST = ".ballast"
_CHUNK = b"\0" * 65536


class SmallFilesystem:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.ballast = path / BALLAST

    def available(self) -> int:
        stats = os.statvfs(self.path)
        return stats.f_bavail * stats.f_frsize

    def fill(self) -> int:
        """Take every free byte with the ballast file; returns how many it took."""
        taken = 0
        fd = os.open(self.ballast, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for chunk in (_CHUNK, b"\0" * 4096, b"\0"):  # big steps, then to the last byte
                while True:
                    try:
                        taken += os.write(fd, chunk)
                    except OSError as exc:
                        if exc.errno != errno.ENOSPC:
                            raise
                        break
        finally:
            os.close(fd)
        return taken

    def free(self) -> None:
        self.ballast.unlink(missing_ok=True)


def _refusal(completed: subprocess.CompletedProcess) -> str:
    return (completed.stderr or completed.stdout).strip() or f"exit status {completed.returncode}"


@contextlib.contextmanager
def small_filesystem(size_bytes: int) -> Iterator[SmallFilesystem]:
    """A tmpfs of ``size_bytes`` (rounded up to pages by the kernel), mounted for the block's duration."""
    if shutil.which("mount") is None:
        pytest.skip("a real full filesystem needs the mount command (util-linux)")
    path = Path(tempfile.mkdtemp(prefix="enlace-small-fs-"))
    try:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes},mode=0700", "tmpfs", str(path)],
                                 capture_output=True, text=True, timeout=30)
        if mounted.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs for a real full disk (needs root or CAP_SYS_ADMIN; "
                        f"euid {os.geteuid()}): {_refusal(mounted)}")
        try:
            yield SmallFilesystem(path)
        finally:
            unmounted = subprocess.run(["umount", str(path)], capture_output=True, text=True, timeout=30)
            if unmounted.returncode != 0:
                # Something still holds a file open there (a connection not yet closed): detach it now, the
                # kernel frees the memory when the last file closes.
                subprocess.run(["umount", "-l", str(path)], check=True, capture_output=True, text=True, timeout=30)
    finally:
        with contextlib.suppress(OSError):
            path.rmdir()
