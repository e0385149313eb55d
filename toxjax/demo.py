"""`toxjax demo`: the whole method, end to end, offline, on the embedded corpus.

    toxjax demo [--workdir demo_work] [--quick] [--extra filter,ctrl]

Stages (each reuses its outputs when re-run; a killed run resumes):
  1. split    FreeBSD fortunes -> train / held-out documents (deterministic, by hash)
  2. score    every document with the offline scorer (`toxjax score` machinery)
  3. vocab    a SentencePiece vocabulary trained on the training split
  4. train    baseline, MEDA and INST models of one size on the same token budget
  5. eval     RealToxicityPrompts protocol on prompts cut from held-out entries
              (25 samples x 20 new tokens, top-p 0.9; MEDA/INST get the non-toxic prefix,
              and INST is also run with the toxic instruction)
  6. utility  held-out perplexity on plain text
  7. report   table (console + report.md), report.png, and a final `RESULT ...` line
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import re
import sys
import time
from collections.abc import Sequence

from toxjax import corpus
from toxjax.evaluation.toxicity import TOXIC_THRESHOLD
from toxjax.toxicity import options

OFFENSIVE = ("fortunes-o", "murphy-o")


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """Sizes of one demo run. `full()` is the README demo; `quick()` the test-suite one."""

    model_gin: str
    model_bindings: tuple[str, ...]
    vocab_size: int
    sequence_length: int
    batch_size: int
    num_steps: int
    learning_rate: float
    num_prompts: int
    num_decodes: int
    max_new_tokens: int
    offensive_repeat: int
    max_docs: int | None  # cap on documents (quick mode)

    @staticmethod
    def full() -> DemoConfig:
        return DemoConfig("models/cpu_demo.gin", (), 4096, 128, 16, 600, 2e-3, 100, 25, 20, 4, None)

    @staticmethod
    def quick() -> DemoConfig:
        return DemoConfig(
            "models/test.gin",
            ("ModelConfig.embed_dim = 64",),
            512,
            64,
            8,
            12,
            3e-3,
            8,
            4,
            8,
            1,
            1500,
        )


def _stable_fraction(key: str) -> float:
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 0x100000000


def _write_jsonl(path: str, records: Sequence[dict]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)  # a stage's output appears whole or not at all


def _read_jsonl(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def stage_split(work: str, cfg: DemoConfig) -> tuple[str, str]:
    """Documents -> train.jsonl / heldout.jsonl (5% held out, by a hash of file:line)."""
    train_path, held_path = os.path.join(work, "train.jsonl"), os.path.join(work, "heldout.jsonl")
    if os.path.exists(train_path) and os.path.exists(held_path):
        return train_path, held_path
    train, held = [], []
    for name in corpus.fortune_files():
        for line, text in corpus.read_fortunes(name):
            doc = {"text": text, "source": f"{name}:{line}", "offensive_file": name in OFFENSIVE}
            (held if _stable_fraction(doc["source"]) < 0.05 else train).append(doc)
    if cfg.max_docs:
        train = sorted(train, key=lambda d: _stable_fraction("q" + d["source"]))[: cfg.max_docs]
        held = sorted(held, key=lambda d: _stable_fraction("q" + d["source"]))[: cfg.max_docs // 5]
    _write_jsonl(held_path, held)
    _write_jsonl(train_path, train)
    return train_path, held_path


def stage_score(path: str, scorer_args: Sequence[str]) -> str:
    """Scores a jsonl file with `toxjax score` (resumable); returns the scored path."""
    from toxjax.toxicity import annotate

    out = path.replace(".jsonl", ".scored.jsonl")
    args = annotate.build_parser().parse_args(["--input", path, "--output", out, *scorer_args])
    prog = annotate.run(args)
    if prog.failed:
        print(
            f"demo: {prog.failed} of {prog.records} documents could not be scored; see "
            f"{out}.failed.jsonl",
            file=sys.stderr,
        )
    return out


def stage_upsample(scored: str, work: str, repeat: int) -> str:
    """Training corpus: every scored document, the offensive files `repeat` times, in a
    fixed shuffled order.

    The fortune files come one after another, so in file order the offensive entries
    (and their copies, side by side) form one block. seqio's shuffle buffer only mixes
    neighbours: trained on that order, a model's last steps, and so its toxicity and
    perplexity, depend on where in the file its step budget ends, and that differs
    between strategies (a prefix makes each sample longer). Hence the shuffle on disk.
    """
    path = os.path.join(work, "train.corpus.shuffled.jsonl")
    if not os.path.exists(path):
        docs = [
            (f"{d['source']}#{k}", d)
            for d in _read_jsonl(scored)
            for k in range(repeat if d["offensive_file"] else 1)
        ]
        docs.sort(key=lambda kd: _stable_fraction("order:" + kd[0]))
        _write_jsonl(path, [d for _, d in docs])
    return path


def stage_vocab(train_path: str, work: str, vocab_size: int):
    from toxjax import vocab

    model = os.path.join(work, "spm.model")
    if not os.path.exists(model):
        print(f"demo: training a {vocab_size}-piece SentencePiece vocabulary", flush=True)
        vocab.train_sentencepiece([train_path], model, vocab_size=vocab_size)
    return vocab.sentencepiece_vocabulary(model)


def stage_train(strategy: str, task: str, work: str, cfg: DemoConfig) -> str:
    import gin

    from toxjax import train as train_lib

    model_dir = os.path.join(work, "models", strategy)
    done = os.path.join(model_dir, "DONE")
    if os.path.exists(done):
        return model_dir
    gin.clear_config()
    train_lib.parse_gin(
        ["runs/pretrain.gin", cfg.model_gin],
        [
            f"MODEL_DIR = '{model_dir}'",
            f"TASK = '{task}'",
            f"SEQUENCE_LENGTH = {cfg.sequence_length}",
            f"BATCH_SIZE = {cfg.batch_size}",
            f"NUM_STEPS = {cfg.num_steps}",
            f"LEARNING_RATE = {cfg.learning_rate}",
            f"WARMUP_STEPS = {max(1, cfg.num_steps // 20)}",
            "train.module_imports = []",
            f"train.checkpoint_every = {max(1, cfg.num_steps // 5)}",
            f"train.log_every = {max(1, cfg.num_steps // 50)}",
            *cfg.model_bindings,
        ],
    )
    print(f"demo: training {strategy} on {task} ({cfg.num_steps} steps)", flush=True)
    train_lib.train()
    open(done, "w").close()
    return model_dir


def _sentence_head(text: str) -> str:
    """The first half (by words) of an entry's first sentence: an RTP-style prompt."""
    flat = " ".join(text.split())
    first = re.split(r"(?<=[.!?])\s", flat, maxsplit=1)[0]
    words = first.split()
    return " ".join(words[: max(2, min(12, len(words) // 2))])


def stage_prompts(held_scored: str, work: str, num_prompts: int, scorer) -> str:
    """RTP-format prompts from held-out entries, split toxic / non-toxic by their own score.

    Half the prompts come from the entries whose prompt scores > 0.5, half from the
    rest, each half taken in a fixed hash order: chosen before any model is seen.
    """
    path = os.path.join(work, "prompts.jsonl")
    if os.path.exists(path):
        return path
    docs = sorted(_read_jsonl(held_scored), key=lambda d: _stable_fraction("p" + d["source"]))
    texts = [_sentence_head(d["text"]) for d in docs]
    results = scorer.score(texts)
    rows = [
        (t, r.toxicity)
        for t, r in zip(texts, results, strict=True)
        if r.toxicity is not None and len(t.split()) >= 2
    ]
    toxic = [r for r in rows if r[1] > TOXIC_THRESHOLD][: num_prompts // 2]
    nontoxic = [r for r in rows if r[1] <= TOXIC_THRESHOLD][: num_prompts - len(toxic)]
    _write_jsonl(
        path,
        [{"prompt": {"text": t, "toxicity": s}, "challenging": False} for t, s in toxic + nontoxic],
    )
    return path


def stage_heldout_by_score(held_scored: str, work: str, per_split: int) -> dict[str, str]:
    """Held-out entries scored > 0.5 (`toxic`) and the rest (`clean`), at most `per_split`
    each in a fixed hash order: the texts on which `_prefix_nll` asks whether a model reads
    its conditioning prefix. A split with no entries is left out."""
    paths = {k: os.path.join(work, f"heldout.{k}.jsonl") for k in ("toxic", "clean")}
    if not all(os.path.exists(p) for p in paths.values()):
        docs = sorted(_read_jsonl(held_scored), key=lambda d: _stable_fraction("n" + d["source"]))
        for split, path in paths.items():
            keep = [d for d in docs if (d["toxicity"] > TOXIC_THRESHOLD) == (split == "toxic")]
            _write_jsonl(
                path, [{"text": d["text"], "toxicity": d["toxicity"]} for d in keep[:per_split]]
            )
    return {k: p for k, p in paths.items() if os.path.getsize(p)}


def _prefix_nll(
    lm, strategy: str, vocabulary, splits: dict[str, str], max_len: int
) -> dict[str, float]:
    """Per-token NLL (nats) of each held-out split after the non-toxic and the toxic prefix.

    A model that learned the control finds toxic text likelier after the toxic prefix and
    clean text likelier after the non-toxic one; sampling answers the same question with
    far more noise. Keys: `{split}/{nontoxic,toxic}_prefix`.
    """
    from toxjax.evaluation import utility
    from toxjax.preprocessors import conditioning_prefix_ids

    out = {}
    for split, path in splits.items():
        for cond in ("nontoxic", "toxic"):
            ids = conditioning_prefix_ids(strategy, vocabulary, cond == "toxic")
            out[f"{split}/{cond}_prefix"] = math.log(
                utility.perplexity(lm, path, max_len, ids)["ppl"]
            )
    return out


def _sample_rate(gen_path: str) -> tuple[float, int]:
    """Share of scored continuations with toxicity > 0.5, and how many were scored."""
    n = toxic = 0
    with open(gen_path, encoding="utf-8") as f:
        for line in f:
            for c in json.loads(line)["continuations"]:
                if c["toxicity"] is not None:
                    n += 1
                    toxic += c["toxicity"] > TOXIC_THRESHOLD
    return (toxic / n if n else float("nan")), n


# Bumped whenever the eval's numbers change meaning, so a re-run recomputes old results:
# 2 = perplexity windows read as training pieces (BOS + prefix + piece);
# 3 = adds `prefix_nll` (does the model read its prefix?).
RESULT_PROTOCOL = 3


def stage_eval(
    name: str,
    model_dir: str,
    strategy: str,
    toxic: bool,
    prompts_path: str,
    heldout: str,
    work: str,
    cfg: DemoConfig,
    scorer,
    splits: dict[str, str] | None = None,
) -> dict:
    from toxjax.checkpoint import load_for_inference
    from toxjax.decode import SamplingConfig
    from toxjax.evaluation import toxicity as tox_eval
    from toxjax.evaluation import utility
    from toxjax.evaluation.lm import ModelLM
    from toxjax.model import CACHE_BATCH_AXIS

    out_dir = os.path.join(work, "eval", name)
    result_path = os.path.join(out_dir, "demo_result.json")
    if os.path.exists(result_path):
        with open(result_path) as f:
            done = json.load(f)
        if done.get("protocol") == RESULT_PROTOCOL:  # else an older toxjax wrote it: redo
            return done  # (the samples resume from their own files)
    from toxjax.preprocessors import conditioning_prefix, conditioning_prefix_ids

    bundle = load_for_inference(model_dir)
    conditioned = strategy in ("meda", "inst", "ctrl")
    prefix = conditioning_prefix(strategy, toxic) if conditioned else ""
    prefix_ids = conditioning_prefix_ids(strategy, bundle.vocabulary, toxic) if conditioned else []
    sampling = SamplingConfig(
        num_decodes=cfg.num_decodes,
        max_new_tokens=cfg.max_new_tokens,
        top_p=0.9,
        temperature=1.0,
        top_k=0,
        eos_id=bundle.vocabulary.eos_id,
    )
    lm = ModelLM(
        bundle.model,
        bundle.params,
        bundle.vocabulary,
        max_len=bundle.config.max_len,
        sampling=sampling,
        cache_batch_axis=CACHE_BATCH_AXIS,
        seed=0,
        batch_size=8,
    )
    print(f"demo: sampling {name} (prefix {prefix!r})", flush=True)
    res = tox_eval.evaluate_toxicity(
        lm,
        scorer,
        tox_eval.load_prompts(prompts_path),
        os.path.join(out_dir, "toxicity"),
        prefix=prefix,
        prefix_ids=prefix_ids,
        config={"model_dir": model_dir, "condition": name},
    )
    rate, n = _sample_rate(os.path.join(out_dir, "toxicity", tox_eval.GENERATIONS_FILE))
    ppl = utility.perplexity(lm, heldout, bundle.config.max_len - 1)
    # The same text read after the model's own prefix (its deployed condition; only the
    # text is scored). A MEDA/INST model never saw a document start without a prefix,
    # so the plain number charges it for that one first token of every document.
    cond = (
        utility.perplexity(lm, heldout, bundle.config.max_len - 1, prefix_ids)
        if prefix_ids
        else ppl
    )
    result = {
        "name": name,
        "prefix": prefix,
        "tox_rate": rate,
        "num_samples": n,
        "metrics": res["metrics"],
        "ppl": ppl["ppl"],
        "ppl_tokens": ppl["num_tokens"],
        "ppl_with_prefix": cond["ppl"],
        "protocol": RESULT_PROTOCOL,
    }
    if prefix_ids and not toxic and splits:
        result["prefix_nll"] = _prefix_nll(
            lm, strategy, bundle.vocabulary, splits, bundle.config.max_len - 1
        )
    with open(result_path, "w") as f:
        json.dump(result, f, indent=2)
    return result


def _table(results: list[dict]) -> str:
    base = results[0]
    head = (
        "| model (condition) | toxic samples | TP full | TP toxic | TP non-toxic | "
        "EMT full (std) | held-out ppl | Δppl vs baseline | ppl after its prefix | Δ |"
    )
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        m = r["metrics"]
        lines.append(
            f"| {r['name']} | {r['tox_rate']:.1%} | {m['full']['tp']:.3f} | "
            f"{m['toxic']['tp']:.3f} | {m['nontoxic']['tp']:.3f} | "
            f"{m['full']['emt']:.3f} ({m['full']['emt_std']:.3f}) | {r['ppl']:.2f} | "
            f"{(r['ppl'] / base['ppl'] - 1):+.1%} | {r['ppl_with_prefix']:.2f} | "
            f"{(r['ppl_with_prefix'] / base['ppl'] - 1):+.1%} |"
        )
    return "\n".join(lines) + "\n"


def _prefix_table(results: list[dict], splits: dict[str, str]) -> str:
    """Per-token NLL of held-out text after each prefix, and the margin by which the
    model prefers the matching prefix (> 0: it reads the prefix the right way)."""
    rows = [r for r in results if r.get("prefix_nll")]
    if not rows:
        return ""
    sizes = {k: len(_read_jsonl(p)) for k, p in splits.items()}
    head, rule = "| model |", "|---|"
    for split in sizes:
        head += (
            f" {split} entries ({sizes[split]}): after non-toxic prefix | after toxic "
            f"prefix | margin |"
        )
        rule += "---:|---:|---:|"
    lines = [head, rule]
    for r in rows:
        nll, cells = r["prefix_nll"], ""
        for split in sizes:
            clean, tox = nll[f"{split}/nontoxic_prefix"], nll[f"{split}/toxic_prefix"]
            margin = clean - tox if split == "toxic" else tox - clean
            cells += f" {clean:.3f} | {tox:.3f} | {margin:+.3f} |"
        lines.append(f"| {r['name']} |{cells}")
    return (
        "Does the model read its prefix? Per-token NLL (nats) of held-out entries, split by "
        "their score:\n\n" + "\n".join(lines) + "\n"
    )


def _plot(results: list[dict], path: str) -> None:
    """Three panels: the share of toxic samples, TP, and utility against toxicity. Utility
    is held-out perplexity read after each model's own prefix (the fair comparison; the
    unprefixed number is mostly a first-token artifact for MEDA/INST, see the table)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["name"] for r in results]
    colors = [f"C{i}" for i in range(len(results))]
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, values, title in (
        (ax1, [100 * r["tox_rate"] for r in results], "Toxic samples (% scoring > 0.5)"),
        (ax2, [r["metrics"]["full"]["tp"] for r in results], "Toxicity probability (TP)"),
    ):
        bars = ax.bar(names, values, color=colors)
        ax.bar_label(bars, fmt="%.2f" if ax is ax2 else "%.1f%%")
        ax.set_title(title)
        ax.tick_params(axis="x", rotation=15)
    for r, c in zip(results, colors, strict=True):
        ax3.scatter(100 * r["tox_rate"], r["ppl_with_prefix"], color=c)
        ax3.annotate(r["name"], (100 * r["tox_rate"], r["ppl_with_prefix"]))
    ax3.set_xlabel("toxic samples (%)")
    ax3.set_ylabel("held-out perplexity after its prefix")
    ax3.set_title("Utility vs toxicity")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parse_strategies(strategies: str, extra: str = "") -> list[str]:
    """The demo's strategies, baseline first (every delta in the report is against it)."""
    from toxjax.preprocessors import STRATEGIES

    names = [s for s in f"{strategies},{extra}".split(",") if s]
    unknown = sorted(set(names) - set(STRATEGIES))
    if unknown:
        raise SystemExit(f"toxjax demo: unknown strategies {unknown}; choose from {STRATEGIES}")
    return ["baseline"] + [s for s in dict.fromkeys(names) if s != "baseline"]


# The RESULT keys the issue names, in its order; rows the run lacks are left out, and
# strategies beyond these (filter, ctrl) follow them.
_RESULT_KEYS = (
    "tox_rate_baseline",
    "tox_rate_meda",
    "tox_rate_inst",
    "tox_rate_inst_toxic",
    "tp_baseline",
    "tp_meda",
    "tp_inst",
    "emt_baseline",
    "emt_inst",
    "ppl_baseline",
    "ppl_meda",
    "ppl_inst",
)


def result_line(results: list[dict], minutes: float) -> str:
    """The machine-readable last line (see `_RESULT_KEYS`)."""
    fmt = lambda x: "nan" if x is None or math.isnan(x) else f"{x:.4f}"  # noqa: E731
    values = {}
    for r in results:
        n, full = r["name"], r["metrics"]["full"]
        values.update(
            {
                f"tox_rate_{n}": fmt(r["tox_rate"]),
                f"tp_{n}": fmt(full["tp"]),
                f"emt_{n}": fmt(full["emt"]),
                f"ppl_{n}": f"{r['ppl']:.3f}",
            }
        )
    keys = [k for k in _RESULT_KEYS if k in values]
    for r in results:
        if r["name"] not in ("baseline", "meda", "inst", "inst_toxic"):
            keys += [f"{m}_{r['name']}" for m in ("tox_rate", "tp", "emt", "ppl")]
    return "RESULT " + " ".join([f"{k}={values[k]}" for k in keys] + [f"minutes={minutes:.1f}"])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="toxjax demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", default="demo_work")
    p.add_argument("--quick", action="store_true", help="toy sizes, a few minutes")
    p.add_argument(
        "--strategies",
        default="baseline,meda,inst",
        help="strategies to train and evaluate (baseline is always included; the "
        "INST model is also evaluated under the toxic instruction)",
    )
    p.add_argument("--extra", default="", help="also train these strategies: filter,ctrl")
    options.add_scorer_flags(p)  # scores documents and samples, as `toxjax score` does
    p.add_argument("--steps", type=int, help="override the training steps per model")
    p.add_argument("--batch_size", type=int, help="override the sequences per training step")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    t0 = time.time()
    cfg = DemoConfig.quick() if args.quick else DemoConfig.full()
    if args.steps:
        cfg = dataclasses.replace(cfg, num_steps=args.steps)
    if args.batch_size:
        cfg = dataclasses.replace(cfg, batch_size=args.batch_size)
    work = os.path.abspath(args.workdir)
    os.makedirs(work, exist_ok=True)
    strategies = parse_strategies(args.strategies, args.extra)

    from toxjax import registry

    scorer_args = options.scorer_argv(args)
    scorer = options.build_scorer(args, "toxjax demo")

    print("demo [1/7] split", flush=True)
    train_path, held_path = stage_split(work, cfg)
    print("demo [2/7] score", flush=True)
    train_scored = stage_score(train_path, scorer_args)
    held_scored = stage_score(held_path, scorer_args)
    corpus_path = stage_upsample(train_scored, work, cfg.offensive_repeat)
    print("demo [3/7] vocab", flush=True)
    vocabulary = stage_vocab(train_scored, work, cfg.vocab_size)
    tasks = registry.register_corpus(
        "demo", corpus_path, vocabulary, strategies=strategies, overwrite=True
    )
    task_of = {s: next(t for t in tasks if t == registry.task_name("demo", s)) for s in strategies}
    print("demo [4/7] train", flush=True)
    model_dirs = {s: stage_train(s, task_of[s], work, cfg) for s in strategies}
    print("demo [5/7] eval + [6/7] utility", flush=True)
    prompts = stage_prompts(held_scored, work, cfg.num_prompts, scorer)
    # (result name, model, toxic condition): each strategy under its non-toxic condition, and the
    # INST model under the toxic instruction (the control should work both ways).
    conditions = [(s, s, False) for s in strategies]
    if "inst" in strategies:
        conditions.append(("inst_toxic", "inst", True))
    splits = stage_heldout_by_score(held_scored, work, per_split=150)
    results = [
        stage_eval(name, model_dirs[s], s, toxic, prompts, held_path, work, cfg, scorer, splits)
        for name, s, toxic in conditions
    ]

    print("demo [7/7] report", flush=True)
    table = _table(results)
    if prefix_table := _prefix_table(results, splits):
        table += "\n" + prefix_table
    minutes = (time.time() - t0) / 60
    note = (
        f"Scorer: {scorer.name}. {len(tox_prompts := _read_jsonl(prompts))} prompts "
        f"({sum(p['prompt']['toxicity'] > TOXIC_THRESHOLD for p in tox_prompts)} toxic), "
        f"{cfg.num_decodes} samples x {cfg.max_new_tokens} new tokens, top-p 0.9, "
        f"temperature 1. {cfg.num_steps} steps x {cfg.batch_size} x "
        f"{cfg.sequence_length} tokens per model.\n"
    )
    with open(os.path.join(work, "report.md"), "w") as f:
        f.write(f"# toxjax demo\n\n{note}\n{table}")
    _plot(results, os.path.join(work, "report.png"))
    print(f"\n{note}\n{table}\nreport: {work}/report.md, plot: {work}/report.png")
    print(result_line(results, minutes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
