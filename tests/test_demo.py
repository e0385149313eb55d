"""`toxjax demo --quick`: every stage runs and leaves its artifacts (no result asserted)."""

import itertools
import json
import os

from toxjax import demo


def _one(work, pattern):
    found = sorted(work.glob(pattern))
    assert len(found) == 1, (pattern, found)
    return found[0]


def _reported(work):
    """report.json without timings: what two identical runs must share."""
    rows = json.loads((work / "report.json").read_text())
    for r in rows:
        del r["minutes"]
    return rows


def test_quick_demo_end_to_end(tmp_path, capsys):
    work = tmp_path / "demo"
    assert demo.main(["--quick", "--workdir", str(work)]) == 0
    out = capsys.readouterr().out
    data = _one(work, "data-*")
    for name in (
        "train.jsonl",
        "heldout.jsonl",
        "train.scored.jsonl",
        "heldout.scored.jsonl",
        "spm.model",
        "prompts-8.jsonl",
    ):
        assert (data / name).exists(), name
    for name in ("report.md", "report.png", "report.json"):
        assert (work / name).exists(), name
    for strategy in ("baseline", "inst"):
        model = _one(work, f"models/{strategy}-*")
        assert (model / "DONE").exists() and (model / "run.json").exists()
    report = (work / "report.md").read_text()
    for row in ("| baseline |", "| inst |", "| inst_toxic |"):
        assert row in report
    assert "Does the model follow its condition?" in report and "- INST (non-toxic" in report
    # Every rate, TP and EMT has a bootstrap interval that contains it.
    rows = json.loads((work / "report.json").read_text())
    assert [r["name"] for r in rows] == ["baseline", "inst", "inst_toxic"]
    for r in rows:
        for key in ("rate", "tp", "emt"):
            e = r["estimates"][key]
            assert e["low"] <= e["value"] <= e["high"], (r["name"], key, e)
        assert r["num_samples"] == 8 * 4 and r["num_prompts"] == 8
    assert "rate_vs_nontoxic_condition" in rows[2]["estimates"]
    # The prefix each condition used is the one the model's run.json implies.
    assert rows[0]["prefix"] == "" and rows[1]["prefix"].startswith("Instruction:")
    assert rows[1]["prefix"] != rows[2]["prefix"]
    # Prompts are the first half of held-out documents, toxic ones by document score.
    prompts = [json.loads(line) for line in open(data / "prompts-8.jsonl")]
    held = {d["source"]: d for d in map(json.loads, open(data / "heldout.scored.jsonl"))}
    for p in prompts:
        doc = held[p["source"]]
        assert p["prompt"]["text"] == demo.rtp_prompt(doc["text"])
        assert p["prompt"]["toxicity"] == doc["toxicity"]
    result = out.strip().splitlines()[-1]
    keys = [kv.split("=")[0] for kv in result.split()[1:]]
    assert keys == [
        f"{m}_{n}"
        for m in ("tox_rate", "tp", "emt", "ppl")
        for n in ("baseline", "inst", "inst_toxic")
    ] + ["inst_vs_baseline", "inst_vs_baseline_ci", "minutes"]

    # Deterministic: the same command in a fresh workdir gives the same table (same data,
    # training, samples, scores and intervals).
    again = tmp_path / "again"
    assert demo.main(["--quick", "--workdir", str(again)]) == 0
    assert _reported(again) == _reported(work)
    table = lambda w: (w / "report.md").read_text().split("| model (condition)", 1)[1]  # noqa: E731
    assert table(again) == table(work)

    # A re-run reuses every finished stage: nothing is trained or sampled again.
    inst_dir = _one(work, "models/inst-*")
    result_file = _one(work, "eval/inst-*/demo_result.json")
    mtimes = {p: os.path.getmtime(p) for p in (inst_dir / "DONE", result_file)}
    assert demo.main(["--quick", "--workdir", str(work)]) == 0
    assert {p: os.path.getmtime(p) for p in mtimes} == mtimes

    # A changed setting trains and evaluates anew, next to the old run, never over it.
    assert demo.main(["--quick", "--workdir", str(work), "--steps", "13"]) == 0
    assert len(list(work.glob("models/inst-*"))) == 2
    assert {p: os.path.getmtime(p) for p in mtimes} == mtimes
    new = json.loads((work / "report.json").read_text())
    assert new[1]["model_dir"] != rows[1]["model_dir"]
    capsys.readouterr()

    # `toxjax eval` works on a real run directory (the demo's INST model).
    from toxjax import eval as eval_cli

    assert (
        eval_cli.main(
            [
                "toxicity",
                "--model_dir",
                str(inst_dir),
                "--prompts",
                str(data / "prompts-8.jsonl"),
                "--scorer",
                "profanity-check",
                "--num_decodes",
                "2",
                "--max_new_tokens",
                "4",
                "--limit",
                "3",
            ]
        )
        == 0
    )
    metrics = json.loads((inst_dir / "eval" / "toxicity-inst" / "metrics.json").read_text())
    assert metrics["metrics"]["full"]["num_continuations"] == 6
    assert metrics["prefix"] == rows[1]["prefix"]  # eval reads the condition from run.json


def test_rtp_prompt_is_the_first_half_at_a_word_boundary():
    assert demo.rtp_prompt("One two three four five") == "One two"
    assert demo.rtp_prompt("A  fortune\n\tspread over\nlines ok") == "A fortune spread"
    assert demo.rtp_prompt("too short here") is None


def test_training_corpus_upsamples_toxic_scored_documents_shuffled_on_disk(tmp_path):
    # Toxic-*scored* documents are repeated (not whole files), and the result is shuffled
    # on disk: in file order the copies form a block that seqio's 1000-example shuffle
    # buffer cannot mix (see demo.stage_upsample).
    docs = [{"text": f"clean {i}", "source": f"fortunes:{i}", "toxicity": 0.1} for i in range(60)]
    docs += [
        {"text": f"crude {i}", "source": f"fortunes-o:{i}", "toxicity": 0.9} for i in range(20)
    ]
    docs += [{"text": "rude, not toxic", "source": "fortunes-o:99", "toxicity": 0.5}]
    docs += [{"text": "unscored", "source": "fortunes-o:98", "toxicity": None}]
    scored = tmp_path / "train.scored.jsonl"
    scored.write_text("".join(json.dumps(d) + "\n" for d in docs))
    path = demo.stage_upsample(str(scored), str(tmp_path), repeat=4)
    out = [json.loads(line) for line in open(path)]
    assert sorted(d["source"] for d in out) == sorted(
        [d["source"] for d in docs[:60]]
        + [d["source"] for d in docs[60:80] for _ in range(4)]
        + ["fortunes-o:99"]  # 0.5 is not toxic: kept once; unscored: left out
    )
    toxic = [i for i, d in enumerate(out) if d["toxicity"] > 0.5]
    assert toxic[0] < 20 and toxic[-1] > 120  # spread over the file, not one block
    adjacent_copies = sum(a["source"] == b["source"] for a, b in itertools.pairwise(out))
    assert adjacent_copies < 10  # file order would give 60 (3 per up-sampled entry)
    os.remove(path)
    assert [
        json.loads(line) for line in open(demo.stage_upsample(str(scored), str(tmp_path), repeat=4))
    ] == out  # deterministic


def test_strategies_put_baseline_first_and_reject_unknown_names():
    assert demo.parse_strategies("baseline,meda,inst") == ["baseline", "meda", "inst"]
    assert demo.parse_strategies("inst", "ctrl,inst") == ["baseline", "inst", "ctrl"]
    try:
        demo.parse_strategies("baseline,instr")
    except SystemExit as e:
        assert "unknown strategies ['instr']" in str(e)
    else:
        raise AssertionError("a misspelled strategy must stop the demo")


def test_settings_key_names_the_settings():
    a = {"steps": 900, "lr": 2e-3}
    assert demo.settings_key(a) == demo.settings_key(dict(reversed(a.items())))
    assert demo.settings_key(a) != demo.settings_key({**a, "steps": 901})
    assert len(demo.settings_key(a)) == 8


def test_conditions_come_from_the_strategy_table():
    assert demo.conditions(["baseline", "meda", "inst", "filter"]) == [
        ("baseline", "baseline", False),
        ("meda", "meda", False),
        ("inst", "inst", False),
        ("filter", "filter", False),
        ("meda_toxic", "meda", True),
        ("inst_toxic", "inst", True),
    ]


def test_verdict_and_result_line_check_the_targets():
    from toxjax.evaluation.stats import Estimate

    def row(name, rate, cut, tp, emt, ppl):
        e = lambda v: Estimate(v, v - 0.01, v + 0.01)  # noqa: E731
        return {
            "name": name,
            "ppl_with_prefix": ppl,
            "ppl": ppl,
            "est": {"rate": e(rate), "tp": e(tp), "emt": e(emt), "rate_vs_baseline": cut},
        }

    results = [
        row("baseline", 0.14, Estimate(0.0, 0.0, 0.0), 0.8, 0.7, 100.0),
        row("inst", 0.07, Estimate(-0.5, -0.6, -0.4), 0.6, 0.5, 104.0),
        row("inst_toxic", 0.25, Estimate(0.8, 0.6, 1.0), 0.9, 0.8, 104.0),
    ]
    text = demo.verdict(results)
    assert "-50.0% [-60.0, -40.0]; target ≤ -40% with the CI excluding 0: met" in text
    assert "both lower" in text and "NOT" not in text
    assert "+4.0% vs baseline; target ≤ +5%: met" in text
    results[1]["est"]["rate_vs_baseline"] = Estimate(-0.5, -0.9, 0.1)  # CI includes 0
    results[1]["ppl_with_prefix"] = 106.0
    text = demo.verdict(results)
    assert "excluding 0: NOT met" in text and "+6.0% vs baseline; target ≤ +5%: NOT met" in text
    assert demo.result_line(results, 31.04).endswith(
        "inst_vs_baseline=-0.5000 inst_vs_baseline_ci=[-0.9000,0.1000] minutes=31.0"
    )
