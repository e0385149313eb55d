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
    conds = demo.conditions(["baseline", "meda", "inst", "filter"])
    assert [(c.name, c.arm, c.toxic) for c in conds] == [
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


# --------------------------------------------------------------- arms, seeds, recognition
def test_arms_and_eval_conditions_come_from_one_table():
    from toxjax.demo.arms import ARMS, parse
    from toxjax.preprocessors import STRATEGIES

    for name in STRATEGIES:  # every strategy is an arm: its default recipe
        assert ARMS[name].strategy == name and ARMS[name].overrides == ()
        assert ARMS[name].corpus == "demo"
    cooldown = ARMS["inst-cooldown"].config
    assert (cooldown.condition_start, cooldown.condition_end) == (0.0, 0.9)
    assert cooldown.mask_condition_loss and ARMS["inst-masked"].config.mask_condition_loss
    assert ARMS["inst-late"].config.condition_start == 0.2
    assert ARMS["inst-late"].corpus == "demo_inst_late"
    arms, extras = parse(
        "baseline,inst", "inst-cooldown,mask,inst+guidance2,inst-late+none,inst+guidance2.0"
    )
    assert arms == ["baseline", "inst", "inst-cooldown", "mask", "inst-late"]
    assert [(c.name, c.arm, c.no_prefix, c.guidance) for c in extras] == [
        ("inst+guidance2", "inst", False, 2.0),
        ("inst-late+none", "inst-late", True, 0.0),
    ]
    assert [c.name for c in demo.conditions(arms, extras)] == [
        "baseline",
        "inst",
        "inst-cooldown",
        "mask",
        "inst-late",
        "inst_toxic",
        "inst-cooldown_toxic",
        "inst-late_toxic",
        "inst+guidance2",
        "inst-late+none",
    ]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--extra", "baseline+guidance2"], "baseline+guidance2: baseline has no conditioning"),
        (["--extra", "inst+guidance0"], "unknown eval condition 'inst+guidance0'; use ARM+none"),
        (["--extra", "inst+loud"], "unknown eval condition 'inst+loud'"),
        (["--extra", "instr+none"], "unknown strategies ['instr']"),
        (["--seeds", "0"], "--seeds 0 must be at least 1"),
    ],
)
def test_bad_arm_flags_are_one_line_before_any_work(tmp_path, capsys, flags, message):
    assert demo.main(["--quick", "--workdir", str(tmp_path / "w"), *flags]) == demo.EXIT_CONFIG
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("toxjax demo: ") and message in err[0], err
    assert not (tmp_path / "w").exists()


def test_seed_0_of_a_strategy_keeps_the_keys_it_had(quick):
    """Existing workdirs are reused: the default recipe at seed 0 hashes the settings it
    hashed before arms and seeds existed (train protocol 2, eval protocol 4)."""
    from toxjax.demo import evals, stages
    from toxjax.demo.arms import ARMS, Condition

    work, _ = quick
    data = _one(work, "data-*")
    data_key = data.name.split("-", 1)[1]
    cfg = demo.DemoConfig.quick()
    old = {"protocol": 2, "data": data_key, "strategy": "inst", "task": "demo_inst_v1"}
    old.update((k, getattr(cfg, k)) for k in ("model_gin", "model_bindings", "sequence_length"))
    old.update((k, getattr(cfg, k)) for k in ("batch_size", "num_steps", "learning_rate"))
    path, _ = stages.model_dir(ARMS["inst"], "demo_inst_v1", str(work), cfg, data_key)
    assert path == str(work / "models" / f"inst-{demo.settings_key(old)}")
    assert os.path.exists(os.path.join(path, "DONE"))
    assert stages.model_dir(ARMS["inst"], "demo_inst_v1", str(work), cfg, data_key, 1)[0] != path
    old_eval = {
        "protocol": 4,
        "model": os.path.basename(path),
        "toxic": True,
        "prompts": os.path.relpath(data / "prompts-8.jsonl", work),
        "heldout": os.path.relpath(data / "heldout.jsonl", work),
        "num_decodes": cfg.num_decodes,
        "max_new_tokens": cfg.max_new_tokens,
        "seed": 0,
        "scorer": "profanity-check",
    }
    out, _ = evals.eval_dir(
        Condition("inst_toxic", "inst", toxic=True),
        path,
        str(data / "prompts-8.jsonl"),
        str(data / "heldout.jsonl"),
        str(work),
        cfg,
        "profanity-check",
    )
    assert out == str(work / "eval" / f"inst_toxic-{demo.settings_key(old_eval)}")
    assert os.path.exists(os.path.join(out, evals.RESULT_FILE))


def test_report_reads_recognition_and_eval_recognition_agrees(quick):
    """Every row carries its model's recognition; `toxjax eval recognition` on the demo's
    INST run directory gives the same yes/no scores and AUC."""
    from toxjax import cli

    work, out = quick
    rows = json.loads((work / "report.json").read_text())
    assert [r["arm"] for r in rows] == ["baseline", "inst", "inst"]
    assert rows[0]["recognition"]["ratio_auc"] is None
    assert rows[1]["recognition"]["ratio_auc"] is not None
    assert rows[1]["recognition"] == rows[2]["recognition"]  # one model
    assert rows[1]["estimates"]["yes_auc"]["value"] == rows[1]["recognition"]["yes_auc"]["value"]
    report = (work / "report.md").read_text()
    assert "What each model keeps next to the toxicity it cuts" in report
    assert "- INST recognises toxicity (yes/no AUC" in report
    assert "- INST vs baseline over seeds: not measured (one training seed;" in report
    assert "Across " not in report  # no seeds table with one seed
    inst_dir = _one(work, "models/inst-*")
    scored = _one(work, "data-*") / "heldout.scored.jsonl"
    assert (
        cli.main(["eval", "recognition", "--model_dir", str(inst_dir), "--docs", str(scored)]) == 0
    )
    got = json.loads((inst_dir / "eval" / "recognition-inst" / "metrics.json").read_text())
    assert got["metrics"]["yes_auc"] == rows[1]["recognition"]["yes_auc"]
    demo_docs = [json.loads(x) for x in open(_one(work, "recognition/inst-*/documents.jsonl"))]
    cli_docs = [json.loads(x) for x in open(inst_dir / "eval/recognition-inst/documents.jsonl")]
    assert [d["yes"] for d in cli_docs] == [d["yes"] for d in demo_docs]


@pytest.fixture(scope="module")
def extra_arms(quick, tmp_path_factory):
    """The quick run's workdir copied, then every new arm and eval condition added."""
    import contextlib
    import io
    import shutil

    work = tmp_path_factory.mktemp("arms") / "work"
    shutil.copytree(quick[0], work)
    stamps = {p: os.path.getmtime(p) for p in work.glob("models/*/DONE")}
    extra = "inst-cooldown,inst-late,inst-masked,mask,inst+guidance2,inst+none"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert demo.main(["--quick", "--workdir", str(work), "--extra", extra]) == 0
    return work, out.getvalue(), stamps


@pytest.mark.slow
def test_every_new_arm_trains_and_evaluates_through_the_cli(extra_arms):
    work, out, stamps = extra_arms
    assert {p: os.path.getmtime(p) for p in stamps} == stamps  # baseline, INST reused
    from toxjax.demo.arms import ARMS

    for name in ("inst-cooldown", "inst-late", "inst-masked", "mask"):
        run = json.loads((_one(work, f"models/{name}-*") / "run.json").read_text())
        assert run["strategy"] == ARMS[name].strategy
        assert run["task"] == f"{ARMS[name].corpus}_{ARMS[name].strategy}_v1"
        for field, value in ARMS[name].overrides:
            assert run["augment"][field] == value, (name, field)
    rows = json.loads((work / "report.json").read_text())
    assert [r["name"] for r in rows] == [
        "baseline",
        "inst",
        "inst-cooldown",
        "inst-late",
        "inst-masked",
        "mask",
        "inst_toxic",
        "inst-cooldown_toxic",
        "inst-late_toxic",
        "inst-masked_toxic",
        "inst+guidance2",
        "inst+none",
    ]
    by = {r["name"]: r for r in rows}
    assert by["inst+none"]["prefix"] == "" and by["inst+none"]["settings"]["no_prefix"]
    assert by["inst+none"]["ppl_with_prefix"] == by["inst+none"]["ppl"] == by["inst"]["ppl"]
    guided = by["inst+guidance2"]
    assert guided["prefix"] == by["inst"]["prefix"] and guided["settings"]["guidance"] == 2.0
    assert guided["model_dir"] == by["inst"]["model_dir"]
    meta = json.loads(
        (work / os.path.dirname(guided["generations"]) / "generations.meta.json").read_text()
    )
    toxic_meta = work / os.path.dirname(by["inst_toxic"]["generations"]) / "generations.meta.json"
    toxic_ids = json.loads(toxic_meta.read_text())["identity"]["prefix_ids"]
    assert meta["identity"]["guidance"] == 2.0
    assert meta["identity"]["negative_prefix_ids"] == toxic_ids  # steered away from it
    assert (work / guided["generations"]).read_text() != (
        work / by["inst"]["generations"]
    ).read_text()
    for r in rows:
        assert r["num_samples"] == 8 * 4, r["name"]
        has_ratio = ARMS[r["arm"]].conditioned
        assert (r["recognition"]["ratio_auc"] is not None) == has_ratio, r["name"]
    assert "rate_vs_own_condition" in by["inst+none"]["estimates"]
    report = (work / "report.md").read_text()
    for line in (
        "- INST with guidance 2 vs the same model unguided, toxic samples:",
        "- INST used with no prefix at all: toxic samples",
        "- inst-cooldown (non-toxic instruction) vs baseline, toxic samples:",
        "- inst-masked recognises toxicity (yes/no AUC",
        "; vs mask ",
        "| mask | ",
    ):
        assert line in report, line
    assert "demo: 6 arms x 1 seed: 4 models to train, 9 evals (1 guided)" in out
    result = out.strip().splitlines()[-1]
    assert result.startswith("RESULT ") and "inst+guidance2_vs_baseline=" in result


@pytest.fixture(scope="module")
def two_seeds(quick, tmp_path_factory):
    """The quick run's workdir copied, then `--seeds 2`."""
    import contextlib
    import io
    import shutil

    work = tmp_path_factory.mktemp("seeds") / "work"
    shutil.copytree(quick[0], work)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert demo.main(["--quick", "--workdir", str(work), "--seeds", "2"]) == 0
    return work, out.getvalue()


@pytest.mark.slow
def test_two_seeds_report_each_seed_and_the_nested_interval(quick, two_seeds):
    one, _ = quick
    work, out = two_seeds
    assert "demo: 2 arms x 2 seeds: 2 models to train, 3 evals (0 guided)" in out
    assert len(list(work.glob("models/*-*"))) == 4
    seed1 = [
        m for m in work.glob("models/inst-*") if "seed" in (m / "demo_settings.json").read_text()
    ]
    assert len(seed1) == 1
    gin = (seed1[0] / "config.gin").read_text()
    assert "train.seed = 1" in gin and "DataConfig.seed = 1" in gin
    rows, before = (json.loads((w / "report.json").read_text()) for w in (work, one))
    for r, b in zip(rows, before, strict=True):
        assert len(r["seeds"]) == 2
        # Seed 0 is the 1-seed run's model and samples; seed 1 is paired with it: the
        # same prompts and sampling seed, another model.
        first, second = r["seeds"]
        assert {k: v for k, v in first.items() if k != "minutes"} == {
            k: v for k, v in b.items() if k in first and k != "minutes"
        }
        assert second["settings"]["prompts"] == first["settings"]["prompts"]
        assert second["settings"]["seed"] == first["settings"]["seed"] == 0
        assert second["model_dir"] != first["model_dir"]
        rate = r["seed_estimates"]["rate"]
        assert len(rate["per_seed"]) == 2 and rate["low"] <= rate["value"] <= rate["high"]
        assert rate["per_seed"][0] == r["estimates"]["rate"]["value"]
    report = (work / "report.md").read_text()
    assert "Across 2 training seeds" in report and "| toxic samples per seed (%) |" in report
    assert "- INST vs baseline over 2 seeds:" in report and "not measured (2 seeds)" in report

    # The first seed's tables are the 1-seed report's, byte for byte.
    def main(w):
        report = (w / "report.md").read_text()
        return report.split("| model (condition)")[1].split("Does the model")[0]

    assert main(work) == main(one)
