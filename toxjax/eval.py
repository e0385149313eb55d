"""`toxjax eval {toxicity,rescore,utility,bias,recognition}`: evaluate a checkpoint, a command per claim.

    toxjax eval toxicity --model_dir runs/inst --prompts rtp.jsonl --scorer detoxify-original
    toxjax eval toxicity --model_dir runs/inst --prompts rtp.jsonl --toxic_condition
    toxjax eval rescore --eval_dir runs/inst/eval/toxicity-inst --scorer hf:models/roberta-tox
    toxjax eval utility --model_dir runs/inst --lambada lambada_test.jsonl --piqa valid.jsonl
    toxjax eval bias --model_dir runs/inst --sbf SBIC.v2.agg.dev.csv
    toxjax eval recognition --model_dir runs/inst --docs heldout.scored.jsonl
    toxjax eval toxicity --model_dir models/gpt2 --prompts rtp.jsonl --condition_text "Be kind."

The run directory says how the model was trained (run.json: strategy and augmentation
config), so every command puts the model's own non-toxic conditioning prefix before each
prompt by default; `--toxic_condition` uses the toxic one (does the control work both
ways?), `--condition STRATEGY|none` overrides (with a warning when it differs from
training). Results go to `--output_dir` (default
`<model_dir>/eval/<command>-<condition>[-toxic]`) as `metrics.json`, which `toxjax
report` gathers.

`--model_dir` may also be a transformers checkpoint directory (GPT-2, GPT-NeoX / Pythia,
Llama: `toxjax.run_dir.open_model_dir`), converted to our model on load: the same
sampler, scoring and metrics files; metrics.json names it and its weights' sha256. It
has no prefix by default; `--condition_text TEXT` puts a literal one before each prompt
(on a toxjax run trained with a strategy, only together with `--condition none`: it
replaces the run's own prefix), `--condition STRATEGY` that strategy's default one.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Sequence

from toxjax import fileio
from toxjax.preprocessors.strategies import STRATEGIES
from toxjax.run_info import NO_CONDITION

CONDITIONS = (NO_CONDITION, *STRATEGIES)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="toxjax eval", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--model_dir",
        required=True,
        help="a `toxjax train` run directory, or a transformers checkpoint directory "
        "(GPT-2, GPT-NeoX / Pythia, Llama)",
    )
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
        "--condition_text",
        metavar="TEXT",
        help="a literal prefix before each prompt (a model without run.json; on a run "
        "trained with a strategy, with --condition none)",
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

    rs = sub.add_parser(
        "rescore",
        help="add another scorer's scores to a finished toxicity eval (no resampling)",
        description="Scores the continuations a finished `eval toxicity` kept with another "
        "scorer; metrics.json / metrics.md then show every scorer side by side, with CIs.",
    )
    rs.add_argument("--eval_dir", required=True, help="the output directory of eval toxicity")
    add_scorer_flags(rs, default=None)
    rs.add_argument(
        "--batch_texts",
        type=int,
        default=512,
        help="continuations per scoring call (whole prompts)",
    )
    rs.add_argument("--overwrite", action="store_true", help="start this scorer's rescore over")

    r = sub.add_parser(
        "recognition", parents=[common], help="zero-shot toxicity recognition AUC on documents"
    )
    r.add_argument("--docs", required=True, help="scored documents (`toxjax score` output)")
    r.add_argument("--limit", type=int, help="first N scored documents only")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from toxjax.checkpoint import CheckpointError
    from toxjax.locking import LockHeldError

    try:
        return run(args)
    except (OSError, ValueError, CheckpointError, LockHeldError) as e:
        print(f"toxjax eval {args.command}: {e}", file=sys.stderr)
        return 2


def run(args) -> int:
    if args.command == "rescore":
        from toxjax.evaluation import rescore

        if args.scorer is None:
            raise ValueError("give the --scorer to add (e.g. --scorer hf:DIR)")
        if args.batch_texts < 1:
            raise ValueError(f"--batch_texts must be >= 1, got {args.batch_texts}")
        return rescore.main(args)
    from toxjax.evaluation.outputs import EvalOutput
    from toxjax.run_dir import open_model_dir

    if args.command == "toxicity":
        from toxjax.toxicity.options import check_scorer_flags

        check_scorer_flags(args, "toxjax eval toxicity")  # before anything loads
    # run.json (or config.json) and the vocabulary, once; a bad condition fails here,
    # before any loading.
    run_dir = open_model_dir(args.model_dir)
    cond = run_dir.conditioning(args.condition, args.toxic_condition, text=args.condition_text)
    guided = getattr(args, "guidance", 0.0) != 0
    negative = guidance_for(args, run_dir, cond) if guided else None
    label = cond.label + (f"-guidance{args.guidance:g}" if guided else "")
    output_dir = args.output_dir or os.path.join(run_dir.path, "eval", f"{args.command}-{label}")
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
    runner = {
        "toxicity": _toxicity,
        "utility": _utility,
        "bias": _bias,
        "recognition": _recognition,
    }[args.command]
    # One writer per output directory, taken before any model is loaded.
    with EvalOutput(output_dir) as out:
        runner(args, run_dir, cond, facts, out)
    return 0


def guidance_for(args, run_dir, cond):
    """The condition `--guidance` steers away from: the toxic variant of `cond`."""
    if args.toxic_condition:
        raise ValueError("--guidance steers away from the toxic condition: drop --toxic_condition")
    if cond.condition not in STRATEGIES or not STRATEGIES[cond.condition].conditioned:
        have = ", ".join(n for n, s in STRATEGIES.items() if s.conditioned)
        raise ValueError(
            f"--guidance needs a condition with a toxic variant ({have}); this eval's "
            f"condition is {cond.condition!r}"
        )
    return run_dir.conditioning(args.condition, toxic=True, warn=lambda _: None)


def _toxicity(args, run_dir, cond, facts, out) -> None:
    from toxjax.decode import SamplingConfig
    from toxjax.evaluation import toxicity
    from toxjax.evaluation.prompts import load_prompts
    from toxjax.toxicity.options import build_scorer, scorer_identity

    try:  # fail fast on bad input, in one line, before the model loads
        prompts = load_prompts(args.prompts, limit=args.limit)
        prompts_identity = fileio.file_identity(args.prompts)
    except (OSError, ValueError) as e:
        raise ValueError(f"--prompts: {e}") from None
    scorer = build_scorer(args, "toxjax eval toxicity")
    mesh = None
    if args.data_parallel:
        from toxjax.sharding import make_mesh

        mesh = make_mesh()
    loaded = run_dir.load(args.step)
    sampling = SamplingConfig(
        num_decodes=args.num_decodes,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        guidance=args.guidance,
        eos_id=loaded.vocabulary.eos_id,
    )
    lm = loaded.lm(
        sampling=sampling,
        mesh=mesh,
        seed=args.seed,
        batch_size=args.batch_size,
        negative_prefix_ids=facts["guidance"]["negative_prefix_ids"] if "guidance" in facts else (),
    )
    # What makes these samples; a resume with any of it changed is refused.
    identity = {
        "model": loaded.identity(),
        "prompts": prompts_identity,
        "sampling": dataclasses.asdict(lm.sampling),
        "seed": args.seed,
        "scorer": scorer_identity(args),
    }
    if "guidance" in facts:
        identity["guidance"] = facts["guidance"]
    toxicity.evaluate_toxicity(
        lm,
        scorer,
        prompts,
        out,
        prefix=cond.prefix,
        prefix_ids=cond.prefix_ids,
        batch_size=args.batch_size,
        config={
            **facts,
            "model": loaded.describe(),
            "step": loaded.step,
            "prompts_file": args.prompts,
            "sampling": dataclasses.asdict(lm.sampling),
        },
        identity=identity,
        overwrite=args.overwrite,
    )
    with open(out.path(toxicity.TABLE_FILE)) as f:
        print(f.read())


def _utility(args, run_dir, cond, facts, out) -> None:
    from toxjax.evaluation.utility import TASKS, evaluate_utility

    paths = {t: getattr(args, t) for t in (*TASKS, "perplexity") if getattr(args, t)}
    if not paths:
        raise ValueError("give at least one task file, e.g. --lambada lambada_test.jsonl")
    loaded = run_dir.load(args.step)
    lm = loaded.lm(prefix_ids=cond.prefix_ids, seed=args.seed, batch_size=args.batch_size)
    result = evaluate_utility(lm, paths, max_len=loaded.config.max_len)
    result.update(facts, model=loaded.describe(), step=loaded.step, files=paths)
    _write(result, out)


def _bias(args, run_dir, cond, facts, out) -> None:
    from toxjax.evaluation.bias import evaluate_bias

    loaded = run_dir.load(args.step)
    lm = loaded.lm(prefix_ids=cond.prefix_ids, seed=args.seed, batch_size=args.batch_size)
    result = evaluate_bias(
        lm, args.sbf, args.exemplars, num_shots=args.num_shots, seed=args.seed, limit=args.limit
    )
    result.update(facts, model=loaded.describe(), step=loaded.step, file=args.sbf)
    _write(result, out)


def _recognition(args, run_dir, cond, facts, out) -> None:
    from toxjax.evaluation import recognition

    try:  # bad documents: one line, before the model loads
        docs, unscored = recognition.load_documents(args.docs, args.limit)
    except (OSError, ValueError) as e:
        raise ValueError(f"--docs: {e}") from None
    # The likelihood ratio between the condition's toxic and non-toxic variants, where
    # the condition has both (the strategy table says which do).
    toxic_ids = nontoxic_ids = None
    if cond.condition in STRATEGIES and STRATEGIES[cond.condition].conditioned:
        toxic_ids, nontoxic_ids = (
            run_dir.conditioning(args.condition, toxic, lambda _: None).prefix_ids
            for toxic in (True, False)
        )
    loaded = run_dir.load(args.step)
    lm = loaded.lm(prefix_ids=cond.prefix_ids, seed=args.seed, batch_size=args.batch_size)
    rows = recognition.evaluate(
        lm, docs, loaded.config.max_len, cond.prefix_ids, toxic_ids, nontoxic_ids
    )
    out.write_text("documents.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    result = {
        "task": "recognition",
        "metrics": recognition.summary(recognition.Documents.from_rows(rows)),
        "question": recognition.QUESTION,
        "num_unscored": unscored,
    }
    result.update(facts, step=loaded.step, file=args.docs)
    _write(result, out)


def _write(result: dict, out) -> None:
    out.write_json("metrics.json", result)
    print(json.dumps(result["metrics"], indent=2))
