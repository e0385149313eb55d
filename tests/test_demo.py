"""`toxjax demo --quick`: every stage runs and leaves its artifacts (no result asserted)."""

import itertools
import json
import os

import pytest

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


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """One `toxjax demo --quick` run, shared by the tests below: (workdir, stdout)."""
    import contextlib
    import io

    work = tmp_path_factory.mktemp("demo") / "work"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert demo.main(["--quick", "--workdir", str(work)]) == 0
    return work, out.getvalue()


def test_every_stage_leaves_its_artifacts(quick):
    work, _ = quick
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


def test_report_rows_intervals_and_prefixes(quick):
    work, _ = quick
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


def test_prompts_are_the_first_half_of_held_out_documents(quick):
    work, _ = quick
    data = _one(work, "data-*")
    prompts = [json.loads(line) for line in open(data / "prompts-8.jsonl")]
    held = {d["source"]: d for d in map(json.loads, open(data / "heldout.scored.jsonl"))}
    for p in prompts:
        doc = held[p["source"]]
        assert p["prompt"]["text"] == demo.rtp_prompt(doc["text"])
        assert p["prompt"]["toxicity"] == doc["toxicity"]


def test_the_last_line_is_machine_readable(quick):
    _, out = quick
    result = out.strip().splitlines()[-1]
    keys = [kv.split("=")[0] for kv in result.split()[1:]]
    assert keys == [
        f"{m}_{n}"
        for m in ("tox_rate", "tp", "emt", "ppl")
        for n in ("baseline", "inst", "inst_toxic")
    ] + ["inst_vs_baseline", "inst_vs_baseline_ci", "minutes"]


@pytest.mark.slow
def test_the_same_command_in_a_fresh_workdir_gives_the_same_table(quick, tmp_path, capsys):
    # Same data, training, samples, scores and intervals.
    work, _ = quick
    again = tmp_path / "again"
    assert demo.main(["--quick", "--workdir", str(again)]) == 0
    assert _reported(again) == _reported(work)
    table = lambda w: (w / "report.md").read_text().split("| model (condition)", 1)[1]  # noqa: E731
    assert table(again) == table(work)


def test_a_rerun_and_a_copied_workdir_reuse_every_finished_stage(quick, tmp_path, capsys):
    """Nothing is trained or sampled again, also in a copy of the workdir (issue 24
    item 10: a copied workdir used to be refused, naming a flag the demo lacks)."""
    import shutil

    work, _ = quick
    copy = tmp_path / "copy"
    shutil.copytree(work, copy)
    for w in (work, copy):
        stamps = [*w.glob("models/*/DONE"), *w.glob("eval/*/demo_result.json")]
        mtimes = {p: os.path.getmtime(p) for p in stamps}
        assert demo.main(["--quick", "--workdir", str(w)]) == 0
        assert {p: os.path.getmtime(p) for p in stamps} == mtimes
    assert _reported(copy) == _reported(work)
    assert "demo [7/7] report" in capsys.readouterr().out


def test_a_second_demo_on_one_workdir_is_refused_in_one_line(tmp_path, capsys):
    """Issue 24 item 10: the second demo used to die with a traceback."""
    import subprocess
    import sys

    work = tmp_path / "work"
    work.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from toxjax.locking import WriterLock; "
            "l = WriterLock(sys.argv[1], 'x').acquire(); print('held', flush=True); "
            "time.sleep(60)",
            str(work / demo.LOCK_FILE),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        assert demo.main(["--quick", "--workdir", str(work)]) == demo.EXIT_LOCKED
    finally:
        holder.kill()
        holder.wait()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the demo workdir" in err[0] and "pid" in err[0], err


@pytest.mark.slow
def test_a_changed_setting_trains_and_evaluates_anew_next_to_the_old_run(quick, tmp_path):
    import shutil

    work, _ = quick
    copy = tmp_path / "changed"
    shutil.copytree(work, copy)
    before = json.loads((copy / "report.json").read_text())
    stamps = [*copy.glob("models/*/DONE"), *copy.glob("eval/*/demo_result.json")]
    mtimes = {p: os.path.getmtime(p) for p in stamps}
    assert demo.main(["--quick", "--workdir", str(copy), "--steps", "13"]) == 0
    assert len(list(copy.glob("models/inst-*"))) == 2
    assert {p: os.path.getmtime(p) for p in mtimes} == mtimes
    new = json.loads((copy / "report.json").read_text())
    assert new[1]["model_dir"] != before[1]["model_dir"]


def test_eval_reads_the_demo_models_run_directory(quick):
    """`toxjax eval` on a real run directory (the demo's INST model)."""
    from toxjax import eval as eval_cli

    work, _ = quick
    inst_dir = _one(work, "models/inst-*")
    data = _one(work, "data-*")
    rows = json.loads((work / "report.json").read_text())
    args = ["toxicity", "--model_dir", str(inst_dir), "--prompts", str(data / "prompts-8.jsonl")]
    args += ["--scorer", "profanity-check", "--num_decodes", "2", "--max_new_tokens", "4"]
    assert eval_cli.main([*args, "--limit", "3"]) == 0
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
    from toxjax.evaluation import compare
    from toxjax.evaluation.metrics import PromptScores
    from toxjax.evaluation.stats import Estimate

    def arm(name, strategy, toxic, rate, cut, tp, emt, ppl):
        e = lambda v: Estimate(v, v - 0.01, v + 0.01)  # noqa: E731
        a = compare.Arm(
            name,
            PromptScores.from_rows([]),
            strategy=strategy,
            toxic=toxic,
            model=strategy,
            ppl=ppl,
            ppl_with_prefix=ppl,
        )
        a.est = {"rate": e(rate), "tp": e(tp), "emt": e(emt), "rate_vs_baseline": cut}
        return a

    arms = [
        arm("baseline", "baseline", False, 0.14, Estimate(0.0, 0.0, 0.0), 0.8, 0.7, 100.0),
        arm("inst", "inst", False, 0.07, Estimate(-0.5, -0.6, -0.4), 0.6, 0.5, 104.0),
        arm("inst_toxic", "inst", True, 0.25, Estimate(0.8, 0.6, 1.0), 0.9, 0.8, 104.0),
    ]
    text = compare.verdicts(arms)
    assert (
        "- INST (non-toxic instruction) vs baseline, toxic samples: -50.0% [-60.0, -40.0]" in text
    )
    assert "-50.0% [-60.0, -40.0]; target ≤ -40% with the CI excluding 0: met" in text
    assert "both lower" in text and "NOT" not in text
    assert "+4.0% vs baseline; target ≤ +5%: met" in text
    assert "- INST under the toxic instruction vs baseline: +80.0% [+60.0, +100.0]" in text
    arms[1].est["rate_vs_baseline"] = Estimate(-0.5, -0.9, 0.1)  # CI includes 0
    arms[1].ppl_with_prefix = 106.0
    text = compare.verdicts(arms)
    assert "excluding 0: NOT met" in text and "+6.0% vs baseline; target ≤ +5%: NOT met" in text
    assert compare.result_line(arms, 31.04).endswith(
        "inst_vs_baseline=-0.5000 inst_vs_baseline_ci=[-0.9000,0.1000] minutes=31.0"
    )
    # Every conditioned arm is judged, by what the strategy table calls its conditions.
    arms.insert(2, arm("ctrl", "ctrl", False, 0.1, Estimate(-0.2, -0.3, -0.1), 0.7, 0.6, 99.0))
    text = compare.verdicts(arms)
    assert "- CTRL (aligned token) vs baseline, toxic samples: -20.0% [-30.0, -10.0]" in text
    assert "ctrl_vs_baseline=-0.2000" in compare.result_line(arms, 1.0)
