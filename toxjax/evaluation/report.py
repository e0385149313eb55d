"""`toxjax report`: the paper-style table across runs, with CIs where the samples are kept.

    toxjax report --run baseline=runs/base/eval --run inst=runs/inst/eval \
        --output_dir report/ [--baseline baseline] [--allow_mismatch]

Each run directory is searched recursively for `metrics.json` files written by
`toxjax eval` (their `"task"` field says toxicity / utility / bias). Two tables:

- the columns table: one row per run, EMT and TP on each split, utility accuracies and
  bias AUC, each followed by its change relative to the baseline run;
- where every toxicity eval kept its `generations.jsonl`: the comparison of
  `toxjax.evaluation.compare` (the demo's table): one row per evaluated condition, the
  toxic-sample rate, TP and EMT with 95% bootstrap CIs over prompts, the change against
  the baseline paired on the same prompts, and whether each conditioned model follows
  its toxic condition; and the same table again under every scorer that `toxjax eval
  rescore` added to all of the evals.

A comparison is only a result when the runs were evaluated alike: toxicity evals with
other prompts, sampling settings or scorers are refused (one line naming what differs;
`--allow_mismatch` reports them anyway under a warning), and evals of other checkpoint
steps are flagged. Writes `report.md`, `report.json` and `report.png`.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import math
import os
import sys
from collections.abc import Sequence

from toxjax import fileio
from toxjax.evaluation.prompts import SPLITS

EXIT_REFUSED = 2


class NotComparable(ValueError):
    """Runs evaluated with other prompts, sampling settings or scorers."""


@dataclasses.dataclass
class Result:
    """One metrics.json of a run."""

    run: str
    path: str
    data: dict

    @property
    def task(self) -> str:
        return self.data.get("task", "?")

    @property
    def label(self) -> str:
        condition = self.data.get("condition") or "none"
        return condition + ("-toxic" if self.data.get("toxic_condition") else "")


def load_run(directory: str, run: str = "") -> list[Result]:
    """Every metrics.json under `directory` (sorted by path).

    Raises:
      FileNotFoundError: no metrics.json (naming the directory).
      ValueError: a metrics.json that is not JSON (naming the file).
    """
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{directory} is not a directory of `toxjax eval` results")
    paths = sorted(glob.glob(os.path.join(directory, "**", "metrics.json"), recursive=True))
    if not paths:
        raise FileNotFoundError(f"no metrics.json under {directory} (run `toxjax eval` first)")
    out = []
    for path in paths:
        try:
            data = json.loads(fileio.read_text(path))
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: not a toxjax eval metrics.json ({e})") from None
        if not isinstance(data, dict) or "metrics" not in data:
            raise ValueError(f"{path}: not a toxjax eval metrics.json (no 'metrics')")
        out.append(Result(run, path, data))
    return out


def _main_result(results: list[Result], task: str) -> Result | None:
    """The run's result of `task` (for toxicity: its non-toxic condition first)."""
    found = [r for r in results if r.task == task]
    found.sort(key=lambda r: bool(r.data.get("toxic_condition")))
    if len([r for r in found if not r.data.get("toxic_condition")]) > 1:
        raise ValueError(
            f"run {found[0].run!r} has several {task} results under one condition "
            f"({', '.join(r.path for r in found)}); pass one directory per run"
        )
    return found[0] if found else None


def columns(results: list[Result]) -> dict[str, float]:
    """Flattens one run's results into named table columns."""
    cols: dict[str, float] = {}
    if tox := _main_result(results, "toxicity"):
        for split in SPLITS:
            m = tox.data["metrics"][split]
            cols[f"EMT {split}"] = m["emt"]
            cols[f"TP {split}"] = m["tp"]
    if util := _main_result(results, "utility"):
        for task, m in util.data["metrics"].items():
            if task == "perplexity":
                cols["ppl held-out"] = m["ppl"]
            else:
                cols[f"{task} acc"] = m["acc"]
                if "acc_norm" in m:
                    cols[f"{task} acc_norm"] = m["acc_norm"]
    if bias := _main_result(results, "bias"):
        for task, m in bias.data["metrics"].items():
            cols["bias mean AUC" if task == "mean_auc" else f"{task} AUC"] = (
                m if task == "mean_auc" else m["auc"]
            )
    if rec := _main_result(results, "recognition"):
        cols["recognition AUC"] = rec.data["metrics"]["yes_auc"]["value"]
        if ratio := rec.data["metrics"].get("ratio_auc"):
            cols["recognition AUC (condition ratio)"] = ratio["value"]
    return cols


def _fmt(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def build_table(runs: dict[str, dict[str, float]], baseline: str) -> str:
    """Markdown: one row per run, each value followed by its change vs `baseline`."""
    names = list(dict.fromkeys(c for cols in runs.values() for c in cols))
    head = "| run | " + " | ".join(f"{n} | Δ" for n in names) + " |"
    lines = [head, "|---|" + "---:|---:|" * len(names)]
    base = runs[baseline]
    for run, cols in runs.items():
        cells = []
        for n in names:
            v, b = cols.get(n), base.get(n)
            delta = None if v is None or b is None else v - b
            cells += [_fmt(v), "" if run == baseline else _fmt(delta)]
        lines.append(f"| {run} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _identity(r: Result) -> dict:
    """The eval's generations.meta.json identity ({} when it is missing or unreadable)."""
    from toxjax.evaluation import generations

    try:
        return generations.read_identity(os.path.dirname(r.path)) or {}
    except generations.ResumeMismatch:
        return {}


def _toxicity_setup(r: Result, content: bool) -> dict:
    """What must be equal for two toxicity evals to be compared, from their outputs
    (`content`: every eval kept its identity, so the prompts compare by content)."""
    d = r.data
    sampling = dict(d.get("sampling") or {})
    sampling.pop("eos_id", None)  # each vocabulary has its own EOS
    ident = _identity(r)
    return {
        "prompts": ident.get("prompts") if content else d.get("prompts_file"),
        "num_prompts": d.get("num_prompts"),
        "sampling": sampling or None,
        "seed": ident.get("seed") if content else None,
        "scorer": d.get("scorer"),
    }


def comparability(tox: list[Result]) -> tuple[list[str], list[str]]:
    """`(refusals, flags)`: what differs between the toxicity evals that makes their
    comparison meaningless (prompts, number of prompts, sampling, seed, scorer), and what
    is worth a warning (checkpoint steps)."""
    if len(tox) < 2:
        return [], []
    content = all(_identity(r) for r in tox)
    first = tox[0]
    ref = _toxicity_setup(first, content)
    refusals = []
    for r in tox[1:]:
        changes = fileio.changes(ref, _toxicity_setup(r, content))
        refusals += [f"{r.run} ({r.label}) vs {first.run} ({first.label}): {c}" for c in changes]
    # A transformers checkpoint (toxjax eval --model_dir HF_DIR) has no step.
    steps = {f"{r.run} ({r.label})": r.data["step"] for r in tox if r.data.get("step") is not None}
    flags = []
    if len(set(steps.values())) > 1:
        flags.append(
            "checkpoint steps differ: " + ", ".join(f"{k} at step {v}" for k, v in steps.items())
        )
    return refusals, flags


def arms(tox: list[Result], baseline: str, score_key: str | None = None):
    """The compared arms (toxjax.evaluation.compare) when every eval kept its samples;
    the baseline run's non-toxic condition first. None when a generations file is gone.
    `score_key`: compare under a scorer `toxjax eval rescore` added (default: the evals'
    own scorer)."""
    from toxjax.evaluation import compare, generations

    paths = [os.path.join(os.path.dirname(r.path), generations.GENERATIONS_FILE) for r in tox]
    if not tox or not all(os.path.exists(p) for p in paths):
        return None
    out = []
    runs_with_many = {r.run for r in tox if sum(x.run == r.run for x in tox) > 1}
    for r, path in zip(tox, paths, strict=True):
        condition = r.data.get("condition")
        out.append(
            compare.Arm(
                name=f"{r.run}:{r.label}" if r.run in runs_with_many else r.run,
                scores=generations.prompt_scores(path, score_key=score_key),
                strategy=condition if condition not in (None, "none") else None,
                toxic=bool(r.data.get("toxic_condition")),
                model=r.data.get("model_dir") or r.run,
            )
        )
    base = next(
        (i for i, r in enumerate(tox) if r.run == baseline and not r.data.get("toxic_condition")),
        0,
    )
    out.insert(0, out.pop(base))
    return compare.compare(out)


def other_scorers(tox: list[Result]) -> list[str]:
    """The scorers added by `toxjax eval rescore` that every toxicity eval carries."""
    if not tox:
        return []
    names = [n for n in (tox[0].data.get("scorers") or {}) if n != tox[0].data.get("scorer")]
    return [n for n in names if all(n in (r.data.get("scorers") or {}) for r in tox)]


def plot(runs: dict[str, dict[str, float]], path: str) -> None:
    """TP per run (one bar group per split), and mean utility accuracy vs EMT."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(runs)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / len(SPLITS)
    for i, split in enumerate(SPLITS):
        ax1.bar(
            [x + i * width for x in range(len(names))],
            [runs[n].get(f"TP {split}", float("nan")) for n in names],
            width,
            label=split,
        )
    ax1.set_xticks([x + width for x in range(len(names))], names)
    ax1.set_ylabel("toxicity probability")
    ax1.set_title("TP by strategy")
    ax1.legend()
    for n in names:
        accs = [v for k, v in runs[n].items() if k.endswith(" acc")]
        if accs and "EMT full" in runs[n]:
            ax2.scatter(runs[n]["EMT full"], sum(accs) / len(accs))
            ax2.annotate(n, (runs[n]["EMT full"], sum(accs) / len(accs)))
    ax2.set_xlabel("EMT (full)")
    ax2.set_ylabel("mean zero-shot accuracy")
    ax2.set_title("utility vs toxicity")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="toxjax report", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--run",
        action="append",
        required=True,
        metavar="NAME=DIR",
        help="a run's eval directory; repeat, baseline first",
    )
    parser.add_argument("--baseline", help="run to compare against (default: the first)")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument(
        "--allow_mismatch",
        action="store_true",
        help="report toxicity evals with other prompts / sampling / scorers anyway, under a "
        "warning (their differences are not a result)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    specs = []
    for spec in args.run:
        name, sep, directory = spec.partition("=")
        if not sep or not name or not directory:
            parser.error(f"--run {spec!r}: expected NAME=DIR")
        if name in (n for n, _ in specs):
            parser.error(f"--run {name}: two runs with one name")
        specs.append((name, directory))
    baseline = args.baseline or specs[0][0]
    if baseline not in dict(specs):
        parser.error(f"--baseline {baseline!r} is not one of the runs {[n for n, _ in specs]}")
    try:
        return _report(args, specs, baseline)
    except (OSError, ValueError) as e:
        print(f"toxjax report: {e}", file=sys.stderr)
        return EXIT_REFUSED


def _report(args, specs: list[tuple[str, str]], baseline: str) -> int:
    results = {name: load_run(directory, name) for name, directory in specs}
    runs = {name: columns(found) for name, found in results.items()}
    tox = [r for found in results.values() for r in found if r.task == "toxicity"]
    refusals, flags = comparability(tox)
    if refusals and not args.allow_mismatch:
        shown = "; ".join(refusals[:4]) + (
            f"; and {len(refusals) - 4} more" if len(refusals) > 4 else ""
        )
        print(
            f"toxjax report: the toxicity evals are not comparable: {shown}. Evaluate every "
            "run with the same prompts, sampling settings and scorer, or pass --allow_mismatch "
            "to report them under a warning",
            file=sys.stderr,
        )
        return EXIT_REFUSED
    warnings = [f"NOT COMPARABLE: {r}" for r in refusals] + [f"note: {f}" for f in flags]
    for w in warnings:
        print(f"toxjax report: {w}", file=sys.stderr)
    compared = None if refusals else arms(tox, baseline)

    from toxjax.evaluation import compare

    os.makedirs(args.output_dir, exist_ok=True)
    table = build_table(runs, baseline)
    text = f"Changes (Δ) are relative to {baseline}.\n\n{table}"
    if warnings:
        text = "".join(f"> **{w}**\n" for w in warnings) + "\n" + text
    if compared:
        text += (
            "\nToxic samples, TP and EMT with 95% CIs (percentile bootstrap over prompts, "
            "changes paired on the same prompts):\n\n" + compare.table(compared)
        )
        if control := compare.control_table(compared):
            text += "\n" + control
    by_scorer = {}
    for name in other_scorers(tox) if compared else []:
        by_scorer[name] = arms(tox, baseline, score_key=name)
        text += (
            f"\nThe same continuations scored by {name} (`toxjax eval rescore`), 95% CIs, "
            "changes paired on the same prompts:\n\n" + compare.table(by_scorer[name])
        )
    fileio.write_text(os.path.join(args.output_dir, "report.md"), text)
    payload = {"baseline": baseline, "runs": runs, "warnings": warnings}
    if compared:
        payload["estimates"] = {
            a.name: {k: e.to_dict() for k, e in a.est.items()} for a in compared
        }
    if by_scorer:
        payload["estimates_by_scorer"] = {
            name: {a.name: {k: e.to_dict() for k, e in a.est.items()} for a in found}
            for name, found in by_scorer.items()
        }
    fileio.write_json(os.path.join(args.output_dir, "report.json"), payload, sort_keys=False)
    png = os.path.join(args.output_dir, "report.png")
    if compared:
        compare.plot(compared, png)
    else:
        plot(runs, png)
    print(text)
    return 0
