"""`toxjax_rtp`: the RealToxicityPrompts protocol as an lm-evaluation-harness task.

    toxjax lm-eval --model toxjax --model_args model_dir=RUN --tasks toxjax_rtp \
        --metadata '{"prompts": "rtp.jsonl", "scorer": "detoxify-original"}'

The protocol as the paper defines it, not lm-eval's `realtoxicityprompts` task (one
greedy continuation per prompt, Perspective only, a failed score counted as 0): per
prompt 25 samples of up to 20 new tokens, nucleus top-p 0.9 at temperature 1
(`harness_tasks/toxjax_rtp.yaml`: `repeats: 25` and its `generation_kwargs`), scored
offline by a toxjax scorer; a failed score is an error that names the prompt, never 0.
Metrics per split (full, toxic and non-toxic prompts): EMT and TP, defined once in
`toxjax.evaluation.metrics`. With `--model toxjax` the samples are those of `toxjax eval
toxicity` (the same seeds, prompt `i` sampling with `fold_in(key(seed), i)`).

`--metadata` (JSON): `prompts` (the RealToxicityPrompts jsonl, required; every bad line
named `file:line`), the scorer flags of `toxjax eval toxicity` without their dashes
(`scorer` default `detoxify-original`, `backend`, `checkpoint`, `config_dir`); Perspective
is refused (an online scorer).
"""

from __future__ import annotations

import argparse
import functools

from lm_eval.api.task import ConfigurableTask

from toxjax.evaluation import metrics
from toxjax.evaluation.prompts import SPLITS

OFFLINE_SCORERS = (
    "profanity-check",
    "detoxify-original",
    "detoxify-unbiased",
    "detoxify-multilingual",
)
STATISTICS = ("emt", "tp")


def load_dataset(prompts: str | None = None, **_):
    """lm-eval's `custom_dataset`: the prompts file as a one-split dataset."""
    import datasets

    from toxjax.evaluation.prompts import load_prompts

    if not prompts:
        raise ValueError(
            'toxjax_rtp: give the prompts file: --metadata \'{"prompts": "rtp.jsonl"}\''
        )
    rows = [
        {"index": p.index, "text": p.text, "toxicity": p.toxicity} for p in load_prompts(prompts)
    ]
    features = datasets.Features(
        {
            "index": datasets.Value("int64"),
            "text": datasets.Value("string"),
            "toxicity": datasets.Value("float64"),
        }
    )
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows, features=features)})


def scorer_args(metadata: dict) -> argparse.Namespace:
    """`toxjax eval toxicity`'s scorer flags from the task's metadata."""
    from toxjax.toxicity.options import add_scorer_flags

    parser = add_scorer_flags(argparse.ArgumentParser(add_help=False), "detoxify-original")
    argv = []
    for flag in ("scorer", "backend", "checkpoint", "config_dir"):
        if metadata.get(flag) is not None:
            argv += [f"--{flag}", str(metadata[flag])]
    args = parser.parse_args(argv)
    if args.scorer not in OFFLINE_SCORERS:
        raise ValueError(
            f"toxjax_rtp scores offline: scorer {args.scorer!r} is not one of {OFFLINE_SCORERS}"
        )
    return args


class RtpTask(ConfigurableTask):
    """The task (`toxjax_rtp.yaml` names it as its `class`)."""

    def __init__(self, config: dict | None = None):
        config = {k: v for k, v in (config or {}).items() if k != "class"}
        config["process_results"] = self.score  # per document: its samples scored
        super().__init__(config=config)
        from toxjax.toxicity.options import check_scorer_flags

        # Bad scorer settings stop the run here, before any prompt is sampled.
        self._scorer_args = scorer_args(self.config.metadata or {})
        check_scorer_flags(self._scorer_args, "toxjax_rtp")

    @functools.cached_property
    def scorer(self):
        from toxjax.toxicity.options import build_scorer

        return build_scorer(self._scorer_args, "toxjax_rtp")

    def score(self, doc: dict, results: list) -> dict:
        """Scores one prompt's samples; every metric gets the prompt's row
        `(index, scores, prompt toxicity)` for its aggregation."""
        (samples,) = results  # the `all` filter keeps every repeat
        scored = self.scorer.score(list(samples))
        failed = [r.error for r in scored if not r.ok]
        if failed:
            raise RuntimeError(
                f"toxjax_rtp: {len(failed)} of {len(samples)} samples of prompt {doc['index']} "
                f"could not be scored by {self.scorer.name} ({failed[0]}); a failed score is "
                "an error here, never 0"
            )
        row = (doc["index"], [r.toxicity for r in scored], doc["toxicity"])
        return {f"{stat}_{split}": row for stat in STATISTICS for split in SPLITS}


def _aggregate(stat: str, split: str):
    def aggregate(rows) -> float:
        scores = metrics.PromptScores.from_rows(rows).split(split)
        return metrics.value(metrics.STATISTICS[stat], scores)

    aggregate.__name__ = f"{stat}_{split}"
    return aggregate


emt_full, emt_toxic, emt_nontoxic = (_aggregate("emt", s) for s in SPLITS)
tp_full, tp_toxic, tp_nontoxic = (_aggregate("tp", s) for s in SPLITS)
