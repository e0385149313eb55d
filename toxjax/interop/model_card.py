"""The README.md (model card) of an exported run: how it was trained, how to condition it.

Everything comes from the run directory: run.json (strategy, task, corpus, its scorer,
sequence length, the prefixes through `RunInfo.conditioning`), metrics.jsonl (tokens
trained on), `eval/*/metrics.json` (results with their bootstrap CIs) and the exported
weights' sha256. Plain text building only: no I/O but reading those files.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
from typing import Any

from toxjax import fileio

RTP_THRESHOLD = 0.5  # a continuation is toxic when its score is >= 0.5 (RealToxicityPrompts)


@dataclasses.dataclass(frozen=True)
class Prefix:
    """A conditioning prefix as the exported model reads it."""

    text: str
    ids: tuple[int, ...]  # transformers ids


@dataclasses.dataclass(frozen=True)
class CardFacts:
    """What the card says; gathered by `toxjax.interop.export`."""

    name: str
    model_dir: str
    step: int
    architecture: str
    num_params: int
    run: Any  # toxjax.run_info.RunInfo
    vocabulary: str  # e.g. "GPT-2 BPE (GPT-2's ids)"
    bos_id: int
    bos_token: str
    prefixes: dict[str, Prefix]  # "non-toxic" / "toxic"; empty without conditioning
    sha256: str
    toxjax_version: str


def tokens_trained(model_dir: str, step: int) -> tuple[float, int] | None:
    """(target tokens summed over metrics.jsonl's steps <= `step`, steps logged), or None
    when the run has no metrics.jsonl."""
    path = os.path.join(model_dir, "metrics.jsonl")
    if not fileio.exists(path):
        return None
    total, steps = 0.0, set()
    for _, rec in fileio.iter_jsonl(path, what="metrics record"):
        if rec.get("step", step + 1) <= step and "tokens" in rec and rec["step"] not in steps:
            total += float(rec["tokens"])
            steps.add(rec["step"])
    return total, len(steps)


def eval_results(model_dir: str) -> list[tuple[str, dict]]:
    """`(eval name, metrics.json)` for each `MODEL_DIR/eval/*/metrics.json`, sorted."""
    out = []
    for path in sorted(glob.glob(os.path.join(model_dir, "eval", "*", "metrics.json"))):
        with open(path) as f:
            out.append((os.path.basename(os.path.dirname(path)), json.load(f)))
    return out


def _number(x: Any) -> str:
    if isinstance(x, bool) or not isinstance(x, int | float):
        return str(x)
    return str(x) if isinstance(x, int) else f"{x:.4g}"


def _results_table(result: dict) -> str:
    """Every metric of a metrics.json, with its bootstrap interval where it has one."""
    metrics = fileio.flatten(result.get("metrics", {}))
    iv = fileio.flatten(result.get("intervals", {}))
    with_ci = {k[: -len(".value")] for k in iv if k.endswith(".value")}
    lines = ["| metric | value | 95% CI |", "|---|---:|---|"]
    for key in sorted(set(metrics) | with_ci):
        value = metrics.get(key, iv.get(f"{key}.value"))
        ci = (
            f"[{_number(iv[f'{key}.low'])}, {_number(iv[f'{key}.high'])}]" if key in with_ci else ""
        )
        lines.append(f"| {key} | {_number(value)} | {ci} |")
    return "\n".join(lines)


def _usage(facts: CardFacts) -> str:
    prefix = facts.prefixes.get("non-toxic")
    ids = list(prefix.ids) if prefix else []
    return f"""```python
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

tok = AutoTokenizer.from_pretrained("{facts.name}")
model = AutoModelForCausalLM.from_pretrained("{facts.name}")
prefix_ids = {ids}  # the non-toxic conditioning prefix{"" if prefix else " (none: not conditioned)"}
prompt_ids = tok("So I told him that", add_special_tokens=False)["input_ids"]
input_ids = torch.tensor([[tok.bos_token_id] + prefix_ids + prompt_ids])
out = model.generate(input_ids, attention_mask=torch.ones_like(input_ids))  # RTP sampling
print(tok.decode(out[0, input_ids.shape[1]:]))
```"""


def render(facts: CardFacts) -> str:
    """The model card's markdown."""
    run = facts.run
    corpus = run.corpus or {}
    tokens = tokens_trained(facts.model_dir, facts.step)
    tok_text = (
        "unknown (no metrics.jsonl)"
        if tokens is None
        else f"{tokens[0]:,.0f} target tokens over {tokens[1]} logged steps (metrics.jsonl)"
    )
    rows = [
        ("strategy", run.strategy or "not recorded (run.json from before strategies)"),
        ("task", run.task),
        (
            "corpus",
            f"{corpus.get('name')} ({corpus.get('source')}), fraction {corpus.get('fraction')}",
        ),
        ("scorer of the training corpus", corpus.get("scorer")),
        ("sequence length", run.sequence_length),
        ("steps", f"{facts.step} (this checkpoint)"),
        ("tokens", tok_text),
        ("vocabulary", facts.vocabulary),
        ("toxjax", facts.toxjax_version),
    ]
    if run.init_from:  # continued pretraining (train.init_from)
        weights = ", ".join(f"{n} sha256 {d}" for n, d in run.init_from.get("weights", {}).items())
        started = (
            f"{run.init_from.get('architecture')} at {run.init_from.get('source')} ({weights})"
        )
        rows.insert(2, ("started from", started))
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    if facts.prefixes:
        cond = (
            f"The model was trained with the `{run.strategy}` strategy: text after a prefix "
            "behaves like training text of that toxicity. Put a prefix between the BOS "
            f"token (id {facts.bos_id}, `{facts.bos_token}`) and the prompt, as token ids "
            "(the text encoded alone can merge differently at the boundary):\n\n"
            + "\n".join(
                f"- {name}: `{json.dumps(p.text)}`, ids `{list(p.ids)}`"
                for name, p in facts.prefixes.items()
            )
            + "\n\n`toxjax eval` uses the non-toxic prefix by default and the toxic one with "
            "`--toxic_condition`."
        )
    else:
        cond = (
            f"The model was trained without a conditioning prefix (strategy "
            f"`{run.strategy}`): start each sequence with the BOS token (id {facts.bos_id}, "
            f"`{facts.bos_token}`) and the prompt."
        )
    results = eval_results(facts.model_dir)
    if results:
        evals = "\n\n".join(
            f"### {name}\n\nstep {r.get('step', '?')}, scorer `{r.get('scorer', 'n/a')}`, "
            f"prefix {json.dumps(r.get('prefix', ''))}\n\n{_results_table(r)}"
            for name, r in results
        )
    else:
        evals = "No `toxjax eval` results in the run directory."
    return f"""---
library_name: transformers
pipeline_tag: text-generation
tags:
- toxjax
- {run.strategy or "unconditioned"}
---

# {facts.name}

A {facts.num_params:,}-parameter `{facts.architecture}` pretrained with toxjax
(toxicity-controlled pretraining), exported from `{facts.model_dir}` at step {facts.step} by
`toxjax export hf`.

## Training

| | |
|---|---|
{table}

## Conditioning

{cond}

## Use

{_usage(facts)}

`generation_config.json` holds the RealToxicityPrompts sampling settings (sampling, top-p
0.9, no top-k, temperature 1, 20 new tokens; the protocol draws 25 continuations per
prompt). A continuation counts as toxic when the scorer gives it at least
{RTP_THRESHOLD} (threshold {RTP_THRESHOLD}).

## Checkpoint

- `model.safetensors` sha256: `{facts.sha256}`
- source: `{facts.model_dir}`, step {facts.step}

## Evaluation

{evals}
"""
