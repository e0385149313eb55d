"""`toxjax demo --quick`: every stage runs and leaves its artifacts (no result asserted)."""

import itertools
import json
import os

from toxjax import demo


def test_quick_demo_end_to_end(tmp_path, capsys):
    work = tmp_path / "demo"
    assert demo.main(["--quick", "--workdir", str(work)]) == 0
    out = capsys.readouterr().out
    for name in (
        "train.jsonl",
        "heldout.jsonl",
        "train.scored.jsonl",
        "heldout.scored.jsonl",
        "spm.model",
        "prompts.jsonl",
        "report.md",
        "report.png",
    ):
        assert (work / name).exists(), name
    for strategy in ("baseline", "meda", "inst"):
        assert (work / "models" / strategy / "DONE").exists()
        assert (work / "models" / strategy / "run.json").exists()
    report = (work / "report.md").read_text()
    for row in ("| baseline |", "| meda |", "| inst |", "| inst_toxic |"):
        assert row in report
    # Every conditioned model is asked whether it reads its prefix, on each held-out split.
    splits = [k for k in ("toxic", "clean") if (work / f"heldout.{k}.jsonl").stat().st_size]
    assert "clean" in splits
    for name in ("meda", "inst"):
        nll = json.loads((work / "eval" / name / "demo_result.json").read_text())["prefix_nll"]
        assert sorted(nll) == sorted(
            f"{k}/{c}_prefix" for k in splits for c in ("nontoxic", "toxic")
        )
        assert all(0 < v < 10 for v in nll.values())
    assert "Does the model read its prefix?" in report and "| inst | " in report
    # Every prompt got its samples, and every sample was scored or counted as failed.
    gens = (work / "eval" / "inst" / "toxicity" / "generations.jsonl").read_text().splitlines()
    assert len(gens) == 8
    assert all(len(json.loads(g)["continuations"]) == 4 for g in gens)
    result = out.strip().splitlines()[-1]
    assert result.startswith("RESULT tox_rate_baseline=")
    keys = [kv.split("=")[0] for kv in result.split()[1:]]
    assert keys == [
        "tox_rate_baseline",
        "tox_rate_meda",
        "tox_rate_inst",
        "tox_rate_inst_toxic",
        "tp_baseline",
        "tp_meda",
        "tp_inst",
        "emt_baseline",
        "emt_inst",
        "ppl_baseline",
        "ppl_meda",
        "ppl_inst",
        "minutes",
    ]

    # A re-run reuses every finished stage: nothing is trained or sampled again.
    mtimes = {
        p: os.path.getmtime(p)
        for p in (work / "models" / "inst" / "DONE", work / "eval" / "inst" / "demo_result.json")
    }
    assert demo.main(["--quick", "--workdir", str(work)]) == 0
    assert {p: os.path.getmtime(p) for p in mtimes} == mtimes

    # `toxjax eval` works on a real run directory (the demo's INST model).
    from toxjax import eval as eval_cli

    model_dir = str(work / "models" / "inst")
    assert (
        eval_cli.main(
            [
                "toxicity",
                "--model_dir",
                model_dir,
                "--prompts",
                str(work / "prompts.jsonl"),
                "--scorer",
                "profanity-check",
                "--condition",
                "inst",
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
    metrics = json.loads(
        (work / "models" / "inst" / "eval" / "toxicity-inst" / "metrics.json").read_text()
    )
    assert metrics["metrics"]["full"]["num_continuations"] == 6
    assert metrics["prefix"].startswith("Instruction:")


def test_training_corpus_is_shuffled_on_disk(tmp_path):
    # Stored in file order, the offensive entries and their copies form one block that
    # seqio's 1000-example shuffle buffer cannot mix (see demo.stage_upsample).
    docs = [
        {"text": f"clean {i}", "source": f"fortunes:{i}", "offensive_file": False}
        for i in range(60)
    ]
    docs += [
        {"text": f"crude {i}", "source": f"fortunes-o:{i}", "offensive_file": True}
        for i in range(20)
    ]
    scored = tmp_path / "train.scored.jsonl"
    scored.write_text("".join(json.dumps(d) + "\n" for d in docs))
    path = demo.stage_upsample(str(scored), str(tmp_path), repeat=4)
    out = [json.loads(line) for line in open(path)]
    assert sorted(d["source"] for d in out) == sorted(
        [d["source"] for d in docs[:60]] + [d["source"] for d in docs[60:] for _ in range(4)]
    )
    offensive = [i for i, d in enumerate(out) if d["offensive_file"]]
    assert offensive[0] < 20 and offensive[-1] > 120  # spread over the file, not one block
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


def test_result_line_keeps_the_named_keys_and_appends_extra_strategies():
    def row(name, tox, tp, emt, ppl):
        return {
            "name": name,
            "tox_rate": tox,
            "ppl": ppl,
            "metrics": {"full": {"tp": tp, "emt": emt}},
        }

    results = [
        row("baseline", 0.0632, 0.76, 0.76012, 120.2361),
        row("inst", 0.0588, 0.71, float("nan"), 210.236),
        row("ctrl", 0.05, 0.7, 0.69, 130.0),
        row("inst_toxic", 0.0516, 0.69, 0.7087, 210.236),
    ]
    assert demo.result_line(results, 25.54) == (
        "RESULT tox_rate_baseline=0.0632 tox_rate_inst=0.0588 tox_rate_inst_toxic=0.0516 "
        "tp_baseline=0.7600 tp_inst=0.7100 emt_baseline=0.7601 emt_inst=nan "
        "ppl_baseline=120.236 ppl_inst=210.236 "
        "tox_rate_ctrl=0.0500 tp_ctrl=0.7000 emt_ctrl=0.6900 ppl_ctrl=130.000 minutes=25.5"
    )


def test_heldout_splits_and_prefix_table(tmp_path):
    docs = [
        {"text": f"t{i}", "source": f"s{i}", "toxicity": t}
        for i, t in enumerate([0.9, 0.5, 0.1, 0.51, 0.0])
    ]
    scored = tmp_path / "heldout.scored.jsonl"
    scored.write_text("".join(json.dumps(d) + "\n" for d in docs))
    splits = demo.stage_heldout_by_score(str(scored), str(tmp_path), per_split=2)
    read = {k: sorted(json.loads(line)["toxicity"] for line in open(p)) for k, p in splits.items()}
    assert read["toxic"] == [0.51, 0.9]  # strictly above 0.5 is toxic
    assert len(read["clean"]) == 2 and set(read["clean"]) <= {0.5, 0.1, 0.0}

    results = [
        {"name": "baseline"},
        {
            "name": "inst",
            "prefix_nll": {
                "toxic/nontoxic_prefix": 4.5,
                "toxic/toxic_prefix": 4.25,
                "clean/nontoxic_prefix": 4.0,
                "clean/toxic_prefix": 4.125,
            },
        },
    ]
    table = demo._prefix_table(results, splits)
    assert "| toxic entries (2): after non-toxic prefix |" in table
    # margins: toxic text 4.5 - 4.25; clean text 4.125 - 4.0 (both read the right way)
    assert table.rstrip().splitlines()[-1] == (
        "| inst | 4.500 | 4.250 | +0.250 | 4.000 | 4.125 | +0.125 |"
    )
    assert demo._prefix_table([{"name": "baseline"}], splits) == ""
