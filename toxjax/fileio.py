"""Files, the way every trust feature of toxjax needs them: one home per idea.

- Atomic writes (`write_text`, `write_json`, `write_lines`): a temporary sibling file,
  flushed and fsync'ed, renamed over the target, the directory fsync'ed. A process killed
  at any moment leaves the old file or the new one, never a torn one; the temporary file
  of a writer that was killed is removed by the next writer of the same path
  (`remove_stale_temps`). Local paths and object stores (`gs://`, through `tf.io.gfile`).
- JSON lines (`iter_jsonl`, `read_jsonl`, `write_jsonl`): every malformed line is one
  `JsonlError` whose message starts with `path:line:`, the one wording of the house.
- Hashes (`sha256_file`, `sha256_dir`, `sha256_json`): streamed, with a progress bar for
  big files.
- What a path is (`same_file`: one file under two names; `file_kind`: "a pipe", "a
  directory", ... for messages that refuse a path that is not a regular file).
- What changed (`changes`): the `"<key> was <old>, now <new>"` lines every resume check
  prints, over nested dicts (dotted keys).

Library code only: no flags, no gin, no printing except the progress bar of a long hash.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import stat
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

_HASH_CHUNK = 1 << 20
_HASH_BAR_BYTES = 256 << 20  # files that take long enough to hash to show a bar
_TMP_SUFFIX = ".tmp"


# ----------------------------------------------------------------------------- paths
def is_remote(path: str) -> bool:
    """An object-store URL (`gs://...`): no appends, no flock, no directory rename."""
    return "://" in path


def resolve(path: str) -> str:
    """Absolute local path, or the URL unchanged."""
    return path if is_remote(path) else os.path.abspath(path)


def same_file(a: str, b: str) -> bool:
    """Whether two local paths name the same file (by real path, or the same inode when
    both exist): `./x.jsonl`, `x.jsonl` and a symlink to it are one file."""
    if is_remote(a) or is_remote(b):
        return a.rstrip("/") == b.rstrip("/")
    with contextlib.suppress(OSError):
        if os.path.exists(a) and os.path.exists(b):
            return os.path.samefile(a, b)
    return os.path.realpath(a) == os.path.realpath(b)


_KINDS = {
    stat.S_IFDIR: "a directory",
    stat.S_IFIFO: "a pipe",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
    stat.S_IFLNK: "a symbolic link",
}


def mode_kind(mode: int) -> str | None:
    """What a `st_mode` is, for a message ("a pipe", "a directory", ...); None for a
    regular file."""
    return None if stat.S_ISREG(mode) else _KINDS.get(stat.S_IFMT(mode), "a special file")


def file_kind(path: str) -> str | None:
    """What a local `path` is when it exists and is not a regular file (links followed:
    `/dev/fd/N` of a process substitution is "a pipe"); None otherwise."""
    try:
        return mode_kind(os.stat(path).st_mode)
    except OSError:
        return None


def _gfile():
    import tensorflow as tf  # slow import: only for object stores

    return tf.io.gfile


# ----------------------------------------------------------------------------- atomic writes
def _temp_name(path: str) -> str:
    return f"{path}.{os.getpid()}{_TMP_SUFFIX}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(path: str) -> list[str]:
    """Removes `<path>.<pid>.tmp` files left by writers of `path` that were killed.

    A temporary file of a live process (another writer mid-write) is left alone.
    Returns the removed paths.
    """
    if is_remote(path):
        return []
    removed = []
    for tmp in glob.glob(glob.escape(path) + ".*" + _TMP_SUFFIX):
        pid_text = tmp[len(path) + 1 : -len(_TMP_SUFFIX)]
        if not pid_text.isdigit() or (int(pid_text) != os.getpid() and _pid_alive(int(pid_text))):
            continue
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
            removed.append(tmp)
    return removed


def fsync_dir(directory: str) -> None:
    """Makes a rename in `directory` durable (a power cut keeps it)."""
    fd = os.open(directory or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes(path: str, data: bytes) -> None:
    """Replaces `path` with `data` atomically (see the module docstring)."""
    if is_remote(path):
        gfile = _gfile()
        tmp = path + _TMP_SUFFIX
        with gfile.GFile(tmp, "wb") as f:
            f.write(data)
        gfile.rename(tmp, path, overwrite=True)
        return
    remove_stale_temps(path)
    tmp = _temp_name(path)
    # O_EXCL and O_NOFOLLOW: never write through a planted file or symlink.
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(tmp, flags, 0o666)  # the umask applies
    try:
        with open(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(os.path.dirname(os.path.abspath(path)))


def write_text(path: str, text: str) -> None:
    """Replaces `path` with `text` (UTF-8) atomically."""
    write_bytes(path, text.encode("utf-8"))


def write_lines(path: str, lines: Iterable[str]) -> None:
    """Replaces `path` with `lines` (each ending in a newline) atomically."""
    write_text(path, "".join(lines))


def write_json(path: str, value: Any, indent: int | None = 2, sort_keys: bool = True) -> None:
    """Replaces `path` with `value` as JSON (and a final newline) atomically."""
    write_text(path, json.dumps(value, indent=indent, sort_keys=sort_keys) + "\n")


def read_text(path: str) -> str:
    """The whole file as text (local or object store)."""
    if is_remote(path):
        with _gfile().GFile(path, "r") as f:
            return f.read()
    with open(path, encoding="utf-8") as f:
        return f.read()


def exists(path: str) -> bool:
    return _gfile().exists(path) if is_remote(path) else os.path.exists(path)


# ----------------------------------------------------------------------------- JSON lines
class JsonlError(ValueError):
    """A malformed JSON-lines file; the message starts with `path:line:`."""


def iter_jsonl(
    path: str, what: str = "record", object_only: bool = True
) -> Iterator[tuple[int, Any]]:
    """`(line number, value)` of each non-blank line of a JSON-lines file, streamed.

    Args:
      path: the file (local or object store).
      what: what a line should hold, for the error message ("generations record").
      object_only: a line that is JSON but not an object is an error too.

    Raises:
      FileNotFoundError: the file does not exist.
      JsonlError: `"<path>:<line>: not valid JSON (<why>); fix or remove the line"`, or
        not UTF-8, or not an object.
    """
    opener = _gfile().GFile if is_remote(path) else open
    with opener(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise JsonlError(
                    f"{path}:{lineno}: not valid UTF-8 ({e.reason} at byte {e.start}); "
                    "re-encode the file as UTF-8"
                ) from None
            try:
                value = json.loads(text)
            except json.JSONDecodeError as e:
                raise JsonlError(
                    f"{path}:{lineno}: not valid JSON ({e.msg}, column {e.colno}); fix or "
                    f"remove the line (expected a {what})"
                ) from None
            if object_only and not isinstance(value, dict):
                raise JsonlError(
                    f"{path}:{lineno}: expected a JSON object (a {what}), got "
                    f"{type(value).__name__}"
                )
            yield lineno, value


def read_jsonl(path: str, what: str = "record") -> list[Any]:
    """Every record of a JSON-lines file (see `iter_jsonl`)."""
    return [value for _, value in iter_jsonl(path, what)]


def write_jsonl(path: str, records: Iterable[Any]) -> None:
    """Replaces `path` with one JSON line per record, atomically (UTF-8, not escaped)."""
    write_lines(path, (json.dumps(r, ensure_ascii=False) + "\n" for r in records))


# ----------------------------------------------------------------------------- hashes
def sha256_file(path: str, label: str | None = None) -> str:
    """SHA-256 hex digest of a file, streamed in 1 MiB chunks (local or object store).

    About 1 GB/s on one core; a progress bar (named `label`) for files over 256 MiB.
    """
    from tqdm.auto import tqdm

    remote = is_remote(path)
    size = _gfile().stat(path).length if remote else os.path.getsize(path)
    h = hashlib.sha256()
    opener = _gfile().GFile if remote else open
    with (
        opener(path, "rb") as f,
        tqdm(
            total=size,
            unit="B",
            unit_scale=True,
            desc=f"hashing {label or path}",
            disable=size < _HASH_BAR_BYTES,
            mininterval=1.0,
        ) as bar,
    ):
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
            bar.update(len(chunk))
    return h.hexdigest()


def sha256_dir(path: str, recursive: bool = False) -> str:
    """One SHA-256 over the names and contents of the files in `path` (sorted; with
    `recursive`, of every file below it, named by its relative path)."""
    h = hashlib.sha256()
    if recursive:
        names = sorted(
            os.path.relpath(os.path.join(root, name), path)
            for root, _, files in os.walk(path)
            for name in files
        )
    else:
        names = sorted(n for n in os.listdir(path) if os.path.isfile(os.path.join(path, n)))
    for name in names:
        h.update(f"{name}\0{sha256_file(os.path.join(path, name))}\0".encode())
    return h.hexdigest()


def sha256_json(value: Any) -> str:
    """SHA-256 of a JSON value's canonical text (sorted keys)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def file_identity(path: str) -> dict[str, Any]:
    """`{"size", "sha256"}` of a file; the path is left out (a moved file is the same)."""
    return {"size": os.path.getsize(path), "sha256": sha256_file(path)}


# ----------------------------------------------------------------------------- what changed
def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings -> `{"a.b.c": leaf}` (a non-mapping tree is one leaf `""`)."""
    if isinstance(tree, Mapping):
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: tree}


def show(value: Any, width: int = 60) -> str:
    """A value for a one-line message: a digest shortened, JSON cut to `width`."""
    if isinstance(value, str) and value.startswith("sha256:"):
        return value[:19]  # 12 hex digits name a file well enough in a message
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return value[:12] + "..."
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= width else text[: width - 3] + "..."


_ABSENT = object()


def changes(was: Mapping, now: Mapping, keys: Iterable[str] | None = None) -> list[str]:
    """`"<key> was <old>, now <new>"` for each leaf that differs (dotted keys).

    Args:
      was, now: what was recorded and what this run has (nested mappings).
      keys: compare only these top-level keys (default: all of both).
    """
    if keys is not None:
        keys = list(keys)
        was = {k: was.get(k) for k in keys}
        now = {k: now.get(k) for k in keys}
    old, new = flatten(was), flatten(now)
    order = list(new) + [k for k in old if k not in new]
    out = []
    for k in order:
        a, b = old.get(k, _ABSENT), new.get(k, _ABSENT)
        if a is _ABSENT or b is _ABSENT or a != b:
            out.append(
                f"{k} was {'absent' if a is _ABSENT else show(a)}, "
                f"now {'absent' if b is _ABSENT else show(b)}"
            )
    return out
