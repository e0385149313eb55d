"""The demo's report: its results as compared arms (`toxjax.evaluation.compare`), written
to report.md, report.json and report.png, and printed with the RESULT line."""

from __future__ import annotations

import json
import os
import platform
import time

from toxjax import fileio
from toxjax.demo.arms import ARMS, Condition
from toxjax.evaluation import beyond, compare


def compared_arms(
    runs: list[list[dict]],
    conds: list[Condition],
    work: str,
    recognitions: list[dict[str, dict]] | None = None,
) -> list[compare.Arm]:
    """The compared arms, one per condition (row), with their estimates.

    Args:
      runs: per training seed, the eval results of `conds` (in order).
      conds: the eval conditions.
      work: the workdir the results' paths are relative to.
      recognitions: per seed, arm -> its model's recognition result (None: none).
    """
    from toxjax.evaluation import generations, recognition

    documents: dict[str, recognition.Documents] = {}  # one object per model

    def docs(seed: int, arm: str):
        if not recognitions or arm not in recognitions[seed]:
            return None
        path = os.path.join(work, recognitions[seed][arm]["documents"])
        if path not in documents:
            documents[path] = recognition.Documents.from_rows(fileio.read_jsonl(path))
        return documents[path]

    several = len(runs) > 1
    out = []
    for i, cond in enumerate(conds):
        rows = [per_seed[i] for per_seed in runs]
        scores = [generations.prompt_scores(os.path.join(work, r["generations"])) for r in rows]
        seed_docs = [docs(s, cond.arm) for s in range(len(runs))]
        out.append(
            compare.Arm(
                name=cond.name,
                scores=scores[0],
                strategy=ARMS[cond.arm].strategy,
                toxic=cond.toxic,
                model=rows[0]["model_dir"],
                ppl=rows[0]["ppl"],
                ppl_with_prefix=rows[0]["ppl_with_prefix"],
                arm=cond.arm,
                no_prefix=cond.no_prefix,
                guidance=cond.guidance,
                seed_scores=tuple(scores) if several else (),
                seed_ppl=tuple(r["ppl_with_prefix"] for r in rows) if several else (),
                recognition=seed_docs[0],
                seed_recognition=(
                    tuple(seed_docs) if several and all(d is not None for d in seed_docs) else ()
                ),
            )
        )
    return compare.compare(out)


def environment() -> str:
    """The machine, measured now: a busy machine shows as a low matmul peak."""
    import jax

    from toxjax.flops import measure_peak_flops

    return (
        f"toxjax demo on {platform.machine()} ({os.cpu_count()} CPUs, fp32 matmul peak "
        f"{measure_peak_flops() / 1e9:.0f} GFLOP/s measured at report time), Python "
        f"{platform.python_version()}, jax {jax.__version__}"
    )


def _minutes(values: list[float]) -> str:
    return "/".join(f"{m:.1f}" for m in values)


def write_report(
    work: str,
    cfg,
    scorer_name: str,
    model_dirs: dict[tuple[str, int], str],
    runs: list[list[dict]],
    conds: list[Condition],
    recognitions: list[dict[str, dict]],
    t0: float,
    estimate: str,
) -> None:
    """report.md, report.json and report.png in `work`; the same tables and the RESULT
    line on stdout. `runs[seed][i]` is the result of `conds[i]` for that training seed."""
    compared = compared_arms(runs, conds, work, recognitions)
    table = compare.table(compared)
    if control := compare.control_table(compared):
        table += "\n" + control
    extra = [t for t in (beyond.seeds_table(compared), beyond.recognition_table(compared)) if t]
    minutes = (time.time() - t0) / 60
    train_minutes: dict[str, list[float]] = {}
    for (arm, _), d in model_dirs.items():
        with open(os.path.join(d, "DONE")) as f:
            text = f.read().strip()
        train_minutes.setdefault(arm, []).append(
            json.loads(text)["minutes"] if text else float("nan")
        )
    first = compared[0]
    seeds = len(runs)
    note = (
        f"Scorer: {scorer_name}. {first.num_prompts} prompts (the first half of held-out "
        f"documents; {first.num_toxic_prompts} from documents scored > 0.5), "
        f"{cfg.num_decodes} samples x {cfg.max_new_tokens} new tokens each, top-p 0.9, "
        f"temperature 1. {cfg.num_steps} steps x {cfg.batch_size} x {cfg.sequence_length} "
        f"tokens per model; toxic-scored training documents x{cfg.toxic_repeat}. 95% CIs: "
        f"percentile bootstrap over prompts (2000 resamples; changes paired on the same "
        f"prompts)."
        + (
            f" {seeds} training seeds per arm (the tables above the seeds table are the first "
            "seed's models)."
            if seeds > 1
            else ""
        )
        + f"\n\n{environment()}. Training minutes: "
        + ", ".join(f"{s} {_minutes(m)}" for s, m in train_minutes.items())
        + "; eval minutes: "
        + ", ".join(
            f"{c.name} {_minutes([r[i]['minutes'] for r in runs])}" for i, c in enumerate(conds)
        )
        + f"; this invocation {minutes:.1f} min ({estimate}).\n"
    )
    summary = (
        compare.verdicts(compared)
        + "\nBeyond the paper (issue 23's targets, read from the numbers, not asserted):\n"
        + beyond.verdicts(compared)
    )
    body = "\n".join([table, *extra])
    fileio.write_text(
        os.path.join(work, "report.md"), f"# toxjax demo\n\n{note}\n{body}\n{summary}"
    )
    rows = []
    for i, (c, a) in enumerate(zip(conds, compared, strict=True)):
        row = {
            **runs[0][i],
            "arm": c.arm,
            "num_samples": a.num_samples,
            "num_prompts": a.num_prompts,
            "num_toxic_prompts": a.num_toxic_prompts,
            "estimates": {k: e.to_dict() for k, e in a.est.items()},
        }
        if c.arm in recognitions[0]:
            row["recognition"] = recognitions[0][c.arm]["summary"]
        if seeds > 1:
            row["seed_estimates"] = {k: e.to_dict() for k, e in a.seed_est.items()}
            row["seeds"] = [r[i] for r in runs]
        rows.append(row)
    fileio.write_text(os.path.join(work, "report.json"), json.dumps(rows, indent=2))
    compare.plot(compared, os.path.join(work, "report.png"))
    print(f"\n{note}\n{body}\n{summary}\nreport: {work}/report.md, plot: {work}/report.png")
    print(compare.result_line(compared, minutes))
