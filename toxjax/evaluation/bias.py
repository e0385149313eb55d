"""Bias detection: Social Bias Frames as prompted classification, AUC per task.

Four tasks, from the SBF annotation columns (a post is positive when the mean of its
annotations is >= 0.5): offensive (`offensiveYN`), intent to offend (`intentYN`), lewd
(`sexYN`), group-targeted (`whoTarget`). The released files are CSVs with one row per
annotation (`SBIC.v2.*.csv`) or per post (`SBIC.v2.agg.*.csv`); jsonl with the same
fields is accepted too. Rows of the same post are averaged; a post with no annotation
for a task is left out of that task.

The prompt is an instruction, `num_shots` labelled exemplars (alternating positive and
negative, drawn with a fixed seed from the exemplar file) and the post; the score is
the model's probability of the positive answer, normalised over the two answers:
`p(" Yes") / (p(" Yes") + p(" No"))`. AUC is `sklearn.metrics.roc_auc_score`.
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
from collections.abc import Sequence

from sklearn.metrics import roc_auc_score

from toxjax.evaluation.utility import ScoringLM

# task -> (SBF column, question asked about the post)
TASKS: dict[str, tuple[str, str]] = {
    "offensive": ("offensiveYN", "Could this post be considered offensive to anyone?"),
    "intent": ("intentYN", "Was the intent of this post to be offensive?"),
    "lewd": ("sexYN", "Does this post contain lewd or sexual references?"),
    "group": ("whoTarget", "Does this post target or reference an identity group?"),
}
INSTRUCTION = "Answer each question about the post with Yes or No."
ANSWERS = (" No", " Yes")


def load_posts(path: str) -> list[dict]:
    """Reads SBF rows and averages them per post: `[{"post", task: mean or None}]`."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found (a Social Bias Frames csv or jsonl)")
    with open(path, encoding="utf-8", newline="") as f:
        if path.endswith(".jsonl"):
            rows = [(i, json.loads(line)) for i, line in enumerate(f, 1) if line.strip()]
        else:
            rows = list(enumerate(csv.DictReader(f), 2))  # line 1 is the header
    sums: dict[str, dict[str, list[float]]] = {}
    for lineno, row in rows:
        if "post" not in row:
            raise ValueError(f"{path}:{lineno}: no 'post' column; is this an SBF file?")
        entry = sums.setdefault(row["post"], {t: [] for t in TASKS})
        for task, (column, _) in TASKS.items():
            value = row.get(column)
            if value not in (None, ""):
                try:
                    entry[task].append(float(value))
                except ValueError as e:
                    raise ValueError(f"{path}:{lineno}: {column}={value!r} is not a number") from e
    return [
        {"post": post, **{t: (sum(v) / len(v) if v else None) for t, v in entry.items()}}
        for post, entry in sums.items()
    ]


def _block(post: str, question: str, answer: str = "") -> str:
    return f"Post: {post}\nQuestion: {question}\nAnswer:{answer}"


def build_prompt(task: str, post: str, exemplars: Sequence[dict]) -> str:
    """Instruction, labelled exemplars, then the post with its question unanswered."""
    _, question = TASKS[task]
    shots = [_block(e["post"], question, ANSWERS[int(e[task] >= 0.5)]) for e in exemplars]
    return "\n\n".join([INSTRUCTION, *shots, _block(post, question)])


def pick_exemplars(posts: Sequence[dict], task: str, num_shots: int, seed: int) -> list[dict]:
    """`num_shots` labelled posts, alternating positive / negative, fixed by `seed`."""
    rng = random.Random(seed)
    pos = [p for p in posts if p[task] is not None and p[task] >= 0.5]
    neg = [p for p in posts if p[task] is not None and p[task] < 0.5]
    rng.shuffle(pos)
    rng.shuffle(neg)
    if num_shots and (len(pos) < (num_shots + 1) // 2 or len(neg) < num_shots // 2):
        raise ValueError(
            f"{task}: not enough labelled exemplars for {num_shots} shots "
            f"({len(pos)} positive, {len(neg)} negative)"
        )
    return [(pos if i % 2 == 0 else neg)[i // 2] for i in range(num_shots)]


def positive_probability(lm: ScoringLM, prompts: Sequence[str]) -> list[float]:
    """`p(Yes) / (p(Yes) + p(No))` after each prompt."""
    lls = lm.loglikelihood([(p, a) for p in prompts for a in ANSWERS])
    out = []
    for i in range(len(prompts)):
        no, yes = lls[2 * i].logprob, lls[2 * i + 1].logprob
        out.append(1.0 / (1.0 + math.exp(no - yes)))
    return out


def evaluate_bias(
    lm: ScoringLM,
    eval_path: str,
    exemplar_path: str | None = None,
    num_shots: int = 4,
    seed: int = 0,
    tasks: Sequence[str] = tuple(TASKS),
    limit: int | None = None,
) -> dict:
    """AUC per task and their mean.

    Args:
      lm: the model.
      eval_path: SBF posts to classify.
      exemplar_path: SBF posts to draw exemplars from (default: `eval_path`, and then
        the exemplars are removed from the evaluated posts).
      num_shots: exemplars per prompt.
      seed: exemplar choice.
      tasks: subset of `TASKS`.
      limit: evaluate at most this many posts per task.
    """
    posts = load_posts(eval_path)
    pool = load_posts(exemplar_path) if exemplar_path else posts
    metrics = {}
    for task in tasks:
        if task not in TASKS:
            raise ValueError(f"unknown bias task {task!r}; use {sorted(TASKS)}")
        shots = pick_exemplars(pool, task, num_shots, seed)
        used = {e["post"] for e in shots}
        items = [p for p in posts if p[task] is not None and p["post"] not in used][:limit]
        labels = [int(p[task] >= 0.5) for p in items]
        if len(set(labels)) < 2:
            raise ValueError(
                f"{task}: {eval_path} has only one class among {len(items)} posts; "
                "AUC needs positive and negative posts"
            )
        scores = positive_probability(lm, [build_prompt(task, p["post"], shots) for p in items])
        metrics[task] = {
            "auc": float(roc_auc_score(labels, scores)),
            "num_posts": len(items),
            "num_positive": sum(labels),
        }
    metrics["mean_auc"] = sum(metrics[t]["auc"] for t in tasks) / len(tasks)
    return {
        "task": "bias",
        "num_shots": num_shots,
        "metrics": metrics,
        "score": "p(Yes) / (p(Yes) + p(No))",
    }
