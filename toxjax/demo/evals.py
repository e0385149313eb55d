"""The demo's eval stages, keyed on their settings like the others (`toxjax.demo.stages`):
sampling + perplexity per model and condition, and recognition per model.

`eval_dir` / `recognition_dir` name a stage's output before it runs, so the demo can say
at the start what is left to do.
"""

from __future__ import annotations

import json
import os
import time

from toxjax import fileio
from toxjax.demo.arms import Condition
from toxjax.demo.stages import DemoConfig, settings_key

# Bumped whenever a stage's output changes meaning (the number is part of its key):
# eval 4 = prefix from run.json, per-prompt CIs; recognition 1 = yes/no and
# condition-ratio scores, per-document log-probs.
RESULT_PROTOCOL = 4
RECOGNITION_PROTOCOL = 1
EVAL_SEED = 0  # the sampling seed: the same for every model of every arm and seed
RESULT_FILE, RECOGNITION_FILE = "demo_result.json", "demo_recognition.json"


def eval_dir(
    cond: Condition,
    model_dir: str,
    prompts_path: str,
    heldout: str,
    work: str,
    cfg: DemoConfig,
    scorer_name: str,
    seed: int = 0,
) -> tuple[str, dict]:
    """`(eval/<name>[-seed<seed>]-<key>, its settings)`; the model's own and toxic
    conditions at seed 0 keep the keys they had before arms and seeds."""
    settings = {
        "protocol": RESULT_PROTOCOL,
        "model": os.path.basename(model_dir),
        "toxic": cond.toxic,
        "prompts": os.path.relpath(prompts_path, work),
        "heldout": os.path.relpath(heldout, work),
        "num_decodes": cfg.num_decodes,
        "max_new_tokens": cfg.max_new_tokens,
        "seed": EVAL_SEED,
        "scorer": scorer_name,
        **cond.settings(),
    }
    label = cond.name + (f"-seed{seed}" if seed else "")
    return os.path.join(work, "eval", f"{label}-{settings_key(settings)}"), settings


def recognition_dir(model_dir: str, held_scored: str, work: str) -> tuple[str, dict]:
    """`(recognition/<model>-<key>, its settings)`."""
    from toxjax.evaluation import recognition

    settings = {
        "protocol": RECOGNITION_PROTOCOL,
        "model": os.path.basename(model_dir),
        "docs": os.path.relpath(held_scored, work),
        "question": recognition.QUESTION,
    }
    name = f"{settings['model']}-{settings_key(settings)}"
    return os.path.join(work, "recognition", name), settings


def _done(path: str) -> dict | None:
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return None


def stage_eval(
    cond: Condition,
    model_dir: str,
    prompts_path: str,
    heldout: str,
    work: str,
    cfg: DemoConfig,
    scorer,
    seed: int = 0,
) -> dict:
    """Samples, scores and reads perplexity for one model (of training seed `seed`) under
    one condition, into `eval/<name>[-seed<seed>]-<key>`. The prefix comes from the
    model's run directory (its strategy and augmentation config as trained), like
    `toxjax eval`; the sampling seeds are the same for every model (a paired design)."""
    from toxjax.decode import SamplingConfig
    from toxjax.evaluation import generations, utility
    from toxjax.evaluation import toxicity as tox_eval
    from toxjax.evaluation.prompts import load_prompts
    from toxjax.run_dir import RunDir
    from toxjax.run_info import NO_CONDITION

    out_dir, settings = eval_dir(
        cond, model_dir, prompts_path, heldout, work, cfg, scorer.name, seed
    )
    label = cond.name + (f"-seed{seed}" if seed else "")
    if (done := _done(os.path.join(out_dir, RESULT_FILE))) is not None:
        return done  # (the samples resume from their own files)
    t0 = time.time()
    run = RunDir.open(model_dir)
    quiet = lambda _: None  # noqa: E731  (leaving the prefix out is this condition's point)
    cond_prefix = run.conditioning(NO_CONDITION if cond.no_prefix else None, cond.toxic, quiet)
    negative = run.conditioning(None, True).prefix_ids if cond.guidance else ()
    loaded = run.load()
    sampling = SamplingConfig(
        num_decodes=cfg.num_decodes,
        max_new_tokens=cfg.max_new_tokens,
        top_p=0.9,
        temperature=1.0,
        top_k=0,
        guidance=cond.guidance,
        eos_id=loaded.vocabulary.eos_id,
    )
    lm = loaded.lm(sampling=sampling, seed=EVAL_SEED, batch_size=8, negative_prefix_ids=negative)
    print(f"demo: sampling {label} (prefix {cond_prefix.prefix!r})", flush=True)
    gen_dir = os.path.join(out_dir, "toxicity")
    res = tox_eval.evaluate_toxicity(
        lm,
        scorer,
        load_prompts(prompts_path),
        gen_dir,
        prefix=cond_prefix.prefix,
        prefix_ids=cond_prefix.prefix_ids,
        config={"model_dir": model_dir, "condition": cond.name, "settings": settings},
        # A guided eval's samples also depend on the condition it steers away from (the
        # other conditions keep the identity their generations files were started with).
        identity={"guidance": cond.guidance, "negative_prefix_ids": list(negative)}
        if cond.guidance
        else None,
    )
    ppl = utility.perplexity(lm, heldout, loaded.config.max_len - 1)
    # The same text read after the model's own prefix (its deployed condition; only the
    # text is scored). A MEDA/INST model never saw a document start without a prefix,
    # so the plain number charges it for that one first token of every document.
    with_prefix = (
        utility.perplexity(lm, heldout, loaded.config.max_len - 1, cond_prefix.prefix_ids)
        if cond_prefix.prefix_ids
        else ppl
    )
    result = {
        "name": cond.name,
        "model_dir": os.path.relpath(model_dir, work),
        "strategy": run.info.strategy,
        "prefix": cond_prefix.prefix,
        "generations": os.path.relpath(os.path.join(gen_dir, generations.GENERATIONS_FILE), work),
        "metrics": res["metrics"],
        "ppl": ppl["ppl"],
        "ppl_tokens": ppl["num_tokens"],
        "ppl_with_prefix": with_prefix["ppl"],
        "minutes": (time.time() - t0) / 60,
        "settings": settings,
    }
    fileio.write_json(os.path.join(out_dir, RESULT_FILE), result, sort_keys=False)
    return result


def stage_recognition(model_dir: str, held_scored: str, work: str) -> dict:
    """Whether one model recognises toxicity, zero-shot, on the held-out documents, and
    its perplexity split by their score (`toxjax.evaluation.recognition`), into
    `recognition/<model>-<key>/`: `documents.jsonl` (one row per document) and
    `demo_recognition.json` (the summary; the report reads the documents)."""
    from toxjax.evaluation import recognition
    from toxjax.preprocessors import get_strategy
    from toxjax.run_dir import RunDir

    out_dir, settings = recognition_dir(model_dir, held_scored, work)
    if (done := _done(os.path.join(out_dir, RECOGNITION_FILE))) is not None:
        return done
    t0 = time.time()
    run = RunDir.open(model_dir)
    own = run.conditioning(None, False)
    toxic_ids = nontoxic_ids = None
    if run.info.strategy is not None and get_strategy(run.info.strategy).conditioned:
        # The likelihood ratio between its two conditions.
        toxic_ids, nontoxic_ids = run.conditioning(None, True).prefix_ids, own.prefix_ids
    docs, unscored = recognition.load_documents(held_scored, both_classes=False)
    loaded = run.load()
    lm = loaded.lm(prefix_ids=own.prefix_ids, batch_size=8)
    print(f"demo: recognition of {settings['model']} on {len(docs)} documents", flush=True)
    rows = recognition.evaluate(
        lm, docs, loaded.config.max_len - 1, own.prefix_ids, toxic_ids, nontoxic_ids
    )
    os.makedirs(out_dir, exist_ok=True)
    fileio.write_jsonl(os.path.join(out_dir, "documents.jsonl"), rows)
    result = {
        "model_dir": os.path.relpath(model_dir, work),
        "documents": os.path.relpath(os.path.join(out_dir, "documents.jsonl"), work),
        "summary": recognition.summary(recognition.Documents.from_rows(rows)),
        "num_unscored": unscored,
        "minutes": (time.time() - t0) / 60,
        "settings": settings,
    }
    fileio.write_json(os.path.join(out_dir, RECOGNITION_FILE), result, sort_keys=False)
    return result
