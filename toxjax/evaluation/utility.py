"""Zero-shot utility: LAMBADA, PIQA, HellaSwag, WinoGrande, BoolQ, held-out perplexity.

Each task reads its standard released jsonl from a local path:

- LAMBADA (`lambada_test.jsonl`): `{"text"}`; the last word is the target, and an item
  is correct when every target token is the model's argmax (last-word accuracy).
- PIQA (`valid.jsonl` + `valid-labels.lst`): `{"goal", "sol1", "sol2"}`; the label comes
  from a `"label"` field or the sibling `<name>-labels.lst` file, one 0/1 per line.
- HellaSwag (`hellaswag_val.jsonl`): `{"activity_label", "ctx_a", "ctx_b", "endings",
  "label"}`.
- WinoGrande (`dev.jsonl`): `{"sentence" with "_", "option1", "option2", "answer"}`;
  scored by partial evaluation (the text after the blank given each filled-in prefix).
- BoolQ (`dev.jsonl`): `{"passage", "question", "answer": bool}`; choices " no" / " yes".

Multiple-choice conventions, both reported:
- `acc`: argmax of the summed log-likelihood of each choice (unnormalised);
- `acc_norm`: argmax of the log-likelihood divided by the choice's length in characters,
  without the space that joins it to the context (lm-evaluation-harness's `acc_norm`).

The prompts, choices and both conventions are lm-evaluation-harness's (its `lambada_openai`,
`piqa`, `hellaswag`, `winogrande` and `boolq` tasks), and `ModelLM.loglikelihood`
tokenizes as it does, so on the same files and model both give the same numbers
(tests/test_lm_eval.py checks it).

Perplexity is over plain text (one document per line of a .txt or `{"text"}` jsonl),
never over MEDA/INST-augmented text, so that augmented models are compared fairly.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from collections.abc import Callable, Sequence
from typing import Protocol

from tqdm import tqdm

from toxjax.evaluation.lm import LogLikelihood

TASKS = ("lambada", "piqa", "hellaswag", "winogrande", "boolq")
CONVENTIONS = {
    "acc": "argmax of sum log p(choice | context) (unnormalised)",
    "acc_norm": "argmax of sum log p(choice | context) / len(choice in characters, no "
    "leading space)",
    "lambada_acc": "all last-word tokens are the greedy argmax",
}


class ScoringLM(Protocol):
    """What the utility and bias evals need from a model (see `ModelLM`)."""

    bos_id: int | None  # the id before a document's first token, as in training
    prefix_ids: tuple[int, ...]  # the conditioning prefix after BOS (`ModelLM`)

    def encode(self, text: str) -> list[int]: ...

    def loglikelihood(self, pairs: Sequence[tuple[str, str]]) -> list[LogLikelihood]: ...

    def token_logprobs(self, sequences: Sequence[Sequence[int]]) -> list: ...


@dataclasses.dataclass(frozen=True)
class Item:
    """One multiple-choice item: contexts (one, or one per choice), choices, answer."""

    contexts: tuple[str, ...]
    choices: tuple[str, ...]
    label: int


def _read_jsonl(path: str) -> list[tuple[int, dict]]:
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found (the task's released jsonl)")
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append((lineno, json.loads(line)))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from e
    return rows


def _field(path: str, lineno: int, row: dict, name: str):
    if name not in row:
        raise ValueError(f"{path}:{lineno}: missing field {name!r}; is this the right task file?")
    return row[name]


def _hellaswag_clean(text: str) -> str:
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def load_items(task: str, path: str) -> list[Item]:
    """Reads a multiple-choice task (not LAMBADA) into `Item`s."""
    rows = _read_jsonl(path)
    items = []
    if task == "piqa":
        labels = None
        if rows and "label" not in rows[0][1]:
            lpath = os.path.splitext(path)[0] + "-labels.lst"
            if not os.path.exists(lpath):
                raise FileNotFoundError(f"{path} has no 'label' field and {lpath} is missing")
            labels = [int(x) for x in open(lpath).read().split()]
            if len(labels) != len(rows):
                raise ValueError(f"{lpath}: {len(labels)} labels for {len(rows)} items in {path}")
        for i, (ln, r) in enumerate(rows):
            goal = _field(path, ln, r, "goal")
            items.append(
                Item(
                    (f"Question: {goal}\nAnswer:",),
                    (" " + _field(path, ln, r, "sol1"), " " + _field(path, ln, r, "sol2")),
                    int(r["label"]) if labels is None else labels[i],
                )
            )
    elif task == "hellaswag":
        for ln, r in rows:
            ctx = _field(path, ln, r, "ctx_a") + " " + _field(path, ln, r, "ctx_b").capitalize()
            query = _hellaswag_clean(r.get("activity_label", "") + ": " + ctx)
            items.append(
                Item(
                    (query,),
                    tuple(" " + _hellaswag_clean(e) for e in _field(path, ln, r, "endings")),
                    int(_field(path, ln, r, "label")),
                )
            )
    elif task == "winogrande":
        for ln, r in rows:
            sentence = _field(path, ln, r, "sentence")
            if "_" not in sentence:
                raise ValueError(f"{path}:{ln}: sentence has no '_' blank")
            cut = sentence.index("_")
            rest = " " + sentence[cut + 1 :].strip()
            opts = (_field(path, ln, r, "option1"), _field(path, ln, r, "option2"))
            items.append(
                Item(
                    tuple(sentence[:cut] + o for o in opts),
                    (rest, rest),
                    int(_field(path, ln, r, "answer")) - 1,
                )
            )
    elif task == "boolq":
        for ln, r in rows:
            ctx = (
                f"{_field(path, ln, r, 'passage')}\nQuestion: "
                f"{_field(path, ln, r, 'question')}?\nAnswer:"
            )
            items.append(Item((ctx,), (" no", " yes"), int(bool(_field(path, ln, r, "answer")))))
    else:
        raise ValueError(f"unknown multiple-choice task {task!r}; use one of {TASKS[1:]}")
    return items


def _norm_length(choice: str) -> int:
    """lm-evaluation-harness's `acc_norm` length: characters of the choice without the
    one space (its `target_delimiter`) that joins it to the context."""
    return max(1, len(choice[1:] if choice.startswith(" ") else choice))


def multiple_choice(lm: ScoringLM, items: Sequence[Item]) -> dict[str, float]:
    """`acc` and `acc_norm` (see the module docstring) over `items`."""
    pairs, owners = [], []
    for i, item in enumerate(items):
        for c, choice in enumerate(item.choices):
            ctx = item.contexts[c] if len(item.contexts) > 1 else item.contexts[0]
            pairs.append((ctx, choice))
            owners.append(i)
    lls = lm.loglikelihood(pairs)
    per_item: dict[int, list[tuple[float, float]]] = {}
    for (_, choice), i, ll in zip(pairs, owners, lls, strict=True):
        per_item.setdefault(i, []).append((ll.logprob, ll.logprob / _norm_length(choice)))
    acc = norm = 0
    for i, item in enumerate(items):
        scores = per_item[i]
        acc += max(range(len(scores)), key=lambda c: scores[c][0]) == item.label
        norm += max(range(len(scores)), key=lambda c: scores[c][1]) == item.label
    return {"acc": acc / len(items), "acc_norm": norm / len(items), "num_items": len(items)}


def lambada(lm: ScoringLM, path: str) -> dict[str, float]:
    """Last-word accuracy and target perplexity on LAMBADA."""
    pairs = []
    for ln, r in _read_jsonl(path):
        text = _field(path, ln, r, "text").strip()
        if " " not in text:
            raise ValueError(f"{path}:{ln}: text has no last word to predict")
        ctx, word = text.rsplit(" ", 1)
        pairs.append((ctx, " " + word))
    lls = lm.loglikelihood(pairs)
    total_lp = sum(ll.logprob for ll in lls)
    return {
        "acc": sum(ll.is_greedy for ll in lls) / len(lls),
        "ppl": math.exp(-total_lp / len(lls)),
        "num_items": len(lls),
    }


def _text_windows(
    lm: ScoringLM, docs: Sequence[str], max_len: int, prefix_ids: Sequence[int]
) -> tuple[list[int], list[list[int]], int]:
    """The windows `perplexity` reads (see there): `(owner document per window, the
    windows [bos] + prefix + piece, prefix tokens to skip in each window's log-probs)`."""
    if lm.bos_id is None:
        raise ValueError(
            "perplexity reads each window after the start token, and this model has none "
            "(bos_id=None)"
        )
    head = [lm.bos_id, *(int(t) for t in prefix_ids)]
    room = max_len + 1 - len(head)
    if room < 1:
        raise ValueError(
            f"a {len(head) - 1}-token prefix leaves no room for text in {max_len}-token windows"
        )
    owners, seqs = [], []
    for d, doc in enumerate(docs):
        ids = lm.encode(doc)
        for i in range(0, len(ids), room):
            owners.append(d)
            seqs.append(head + ids[i : i + room])
    return owners, seqs, len(head) - 1  # the prefix's own tokens are not text


def document_logprobs(
    lm: ScoringLM, docs: Sequence[str], max_len: int, prefix_ids: Sequence[int] = ()
) -> list[tuple[float, int]]:
    """Per document, `(sum of its text tokens' log-probabilities, number of text tokens)`,
    read in the windows of `perplexity` (each window after BOS and `prefix_ids`)."""
    owners, seqs, skip = _text_windows(lm, docs, max_len, prefix_ids)
    out = [(0.0, 0)] * len(docs)
    for d, (lp, _) in zip(owners, lm.token_logprobs(seqs), strict=True):
        total, count = out[d]
        out[d] = (total + float(lp[skip:].sum()), count + len(lp[skip:]))
    return out


def _read_documents(path: str) -> list[str]:
    """Plain documents: `.txt` lines or jsonl `"text"` (blank lines skipped)."""
    if path.endswith(".jsonl"):
        return [_field(path, ln, r, "text") for ln, r in _read_jsonl(path)]
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f if line.strip()]


def perplexity(
    lm: ScoringLM, path: str, max_len: int, prefix_ids: Sequence[int] = ()
) -> dict[str, float]:
    """Token perplexity of plain documents (`.txt` lines or jsonl `"text"`).

    Every window is read the way the training pipeline builds a sample (see
    `toxjax.preprocessors.pipeline.split`): a document's tokens are cut into pieces of
    `max_len - len(prefix_ids)` tokens and each piece reads as `[bos] + prefix + piece`,
    so no text token sits at a position that training only ever filled with BOS or the
    prefix. Only the text's tokens are scored, so with `prefix_ids` (a conditioning
    prefix, e.g. the non-toxic instruction) this is the perplexity of plain text under
    the condition a MEDA/INST model is used with; every model scores the same tokens.

    Args:
      max_len: predicted tokens per window (the model's `max_len - 1`).
    """
    docs = _read_documents(path)
    _, seqs, skip = _text_windows(lm, docs, max_len, prefix_ids)
    nll = count = 0.0
    for lp, _ in lm.token_logprobs(seqs):
        nll -= float(lp[skip:].sum())
        count += len(lp[skip:])
    return {"ppl": math.exp(nll / count), "num_tokens": int(count), "num_documents": len(docs)}


def evaluate_utility(
    lm: ScoringLM, paths: dict[str, str], max_len: int, progress: bool = True
) -> dict:
    """Runs every task named in `paths` (`TASKS` plus `"perplexity"`)."""
    runners: dict[str, Callable[[str], dict]] = {
        "lambada": lambda p: lambada(lm, p),
        "perplexity": lambda p: perplexity(lm, p, max_len, lm.prefix_ids),
        **{t: (lambda p, t=t: multiple_choice(lm, load_items(t, p))) for t in TASKS[1:]},
    }
    unknown = set(paths) - set(runners)
    if unknown:
        raise ValueError(f"unknown utility tasks {sorted(unknown)}; use {sorted(runners)}")
    results = {}
    for name in tqdm(list(paths), desc="utility", unit="task", disable=not progress):
        results[name] = runners[name](paths[name])
    return {"task": "utility", "conventions": CONVENTIONS, "metrics": results}
