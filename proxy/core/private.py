"""The data directory is private: 0700, every file in it 0600, tightened at start if an
earlier run (or another tool) left wider modes. Tapes hold conversation text, slot files
hold KV state: no other local user may read them."""

from __future__ import annotations

import os
import stat
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600
UMASK = 0o077  # files created later (LMDB, logs, the embedded server's slot files) too


def secure_data_dir(path: Path) -> list[str]:
    """Create or tighten ``path`` and everything under it; the paths that were tightened."""
    path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    tightened = []
    for root, dirs, files in os.walk(path):
        for name, mode in [(root, DIR_MODE), *((os.path.join(root, d), DIR_MODE) for d in dirs),
                           *((os.path.join(root, f), FILE_MODE) for f in files)]:  # fmt: skip
            info = os.lstat(name)
            if stat.S_ISLNK(info.st_mode):
                continue
            if stat.S_IMODE(info.st_mode) & ~mode:
                os.chmod(name, stat.S_IMODE(info.st_mode) & mode)
                tightened.append(name)
    return sorted(set(tightened))
