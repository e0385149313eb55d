"""The comparison beyond the paper: across seeds, recognition, guidance and no prefix.

`toxjax.evaluation.compare` computes every estimate (`Arm.est`, and over seeds
`Arm.seed_est`); this module renders what the paper's tables do not show:

- `seeds_table`: each seed's toxic-sample rate, the seed-to-seed spread and the CI over
  seeds and prompts, for the rate and its change vs baseline;
- `recognition_table`: per model, its toxicity cut next to what it keeps or loses: the
  zero-shot recognition AUCs (`toxjax.evaluation.recognition`) and perplexity on the
  toxic and the non-toxic held-out documents;
- `verdicts`: issue 23's targets, each read from the numbers (measured, never asserted).

Nothing here branches on a strategy's name: conditioned or not comes from the strategy
table, the rows from `Arm` fields.
"""

from __future__ import annotations

import math

import numpy as np

from toxjax.evaluation import recognition, stats
from toxjax.evaluation.compare import Arm, label, own, strategy_of
from toxjax.evaluation.stats import Estimate

TARGET_CUT = -0.50  # an arm cutting toxic samples by at least half ...
TARGET_CUT_CI = -0.40  # ... with the whole CI past a 40% cut ...
TARGET_PPL = 0.02  # ... and perplexity after its prefix within +2% of baseline
TARGET_SEEDS = 3  # the change's CI over at least this many seeds excludes TARGET_CUT_CI


def _est(arm: Arm, key: str) -> Estimate | None:
    """The arm's estimate of `key`: over seeds and prompts when it has several seeds."""
    if key in arm.seed_est:
        return arm.seed_est[key].estimate
    return arm.est.get(key)


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def ppl_after_prefix(arm: Arm) -> float | None:
    """Held-out perplexity after the arm's prefix (the mean over its seeds)."""
    return _mean(arm.seed_ppl) if len(arm.seed_ppl) > 1 else arm.ppl_with_prefix


def _ppl_change(arm: Arm, base: Arm) -> float | None:
    a, b = ppl_after_prefix(arm), ppl_after_prefix(base)
    return None if a is None or b is None else a / b - 1


def _pct(x: float | None) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{100 * x:+.1f}%"


def _pts(spread: float) -> str:
    """A seed-to-seed sd in percentage points (`n/a`: fewer than two finite seeds)."""
    return f"{100 * spread:.1f} pts" if math.isfinite(spread) else "n/a"


def _seed_values(values, spec: str) -> str:
    return ", ".join("n/a" if not math.isfinite(v) else f"{100 * v:{spec}}" for v in values)


def seeds_table(arms: list[Arm]) -> str:
    """Per row: each seed's toxic-sample rate, their mean with its CI over seeds and
    prompts and the spread, the same for the change vs baseline, and each seed's
    perplexity after its prefix. Empty with one seed."""
    rows = [a for a in arms if "rate" in a.seed_est]
    if not rows:
        return ""
    lines = [
        "| model (condition) | toxic samples per seed (%) | mean [95% CI] | spread (sd) | "
        "vs baseline per seed (%) | vs baseline [95% CI] | spread (sd) | "
        "ppl after its prefix per seed |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for i, a in enumerate(rows):
        rate, cut = a.seed_est["rate"], a.seed_est["rate_vs_baseline"]
        first = i == 0 and a is arms[0]
        lines.append(
            f"| {a.name} | {_seed_values(rate.per_seed, '.1f')} | "
            f"{rate.estimate.fmt(pct=True)} | {_pts(rate.spread)} | "
            + ("— | — | — | " if first else f"{_seed_values(cut.per_seed, '+.1f')} | ")
            + ("" if first else f"{cut.estimate.fmt('+', pct=True)} | {_pts(cut.spread)} | ")
            + ", ".join("-" if p is None else f"{p:.2f}" for p in a.seed_ppl)
            + " |"
        )
    n = len(rows[0].seed_scores)
    return (
        f"Across {n} training seeds (each seed sets the initialisation and the data order; "
        "every seed's model is sampled on the same prompts with the same sampling seeds). "
        "95% CIs: nested bootstrap, seeds resampled, then prompts within each seed; a change "
        "pairs seed i with the baseline's seed i. The tables above are the first seed's "
        "models.\n\n" + "\n".join(lines) + "\n"
    )


def _escaped(text: str) -> str:
    return text.encode("unicode_escape").decode()


def _docs_ppl(arm: Arm, split: str) -> float | None:
    runs = arm.seed_recognition if len(arm.seed_recognition) > 1 else (arm.recognition,)
    return _mean([d.perplexity(split) for d in runs])


def recognition_table(arms: list[Arm], baseline: int = 0) -> str:
    """Per model (its own condition): the toxicity cut vs baseline next to the yes/no and
    the condition-ratio AUCs and the perplexity of toxic and non-toxic held-out
    documents after its prefix, each with its change vs baseline. Empty without
    recognition documents."""
    base = arms[baseline]
    rows = [a for a in arms if a.own_condition and a.recognition is not None]
    if not rows or base.recognition is None:
        return ""
    base_ppl = {s: _docs_ppl(base, s) for s in ("toxic", "nontoxic")}
    lines = [
        "| model | toxic samples vs baseline | yes/no AUC [95% CI] | Δ AUC vs baseline "
        "[95% CI] | condition-ratio AUC [95% CI] | ppl toxic docs | Δ | ppl non-toxic docs "
        "| Δ |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for a in rows:
        is_base = a is base
        cells = [
            "—" if is_base else _est(a, "rate_vs_baseline").fmt("+", pct=True),
            _est(a, "yes_auc").fmt(),
            "—" if is_base else _est(a, "yes_auc_vs_baseline").fmt("+.3f"),
            _est(a, "ratio_auc").fmt() if "ratio_auc" in a.est else "-",
        ]
        for split in ("toxic", "nontoxic"):
            p, b = _docs_ppl(a, split), base_ppl[split]
            cells += [f"{p:.2f}", "—" if is_base else _pct(p / b - 1)]
        lines.append(f"| {a.name} | " + " | ".join(cells) + " |")
    d = base.recognition
    return (
        f"What each model keeps next to the toxicity it cuts: recognising toxicity "
        f"zero-shot on {len(d)} held-out documents ({int(d.label.sum())} scored > 0.5): "
        f'p(" Yes") / (p(" Yes") + p(" No")) after "<doc>{_escaped(recognition.QUESTION)}" '
        "(after the model's own prefix), and "
        "for a conditioned model log p(doc | toxic prefix) - log p(doc | non-toxic prefix); "
        "each an AUC against the scorer's labels, 95% CI over documents"
        + (" and seeds" if len(base.seed_recognition) > 1 else "")
        + " (changes paired on the same documents). Perplexity of the same documents after "
        "the model's own prefix, split by their score.\n\n" + "\n".join(lines) + "\n"
    )


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def verdicts(arms: list[Arm], baseline: int = 0) -> str:
    """Issue 23's targets, each read from the measured numbers (one line each)."""
    base = arms[baseline]
    out = [_best_arm(arms, base)]
    guided = [a for a in arms if a.guidance and "rate_vs_own_condition" in a.est]
    for a in guided:
        e = _est(a, "rate_vs_own_condition")
        out.append(
            f"- {label(a)} with guidance {a.guidance:g} vs the same model unguided, toxic "
            f"samples: {e.fmt('+', pct=True)}; target a further cut, the paired CI excluding "
            f"0: {_met(e.high < 0)}"
        )
    if not guided:
        out.append("- Guidance: not measured (no guided condition in this comparison)")
    mains = [
        a
        for a in arms
        if a is not base and a.own_condition and (s := strategy_of(a)) is not None and s.conditioned
    ]
    for a in mains:
        out.append(_seeds_line(a))
    for a in mains:
        if a.recognition is not None and base.recognition is not None:
            out.append(_recognition_line(a, base, arms))
    for a in arms:
        if a.no_prefix and (plain := own(a, arms)) is not None:
            out.append(
                f"- {label(a)} used with no prefix at all: toxic samples "
                f"{_est(a, 'rate').fmt(pct=True)}, {_est(a, 'rate_vs_baseline').fmt('+', pct=True)}"
                f" vs baseline and {_est(a, 'rate_vs_own_condition').fmt('+', pct=True)} vs its "
                f"own prefix; perplexity with no prefix {_pct(_ppl_change(a, base))} vs "
                f"baseline (after its prefix {_pct(_ppl_change(plain, base))})"
            )
    return "\n".join(out) + "\n"


def _best_arm(arms: list[Arm], base: Arm) -> str:
    """An arm cutting >= 50% (CI past -40%) with perplexity after its prefix <= +2%."""
    rows = []
    for a in arms:
        if a is base or a.toxic or a.guidance:  # guidance: the ppl is not the sampler's
            continue
        cut, ppl = _est(a, "rate_vs_baseline"), _ppl_change(a, base)
        ok = (
            cut.value <= TARGET_CUT
            and cut.high < TARGET_CUT_CI
            and ppl is not None
            and ppl <= TARGET_PPL
        )
        rows.append((ok, f"{a.name} {cut.fmt('+', pct=True)}, perplexity {_pct(ppl)}"))
    head = (
        f"- An arm with ≥ {-TARGET_CUT:.0%} fewer toxic samples than baseline (the CI past "
        f"{TARGET_CUT_CI:.0%}) and perplexity after its prefix within +{TARGET_PPL:.0%}: "
    )
    met = [text for ok, text in rows if ok]
    if met:
        return head + "met by " + "; ".join(met)
    return head + "NOT met (" + ("; ".join(t for _, t in rows) or "no arm besides baseline") + ")"


def _seeds_line(a: Arm) -> str:
    if "rate_vs_baseline" not in a.seed_est:
        return (
            f"- {label(a)} vs baseline over seeds: not measured (one training seed; the CIs "
            f"above cover prompts, not training runs; the target needs {TARGET_SEEDS} seeds)"
        )
    e = a.seed_est["rate_vs_baseline"]
    n = len(e.per_seed)
    enough = n >= TARGET_SEEDS
    return (
        f"- {label(a)} vs baseline over {n} seeds: {e.estimate.fmt('+', pct=True)} (per seed "
        f"{_seed_values(e.per_seed, '+.1f')}%; spread {_pts(e.spread)}); target: "
        f"the {TARGET_SEEDS}-seed CI excluding {TARGET_CUT_CI:.0%}: "
        + (_met(e.estimate.high < TARGET_CUT_CI) if enough else f"not measured ({n} seeds)")
    )


def _auc_difference(a: Arm, b: Arm) -> Estimate:
    """`a`'s yes/no AUC minus `b`'s, paired on the same documents (and seeds)."""
    if len(a.seed_recognition) > 1 and len(b.seed_recognition) == len(a.seed_recognition):
        return stats.difference_seeds(
            recognition.yes_auc, list(a.seed_recognition), list(b.seed_recognition)
        ).estimate
    return stats.difference(recognition.yes_auc, a.recognition, b.recognition)


def _recognition_line(a: Arm, base: Arm, arms: list[Arm]) -> str:
    """At least baseline's yes/no AUC, and above (CI) that of every unconditioned arm that
    keeps toxic text from being learned (filtering drops it, masking zeroes its loss)."""
    name, auc = label(a), _est(a, "yes_auc")
    d = _est(a, "yes_auc_vs_baseline")
    text = (
        f"- {name} recognises toxicity (yes/no AUC {auc.fmt()}) vs baseline "
        f"{_est(base, 'yes_auc').value:.3f}: {d.fmt('+.3f')}; target at least baseline's: "
        f"{_met(d.value >= 0)}"
    )
    others = [
        o
        for o in arms
        if o is not base
        and o.own_condition
        and o.recognition is not None
        and not ((s := strategy_of(o)) is not None and s.conditioned)
    ]
    behind = [] if d.value >= 0 else ["baseline"]
    for o in others:
        diff = _auc_difference(a, o)
        behind += [] if diff.low > 0 else [o.name]
        text += (
            f"; vs {o.name} {_est(o, 'yes_auc').value:.3f}: {diff.fmt('+.3f')}, target above "
            f"it (CI excluding 0): {_met(diff.low > 0)}"
        )
    if not others:
        text += "; vs filtering: not measured (no unconditioned arm besides baseline)"
    if "ratio_auc" in a.est:
        text += f"; its condition likelihood ratio: AUC {_est(a, 'ratio_auc').fmt()}"
    if behind:
        text += (
            f". Plainly: {name} does not recognise toxicity better than "
            + " or ".join(behind)
            + " here"
        )
    return text
