"""The demo's stages, each keyed on its settings (see `toxjax.demo`).

Every stage writes its output whole or not at all (`toxjax.fileio`) into a directory
whose name hashes its settings (`settings_key`), so a rerun reuses what it can, a killed
run resumes, and a changed setting never mixes with results of another recipe.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import time
from collections.abc import Sequence

from toxjax import corpus, fileio
from toxjax.evaluation.prompts import TOXIC_THRESHOLD

# Bumped whenever a stage's output changes meaning, so a rerun recomputes it (the
# number is part of the stage's key): data 2 = toxic-scored up-sampling and RTP-cut
# prompts; train 2 = keyed model directories; eval 4 = prefix from run.json, per-prompt
# CIs.
DATA_PROTOCOL = 2
TRAIN_PROTOCOL = 2
RESULT_PROTOCOL = 4
HELDOUT_FRACTION = 0.05
EVAL_SEED = 0


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """Sizes of one demo run. `full()` is the README demo; `quick()` the test-suite one.

    The recipe of `full()` and why: docs/demo.md.
    """

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
    toxic_repeat: int  # copies of each toxic-scored training document (1 = as is)
    max_docs: int | None  # cap on documents (quick mode)

    @staticmethod
    def full() -> DemoConfig:
        return DemoConfig("models/cpu_demo.gin", (), 4096, 128, 16, 900, 2e-3, 300, 25, 20, 8, None)

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
            2,
            1500,
        )


def settings_key(settings: dict) -> str:
    """8 hex digits naming a stage's settings (its output directory's suffix)."""
    blob = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:8]


def _stable_fraction(key: str) -> float:
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 0x100000000


def stage_split(data: str, cfg: DemoConfig) -> tuple[str, str]:
    """Documents -> train.jsonl / heldout.jsonl (5% held out, by a hash of file:line)."""
    train_path, held_path = os.path.join(data, "train.jsonl"), os.path.join(data, "heldout.jsonl")
    if os.path.exists(train_path) and os.path.exists(held_path):
        return train_path, held_path
    train, held = [], []
    for name in corpus.fortune_files():
        for line, text in corpus.read_fortunes(name):
            doc = {"text": text, "source": f"{name}:{line}"}
            (held if _stable_fraction(doc["source"]) < HELDOUT_FRACTION else train).append(doc)
    if cfg.max_docs:
        train = sorted(train, key=lambda d: _stable_fraction("q" + d["source"]))[: cfg.max_docs]
        held = sorted(held, key=lambda d: _stable_fraction("q" + d["source"]))[: cfg.max_docs // 5]
    fileio.write_jsonl(held_path, held)
    fileio.write_jsonl(train_path, train)
    return train_path, held_path


def stage_score(path: str, scorer_args: Sequence[str]) -> str:
    """Scores a jsonl file with `toxjax score` (resumable); returns the scored path.

    A finished output is reused as it is: its data directory is keyed on the scorer and
    the corpus settings, so it holds what this call would write, also in a copied workdir
    (where `toxjax score` would refuse to resume an input read from another path).
    """
    from toxjax.toxicity import annotate

    out = path.replace(".jsonl", ".scored.jsonl")
    if _finished(out + ".progress.json"):
        return out
    args = annotate.build_parser().parse_args(["--input", path, "--output", out, *scorer_args])
    prog = annotate.run(args)
    if prog.failed:
        print(
            f"demo: {prog.failed} of {prog.records} documents could not be scored; see "
            f"{out}.failed.jsonl",
            file=sys.stderr,
        )
    return out


def _finished(marker: str) -> bool:
    try:
        with open(marker) as f:
            return bool(json.load(f).get("done"))
    except (OSError, ValueError, AttributeError):
        return False


def stage_upsample(scored: str, data: str, repeat: int) -> str:
    """Training corpus: every scored document, the toxic-scored ones `repeat` times, in a
    fixed shuffled order.

    Toxic-*scored* documents, not the offensive files: most entries of `fortunes-o` score
    below 0.5, and repeating them taught the non-toxic instruction rude text (docs/demo.md).
    The shuffle is on disk because seqio's shuffle buffer only mixes neighbours: in file
    order a model's last steps, and so its toxicity, depend on where its budget ends.
    """
    path = os.path.join(data, f"train.corpus.toxic-x{repeat}.jsonl")
    if not os.path.exists(path):
        docs = [
            (f"{d['source']}#{k}", d)
            for d in fileio.read_jsonl(scored)
            if d.get("toxicity") is not None
            for k in range(repeat if d["toxicity"] > TOXIC_THRESHOLD else 1)
        ]
        docs.sort(key=lambda kd: _stable_fraction("order:" + kd[0]))
        fileio.write_jsonl(path, [d for _, d in docs])
    return path


def stage_vocab(train_path: str, data: str, vocab_size: int):
    from toxjax import vocab, vocab_train

    model = os.path.join(data, "spm.model")
    if not os.path.exists(model):
        print(f"demo: training a {vocab_size}-piece SentencePiece vocabulary", flush=True)
        vocab_train.train_sentencepiece([train_path], model, vocab_size=vocab_size)
    return vocab.sentencepiece_vocabulary(model)


def stage_train(strategy: str, task: str, work: str, cfg: DemoConfig, data_key: str) -> str:
    """Trains one model into `models/<strategy>-<key>` (the key hashes the data and every
    training setting: a changed `--steps` trains a new model, never resumes an old one)."""
    import gin

    from toxjax import gin_utils
    from toxjax import train as train_lib

    settings = {
        "protocol": TRAIN_PROTOCOL,
        "data": data_key,
        "strategy": strategy,
        "task": task,
        **{
            k: getattr(cfg, k)
            for k in (
                "model_gin",
                "model_bindings",
                "sequence_length",
                "batch_size",
                "num_steps",
                "learning_rate",
            )
        },
    }
    model_dir = os.path.join(work, "models", f"{strategy}-{settings_key(settings)}")
    done = os.path.join(model_dir, "DONE")
    if os.path.exists(done):
        return model_dir
    os.makedirs(model_dir, exist_ok=True)
    with open(os.path.join(model_dir, "demo_settings.json"), "w") as f:
        json.dump(settings, f, indent=2, sort_keys=True)
    gin.clear_config()
    gin_utils.parse_gin(
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
    print(f"demo: training {strategy} on {task} ({cfg.num_steps} steps) -> {model_dir}", flush=True)
    t0 = time.time()
    train_lib.train()
    with open(done, "w") as f:
        json.dump({"minutes": (time.time() - t0) / 60}, f)
    return model_dir


def rtp_prompt(text: str) -> str | None:
    """The first half of a document by words, cut at a word boundary (RealToxicityPrompts
    cuts its sentences the same way); None for documents under 4 words."""
    words = text.split()
    if len(words) < 4:
        return None
    return " ".join(words[: len(words) // 2])


def stage_prompts(held_scored: str, data: str, num_prompts: int) -> str:
    """RTP-style prompts from held-out documents, split toxic / non-toxic by the
    document's score: every toxic document (up to half the prompts), then non-toxic
    ones to `num_prompts`, each in a fixed hash order, chosen before any model is seen.
    `prompt.toxicity` is the document's score."""
    path = os.path.join(data, f"prompts-{num_prompts}.jsonl")
    if os.path.exists(path):
        return path
    docs = sorted(fileio.read_jsonl(held_scored), key=lambda d: _stable_fraction("p" + d["source"]))
    rows = [
        (d, cut) for d in docs if d.get("toxicity") is not None and (cut := rtp_prompt(d["text"]))
    ]
    toxic = [r for r in rows if r[0]["toxicity"] > TOXIC_THRESHOLD][: num_prompts // 2]
    clean = [r for r in rows if r[0]["toxicity"] <= TOXIC_THRESHOLD][: num_prompts - len(toxic)]
    fileio.write_jsonl(
        path,
        [
            {
                "prompt": {"text": cut, "toxicity": d["toxicity"]},
                "source": d["source"],
                "challenging": False,
            }
            for d, cut in toxic + clean
        ],
    )
    return path


def stage_eval(
    name: str,
    model_dir: str,
    toxic: bool,
    prompts_path: str,
    heldout: str,
    work: str,
    cfg: DemoConfig,
    scorer,
) -> dict:
    """Samples, scores and reads perplexity for one model under one condition, into
    `eval/<name>-<key>`. The prefix comes from the model's run directory (its strategy
    and augmentation config as trained), like `toxjax eval`."""
    from toxjax.decode import SamplingConfig
    from toxjax.evaluation import generations, utility
    from toxjax.evaluation import toxicity as tox_eval
    from toxjax.evaluation.prompts import load_prompts
    from toxjax.run_dir import RunDir

    settings = {
        "protocol": RESULT_PROTOCOL,
        "model": os.path.basename(model_dir),
        "toxic": toxic,
        "prompts": os.path.relpath(prompts_path, work),
        "heldout": os.path.relpath(heldout, work),
        "num_decodes": cfg.num_decodes,
        "max_new_tokens": cfg.max_new_tokens,
        "seed": EVAL_SEED,
        "scorer": scorer.name,
    }
    out_dir = os.path.join(work, "eval", f"{name}-{settings_key(settings)}")
    result_path = os.path.join(out_dir, "demo_result.json")
    if os.path.exists(result_path):
        with open(result_path) as f:
            return json.load(f)  # (the samples resume from their own files)
    t0 = time.time()
    run = RunDir.open(model_dir)
    cond = run.conditioning(None, toxic)
    loaded = run.load()
    sampling = SamplingConfig(
        num_decodes=cfg.num_decodes,
        max_new_tokens=cfg.max_new_tokens,
        top_p=0.9,
        temperature=1.0,
        top_k=0,
        eos_id=loaded.vocabulary.eos_id,
    )
    lm = loaded.lm(sampling=sampling, seed=EVAL_SEED, batch_size=8)
    print(f"demo: sampling {name} (prefix {cond.prefix!r})", flush=True)
    gen_dir = os.path.join(out_dir, "toxicity")
    res = tox_eval.evaluate_toxicity(
        lm,
        scorer,
        load_prompts(prompts_path),
        gen_dir,
        prefix=cond.prefix,
        prefix_ids=cond.prefix_ids,
        config={"model_dir": model_dir, "condition": name, "settings": settings},
    )
    ppl = utility.perplexity(lm, heldout, loaded.config.max_len - 1)
    # The same text read after the model's own prefix (its deployed condition; only the
    # text is scored). A MEDA/INST model never saw a document start without a prefix,
    # so the plain number charges it for that one first token of every document.
    with_prefix = (
        utility.perplexity(lm, heldout, loaded.config.max_len - 1, cond.prefix_ids)
        if cond.prefix_ids
        else ppl
    )
    result = {
        "name": name,
        "model_dir": os.path.relpath(model_dir, work),
        "strategy": run.info.strategy,
        "prefix": cond.prefix,
        "generations": os.path.relpath(os.path.join(gen_dir, generations.GENERATIONS_FILE), work),
        "metrics": res["metrics"],
        "ppl": ppl["ppl"],
        "ppl_tokens": ppl["num_tokens"],
        "ppl_with_prefix": with_prefix["ppl"],
        "minutes": (time.time() - t0) / 60,
        "settings": settings,
    }
    fileio.write_json(result_path, result, sort_keys=False)
    return result
