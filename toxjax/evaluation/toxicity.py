"""The RealToxicityPrompts protocol: sample, score the continuations, EMT and TP.

For each prompt, `num_decodes` (25) continuations of up to 20 new tokens are sampled
(top-p 0.9, temperature 1, no top-k) after the conditioning string + prompt, and only
the continuation is scored. The metrics (EMT with its std, TP and the toxic-sample rate
on the full, toxic and non-toxic splits, with 95% bootstrap CIs over prompts) are defined
in `toxjax.evaluation.metrics`; the prompts and the split rule in
`toxjax.evaluation.prompts`; the resumable generations file in
`toxjax.evaluation.generations`.

Outputs in `output_dir` (held by one writer at a time, `toxjax.evaluation.outputs`):
`generations.jsonl` (one line per prompt, appended as batches finish, so a killed run
resumes where it stopped), `generations.meta.json` (what made the generations: a resume
with anything else is refused), `metrics.json`, `metrics.md` and TensorBoard summaries
under `tensorboard/`.

The run is a two-stage pipeline: while one batch of continuations is scored (host
tokenization, classifier), the next batch is sampled. Metrics are computed by streaming
the generations file, so the 99,442 prompts of RealToxicityPrompts never sit in memory
with their 2.5M continuations.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

from tqdm import tqdm

from toxjax.evaluation import generations, metrics, stats
from toxjax.evaluation.generations import GENERATIONS_FILE, META_FILE
from toxjax.evaluation.outputs import EvalOutput
from toxjax.evaluation.prompts import SPLITS, Prompt
from toxjax.toxicity.base import Scorer

METRICS_FILE = "metrics.json"
TABLE_FILE = "metrics.md"
RESCORE_DIR = "rescore"  # `toxjax eval rescore`'s partial files


class Generator(Protocol):
    """Samples continuations: `generate(texts, seeds, prefix_ids)` -> per text, its
    continuations.

    `seeds[i]` (the prompt's index) must fix the samples of `texts[i]`, so a resumed run
    draws what an uninterrupted one would have. `prefix_ids` go before each text's own
    ids, unmerged, exactly as the training pipeline puts a prefix before a sample.
    """

    def generate(
        self, texts: Sequence[str], seeds: Sequence[int], prefix_ids: Sequence[int] = ()
    ) -> list[list[str]]: ...


def evaluate_toxicity(
    generator: Generator,
    scorer: Scorer,
    prompts: Sequence[Prompt],
    output_dir: str | EvalOutput,
    prefix: str = "",
    prefix_ids: Sequence[int] = (),
    batch_size: int = 8,
    config: dict | None = None,
    progress: bool = True,
    identity: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    summaries: bool = True,
) -> dict:
    """Runs the RealToxicityPrompts protocol, resumably.

    Args:
      generator: samples continuations (`prefix_ids + encode(prompt.text)` is what it
        sees).
      scorer: scores each continuation alone.
      prompts: from `toxjax.evaluation.prompts.load_prompts`.
      output_dir: where generations, metrics, the table and summaries go: a directory
        (held for writing while this runs), or an `EvalOutput` the caller holds.
      prefix: the conditioning string, as recorded in the outputs.
      prefix_ids: its ids as the training data has them:
        `conditioning_prefix_ids(strategy, vocabulary)`. Encoding `prefix + prompt` as
        one string is not the same: SentencePiece drops the word-start marker of the
        prompt's first word after the prefix's newline, a sequence training never had.
      batch_size: prompts per sampling call (and per appended block of the file).
      config: extra run facts written into metrics.json (model dir, scorer, condition).
      progress: show a progress bar (prompts/s and the time left).
      identity: what makes the samples, as the caller knows it (model step and
        checkpoint, prompts file identity, sampling settings, seed; JSON-able). Stored
        with `prefix`, `prefix_ids` and the scorer's name in `generations.meta.json`
        before the first record; a resume with any of it changed is refused.
      overwrite: delete earlier outputs in `output_dir` and start over.
      summaries: also write TensorBoard scalars (imports TensorFlow).

    Returns:
      The metrics dict written to `metrics.json`.

    Raises:
      generations.ResumeMismatch: `output_dir` holds generations made with another
        identity.
      toxjax.locking.LockHeldError: another eval writes `output_dir`.
    """
    if prefix and not prefix_ids:
        raise ValueError(
            f"prefix {prefix!r} has no prefix_ids: pass "
            "conditioning_prefix_ids(...) so the model sees the training ids"
        )
    # One writer per output directory: two evals appending to one generations file would
    # interleave their records.
    held = isinstance(output_dir, EvalOutput)
    with contextlib.nullcontext(output_dir) if held else EvalOutput(output_dir) as out:
        gen_path = out.path(GENERATIONS_FILE)
        if overwrite:
            out.remove(GENERATIONS_FILE, META_FILE, METRICS_FILE, TABLE_FILE)
            rescored = out.path(RESCORE_DIR)  # other scorers' scores of the old samples
            if os.path.isdir(rescored):
                out.remove(*(os.path.join(RESCORE_DIR, n) for n in os.listdir(rescored)))
        rescored_names = generations.rescored_scorers(out.dir)
        full_identity = generations.plain(
            {
                **(identity or {}),
                "prefix": prefix,
                "prefix_ids": [int(t) for t in prefix_ids],
                "scorer": scorer.name,
            }
        )
        done = generations.finished_prompts(gen_path, repair=True)
        generations.check_identity(out.dir, full_identity, has_records=bool(done))
        todo = [p for p in prompts if p.index not in done]
        start = time.time()
        with tqdm(
            total=len(prompts),
            initial=len(prompts) - len(todo),
            unit="prompt",
            desc="rtp",
            disable=not progress,
            smoothing=0.1,
        ) as bar:
            _sample_and_score(
                generator, scorer, todo, gen_path, prefix, prefix_ids, batch_size, bar
            )
        elapsed = time.time() - start
        if progress and todo:
            print(
                f"rtp: {len(todo)} prompts in {elapsed:.1f} s ({len(todo) / elapsed:.2f} prompts/s)"
            )

        scores = generations.prompt_scores(gen_path, prompts)
        result = {
            "task": "toxicity",
            "scorer": scorer.name,
            "prefix": prefix,
            "metrics": metrics.toxicity_metrics_of(scores),
            "intervals": intervals(scores),
            "num_prompts": len(prompts),
            "sampled_prompts_this_run": len(todo),
            "seconds_this_run": elapsed,
            **(config or {}),
        }
        if rescored_names:  # a rerun keeps the scorers `toxjax eval rescore` added
            try:
                result["scorers"] = scorer_sections(gen_path, prompts, scorer.name, rescored_names)
            except ValueError as e:  # prompts sampled since: rescore them first
                print(f"rtp: the other scorers' table is left out: {e}", file=sys.stderr)
        write_outputs(result, out, summaries=summaries)
        return result


def _sample_and_score(generator, scorer, todo, gen_path, prefix, prefix_ids, batch_size, bar):
    """Samples batch i + 1 while a worker thread scores and appends batch i.

    One batch is scored at a time and in order, so the file is what a sequential run
    writes; each batch goes out in one write, flushed before the next is scored.
    """

    def score_and_append(batch: Sequence[Prompt], continuations: list[list[str]]) -> None:
        flat = [c for conts in continuations for c in conts]
        results = scorer.score(flat)
        if len(results) != len(flat):
            raise RuntimeError(
                f"scorer {scorer.name} returned {len(results)} results for {len(flat)} texts"
            )
        lines, k = [], 0
        for p, conts in zip(batch, continuations, strict=True):
            lines.append(generations.record_line(p, prefix, conts, results[k : k + len(conts)]))
            k += len(conts)
        out.write("".join(lines))
        out.flush()  # a finished batch survives a kill
        bar.update(len(batch))

    with (
        open(gen_path, "a", encoding="utf-8") as out,
        ThreadPoolExecutor(1, thread_name_prefix="rtp-score") as pool,
    ):
        scoring: Future | None = None
        for lo in range(0, len(todo), batch_size):
            batch = todo[lo : lo + batch_size]
            continuations = generator.generate(
                [p.text for p in batch], [p.index for p in batch], prefix_ids=tuple(prefix_ids)
            )
            if len(continuations) != len(batch):
                raise RuntimeError(f"{len(continuations)} continuation lists for {len(batch)}")
            if scoring is not None:
                scoring.result()  # in order; re-raises the worker's error here
            scoring = pool.submit(score_and_append, batch, continuations)
        if scoring is not None:
            scoring.result()


def intervals(scores: metrics.PromptScores) -> dict:
    """95% bootstrap CIs over prompts (`toxjax.evaluation.stats`) per split: EMT, TP and
    the share of toxic continuations, each `{"value", "low", "high"}`."""
    return {
        split: {
            name: stats.estimate(stat, scores.split(split)).to_dict()
            for name, stat in metrics.STATISTICS.items()
        }
        for split in SPLITS
    }


def scorer_sections(gen_path: str, prompts, primary: str, rescored) -> dict[str, dict]:
    """Per scorer, the eval's own first, then those `toxjax eval rescore` added: EMT / TP
    per split and their 95% CIs, on the same prompts (`prompts`: `Prompt`s or prompt
    indices; None: every record)."""
    out = {}
    for name in [primary, *[n for n in rescored if n != primary]]:
        scores = generations.prompt_scores(
            gen_path, prompts, score_key=None if name == primary else name
        )
        out[name] = {"metrics": metrics.toxicity_metrics_of(scores), "intervals": intervals(scores)}
    return out


def scorers_table(sections: Mapping[str, dict]) -> str:
    """Markdown: one row per scorer and split, EMT / TP / toxic rate with 95% CIs."""
    lines = [
        "| scorer | split | EMT [95% CI] | TP [95% CI] | toxic continuations [95% CI] |",
        "|---|---|---:|---:|---:|",
    ]
    for name, section in sections.items():
        for split in SPLITS:
            e = {k: stats.Estimate(**v) for k, v in section["intervals"][split].items()}
            lines.append(
                f"| {name} | {split} | {e['emt'].fmt()} | {e['tp'].fmt()} | "
                f"{e['toxic_rate'].fmt(pct=True)} |"
            )
    return "\n".join(lines) + "\n"


def metrics_from_generations(gen_path: str, prompts: Sequence[Prompt]) -> dict:
    """EMT / TP per split of `prompts`, streamed from a generations file."""
    return metrics.toxicity_metrics_of(generations.prompt_scores(gen_path, prompts))


def intervals_table(intervals: dict[str, dict[str, dict]]) -> str:
    """A markdown table of `intervals_from_generations`."""
    lines = [
        "| split | EMT [95% CI] | TP [95% CI] | toxic continuations [95% CI] |",
        "|---|---:|---:|---:|",
    ]
    for split in SPLITS:
        e = {k: stats.Estimate(**v) for k, v in intervals[split].items()}
        lines.append(
            f"| {split} | {e['emt'].fmt()} | {e['tp'].fmt()} | {e['toxic_rate'].fmt(pct=True)} |"
        )
    return "\n".join(lines) + "\n"


def metrics_table(metrics: dict[str, dict[str, float]]) -> str:
    """A markdown table: one row per split."""
    lines = [
        "| split | prompts | EMT | EMT std | TP | failed scores | all-failed prompts |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for split in SPLITS:
        m = metrics[split]
        lines.append(
            f"| {split} | {m['num_prompts']} | {m['emt']:.3f} | {m['emt_std']:.3f} | "
            f"{m['tp']:.3f} | {m['num_failed_scores']} | {m['num_prompts_all_failed']} |"
        )
    return "\n".join(lines) + "\n"


def write_outputs(result: dict, out: EvalOutput, summaries: bool = True) -> None:
    """metrics.json, metrics.md (each replaced atomically) and, with `summaries`,
    TensorBoard scalars `toxicity/<split>/<metric>`."""
    out.write_json(METRICS_FILE, result)
    out.write_text(
        TABLE_FILE,
        f"scorer: {result['scorer']}; prefix: {result['prefix']!r}\n\n"
        + metrics_table(result["metrics"])
        + (
            "\n95% CIs, percentile bootstrap over prompts:\n\n"
            + intervals_table(result["intervals"])
            if "intervals" in result
            else ""
        )
        + (
            "\nEvery scorer of these continuations (`toxjax eval rescore`), 95% CIs over the "
            "same prompts:\n\n" + scorers_table(result["scorers"])
            if result.get("scorers")
            else ""
        ),
    )
    if not summaries:
        return
    write_scalars(
        out.path("tensorboard"),
        {
            f"toxicity/{split}/{name}": value
            for split, m in result["metrics"].items()
            for name, value in m.items()
        },
        step=int(result.get("step") or 0),  # a transformers checkpoint has no step
    )


def write_scalars(logdir: str, scalars: dict[str, float], step: int = 0) -> None:
    """Writes scalars as TensorBoard summaries (NaNs are skipped: nothing to plot)."""
    import tensorflow as tf  # slow import; only when writing summaries

    writer = tf.summary.create_file_writer(logdir)
    with writer.as_default():
        for name, value in scalars.items():
            if value is not None and not (isinstance(value, float) and math.isnan(value)):
                tf.summary.scalar(name, float(value), step=step)
    writer.close()
