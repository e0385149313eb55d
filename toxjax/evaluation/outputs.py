"""The one writer of an eval output directory: locked, and every file replaced atomically.

`toxjax eval toxicity|utility|bias` and the demo write their results through
`EvalOutput`: it holds `<output_dir>/LOCK` (`toxjax.locking.WriterLock`: a second eval
on the same output is refused, naming the first) and writes each file through
`toxjax.fileio` (a kill leaves the old file or the new one).

    with EvalOutput(output_dir) as out:
        out.write_json("metrics.json", result)
"""

from __future__ import annotations

import os
import sys
from typing import Any

from toxjax import fileio
from toxjax.locking import WriterLock

LOCK_FILE = "LOCK"


class EvalOutput:
    """An eval output directory held for writing (a context manager).

    Raises (on enter):
      toxjax.locking.LockHeldError: another process writes this directory.
      NotADirectoryError: `output_dir` exists and is not a directory.
    """

    def __init__(self, output_dir: str):
        self.dir = output_dir
        self._lock: WriterLock | None = None

    def __enter__(self) -> EvalOutput:
        if os.path.exists(self.dir) and not os.path.isdir(self.dir):
            raise NotADirectoryError(f"--output_dir {self.dir} exists and is not a directory")
        os.makedirs(self.dir, exist_ok=True)
        self._lock = WriterLock(os.path.join(self.dir, LOCK_FILE), f"the eval output {self.dir}")
        self._lock.acquire()
        if self._lock.note:
            print(self._lock.note, file=sys.stderr)
        return self

    def __exit__(self, *exc) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def write_json(self, name: str, value: Any) -> None:
        fileio.write_json(self.path(name), value)

    def write_text(self, name: str, text: str) -> None:
        fileio.write_text(self.path(name), text)

    def remove(self, *names: str) -> None:
        """Deletes outputs this directory holds (`--overwrite`); never follows a link out."""
        for name in names:
            path = self.path(name)
            if os.path.isfile(path) or os.path.islink(path):
                os.remove(path)
