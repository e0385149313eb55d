"""`toxjax export hf`: a run directory -> a transformers checkpoint directory.

    toxjax export hf --model_dir RUN --output DIR [--step N] [--overwrite]

DIR loads with `transformers.AutoModelForCausalLM.from_pretrained(DIR)` and
`AutoTokenizer.from_pretrained(DIR)`, without toxjax: `model.safetensors` (the
architecture whose forward pass equals ours, `toxjax.interop.hf.family_for`),
`config.json`, the tokenizer files (`toxjax.interop.hf_vocab`), `generation_config.json`
(the RealToxicityPrompts sampling settings) and a model card `README.md`
(`toxjax.interop.model_card`). Everything is written into a temporary sibling of DIR that
is renamed at the end, so DIR is either absent, the old one, or complete.

Bad input is one line and exit code 2, before the checkpoint is read where it can be: an
output that exists (without --overwrite), a model no transformers architecture computes, a
vocabulary without a transformers tokenizer, a run without a finished checkpoint, weights
that do not match run.json's model (naming the tensor).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import tempfile
import warnings
from typing import Any

import numpy as np

from toxjax import fileio
from toxjax.errors import ConfigError
from toxjax.interop import hf, hf_vocab, model_card

# The RealToxicityPrompts protocol's sampling (toxjax.decode.SamplingConfig defaults).
RTP_GENERATION = dict(do_sample=True, top_p=0.9, top_k=0, temperature=1.0, max_new_tokens=20)


class ExportError(ValueError):
    """A bad `toxjax export` input (one line, exit code 2)."""


def _open_run(model_dir: str):
    """The run directory (`toxjax.run_dir.RunDir`): run.json and the vocabulary, once."""
    from toxjax.run_dir import RunDir

    try:
        return RunDir.open(model_dir)
    except ValueError as e:
        raise ExportError(str(e)) from None


def _prefixes(run, vocabulary, ids: hf_vocab.HfIds) -> dict[str, model_card.Prefix]:
    """The run's non-toxic and toxic conditioning prefixes, in transformers ids."""
    quiet = lambda msg: None  # noqa: E731  (the card says when run.json has no strategy)
    out = {}
    for name, toxic in (("non-toxic", False), ("toxic", True)):
        c = run.conditioning(vocabulary, toxic=toxic, warn=quiet)
        if not c.prefix_ids:
            return {}
        out[name] = model_card.Prefix(c.prefix, tuple(ids.to_hf(c.prefix_ids)))
    return out


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("toxjax")
    except metadata.PackageNotFoundError:
        return "unknown (toxjax not installed as a package)"


def _replace_dir(tmp: str, output: str) -> None:
    """Moves the finished `tmp` to `output`, replacing an old `output`."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the export is a normal dir
    for name in os.listdir(tmp):
        os.chmod(os.path.join(tmp, name), 0o666 & ~umask)
    if not os.path.exists(output):
        os.rename(tmp, output)
        return
    aside = tempfile.mkdtemp(
        prefix=f".{os.path.basename(output)}.old-", dir=os.path.dirname(output)
    )
    os.rename(output, os.path.join(aside, "old"))
    os.rename(tmp, output)
    shutil.rmtree(aside)


def convert(
    config, params: dict, vocabulary
) -> tuple[Any, hf.Family, dict[str, np.ndarray], hf_vocab.HfIds]:
    """Our model at our ids -> (its config at transformers' ids, the family, the
    transformers state dict, the id plan). Pure: no files."""
    params = dict(params)
    ids = hf_vocab.export_ids(vocabulary, params, config.vocab_size)
    if ids.rows is not None:
        params = hf_vocab.gather_rows(params, ids.rows)
        config = dataclasses.replace(config, vocab_size=len(ids.rows))
    family, tensors = hf.params_to_hf(config, params)
    return config, family, tensors, ids


def export_hf(model_dir: str, output: str, step: int | None = None, overwrite: bool = False) -> str:
    """Writes the transformers checkpoint of `model_dir`'s checkpoint `step` (default: the
    newest intact one) to `output`; returns `output`.

    Raises:
      ExportError, ConfigError, FileNotFoundError, CheckpointError: bad input (one line).
    """
    if fileio.is_remote(output):
        raise ExportError(f"--output {output}: export writes a local directory")
    output = os.path.abspath(output)
    if os.path.exists(output) and not overwrite:
        raise ExportError(f"--output {output} exists; pass --overwrite to replace it")
    run_dir = _open_run(model_dir)
    hf.family_for(run_dir.info.model_config)  # refuse an architecture before any weights
    hf_vocab.check_tokenizer(run_dir.vocabulary)
    bundle = run_dir.load(step)
    vocabulary = bundle.vocabulary
    cfg, family, tensors, ids = convert(bundle.config, bundle.params, vocabulary)
    prefixes = _prefixes(bundle.run, vocabulary, ids)

    parent = os.path.dirname(output)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(output)}.", suffix=".tmp", dir=parent)
    try:
        weights = os.path.join(tmp, hf.SAFETENSORS)
        hf.write_safetensors(tensors, weights)
        token_ids = dict(bos_token_id=ids.bos_id, eos_token_id=ids.eos_id, pad_token_id=ids.pad_id)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # transformers' notes on unused config fields
            hf.config_to_hf(cfg, dtype=cfg.param_dtype, **token_ids).save_pretrained(tmp)
            from transformers import GenerationConfig

            GenerationConfig(**RTP_GENERATION, **token_ids).save_pretrained(tmp)
        hf_vocab.write_tokenizer(vocabulary, ids, tmp, cfg.max_len)
        base = vocabulary.text_vocabulary if hasattr(vocabulary, "text_vocabulary") else vocabulary
        facts = model_card.CardFacts(
            name=os.path.basename(output),
            model_dir=model_dir,
            step=bundle.step,
            architecture=family.architecture,
            num_params=int(sum(np.asarray(t).size for t in tensors.values())),
            run=bundle.run,
            vocabulary={"gpt2": "GPT-2 BPE (GPT-2's ids)", "sentencepiece": "SentencePiece"}[
                ids.kind
            ]
            + (f" + control tokens {list(vocabulary.tokens)}" if base is not vocabulary else ""),
            bos_id=ids.bos_id,
            bos_token=_bos_token(ids),
            prefixes=prefixes,
            sha256=fileio.sha256_file(weights),
            toxjax_version=_version(),
        )
        fileio.write_text(os.path.join(tmp, "README.md"), model_card.render(facts))
        _replace_dir(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return output


def _bos_token(ids: hf_vocab.HfIds) -> str:
    if ids.kind == "sentencepiece":
        return hf_vocab.SP_BOS_TOKEN
    return "<|endoftext|>" if ids.bos_is_eos else hf_vocab.BOS_TOKEN


def main(argv: list[str]) -> int:
    """`toxjax export hf --model_dir RUN --output DIR [--step N] [--overwrite]`."""
    from toxjax.checkpoint import CheckpointError

    parser = argparse.ArgumentParser(prog="toxjax export")
    sub = parser.add_subparsers(dest="format", required=True)
    p = sub.add_parser("hf", help="a transformers checkpoint directory (safetensors + tokenizer)")
    p.add_argument("--model_dir", required=True, help="a toxjax run directory")
    p.add_argument("--output", required=True, help="the directory to write")
    p.add_argument("--step", type=int, help="checkpoint step (default: the newest intact one)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    args = parser.parse_args(argv)
    try:
        path = export_hf(args.model_dir, args.output, step=args.step, overwrite=args.overwrite)
    except (ExportError, ConfigError, FileNotFoundError, CheckpointError) as e:
        # One line, also for the multi-line checkpoint mismatch (it names the tensors).
        print("toxjax export: " + " ".join(s.strip() for s in str(e).splitlines()), file=sys.stderr)
        return 2
    print(f"wrote {path}", file=sys.stderr)
    return 0
