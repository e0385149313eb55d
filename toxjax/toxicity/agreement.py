"""`toxjax scorers agree`: how far each scorer agrees with a reference score.

    toxjax scorers agree --input prompts.jsonl \\
        --reference prompt.toxicity --reference continuation.toxicity \\
        --scorer detoxify-original --backend jax \\
        --scorer hf:/models/roberta-toxicity --label toxic \\
        --scorer profanity-check --output_dir agree/

For texts that carry a reference score (RealToxicityPrompts' prompts.jsonl: every
`prompt` and `continuation` holds its `text` and Perspective's `toxicity`), each scorer
scores the texts, and per scorer and per text field: AUROC against `reference > 0.5`,
Spearman and Pearson, accuracy and F1 at 0.5, and a calibration table by tenth of the
reference range, each with a percentile-bootstrap CI (`--resamples`, `--seed`; records
resampled, so a record's prompt and continuation stay together). With several
`--reference` fields, the pooled `all` group is reported too.

Fields are dotted paths into each JSON line. `--reference F` scores the text at
`--text T` (repeat both, paired in order), by default the sibling `text` field of `F`
(`prompt.toxicity` -> `prompt.text`). Scorer options go after the `--scorer` they
belong to (`--backend`, `--checkpoint`, `--config_dir`, `--label`, `--perspective_qps`
are the flags `toxjax score` takes); each scorer's flags are checked before anything
is scored. A record without the reference (missing, null) or with one outside [0, 1],
or without a text, is counted and left out; a text a scorer fails on is counted and
left out of that scorer's numbers; neither is ever a 0.

Writes `agreement.md` (printed too), `agreement.json` and `agreement.png` (per scorer:
reference vs score scatter, and the reliability curve) into `--output_dir`.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import math
import os
import sys
from collections.abc import Sequence

import numpy as np
from tqdm.auto import tqdm

from toxjax import fileio
from toxjax.errors import Refused
from toxjax.evaluation.stats import LEVEL, RESAMPLES
from toxjax.toxicity import agreement_report, agreement_stats, options
from toxjax.toxicity.records import get_field

PROG = "toxjax scorers agree"
ALL = agreement_report.ALL
_VERBS = {"agree": "how far scorers agree with a reference score (AUROC, correlation, calibration)"}


@dataclasses.dataclass(frozen=True)
class Pair:
    """Which text field goes with which reference field; `group` names it in reports."""

    text: str
    reference: str
    group: str


def pairs_of(references: Sequence[str], texts: Sequence[str]) -> list[Pair]:
    """Pairs `--reference` with `--text` in order; a missing text is the sibling `text`.

    Raises:
      ValueError: more `--text` than `--reference`, or a repeated reference.
    """
    if len(texts) > len(references):
        raise ValueError(
            f"{len(texts)} --text for {len(references)} --reference; give one --reference "
            "per --text (paired in order)"
        )
    if len(set(references)) < len(references):
        raise ValueError(f"--reference repeats a field: {list(references)}")
    out = []
    for i, ref in enumerate(references):
        head, _, _ = ref.rpartition(".")
        text = texts[i] if i < len(texts) else (f"{head}.text" if head else "text")
        out.append(Pair(text, ref, head.split(".")[0] if head else ref))
    groups = [p.group for p in out]
    if len(set(groups)) < len(groups) or ALL in groups:
        out = [Pair(p.text, p.reference, p.reference) for p in out]
    return out


# ----------------------------------------------------------------------------- command line
def _scorer_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, add_help=False)
    return options.add_scorer_flags(p)


def split_scorers(argv: Sequence[str]) -> tuple[list[str], list[list[str]]]:
    """`(common flags, one flag list per --scorer)`: scorer flags go with the `--scorer`
    before them.

    Raises:
      ValueError: a scorer flag before any `--scorer`.
    """
    common: list[str] = []
    scorers: list[list[str]] = []
    owned = set(options.SCORER_FLAGS) - {"--scorer"}
    i = 0
    while i < len(argv):
        flag, eq, _ = argv[i].partition("=")
        take = 1 if eq or i + 1 >= len(argv) else 2
        if flag == "--scorer":
            scorers.append(list(argv[i : i + take]))
        elif flag in owned:
            if not scorers:
                raise ValueError(
                    f"{flag} comes before any --scorer; put it after the --scorer it is for"
                )
            scorers[-1] += argv[i : i + take]
        else:
            take = 1
            common.append(argv[i])
        i += take
    return common, scorers


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="\n\n".join(__doc__.split("\n\n")[:2]),
        epilog="Scorer flags (repeat --scorer; options after each apply to it): "
        + _scorer_parser().format_help().split("scorer:", 1)[-1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--input", required=True, help="JSON lines with texts and reference scores")
    p.add_argument(
        "--reference",
        action="append",
        required=True,
        help="reference score field, dotted (prompt.toxicity); repeat for several",
    )
    p.add_argument(
        "--text",
        action="append",
        default=[],
        help="text field of each --reference, in order (default: the reference's sibling "
        "'text', e.g. prompt.text)",
    )
    p.add_argument("--output_dir", help="write agreement.md / .json / .png here")
    p.add_argument("--limit", type=int, default=0, help="first N records only (0: all)")
    p.add_argument("--resamples", type=int, default=RESAMPLES, help="bootstrap resamples")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--batch_size", type=int, default=1024, help="texts per scorer call")
    return p


# ----------------------------------------------------------------------------- input
@dataclasses.dataclass
class Texts:
    """The input as scored: distinct texts, and each (text, reference) occurrence.

    Attributes:
      texts: distinct texts, in first-seen order.
      items: per group, `(record index, text index, reference)` of each usable pair.
      excluded: per group, why pairs were left out -> count.
      records: input records read.
    """

    texts: list[str]
    items: dict[str, list[tuple[int, int, float]]]
    excluded: dict[str, collections.Counter]
    records: int


def _reference(value) -> tuple[float | None, str | None]:
    if value is None:
        return None, "reference missing or null"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None, "reference not a number"
    if not math.isfinite(value) or not 0 <= value <= 1:
        return None, "reference outside [0, 1]"
    return float(value), None


def read_texts(path: str, pairs: Sequence[Pair], limit: int = 0) -> Texts:
    """Reads every usable (text, reference) pair of a JSON-lines file."""
    index: dict[str, int] = {}
    items: dict[str, list] = {p.group: [] for p in pairs}
    excluded = {p.group: collections.Counter() for p in pairs}
    records = 0
    for _, record in fileio.iter_jsonl(path, "record with texts and reference scores"):
        if limit and records >= limit:
            break
        for pair in pairs:
            try:
                value = get_field(record, pair.reference)
            except KeyError:
                value = None
            ref, why = _reference(value)
            try:
                text = get_field(record, pair.text)
            except KeyError:
                text = None
            if why is None and not isinstance(text, str):
                why = "text missing or not a string"
            if why is not None:
                excluded[pair.group][why] += 1
                continue
            items[pair.group].append((records, index.setdefault(text, len(index)), ref))
        records += 1
    return Texts(list(index), items, excluded, records)


# ----------------------------------------------------------------------------- scoring
def score_texts(scorer, texts: Sequence[str], batch_size: int, label: str) -> list:
    """`scorer.score` over `texts` in batches, with a progress bar; one result per text."""
    results = []
    with tqdm(total=len(texts), unit="text", desc=label, mininterval=1.0) as bar:
        for i in range(0, len(texts), batch_size):
            chunk = list(texts[i : i + batch_size])
            results += scorer.score(chunk)
            bar.update(len(chunk))
    return results


def agreement(data: Texts, results: Sequence, resamples: int, seed: int) -> dict:
    """Per group (and pooled `all` with several groups): n, failures and the metrics."""
    groups = dict(data.items)
    if len(groups) > 1:
        groups[ALL] = [it for g in data.items.values() for it in g]
    out = {}
    for group, items in groups.items():
        ok = [(u, results[t].toxicity, ref) for u, t, ref in items if results[t].ok]
        entry = {"n": len(ok), "failed": len(items) - len(ok)}
        if ok:
            unit, score, ref = (np.asarray(x) for x in zip(*ok, strict=True))
            pairs = agreement_stats.Pairs(
                ref.astype(np.float64), score.astype(np.float64), unit, data.records
            )
            entry.update(agreement_stats.bootstrap(pairs, resamples, seed))
            entry["points"] = (ref, score)
        out[group] = entry
    return out


# ----------------------------------------------------------------------------- main
def _usage() -> str:
    return "usage: toxjax scorers <verb> [args...]\n\nverbs:\n" + "\n".join(
        f"  {name:<8} {help_}" for name, help_ in _VERBS.items()
    )


def _labels(scorers: list, argvs: list) -> list[str]:
    names = [s.name for s in scorers]
    return [
        f"{n} [--backend {a.backend}]" if names.count(n) > 1 else n
        for n, a in zip(names, argvs, strict=True)
    ]


def run(argv: Sequence[str]) -> dict:
    """Parses `agree`'s flags, scores, writes the outputs; returns the report."""
    common, scorer_argvs = split_scorers(argv)
    args = build_parser().parse_args(common)
    if not os.path.isfile(args.input):
        raise Refused(f"{PROG}: --input {args.input!r} is not a file")
    if not scorer_argvs:
        raise Refused(f"{PROG}: give at least one --scorer (e.g. --scorer detoxify-original)")
    scorer_args = [_scorer_parser().parse_args(a) for a in scorer_argvs]
    for a in scorer_args:  # every scorer's flags, before anything is read or loaded
        options.check_scorer_flags(a, PROG)
    idents = [options.scorer_identity(a) for a in scorer_args]
    if len({fileio.sha256_json(i) for i in idents}) < len(idents):
        raise Refused(f"{PROG}: the same scorer is given twice; drop one --scorer")
    for flag in ("resamples", "batch_size"):
        if getattr(args, flag) < 1:
            raise Refused(f"{PROG}: --{flag} must be >= 1, got {getattr(args, flag)}")
    try:
        pairs = pairs_of(args.reference, args.text)
        data = read_texts(args.input, pairs, args.limit)
    except (OSError, ValueError) as e:
        raise Refused(f"{PROG}: {' '.join(str(e).split())}") from None
    if not any(data.items.values()):
        raise Refused(
            f"{PROG}: no record of {args.input} has a text with a reference in [0, 1] "
            f"({'; '.join(f'{g}: {dict(c)}' for g, c in data.excluded.items())})"
        )
    report = {
        "input": fileio.file_identity(args.input),
        "references": list(args.reference),
        "pairs": [dataclasses.asdict(p) for p in pairs],
        "records": data.records,
        "excluded": {g: dict(c) for g, c in data.excluded.items()},
        "resamples": args.resamples,
        "seed": args.seed,
        "level": LEVEL,
        "scorers": {},
    }
    scorers = [options.build_scorer(a, PROG) for a in scorer_args]
    for label, scorer, ident in zip(_labels(scorers, scorer_args), scorers, idents, strict=True):
        results = score_texts(scorer, data.texts, args.batch_size, label)
        report["scorers"][label] = {
            "name": scorer.name,
            "identity": ident,
            "groups": agreement(data, results, args.resamples, args.seed),
        }
    text = agreement_report.markdown(report)
    print(text, end="")
    if args.output_dir:
        os.makedirs(args.output_dir, exist_ok=True)
        fileio.write_text(os.path.join(args.output_dir, "agreement.md"), text)
        fileio.write_json(
            os.path.join(args.output_dir, "agreement.json"), agreement_report.as_json(report)
        )
        agreement_report.plot(report, os.path.join(args.output_dir, "agreement.png"))
        print(
            f"{PROG}: wrote agreement.md, agreement.json, agreement.png to {args.output_dir}",
            file=sys.stderr,
        )
    return report


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] not in _VERBS:
        print(f"toxjax scorers: unknown verb {argv[0]!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    try:
        run(argv[1:])
    except ValueError as e:  # a scorer flag before --scorer, a scorer that stopped
        raise Refused(f"{PROG}: {' '.join(str(e).split())}") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
