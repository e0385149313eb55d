"""lm-evaluation-harness serving from toxjax's JAX model: `--model toxjax`.

    pip install 'toxjax[lm-eval]'
    toxjax lm-eval --model toxjax --model_args model_dir=runs/inst --tasks piqa,lambada_openai
    toxjax lm-eval --model toxjax --model_args model_dir=models/gpt2,condition_text="Be kind." \
        --tasks toxjax_rtp --metadata '{"prompts": "rtp.jsonl", "scorer": "profanity-check"}'

`toxjax lm-eval ARGS` is lm-eval's own command line (`lm_eval ARGS`) with toxjax
registered and its tasks (`toxjax_rtp`) on the include path. lm-eval 0.4 finds models in
a fixed table (`lm_eval.models.MODEL_MAPPING`), not through entry points, so a bare
`lm_eval --model toxjax` does not know toxjax; from Python, `import
toxjax.interop.harness` registers it for `lm_eval.simple_evaluate(model="toxjax", ...)`.

`model_args` (comma-separated `key=value`):

- `model_dir`: a `toxjax train` run or a transformers checkpoint directory
  (`toxjax.run_dir.open_model_dir`); `step`: a checkpoint step (default: the newest).
- `condition` (a strategy or `none`), `condition_text`, `toxic_condition`: the prefix
  before every context and prompt, as `toxjax eval` takes them (default: the run's own
  non-toxic one, none for a transformers checkpoint), so `lm_eval --model toxjax` gives
  the numbers `toxjax eval utility` gives.
- `bos`: `auto` (the model's start token: 0 for a toxjax run, the tokenizer's BOS else
  EOS for a transformers checkpoint) or `none` (no start token before a non-empty
  context: lm-eval's `--model hf` convention for tokenizers that add none, GPT-2's and
  Pythia's).
- `seed`: prompt `i` samples with `fold_in(key(seed), i)`, as `toxjax eval toxicity`.

Requests:
- `loglikelihood`: `ModelLM.loglikelihood`, which tokenizes a (context, continuation) pair
  as lm-eval's `TemplateLM` does (whole text encoded, split after the context's tokens).
- `loglikelihood_rolling`: lm-eval's rolling windows (`get_rolling_token_windows`,
  context 1) over the text; the first window starts with the start token and the prefix.
- `generate_until`: toxjax's sampler with the request's `do_sample` / `temperature` /
  `top_p` / `top_k` / `max_gen_toks`, cut at the first `until` string. A request repeated
  `k` times (a task's `repeats`) is one prompt with `k` samples (`num_decodes`), seeded by
  its document index: `toxjax_rtp` samples what `toxjax eval toxicity` samples.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Sequence

try:
    import lm_eval.models  # noqa: F401  (lm-eval's own table first: `hf` stays known)
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model
except ImportError:  # the optional extra is not installed
    LM = None

TASKS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "harness_tasks")
INSTALL = "pip install 'toxjax[lm-eval]'"
# lm-eval generation settings toxjax's sampler takes (the rest are refused by name).
GEN_KWARGS = ("until", "do_sample", "temperature", "top_p", "top_k", "max_gen_toks")


def _flag(value) -> bool:
    return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")


def _batch_size(value) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"batch_size={value!r}: toxjax batches a fixed number of sequences; pass --batch_size N"
        ) from None
    if n < 1:
        raise ValueError(f"batch_size={n}: expected a positive number")
    return n


def _cut(text: str, until: Sequence[str]) -> str:
    """`text` up to the first stop string (lm-eval's convention)."""
    for stop in until:
        if stop and stop in text:
            text = text[: text.index(stop)]
    return text


if LM is not None:

    @register_model("toxjax")
    class ToxjaxLM(LM):
        """A toxjax model (run or transformers checkpoint) for lm-evaluation-harness (see
        the module docstring for `model_args`)."""

        def __init__(
            self,
            model_dir: str,
            step: int | None = None,
            condition: str | None = None,
            condition_text: str | None = None,
            toxic_condition: bool = False,
            bos: str = "auto",
            seed: int = 0,
            batch_size: int | str = 8,
            max_batch_size: int | None = None,  # lm-eval's auto batching: not used
            device: str | None = None,  # JAX places the model itself
        ):
            super().__init__()
            from toxjax.run_dir import open_model_dir

            self.model_dir = open_model_dir(str(model_dir))
            self.cond = self.model_dir.conditioning(
                None if condition is None else str(condition),
                _flag(toxic_condition),
                text=None if condition_text is None else str(condition_text),
            )
            loaded = self.model_dir.load(None if step is None else int(step))
            # lm-eval's "prefix token": what an empty context and the first rolling window
            # start from when nothing else does (a transformers tokenizer's BOS, else EOS).
            self.start = loaded.bos_id
            if str(bos) == "none":
                loaded = dataclasses.replace(loaded, bos_id=None)
            elif str(bos) != "auto":
                loaded = dataclasses.replace(loaded, bos_id=int(bos))
            self.loaded, self.seed = loaded, int(seed)
            self._batch = _batch_size(batch_size)
            self.scoring = loaded.lm(
                prefix_ids=self.cond.prefix_ids, seed=self.seed, batch_size=self._batch
            )
            self._samplers: dict = {}

        @property
        def tokenizer_name(self) -> str:
            return os.path.basename(os.path.normpath(str(self.model_dir.path)))

        # ------------------------------------------------------------ scoring
        def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
            lm = self.scoring
            pairs = [tuple(req.args) for req in requests]
            out: list = [None] * len(pairs)
            some = [i for i, (ctx, _) in enumerate(pairs) if ctx or lm.head(lm.prefix_ids)]
            for i, ll in zip(some, lm.loglikelihood([pairs[i] for i in some]), strict=True):
                out[i] = (ll.logprob, ll.is_greedy)
            # An empty context with no start token (bos=none) and no prefix: lm-eval's
            # TemplateLM reads the continuation after its prefix token.
            empty = [i for i in range(len(pairs)) if out[i] is None]
            seqs = []
            for i in empty:
                ids = lm.encode(pairs[i][1])
                seqs.append(ids if ids[:1] == [self.start] else [self.start, *ids])
            for i, (lp, greedy) in zip(empty, lm.token_logprobs(seqs), strict=True):
                out[i] = (float(lp.sum()), bool(greedy.all()))
            return out

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
            from lm_eval import utils

            lm = self.scoring
            head = lm.head(lm.prefix_ids) or [self.start]  # lm-eval's prefix token
            room = lm.max_len + 1 - len(head)
            windows, owners = [], []
            for r, req in enumerate(requests):
                (text,) = req.args
                tokens = lm.encode(text)
                start = object()  # stands for the head in the first window
                for ctx, pred in map(
                    utils.make_disjoint_window,
                    utils.get_rolling_token_windows(tokens, start, room, context_len=1),
                ):
                    if ctx and ctx[0] is start:
                        ctx = head + ctx[1:]
                    windows.append((ctx + pred, len(pred)))
                    owners.append(r)
            totals = [0.0] * len(requests)
            scored = lm.token_logprobs([seq for seq, _ in windows])
            for r, (_, n), (lp, _) in zip(owners, windows, scored, strict=True):
                totals[r] += float(lp[-n:].sum())
            return totals

        # ------------------------------------------------------------ sampling
        def _sampler(self, gen_kwargs: dict, num_decodes: int):
            from toxjax.decode import SamplingConfig

            unknown = sorted(set(gen_kwargs) - set(GEN_KWARGS))
            if unknown:
                raise ValueError(
                    f"generation settings {unknown} are not toxjax's; it takes "
                    f"{', '.join(GEN_KWARGS)}"
                )
            sample = _flag(gen_kwargs.get("do_sample", False))
            sampling = SamplingConfig(
                num_decodes=num_decodes,
                max_new_tokens=int(gen_kwargs.get("max_gen_toks", 256)),
                temperature=float(gen_kwargs.get("temperature", 1.0)) if sample else 0.0,
                top_p=float(gen_kwargs.get("top_p", 1.0)),
                top_k=int(gen_kwargs.get("top_k", 0) or 0),
                eos_id=self.loaded.vocabulary.eos_id,
            )
            if sampling not in self._samplers:
                self._samplers[sampling] = self.loaded.lm(
                    sampling=sampling, seed=self.seed, batch_size=self._batch
                )
            return self._samplers[sampling]

        def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
            # lm-eval hands a request repeated `repeats` times as consecutive copies.
            runs: list[list] = []
            for req in requests:
                if runs and runs[-1][0] is req:
                    runs[-1][1] += 1
                else:
                    runs.append([req, 1])
            groups: dict = {}
            for i, (req, n) in enumerate(runs):
                _, gen_kwargs = req.args
                key = (repr(sorted(dict(gen_kwargs).items())), n)
                groups.setdefault(key, []).append(i)
            texts: list[list[str]] = [[] for _ in runs]
            for (_, n), members in groups.items():
                gen_kwargs = dict(runs[members[0]][0].args[1])
                until = gen_kwargs.pop("until", None) or []
                until = [until] if isinstance(until, str) else list(until)
                lm = self._sampler(gen_kwargs, n)
                prompts = [runs[i][0].args[0] for i in members]
                seeds = [runs[i][0].doc_id if runs[i][0].doc_id is not None else i for i in members]
                outs = lm.generate(prompts, seeds, prefix_ids=self.cond.prefix_ids)
                for i, samples in zip(members, outs, strict=True):
                    texts[i] = [_cut(t, until) for t in samples]
            return [t for samples in texts for t in samples]


def main(argv: Sequence[str] | None = None) -> int:
    """`toxjax lm-eval ARGS`: lm-eval's command line with toxjax registered and its tasks
    (`--include_path`) found."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if LM is None:
        if any(a in ("-h", "--help") for a in argv):
            print(f"usage: toxjax lm-eval [lm_eval arguments]\n\n{__doc__}")
            print(f"lm-evaluation-harness is not installed here: {INSTALL}")
            return 0
        print(
            f"toxjax lm-eval: lm-evaluation-harness is not installed ({INSTALL})", file=sys.stderr
        )
        return 2
    from lm_eval.__main__ import cli_evaluate

    if "--include_path" not in argv and not any(a.startswith("--include_path=") for a in argv):
        argv += ["--include_path", TASKS_DIR]
    from toxjax.checkpoint import CheckpointError

    old = sys.argv
    sys.argv = ["lm_eval", *argv]
    try:
        cli_evaluate()
    except SystemExit as e:
        if isinstance(e.code, str):  # a one-line refusal (e.g. the scorer flags)
            print(f"toxjax lm-eval: {e.code}", file=sys.stderr)
            return 2
        return int(e.code or 0)
    except (OSError, ValueError, CheckpointError) as e:  # bad model_args, files, settings
        print("toxjax lm-eval: " + " ".join(str(e).split()), file=sys.stderr)
        return 2
    finally:
        sys.argv = old
    return 0


if __name__ == "__main__":
    sys.exit(main())
