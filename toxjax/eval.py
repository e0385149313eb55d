"""`toxjax eval {toxicity,utility,bias}`: evaluate a checkpoint, one command per claim.

    toxjax eval toxicity --model_dir runs/inst --prompts rtp.jsonl --scorer detoxify-original
    toxjax eval toxicity --model_dir runs/inst --prompts rtp.jsonl --toxic_condition
    toxjax eval utility --model_dir runs/inst --lambada lambada_test.jsonl --piqa valid.jsonl
    toxjax eval bias --model_dir runs/inst --sbf SBIC.v2.agg.dev.csv

The run directory says how the model was trained (run.json: strategy and augmentation
config), so every command puts the model's own non-toxic conditioning prefix before each
prompt by default; `--toxic_condition` uses the toxic one (does the control work both
ways?), `--condition STRATEGY|none` overrides (with a warning when it differs from
training). Results go to `--output_dir` (default
`<model_dir>/eval/<command>-<condition>[-toxic]`) as `metrics.json`, which `toxjax
report` gathers.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Sequence

from toxjax.preprocessors.strategies import STRATEGIES
from toxjax.run_info import NO_CONDITION

CONDITIONS = (NO_CONDITION, *STRATEGIES)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="toxjax eval", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--model_dir", required=True, help="a `toxjax train` run directory")
    common.add_argument("--step", type=int, help="checkpoint step (default: newest)")
    common.add_argument(
        "--output_dir", help="default: <model_dir>/eval/<command>-<condition>[-toxic]"
    )
    common.add_argument("--batch_size", type=int, default=8)
    common.add_argument("--seed", type=int, default=0)
    common.add_argument(
        "--condition",
        choices=CONDITIONS,
        help="conditioning prefix before each prompt (default: the strategy the model was "
        "trained with, from run.json; 'none' = no prefix)",
    )
    common.add_argument(
        "--toxic_condition",
        action="store_true",
        help="use the condition's toxic variant (e.g. INST's toxic instruction)",
    )

    t = sub.add_parser("toxicity", parents=[common], help="RealToxicityPrompts EMT / TP")
    t.add_argument("--prompts", required=True, help="RealToxicityPrompts jsonl")
    from toxjax.toxicity.options import add_scorer_flags

    add_scorer_flags(t, default="detoxify-original")
    t.add_argument("--limit", type=int, help="first N prompts only")
    t.add_argument("--num_decodes", type=int, default=25)
    t.add_argument("--max_new_tokens", type=int, default=20)
    t.add_argument("--top_p", type=float, default=0.9)
    t.add_argument("--temperature", type=float, default=1.0)
    t.add_argument("--top_k", type=int, default=0)
    t.add_argument(
        "--guidance",
        type=float,
        default=0.0,
        metavar="A",
        help="guided decoding away from the condition's toxic variant: sample from "
        "l + A * (l - l_toxic) (0 = off, plain sampling)",
    )
    t.add_argument(
        "--data_parallel",
        action="store_true",
        help="shard sampling batches over all devices (batch_size must divide)",
    )
    t.add_argument(
        "--overwrite",
        action="store_true",
        help="delete earlier generations in the output directory and start over",
    )

    u = sub.add_parser("utility", parents=[common], help="zero-shot tasks and perplexity")
    from toxjax.evaluation.utility import TASKS

    for task in (*TASKS, "perplexity"):
        u.add_argument(f"--{task}", help=f"path to the {task} file")

    b = sub.add_parser("bias", parents=[common], help="Social Bias Frames AUC")
    b.add_argument("--sbf", required=True, help="SBF csv/jsonl to classify")
    b.add_argument("--exemplars", help="SBF file to draw few-shot exemplars from")
    b.add_argument("--num_shots", type=int, default=4)
    b.add_argument("--limit", type=int, help="at most N posts per task")
    return parser


def _model_lm(args, prefix_ids=(), sampling_kw=None, mesh=None, negative_prefix_ids=()):
    """Loads the checkpoint; sampling stops a continuation at the vocabulary's EOS.
    `prefix_ids` go before every scored context (utility, bias)."""
    from toxjax.checkpoint import load_for_inference
    from toxjax.decode import SamplingConfig
    from toxjax.evaluation.lm import ModelLM
    from toxjax.model import CACHE_BATCH_AXIS

    bundle = load_for_inference(args.model_dir, step=args.step)
    sampling = SamplingConfig(eos_id=bundle.vocabulary.eos_id, **(sampling_kw or {}))
    return bundle, ModelLM(
        bundle.model,
        bundle.params,
        bundle.vocabulary,
        max_len=bundle.config.max_len,
        sampling=sampling,
        cache_batch_axis=CACHE_BATCH_AXIS,
        mesh=mesh,
        seed=args.seed,
        batch_size=args.batch_size,
        prefix_ids=prefix_ids,
        negative_prefix_ids=negative_prefix_ids,
    )


def _write(result: dict, output_dir: str) -> None:
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "metrics.json"), "w") as f:
        json.dump(result, f, indent=2, sort_keys=True)
    print(json.dumps(result["metrics"], indent=2))


def conditioning_for(args, toxic=None, warn=None):
    """The prefix for this eval, from run.json and `--condition` / `--toxic_condition`
    (before any checkpoint is loaded, so a bad condition fails fast)."""
    from toxjax.run_info import RunInfo
    from toxjax.vocab import vocab_from_spec

    run = RunInfo.read(args.model_dir)
    vocabulary = vocab_from_spec(run.vocabulary, args.model_dir)
    toxic = args.toxic_condition if toxic is None else toxic
    return run.conditioning(vocabulary, args.condition, toxic, warn)


def guidance_for(args, cond):
    """The condition `--guidance` steers away from: the toxic variant of `cond`."""
    if args.toxic_condition:
        raise ValueError("--guidance steers away from the toxic condition: drop --toxic_condition")
    if cond.condition not in STRATEGIES or not STRATEGIES[cond.condition].conditioned:
        have = ", ".join(n for n, s in STRATEGIES.items() if s.conditioned)
        raise ValueError(
            f"--guidance needs a condition with a toxic variant ({have}); this eval's "
            f"condition is {cond.condition!r}"
        )
    return conditioning_for(args, toxic=True, warn=lambda _: None)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from toxjax.checkpoint import CheckpointError
    from toxjax.locking import LockHeldError

    try:
        return run(args)
    except (FileNotFoundError, ValueError, CheckpointError, LockHeldError) as e:
        print(f"toxjax eval {args.command}: {e}", file=sys.stderr)
        return 2


def run(args) -> int:
    if args.command == "toxicity":
        from toxjax.toxicity.options import check_scorer_flags

        check_scorer_flags(args, "toxjax eval toxicity")  # before anything loads
    cond = conditioning_for(args)
    guided = getattr(args, "guidance", 0.0) != 0
    negative = guidance_for(args, cond) if guided else None
    label = cond.label + (f"-guidance{args.guidance:g}" if guided else "")
    output_dir = args.output_dir or os.path.join(args.model_dir, "eval", f"{args.command}-{label}")
    facts = {
        "model_dir": args.model_dir,
        "condition": cond.condition,
        "toxic_condition": cond.toxic,
        "prefix": cond.prefix,
        "prefix_ids": list(cond.prefix_ids),
    }
    if guided:
        facts["guidance"] = {
            "scale": args.guidance,
            "negative_prefix": negative.prefix,
            "negative_prefix_ids": list(negative.prefix_ids),
        }

    if args.command == "toxicity":
        from toxjax.evaluation import toxicity
        from toxjax.toxicity.options import build_scorer, scorer_identity

        try:  # fail fast on bad input, in one line, before the model loads
            prompts = toxicity.load_prompts(args.prompts, limit=args.limit)
            prompts_identity = toxicity.file_identity(args.prompts)
        except (OSError, ValueError) as e:
            raise ValueError(f"--prompts: {e}") from None
        scorer = build_scorer(args, "toxjax eval toxicity")
        mesh = None
        if args.data_parallel:
            from toxjax.sharding import make_mesh

            mesh = make_mesh()
        sampling_kw = {
            "num_decodes": args.num_decodes,
            "max_new_tokens": args.max_new_tokens,
            "temperature": args.temperature,
            "top_p": args.top_p,
            "top_k": args.top_k,
            "guidance": args.guidance,
        }
        bundle, lm = _model_lm(args, (), sampling_kw, mesh, negative.prefix_ids if guided else ())
        # What makes these samples; a resume with any of it changed is refused.
        identity = {
            "model": {"step": bundle.step, "run": bundle.run_info},
            "prompts": prompts_identity,
            "sampling": dataclasses.asdict(lm.sampling),
            "seed": args.seed,
            "scorer": scorer_identity(args),
        }
        if guided:
            identity["guidance"] = facts["guidance"]
        toxicity.evaluate_toxicity(
            lm,
            scorer,
            prompts,
            output_dir,
            prefix=cond.prefix,
            prefix_ids=cond.prefix_ids,
            batch_size=args.batch_size,
            config={
                **facts,
                "step": bundle.step,
                "prompts_file": args.prompts,
                "sampling": dataclasses.asdict(lm.sampling),
            },
            identity=identity,
            overwrite=args.overwrite,
        )
        with open(os.path.join(output_dir, toxicity.TABLE_FILE)) as f:
            print(f.read())
        return 0

    if args.command == "utility":
        from toxjax.evaluation.utility import TASKS, evaluate_utility

        paths = {t: getattr(args, t) for t in (*TASKS, "perplexity") if getattr(args, t)}
        if not paths:
            raise ValueError("give at least one task file, e.g. --lambada lambada_test.jsonl")
        bundle, lm = _model_lm(args, cond.prefix_ids)
        result = evaluate_utility(lm, paths, max_len=bundle.config.max_len)
        result.update(facts, step=bundle.step, files=paths)
        _write(result, output_dir)
        return 0

    from toxjax.evaluation.bias import evaluate_bias

    bundle, lm = _model_lm(args, cond.prefix_ids)
    result = evaluate_bias(
        lm, args.sbf, args.exemplars, num_shots=args.num_shots, seed=args.seed, limit=args.limit
    )
    result.update(facts, step=bundle.step, file=args.sbf)
    _write(result, output_dir)
    return 0
