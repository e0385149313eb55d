"""`toxjax eval rescore`: another scorer's scores for a finished toxicity eval, no resampling.

    toxjax eval rescore --eval_dir runs/inst/eval/toxicity-inst --scorer hf:models/roberta-tox
    toxjax eval rescore --eval_dir OUT --scorer detoxify-unbiased --backend jax

A result should not hinge on one classifier. Rescoring reads the continuations an
`eval toxicity` kept in `generations.jsonl`, scores each with the new scorer, and adds
its score to every continuation as `scores[<scorer name>]`; `metrics.json` and
`metrics.md` then show EMT, TP and the toxic-sample rate under every scorer side by
side, each with its 95% bootstrap CI over the same prompts (`scorers`), and `toxjax
report` compares the runs under each scorer they all carry.

Resumable and safe to kill: the new scores first go to `rescore/<scorer>.jsonl` (one
line per prompt, appended as batches finish); a killed run resumes after its last whole
line. Once every prompt has its line, `generations.jsonl` is replaced in one atomic
rename with the scores merged in, and the scorer is recorded in `generations.meta.json`
(`rescored`), outside the identity a resumed `eval toxicity` checks. One writer: a
rescore holds the eval directory's lock, so it cannot run beside the eval, or beside
another rescore, of the same directory. A rescore file made for other generations or
with other scorer options is refused (one line; `--overwrite` starts it over).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import time
from collections.abc import Mapping, Sequence

from tqdm import tqdm

from toxjax import fileio
from toxjax.evaluation import generations, toxicity
from toxjax.evaluation.generations import GENERATIONS_FILE, META_FILE
from toxjax.evaluation.outputs import EvalOutput

PROG = "toxjax eval rescore"
RESCORE_DIR = toxicity.RESCORE_DIR
METRICS_FILE = toxicity.METRICS_FILE


class RescoreError(ValueError):
    """A rescore that cannot run as asked (one line naming the file and what to do)."""


def file_key(name: str) -> str:
    """A scorer name as a file name (`hf:clf@1a2b:toxic` -> `hf_clf_1a2b_toxic`)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "scorer"


def _read_partial(path: str) -> dict[int, dict]:
    """The prompts a rescore file already holds (`index -> line`), cutting a torn last
    line off (a kill mid-write)."""
    done: dict[int, dict] = {}
    if not os.path.exists(path):
        return done
    good = 0
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.endswith(b"\n"):
                break  # torn: not finished
            if raw.strip():
                try:
                    line = json.loads(raw)
                    if lineno == 1:
                        if "identity" not in line:
                            raise KeyError("identity")
                    else:
                        done[int(line["index"])] = line
                        if not isinstance(line["scores"], list):
                            raise TypeError("scores is not a list")
                except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                    raise RescoreError(
                        f"{path}:{lineno}: corrupt rescore line ({e}); rerun with --overwrite"
                    ) from None
            good += len(raw)
    if good != os.path.getsize(path):
        with open(path, "r+b") as f:
            f.truncate(good)
    return done


def _read_meta(output_dir: str) -> dict:
    try:
        return generations.read_meta(output_dir)
    except generations.ResumeMismatch as e:
        raise RescoreError(str(e)) from None
    except FileNotFoundError:
        raise RescoreError(
            f"{os.path.join(output_dir, META_FILE)} is missing: {output_dir} is not the "
            "output of `toxjax eval toxicity`"
        ) from None


def _partial_identity(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            first = f.readline()
        return json.loads(first)["identity"] if first.endswith("\n") else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def rescore(
    output_dir: str | EvalOutput,
    scorer,
    options: Mapping | None = None,
    batch_texts: int = 512,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Adds `scorer`'s scores to a finished toxicity eval; returns the new metrics.json.

    Args:
      output_dir: the eval's output directory (held for writing while this runs), or an
        `EvalOutput` the caller holds.
      scorer: a `toxjax.toxicity.Scorer`; its `name` is the key of its scores.
      options: the scorer options that change scores (`options.scorer_identity`):
        recorded, and a resume with others is refused.
      batch_texts: continuations per scoring call (whole prompts; at least one prompt).
      overwrite: start this scorer's rescore file over.
      progress: a progress bar (continuations/s).

    Raises:
      RescoreError: not a finished toxicity eval, the eval's own scorer, a rescore file
        of other generations or options (one line each).
      toxjax.locking.LockHeldError: another eval or rescore writes `output_dir`.
    """
    held = isinstance(output_dir, EvalOutput)
    if not held and not os.path.isdir(output_dir):
        raise RescoreError(f"--eval_dir {output_dir!r} is not a directory")
    with contextlib.nullcontext(output_dir) if held else EvalOutput(output_dir) as out:
        return _rescore(out, scorer, dict(options or {}), batch_texts, overwrite, progress)


def _rescore(out: EvalOutput, scorer, options: dict, batch_texts, overwrite, progress) -> dict:
    gen_path = out.path(GENERATIONS_FILE)
    metrics_path = out.path(METRICS_FILE)
    meta = _read_meta(out.dir)
    if not os.path.exists(metrics_path):
        raise RescoreError(
            f"{out.dir} has no {METRICS_FILE}: the eval has not finished; run `toxjax eval "
            "toxicity` with the same flags to the end first"
        )
    with open(metrics_path, encoding="utf-8") as f:
        result = json.load(f)
    primary = result.get("scorer") or meta["identity"].get("scorer")
    name = scorer.name
    if name == primary:
        raise RescoreError(
            f"{out.dir} was scored by {name} already (its own scorer); give another --scorer"
        )
    num_prompts = int(result["num_prompts"])
    eval_prompts = range(num_prompts)  # load_prompts(limit=N) takes indices 0..N-1

    os.makedirs(out.path(RESCORE_DIR), exist_ok=True)
    part_path = out.path(os.path.join(RESCORE_DIR, file_key(name) + ".jsonl"))
    identity = generations.plain(
        {"scorer": name, "options": options, "generations": meta["identity"]}
    )
    if overwrite and os.path.exists(part_path):
        os.remove(part_path)
    if os.path.exists(part_path):
        was = _partial_identity(part_path)
        changes = fileio.changes(was, identity) if was is not None else ["(no identity line)"]
        if changes:
            raise RescoreError(
                f"{part_path} was made for other generations or scorer options: "
                f"{'; '.join(changes)}; rerun with --overwrite to start it over"
            )
    recorded = (meta.get("rescored") or {}).get(name)
    if (
        recorded is not None
        and not overwrite
        and generations.plain(recorded) != identity["options"]
    ):
        raise RescoreError(
            f"{gen_path} has scores of {name} made with other options "
            f"({'; '.join(fileio.changes(recorded, identity['options']))}); rerun with "
            "--overwrite to replace them"
        )

    done = _read_partial(part_path)
    if not os.path.exists(part_path):
        fileio.write_text(part_path, json.dumps({"identity": identity}) + "\n")
    records = [(lineno, r) for lineno, r in generations.iter_generations(gen_path)]
    todo = [(lineno, r) for lineno, r in records if r["index"] not in done]
    total = sum(len(r["continuations"]) for _, r in records)
    start, scored = time.time(), 0
    with (
        open(part_path, "ab") as f,
        tqdm(
            total=total,
            initial=total - sum(len(r["continuations"]) for _, r in todo),
            unit="text",
            desc=f"rescore {name}",
            disable=not progress,
            smoothing=0.1,
        ) as bar,
    ):
        for group in _batches(todo, batch_texts):
            texts = [c["text"] for _, r in group for c in r["continuations"]]
            results = scorer.score(texts)
            if len(results) != len(texts):
                raise RuntimeError(f"{name} returned {len(results)} scores for {len(texts)} texts")
            lines, k = [], 0
            for _, r in group:
                n = len(r["continuations"])
                part = results[k : k + n]
                k += n
                line = {
                    "index": r["index"],
                    "scores": [x.toxicity for x in part],
                    "errors": [x.error for x in part],
                }
                done[r["index"]] = line
                lines.append(json.dumps(line) + "\n")
            f.write("".join(lines).encode())
            f.flush()
            os.fsync(f.fileno())
            scored += len(texts)
            bar.update(len(texts))
    if progress and scored:
        elapsed = time.time() - start
        print(f"rescore: {scored} continuations in {elapsed:.1f} s ({scored / elapsed:.1f}/s)")

    _merge(gen_path, records, done, name)
    meta = {**meta, "rescored": {**(meta.get("rescored") or {}), name: identity["options"]}}
    out.write_json(META_FILE, meta)
    return update_metrics(out, result, eval_prompts)


def _batches(todo: Sequence, batch_texts: int):
    group, n = [], 0
    for item in todo:
        group.append(item)
        n += len(item[1]["continuations"])
        if n >= batch_texts:
            yield group
            group, n = [], 0
    if group:
        yield group


def _merge(gen_path: str, records, done: Mapping[int, dict], name: str) -> None:
    """Replaces generations.jsonl (one atomic rename) with `scores[name]` in every
    continuation: its score, or None where the scorer failed on it (with the error)."""

    def lines():
        for lineno, r in records:
            line = done.get(r["index"])
            if line is None or len(line["scores"]) != len(r["continuations"]):
                raise RescoreError(
                    f"{gen_path}:{lineno}: prompt {r['index']} has no matching rescore line; "
                    "rerun with --overwrite"
                )
            for c, score, error in zip(
                r["continuations"], line["scores"], line["errors"], strict=True
            ):
                c["scores"] = {**(c.get("scores") or {}), name: score}
                if error is not None:
                    c["errors"] = {**(c.get("errors") or {}), name: error}
            yield json.dumps(r) + "\n"

    fileio.write_lines(gen_path, lines())


def update_metrics(out: EvalOutput, result: dict, prompts) -> dict:
    """metrics.json and metrics.md with the `scorers` section (every scorer of this eval
    side by side); the eval's own numbers unchanged."""
    rescored = generations.rescored_scorers(out.dir)
    result = dict(result)
    if rescored:
        result["scorers"] = toxicity.scorer_sections(
            out.path(GENERATIONS_FILE), prompts, result["scorer"], rescored
        )
    toxicity.write_outputs(result, out, summaries=False)
    return result


def main(args) -> int:
    """`toxjax eval rescore` (parsed by `toxjax.eval`): 0 done, 2 refused."""
    from toxjax.toxicity.options import build_scorer, scorer_identity

    if not os.path.isdir(args.eval_dir):
        raise RescoreError(f"--eval_dir {args.eval_dir!r} is not a directory")
    _read_meta(args.eval_dir)  # before the scorer loads: one line if it is no eval
    if not os.path.exists(os.path.join(args.eval_dir, METRICS_FILE)):
        raise RescoreError(
            f"{args.eval_dir} has no {METRICS_FILE}: the eval has not finished; run `toxjax "
            "eval toxicity` with the same flags to the end first"
        )
    with open(os.path.join(args.eval_dir, METRICS_FILE), encoding="utf-8") as f:
        primary = json.load(f).get("scorer")
    if args.scorer == primary:  # a named scorer: refused before it loads
        raise RescoreError(
            f"{args.eval_dir} was scored by {primary} already (its own scorer); give another "
            "--scorer"
        )
    options = scorer_identity(args)
    scorer = build_scorer(args, PROG, progress=False)
    result = rescore(
        args.eval_dir, scorer, options, args.batch_texts, args.overwrite, progress=True
    )
    print(toxicity.scorers_table(result["scorers"]), end="")
    print(f"{PROG}: {scorer.name} added to {args.eval_dir} (metrics.json, metrics.md)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit("run it as `toxjax eval rescore`")
