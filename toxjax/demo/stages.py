"""The demo's data and training stages, each keyed on its settings (see `toxjax.demo`;
the eval stages are in `toxjax.demo.evals`).

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
from toxjax.demo.arms import ArmSpec
from toxjax.evaluation.prompts import TOXIC_THRESHOLD

# Bumped whenever a stage's output changes meaning, so a rerun recomputes it (the
# number is part of the stage's key): data 2 = toxic-scored up-sampling and RTP-cut
# prompts; train 2 = keyed model directories. (The eval stages: `toxjax.demo.evals`.)
DATA_PROTOCOL = 2
TRAIN_PROTOCOL = 2
HELDOUT_FRACTION = 0.05


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
        # The 4 layers unrolled (`scan_unroll=4`): the same parameters and math, a 1.12x
        # faster step on the 2-core CPU (docs/benchmarks.md, issue 25); it changes the
        # rounding, so it is part of the model key.
        return DemoConfig(
            "models/cpu_demo.gin",
            ("ModelConfig.scan_unroll = 4",),
            4096,
            128,
            16,
            900,
            2e-3,
            300,
            25,
            20,
            8,
            None,
        )

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


def model_dir(arm: ArmSpec, task: str, work: str, cfg: DemoConfig, data_key: str, seed: int = 0):
    """`(models/<arm>-<key>, its settings)`: the key hashes the data and every training
    setting (a changed `--steps` trains a new model, never resumes an old one). A
    strategy's default recipe at seed 0 keeps the key it had before arms and seeds."""
    settings = {
        "protocol": TRAIN_PROTOCOL,
        "data": data_key,
        "strategy": arm.strategy,
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
    if arm.overrides:
        settings.update(arm=arm.name, augment=dict(arm.overrides))
    if seed:
        settings["seed"] = seed  # the training seed and the data order's seed
    return os.path.join(work, "models", f"{arm.name}-{settings_key(settings)}"), settings


def stage_train(
    arm: ArmSpec, task: str, work: str, cfg: DemoConfig, data_key: str, seed: int = 0
) -> str:
    """Trains one model of `arm` with `seed` into `model_dir(...)`."""
    import gin

    from toxjax import gin_utils
    from toxjax import train as train_lib

    path, settings = model_dir(arm, task, work, cfg, data_key, seed)
    done = os.path.join(path, "DONE")
    if os.path.exists(done):
        return path
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "demo_settings.json"), "w") as f:
        json.dump(settings, f, indent=2, sort_keys=True)
    gin.clear_config()
    gin_utils.parse_gin(
        ["runs/pretrain.gin", cfg.model_gin],
        [
            f"MODEL_DIR = '{path}'",
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
            # Seed 0 binds nothing: the defaults, so its model is the one trained before.
            *([f"train.seed = {seed}", f"DataConfig.seed = {seed}"] if seed else []),
        ],
    )
    print(
        f"demo: training {arm.name} (seed {seed}) on {task} ({cfg.num_steps} steps) -> {path}",
        flush=True,
    )
    t0 = time.time()
    train_lib.train()
    with open(done, "w") as f:
        json.dump({"minutes": (time.time() - t0) / 60}, f)
    return path


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
