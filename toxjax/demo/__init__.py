"""`toxjax demo`: the whole method, end to end, offline, on the embedded corpus.

    toxjax demo [--workdir demo_work] [--quick] [--extra meda,filter,ctrl] [--steps N]

Stages (each keyed on its settings, so a rerun reuses what it can, a killed run resumes,
and a changed setting never mixes with results of another recipe):
  1. split    FreeBSD fortunes -> train / held-out documents (deterministic, by hash)
  2. score    every document with the offline scorer (`toxjax score` machinery)
  3. vocab    a SentencePiece vocabulary trained on the training split
  4. train    a baseline and an INST model (and `--extra` ones) on the same token budget,
              the toxic-scored training documents up-sampled
  5. eval     RealToxicityPrompts protocol on prompts cut from held-out documents (the
              first half, at a word boundary; every toxic held-out document is one):
              25 samples x 20 new tokens, top-p 0.9; each conditioned model under its
              non-toxic and its toxic condition, read from its run directory
  6. utility  held-out perplexity, plain and after the model's own prefix
  7. report   tables with 95% bootstrap CIs over prompts (console + report.md),
              report.png, and a final `RESULT ...` line
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from collections.abc import Sequence

from toxjax import fileio
from toxjax.demo.stages import (
    DATA_PROTOCOL,
    HELDOUT_FRACTION,
    DemoConfig,
    rtp_prompt,
    settings_key,
    stage_eval,
    stage_prompts,
    stage_score,
    stage_split,
    stage_train,
    stage_upsample,
    stage_vocab,
)
from toxjax.evaluation import compare
from toxjax.toxicity import options

__all__ = ["DemoConfig", "main", "rtp_prompt", "settings_key", "stage_upsample"]


def arms(results: list[dict], conds: list[tuple[str, str, bool]], work: str) -> list[compare.Arm]:
    """The compared arms of the demo's results (one per evaluated condition), with their
    bootstrap estimates over prompts (`toxjax.evaluation.compare`)."""
    from toxjax.evaluation import generations

    out = []
    for r, (name, strategy, toxic) in zip(results, conds, strict=True):
        out.append(
            compare.Arm(
                name=name,
                scores=generations.prompt_scores(os.path.join(work, r["generations"])),
                strategy=strategy,
                toxic=toxic,
                model=r["model_dir"],
                ppl=r["ppl"],
                ppl_with_prefix=r["ppl_with_prefix"],
            )
        )
    return compare.compare(out)


def parse_strategies(strategies: str, extra: str = "") -> list[str]:
    """The demo's strategies, baseline first (every delta in the report is against it)."""
    from toxjax.preprocessors import STRATEGIES

    names = [s for s in f"{strategies},{extra}".split(",") if s]
    unknown = sorted(set(names) - set(STRATEGIES))
    if unknown:
        raise SystemExit(
            f"toxjax demo: unknown strategies {unknown}; choose from {', '.join(STRATEGIES)}"
        )
    return ["baseline"] + [s for s in dict.fromkeys(names) if s != "baseline"]


def conditions(strategies: Sequence[str]) -> list[tuple[str, str, bool]]:
    """(result name, strategy, toxic condition): each strategy under its own condition,
    then each conditioned one (the strategy table says which) under its toxic one."""
    from toxjax.preprocessors import get_strategy

    out = [(s, s, False) for s in strategies]
    out += [(f"{s}_toxic", s, True) for s in strategies if get_strategy(s).conditioned]
    return out


def _environment() -> str:
    """The machine, measured now: a busy machine shows as a low matmul peak."""
    import jax

    from toxjax.flops import measure_peak_flops

    return (
        f"toxjax demo on {platform.machine()} ({os.cpu_count()} CPUs, fp32 matmul peak "
        f"{measure_peak_flops() / 1e9:.0f} GFLOP/s measured at report time), Python "
        f"{platform.python_version()}, jax {jax.__version__}"
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="toxjax demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", default="demo_work")
    p.add_argument("--quick", action="store_true", help="toy sizes, a few minutes")
    p.add_argument(
        "--strategies",
        default="baseline,inst",
        help="strategies to train and evaluate (baseline is always included; each "
        "conditioned model is also evaluated under its toxic condition)",
    )
    p.add_argument(
        "--extra",
        default="",
        help="also train these strategies, e.g. meda,filter,ctrl (each adds ~13-20 min)",
    )
    options.add_scorer_flags(p)  # scores documents and samples, as `toxjax score` does
    p.add_argument("--steps", type=int, help="override the training steps per model")
    p.add_argument("--batch_size", type=int, help="override the sequences per training step")
    p.add_argument("--prompts", type=int, help="override the number of eval prompts")
    return p


LOCK_FILE = "LOCK"  # <workdir>/LOCK: one demo per workdir
EXIT_CONFIG, EXIT_LOCKED = 2, 5


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = DemoConfig.quick() if args.quick else DemoConfig.full()
    for flag, field in (
        ("steps", "num_steps"),
        ("batch_size", "batch_size"),
        ("prompts", "num_prompts"),
    ):
        if getattr(args, flag) is not None:
            if getattr(args, flag) < 1:
                raise SystemExit(f"toxjax demo: --{flag} must be a positive number")
            cfg = dataclasses.replace(cfg, **{field: getattr(args, flag)})
    work = os.path.abspath(args.workdir)
    strategies = parse_strategies(args.strategies, args.extra)
    if os.path.exists(work) and not os.path.isdir(work):
        raise SystemExit(f"toxjax demo: --workdir {args.workdir} is a file, not a directory")
    from toxjax.errors import ConfigError
    from toxjax.locking import LockHeldError, WriterLock

    try:
        # One demo per workdir: two would train the same model directories at once.
        with WriterLock(os.path.join(work, LOCK_FILE), f"the demo workdir {work}") as lock:
            if lock.note:
                print(f"toxjax demo: {lock.note}", file=sys.stderr)
            return run(args, cfg, work, strategies)
    except LockHeldError as e:
        print(f"toxjax demo: {e}", file=sys.stderr)
        return EXIT_LOCKED
    except ConfigError as e:
        print(f"toxjax demo: {e}", file=sys.stderr)
        return EXIT_CONFIG


def run(args, cfg: DemoConfig, work: str, strategies: list[str]) -> int:
    """Runs the stages in `work` (held by this process) and writes the report."""
    from toxjax import registry

    t0 = time.time()
    scorer_args = options.scorer_argv(args)
    scorer = options.build_scorer(args, "toxjax demo")
    data_settings = {
        "protocol": DATA_PROTOCOL,
        "max_docs": cfg.max_docs,
        "heldout_fraction": HELDOUT_FRACTION,
        "scorer": scorer_args,
        "vocab_size": cfg.vocab_size,
        "toxic_repeat": cfg.toxic_repeat,
    }
    data_key = settings_key(data_settings)
    data = os.path.join(work, f"data-{data_key}")
    os.makedirs(data, exist_ok=True)
    fileio.write_json(os.path.join(data, "demo_settings.json"), data_settings)

    print("demo [1/7] split", flush=True)
    train_path, held_path = stage_split(data, cfg)
    print("demo [2/7] score", flush=True)
    train_scored = stage_score(train_path, scorer_args)
    held_scored = stage_score(held_path, scorer_args)
    corpus_path = stage_upsample(train_scored, data, cfg.toxic_repeat)
    print("demo [3/7] vocab", flush=True)
    vocabulary = stage_vocab(train_scored, data, cfg.vocab_size)
    tasks = registry.register_corpus(
        "demo", corpus_path, vocabulary, strategies=strategies, overwrite=True
    )
    task_of = {s: next(t for t in tasks if t == registry.task_name("demo", s)) for s in strategies}
    print("demo [4/7] train", flush=True)
    model_dirs = {s: stage_train(s, task_of[s], work, cfg, data_key) for s in strategies}
    print("demo [5/7] eval + [6/7] utility", flush=True)
    prompts = stage_prompts(held_scored, data, cfg.num_prompts)
    conds = conditions(strategies)
    results = [
        stage_eval(name, model_dirs[s], toxic, prompts, held_path, work, cfg, scorer)
        for name, s, toxic in conds
    ]
    print("demo [7/7] report", flush=True)
    write_report(work, cfg, scorer.name, model_dirs, results, conds, t0)
    return 0


def write_report(work, cfg, scorer_name, model_dirs, results, conds, t0) -> None:
    """report.md, report.json and report.png in `work`; the same table and the RESULT
    line on stdout."""
    compared = arms(results, conds, work)
    table = compare.table(compared)
    if control := compare.control_table(compared):
        table += "\n" + control
    minutes = (time.time() - t0) / 60
    train_minutes = {}
    for s, d in model_dirs.items():
        with open(os.path.join(d, "DONE")) as f:
            text = f.read().strip()
        train_minutes[s] = json.loads(text)["minutes"] if text else float("nan")
    first = compared[0]
    note = (
        f"Scorer: {scorer_name}. {first.num_prompts} prompts (the first half of held-out "
        f"documents; {first.num_toxic_prompts} from documents scored > 0.5), "
        f"{cfg.num_decodes} samples x {cfg.max_new_tokens} new tokens each, top-p 0.9, "
        f"temperature 1. {cfg.num_steps} steps x {cfg.batch_size} x {cfg.sequence_length} "
        f"tokens per model; toxic-scored training documents x{cfg.toxic_repeat}. 95% CIs: "
        f"percentile bootstrap over prompts (2000 resamples; changes paired on the same "
        f"prompts).\n\n{_environment()}. Training minutes: "
        + ", ".join(f"{s} {m:.1f}" for s, m in train_minutes.items())
        + "; eval minutes: "
        + ", ".join(f"{r['name']} {r['minutes']:.1f}" for r in results)
        + f"; this invocation {minutes:.1f} min.\n"
    )
    summary = compare.verdicts(compared)
    fileio.write_text(
        os.path.join(work, "report.md"), f"# toxjax demo\n\n{note}\n{table}\n{summary}"
    )
    rows = [
        {
            **r,
            "num_samples": a.num_samples,
            "num_prompts": a.num_prompts,
            "num_toxic_prompts": a.num_toxic_prompts,
            "estimates": {k: e.to_dict() for k, e in a.est.items()},
        }
        for r, a in zip(results, compared, strict=True)
    ]
    fileio.write_text(os.path.join(work, "report.json"), json.dumps(rows, indent=2))
    compare.plot(compared, os.path.join(work, "report.png"))
    print(f"\n{note}\n{table}\n{summary}\nreport: {work}/report.md, plot: {work}/report.png")
    print(compare.result_line(compared, minutes))


if __name__ == "__main__":
    sys.exit(main())
