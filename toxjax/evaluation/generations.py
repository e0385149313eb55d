"""The generations store of a toxicity eval: one resumable file, one reader, its identity.

`generations.jsonl` holds one line per finished prompt, appended in order as batches
finish:

    {"index": int, "prompt": str, "prompt_toxicity": float | null, "challenging": bool,
     "prefix": str, "continuations": [{"text": str, "toxicity": float | null,
                                       "error": str | null,
                                       "scores": {scorer: float | null}}, ...]}

(`scores` and, where a scorer failed on a text, `errors` appear once `toxjax eval
rescore` added another scorer; `toxicity` stays the eval's own scorer's.)

`generations.meta.json` records what made them (`{"identity": {...}}`: model step and
run, prompts file identity, sampling settings, seed, prefix, scorer; and `"rescored":
{scorer: options}`, outside the identity). A resume with any
of it changed is refused (`ResumeMismatch`, one line naming each change).

`iter_generations` is the only reader of the file: metrics, CIs, `toxjax report` and the
demo all read through it (`prompt_scores`). A torn last line (the writer was killed
mid-write) is not a finished prompt; the writer cuts it off before appending
(`repair=True`), readers skip it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from toxjax import fileio
from toxjax.evaluation.metrics import PromptScores
from toxjax.evaluation.prompts import Prompt

GENERATIONS_FILE = "generations.jsonl"
META_FILE = "generations.meta.json"
RESTART = "rerun with --overwrite to start over, or give another --output_dir"


class ResumeMismatch(ValueError):
    """The output directory holds generations made with other settings."""


def iter_generations(path: str, repair: bool = False) -> Iterator[tuple[int, dict]]:
    """`(line number, record)` of each finished prompt, streamed.

    Args:
      path: a generations.jsonl (a missing file has no records).
      repair: cut a torn last line off the file (the writer, before it appends).

    Raises:
      ValueError: `<path>:<line>: corrupt generations record (...)` for a bad line that is
        not the torn last one.
    """
    if not os.path.exists(path):
        return
    good_bytes = 0
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if raw.strip():
                try:
                    record = json.loads(raw)
                    index = int(record["index"])
                    if not isinstance(record["continuations"], list):
                        raise TypeError("continuations is not a list")
                except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                    if not raw.endswith(b"\n"):  # a torn final write: not finished
                        break
                    raise ValueError(
                        f"{path}:{lineno}: corrupt generations record ({e}); "
                        "delete the line or the file to re-sample it"
                    ) from None
                if not raw.endswith(b"\n"):  # complete JSON, no newline: torn too
                    break
                yield lineno, {**record, "index": index}
            good_bytes += len(raw)
    if repair and good_bytes != os.path.getsize(path):
        with open(path, "r+b") as f:
            f.truncate(good_bytes)


def finished_prompts(path: str, repair: bool = False) -> set[int]:
    """Indices of the prompts an earlier run finished (see `iter_generations`)."""
    return {record["index"] for _, record in iter_generations(path, repair)}


def _scores_of(record: dict, where: str) -> list[float | None]:
    try:
        return [c["toxicity"] for c in record["continuations"]]
    except (KeyError, TypeError) as e:
        raise ValueError(f"{where}: not a generations record (a continuation lacks {e})") from None


def prompt_scores(
    path: str, prompts: Sequence[Prompt] | Sequence[int] | None = None, score_key: str | None = None
) -> PromptScores:
    """The per-prompt score table of a generations file, streamed (one record in memory).

    Args:
      path: a generations.jsonl.
      prompts: the prompts of this eval (`Prompt`s, or their indices): records of other
        prompts are skipped (sampled by a run with a larger `--limit`), and every one of
        them must have a record. None: every record in the file.
      score_key: read each continuation's score from `scores[score_key]` instead of its
        `toxicity` field (a second scorer added by rescoring; a continuation without it
        is an error, a None in it a failed score).

    Raises:
      ValueError: a prompt has two records, or none (naming the file and line / count).
    """
    wanted = None if prompts is None else {getattr(p, "index", p) for p in prompts}
    seen: set[int] = set()
    rows = []
    for lineno, record in iter_generations(path):
        i = record["index"]
        if wanted is not None and i not in wanted:
            continue
        if i in seen:
            raise ValueError(
                f"{path}:{lineno}: a second record for prompt {i} (two runs wrote this "
                "file?); rerun with --overwrite to start over"
            )
        seen.add(i)
        where = f"{path}:{lineno}"
        if score_key is None:
            scores = _scores_of(record, where)
        else:
            added = [c.get("scores") or {} for c in record["continuations"]]
            if any(score_key not in s for s in added):
                raise ValueError(
                    f"{where}: prompt {i} has no {score_key} score (sampled after `toxjax "
                    f"eval rescore`?); run `toxjax eval rescore --scorer ...` again to add it"
                )
            scores = [s[score_key] for s in added]
        rows.append((i, scores, record.get("prompt_toxicity")))
    if wanted is not None and len(seen) != len(wanted):
        raise ValueError(f"{path}: {len(wanted) - len(seen)} prompts have no record after sampling")
    return PromptScores.from_rows(rows)


def record_line(prompt: Prompt, prefix: str, continuations: Sequence[str], results) -> str:
    """One finished prompt as its generations.jsonl line (`results`: `ScoreResult`s)."""
    record = {
        "index": prompt.index,
        "prompt": prompt.text,
        "prompt_toxicity": prompt.toxicity,
        "challenging": prompt.challenging,
        "prefix": prefix,
        "continuations": [
            {"text": text, "toxicity": r.toxicity, "error": r.error}
            for text, r in zip(continuations, results, strict=True)
        ],
    }
    return json.dumps(record) + "\n"


def read_meta(output_dir: str) -> dict:
    """The whole meta file: `identity`, and `rescored` (`{scorer name: its options}`)
    once `toxjax eval rescore` added a scorer.

    Raises:
      FileNotFoundError: there is no meta file.
      ResumeMismatch: it is unreadable.
    """
    meta_path = os.path.join(output_dir, META_FILE)
    try:
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
        if not isinstance(meta["identity"], dict):
            raise TypeError("identity is not an object")
        return meta
    except FileNotFoundError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ResumeMismatch(f"{meta_path} is unreadable ({e!r}); {RESTART}") from None


def read_identity(output_dir: str) -> dict | None:
    """The recorded identity, or None when there is no meta file."""
    try:
        return read_meta(output_dir)["identity"]
    except FileNotFoundError:
        return None


def rescored_scorers(output_dir: str) -> dict[str, dict]:
    """`{scorer name: its options}` of the scorers `toxjax eval rescore` added ({})."""
    try:
        return dict(read_meta(output_dir).get("rescored") or {})
    except (FileNotFoundError, ResumeMismatch):
        return {}


def check_identity(output_dir: str, identity: Mapping, has_records: bool) -> None:
    """Records `identity` next to the generations, or checks a resume against it.

    Raises:
      ResumeMismatch: the generations were made with another identity (or by a toxjax
        that recorded none); the one-line message names what changed.
    """
    gen_path = os.path.join(output_dir, GENERATIONS_FILE)
    if has_records:
        was = read_identity(output_dir)
        if was is None:
            raise ResumeMismatch(
                f"{gen_path} has generations but no {META_FILE} saying what made them "
                f"(an older toxjax); {RESTART}"
            )
        changes = fileio.changes(was, identity)
        if changes:
            raise ResumeMismatch(
                f"{gen_path} was sampled with other settings: {'; '.join(changes)}; {RESTART}"
            )
        return
    # Nothing to protect yet: (re)write it before the first record.
    fileio.write_json(os.path.join(output_dir, META_FILE), {"identity": identity})


def plain(value: Any) -> Any:
    """A JSON round trip: what the meta file will hold (tuples become lists)."""
    return json.loads(json.dumps(value, sort_keys=True))
