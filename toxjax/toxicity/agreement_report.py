"""`toxjax scorers agree`'s outputs: the markdown tables, the JSON and the PNG.

`report` is what `agreement.run` builds: `{"references", "resamples", "level",
"excluded": {group: {why: n}}, "scorers": {label: {"name", "identity", "groups":
{group: {"n", "failed", <metric>: Estimate, "calibration": [...], "points": (ref,
score)}}}}}`.
"""

from __future__ import annotations

import io

import numpy as np

from toxjax import fileio
from toxjax.toxicity import agreement_stats

ALL = "all"


def as_json(tree):
    """JSON form: Estimates as dicts, numpy points dropped."""
    if isinstance(tree, dict):
        return {k: as_json(v) for k, v in tree.items() if k != "points"}
    if isinstance(tree, list):
        return [as_json(v) for v in tree]
    return tree.to_dict() if hasattr(tree, "to_dict") else tree


def markdown(report: dict) -> str:
    """The tables: one row per scorer and group, then each scorer's calibration."""
    lines = [
        f"Agreement with `{', '.join(report['references'])}` (reference > 0.5 is toxic); "
        f"{int(report['level'] * 100)}% bootstrap CIs over {report['resamples']} resamples of records.",
        "",
        "| scorer | texts | n | failed | AUROC | Spearman | Pearson | accuracy@0.5 | F1@0.5 |",
        "|---|---|---:|---:|---|---|---|---|---|",
    ]
    for label, entry in report["scorers"].items():
        for group, g in entry["groups"].items():
            cells = [g.get(k).fmt() if k in g else "n/a" for k in agreement_stats.SCALARS]
            lines.append(
                f"| {label} | {group} | {g['n']} | {g['failed']} | " + " | ".join(cells) + " |"
            )
    for label, entry in report["scorers"].items():
        group = ALL if ALL in entry["groups"] else next(iter(entry["groups"]))
        table = entry["groups"][group].get("calibration")
        if not table:
            continue
        lines += [
            "",
            f"Calibration of {label} ({group}):",
            "",
            "| reference | n | mean reference | mean score |",
            "|---|---:|---|---|",
        ]
        for row in table:
            if row["n"]:
                lo, hi = row["bin"]
                lines.append(
                    f"| [{lo:.1f}, {hi:.1f}{']' if hi == 1 else ')'} | {row['n']} | {row['mean_reference'].fmt()} | {row['mean_score'].fmt()} |"
                )
    excluded = report["excluded"]
    if any(excluded.values()):
        lines += [
            "",
            "Left out: "
            + "; ".join(
                f"{g}: " + ", ".join(f"{n} {why}" for why, n in c.items())
                for g, c in excluded.items()
                if c
            ),
        ]
    return "\n".join(lines) + "\n"


def plot(report: dict, path: str) -> None:
    """Per scorer: reference vs score (one colour per group) and the reliability curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(report["scorers"])
    fig, axes = plt.subplots(len(labels), 2, figsize=(10, 4 * len(labels)), squeeze=False)
    for row, label in enumerate(labels):
        groups = report["scorers"][label]["groups"]
        scatter, reliability = axes[row]
        for group, g in groups.items():
            if group == ALL or "points" not in g:
                continue
            ref, score = g["points"]
            scatter.scatter(ref, score, s=4, alpha=0.3, label=group)
        pooled = ALL if ALL in groups else next(iter(groups))
        table = [r for r in groups[pooled].get("calibration", []) if r["n"]]
        if table:
            x = [r["mean_reference"].value for r in table]
            y = [r["mean_score"].value for r in table]
            err = [
                [v - r["mean_score"].low for v, r in zip(y, table, strict=True)],
                [r["mean_score"].high - v for v, r in zip(y, table, strict=True)],
            ]
            reliability.errorbar(x, y, yerr=np.nan_to_num(err), marker="o", capsize=3)
        for ax in (scatter, reliability):
            ax.plot([0, 1], [0, 1], color="gray", linewidth=0.8)
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
            ax.set_xlabel("reference")
        scatter.set_ylabel(f"{label}")
        scatter.set_title("reference vs score")
        if len(groups) > 1:
            scatter.legend(loc="upper left")
        reliability.set_ylabel("mean score")
        reliability.set_title(f"reliability ({pooled}, by tenth of the reference)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    fileio.write_bytes(path, buf.getvalue())
