"""Small file systems for fault tests: a tmpfs, or an ext4 image on a loop
device, mounted in a test's tmp dir and always unmounted at the end.

Mounting needs root (CAP_SYS_ADMIN); where it is refused, the test is skipped
with the reason. Whoever mounts must stop every process using the mount before
:meth:`Mounts.close` (a busy mount is detached lazily as a last resort, which
leaves its memory held until the last file closes).
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

FILLER = "filler.bin"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True)


class Mount:
    """One mounted file system."""

    def __init__(self, path: Path, image: Path | None = None) -> None:
        self.path = path
        self.image = image  # ext4: the image file behind the loop device
        self.mounted = True

    def free(self) -> int:
        """Bytes free for an unprivileged writer (root may have a few more on ext4)."""
        return shutil.disk_usage(self.path).free

    def remount(self, options: str) -> None:
        """``mount -o remount,OPTIONS``, e.g. ``size=128m``."""
        done = _run("mount", "-o", f"remount,{options}", str(self.path))
        assert done.returncode == 0, f"remount,{options} of {self.path}: {done.stderr.strip()}"

    def fill(self, leave: int = 0, name: str = FILLER) -> Path:
        """Write a file of zeros until at most ``leave`` bytes are free (or the
        file system refuses more); its path, to delete it to free the space."""
        path = self.path / name
        chunk = bytes(1 << 20)
        with open(path, "ab", buffering=0) as f:
            while (room := self.free() - leave) > 0:
                try:
                    written = f.write(chunk[: min(len(chunk), room)])
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
                if not written:
                    break
        return path

    def unmount(self) -> None:
        if not self.mounted:
            return
        for _ in range(50):  # a process that just exited may still hold a file for a moment
            if _run("umount", str(self.path)).returncode == 0:
                break
            time.sleep(0.1)
        else:
            lazy = _run("umount", "-l", str(self.path))
            assert lazy.returncode == 0, f"cannot unmount {self.path}: {lazy.stderr.strip()}"
        self.mounted = False
        if self.image is not None:
            self.image.unlink(missing_ok=True)


class Mounts:
    """The file systems a test mounted; :meth:`close` unmounts them all."""

    def __init__(self) -> None:
        self._mounted: list[Mount] = []

    def tmpfs(self, path: Path, size_mib: int) -> Mount:
        """A tmpfs of ``size_mib`` MiB at ``path`` (created if need be)."""
        path.mkdir(parents=True, exist_ok=True)
        self._mount(path, "-t", "tmpfs", "-o", f"size={size_mib}m,mode=0755", "tmpfs")
        mount = Mount(path)
        self._mounted.append(mount)
        return mount

    def ext4(self, path: Path, size_mib: int) -> Mount:
        """An ext4 file system of ``size_mib`` MiB (an image file beside
        ``path``, on a loop device, no journal) at ``path``."""
        if shutil.which("mkfs.ext4") is None:
            pytest.skip("mkfs.ext4 is not installed")
        image = path.with_name(path.name + ".ext4")
        with open(image, "wb") as f:
            f.truncate(size_mib << 20)
        made = _run("mkfs.ext4", "-q", "-F", "-O", "^has_journal", str(image))
        assert made.returncode == 0, made.stderr
        path.mkdir(parents=True, exist_ok=True)
        self._mount(path, "-o", "loop", str(image))
        mount = Mount(path, image)
        self._mounted.append(mount)
        (path / "lost+found").rmdir()  # the data directory holds only what Tally puts there
        return mount

    def _mount(self, path: Path, *args: str) -> None:
        if os.geteuid() != 0:
            pytest.skip("mounting a file system needs root")
        done = _run("mount", *args, str(path))
        if done.returncode != 0:
            words = done.stderr.lower()
            if "permission denied" in words or "operation not permitted" in words:
                pytest.skip(f"mounting is not permitted here: {done.stderr.strip()}")
            raise AssertionError(f"mount {' '.join(args)} {path}: {done.stderr.strip()}")

    def close(self) -> None:
        errors = []
        for mount in reversed(self._mounted):
            try:
                mount.unmount()
            except AssertionError as exc:
                errors.append(str(exc))
        self._mounted.clear()
        assert not errors, errors
