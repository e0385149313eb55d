"""`toxjax report`: the paper-style table across runs, and a plot.

    toxjax report --run baseline=runs/base/eval --run inst=runs/inst/eval \
        --output_dir report/ [--baseline baseline]

Each run directory is searched recursively for `metrics.json` files written by
`toxjax eval` (their `"task"` field says toxicity / utility / bias). Rows are runs
(strategies); columns are EMT and TP on each split, utility accuracies and bias AUC,
each followed by its change relative to the baseline run. Writes `report.md`,
`report.json` and `report.png` (TP by strategy; mean utility accuracy against EMT).
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
from collections.abc import Sequence

SPLITS = ("full", "toxic", "nontoxic")


def load_run(directory: str) -> dict[str, dict]:
    """`{task: metrics dict}` from the metrics.json files under `directory`."""
    found: dict[str, dict] = {}
    paths = sorted(glob.glob(os.path.join(directory, "**", "metrics.json"), recursive=True))
    if not paths:
        raise FileNotFoundError(f"no metrics.json under {directory} (run `toxjax eval` first)")
    for path in paths:
        with open(path) as f:
            data = json.load(f)
        task = data.get("task")
        if task in found:
            raise ValueError(f"{path}: a second {task} result in {directory}; pass one per run")
        found[task] = data
    return found


def columns(run: dict[str, dict]) -> dict[str, float]:
    """Flattens one run's results into named table columns."""
    cols: dict[str, float] = {}
    if "toxicity" in run:
        for split in SPLITS:
            m = run["toxicity"]["metrics"][split]
            cols[f"EMT {split}"] = m["emt"]
            cols[f"TP {split}"] = m["tp"]
    if "utility" in run:
        for task, m in run["utility"]["metrics"].items():
            if task == "perplexity":
                cols["ppl held-out"] = m["ppl"]
            else:
                cols[f"{task} acc"] = m["acc"]
                if "acc_norm" in m:
                    cols[f"{task} acc_norm"] = m["acc_norm"]
    if "bias" in run:
        for task, m in run["bias"]["metrics"].items():
            cols["bias mean AUC" if task == "mean_auc" else f"{task} AUC"] = (
                m if task == "mean_auc" else m["auc"]
            )
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


def main(argv: Sequence[str] | None = None) -> int:
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
    args = parser.parse_args(argv)
    runs: dict[str, dict[str, float]] = {}
    for spec in args.run:
        if "=" not in spec:
            parser.error(f"--run {spec!r}: expected NAME=DIR")
        name, directory = spec.split("=", 1)
        runs[name] = columns(load_run(directory))
    baseline = args.baseline or next(iter(runs))
    if baseline not in runs:
        parser.error(f"--baseline {baseline!r} is not one of the runs {list(runs)}")
    os.makedirs(args.output_dir, exist_ok=True)
    table = build_table(runs, baseline)
    with open(os.path.join(args.output_dir, "report.md"), "w") as f:
        f.write(f"Changes (Δ) are relative to {baseline}.\n\n{table}")
    with open(os.path.join(args.output_dir, "report.json"), "w") as f:
        json.dump({"baseline": baseline, "runs": runs}, f, indent=2)
    plot(runs, os.path.join(args.output_dir, "report.png"))
    print(table)
    return 0
