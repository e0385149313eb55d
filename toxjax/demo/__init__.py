"""`toxjax demo`: the whole method, end to end, offline, on the embedded corpus.

    toxjax demo [--workdir demo_work] [--quick] [--extra ARM,ARM+none,ARM+guidanceA]
                [--seeds N] [--steps N]

Stages (each keyed on its settings, so a rerun reuses what it can, a killed run resumes,
and a changed setting never mixes with results of another recipe):
  1. split    FreeBSD fortunes -> train / held-out documents (deterministic, by hash)
  2. score    every document with the offline scorer (`toxjax score` machinery)
  3. vocab    a SentencePiece vocabulary trained on the training split
  4. train    a baseline and an INST model (and `--extra` arms, `toxjax.demo.arms`) on
              the same token budget, the toxic-scored training documents up-sampled;
              `--seeds N`: N models per arm (training and data-order seed 0..N-1)
  5. eval     RealToxicityPrompts protocol on prompts cut from held-out documents (the
              first half, at a word boundary; every toxic held-out document is one):
              25 samples x 20 new tokens, top-p 0.9; each conditioned model under its
              non-toxic and its toxic condition, read from its run directory (and with
              no prefix / with guidance on request); the same sampling seeds for all
  6. utility  held-out perplexity, plain and after the model's own prefix; recognition:
              does the model recognise toxic held-out documents (zero-shot AUCs), and its
              perplexity on the toxic and the non-toxic ones
  7. report   tables with 95% bootstrap CIs over prompts (and seeds) (console +
              report.md), report.png, and a final `RESULT ...` line
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from collections.abc import Sequence

from toxjax import fileio
from toxjax.demo import arms as arm_table
from toxjax.demo import evals
from toxjax.demo.arms import ARMS, Condition, conditions
from toxjax.demo.report import compared_arms, write_report
from toxjax.demo.stages import (
    DATA_PROTOCOL,
    HELDOUT_FRACTION,
    DemoConfig,
    model_dir,
    rtp_prompt,
    settings_key,
    stage_prompts,
    stage_score,
    stage_split,
    stage_train,
    stage_upsample,
    stage_vocab,
)
from toxjax.toxicity import options

__all__ = [
    "ARMS",
    "DemoConfig",
    "compared_arms",
    "conditions",
    "main",
    "rtp_prompt",
    "settings_key",
    "stage_upsample",
    "write_report",
]


def parse_strategies(strategies: str, extra: str = "") -> list[str]:
    """The demo's arms, baseline first (every delta in the report is against it)."""
    return arm_table.parse(strategies, extra)[0]


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
        help="also train these arms (" + ", ".join(ARMS) + "; each adds ~13 min per seed), "
        "and evaluate ARM+none (no prefix) or ARM+guidanceA (guided away from the toxic "
        "condition at scale A), e.g. inst-cooldown,mask,inst+guidance2,inst+none",
    )
    p.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="train every arm with N seeds (training and data-order seed 0..N-1; seed 0 is "
        "the 1-seed model); each seed is sampled with the same prompts and sampling seeds",
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
    from toxjax.errors import ConfigError

    try:  # bad flags: one line, exit 2, before anything is loaded
        cfg, work, plan = _check(args)
    except (SystemExit, ConfigError) as e:
        message = str(e.code if isinstance(e, SystemExit) else e)
        print(
            message if message.startswith("toxjax demo") else f"toxjax demo: {message}",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    from toxjax.locking import LockHeldError, WriterLock

    try:
        # One demo per workdir: two would train the same model directories at once.
        with WriterLock(os.path.join(work, LOCK_FILE), f"the demo workdir {work}") as lock:
            if lock.note:
                print(f"toxjax demo: {lock.note}", file=sys.stderr)
            return run(args, cfg, work, plan)
    except LockHeldError as e:
        print(f"toxjax demo: {e}", file=sys.stderr)
        return EXIT_LOCKED
    except ConfigError as e:
        print(f"toxjax demo: {e}", file=sys.stderr)
        return EXIT_CONFIG


def _check(args) -> tuple[DemoConfig, str, tuple[list[str], list[Condition], int]]:
    """The sizes, the workdir and the plan (arms, eval conditions, seeds) of the flags.

    Raises:
      SystemExit, ConfigError: a bad flag (one line).
    """
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
    if args.seeds < 1:
        raise SystemExit(f"toxjax demo: --seeds {args.seeds} must be at least 1")
    work = os.path.abspath(args.workdir)
    names, extras = arm_table.parse(args.strategies, args.extra)
    if os.path.exists(work) and not os.path.isdir(work):
        raise SystemExit(f"toxjax demo: --workdir {args.workdir} is a file, not a directory")
    return cfg, work, (names, conditions(names, extras), args.seeds)


def _estimate(cfg, work, data, data_key, plan, scorer_name) -> str:
    """What is left to do and how long it should take (from the measured recipe)."""
    from toxjax import registry

    names, conds, seeds = plan
    prompts = os.path.join(data, f"prompts-{cfg.num_prompts}.jsonl")
    held, held_scored = (os.path.join(data, f) for f in ("heldout.jsonl", "heldout.scored.jsonl"))
    models = evals_left = guided = recognitions = 0
    for seed in range(seeds):
        dirs = {}
        for name in names:
            arm = ARMS[name]
            task = registry.task_name(arm.corpus, arm.strategy)
            dirs[name] = model_dir(arm, task, work, cfg, data_key, seed)[0]
            models += not os.path.exists(os.path.join(dirs[name], "DONE"))
            out, _ = evals.recognition_dir(dirs[name], held_scored, work)
            recognitions += not os.path.exists(os.path.join(out, evals.RECOGNITION_FILE))
        for c in conds:
            out, _ = evals.eval_dir(c, dirs[c.arm], prompts, held, work, cfg, scorer_name, seed)
            if not os.path.exists(os.path.join(out, evals.RESULT_FILE)):
                evals_left += 1
                guided += bool(c.guidance)
    minutes = arm_table.estimate_minutes(cfg, models, evals_left, guided, recognitions)
    work_left = (
        f"{len(names)} arms x {seeds} seed{'s' * (seeds > 1)}: {models} models to train, "
        f"{evals_left} evals ({guided} guided) and {recognitions} recognition passes to run"
    )
    if minutes is None:
        return (
            f"{work_left}; no time estimate for {cfg.model_gin} (measured for "
            f"{arm_table.TRAIN_MODEL} only)"
        )
    return f"{work_left}: estimated ~{minutes:.0f} min on a quiet 2-core CPU"


def run(args, cfg: DemoConfig, work: str, plan) -> int:
    """Runs the stages in `work` (held by this process) and writes the report."""
    from toxjax import registry

    t0 = time.time()
    names, conds, seeds = plan
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

    estimate = _estimate(cfg, work, data, data_key, plan, scorer.name)
    print(f"demo: {estimate}", flush=True)
    print("demo [1/7] split", flush=True)
    train_path, held_path = stage_split(data, cfg)
    print("demo [2/7] score", flush=True)
    train_scored = stage_score(train_path, scorer_args)
    held_scored = stage_score(held_path, scorer_args)
    corpus_path = stage_upsample(train_scored, data, cfg.toxic_repeat)
    print("demo [3/7] vocab", flush=True)
    vocabulary = stage_vocab(train_scored, data, cfg.vocab_size)
    # One task per arm: its strategy under its AugmentConfig (the table in demo.arms).
    task_of = {}
    for name in names:
        arm = ARMS[name]
        (task_of[name],) = registry.register_corpus(
            arm.corpus,
            corpus_path,
            vocabulary,
            strategies=[arm.strategy],
            config=arm.config,
            overwrite=True,
        )
    print("demo [4/7] train", flush=True)
    model_dirs = {
        (n, seed): stage_train(ARMS[n], task_of[n], work, cfg, data_key, seed)
        for seed in range(seeds)
        for n in names
    }
    print("demo [5/7] eval + [6/7] utility", flush=True)
    prompts = stage_prompts(held_scored, data, cfg.num_prompts)
    runs = [
        [
            evals.stage_eval(
                c, model_dirs[c.arm, seed], prompts, held_path, work, cfg, scorer, seed
            )
            for c in conds
        ]
        for seed in range(seeds)
    ]
    recognitions = [
        {n: evals.stage_recognition(model_dirs[n, seed], held_scored, work) for n in names}
        for seed in range(seeds)
    ]
    print("demo [7/7] report", flush=True)
    write_report(
        work, cfg, scorer.name, model_dirs, runs, conds, recognitions, t0, f"planned: {estimate}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
