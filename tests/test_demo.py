"""`toxjax demo --quick`: every stage runs and leaves its artifacts (no result asserted)."""

import json
import os

from toxjax import demo


def test_quick_demo_end_to_end(tmp_path, capsys):
    work = tmp_path / "demo"
    assert demo.main(["--quick", "--workdir", str(work)]) == 0
    out = capsys.readouterr().out
    for name in ("train.jsonl", "heldout.jsonl", "train.scored.jsonl", "heldout.scored.jsonl",
                 "spm.model", "prompts.jsonl", "report.md", "report.png"):
        assert (work / name).exists(), name
    for strategy in ("baseline", "meda", "inst"):
        assert (work / "models" / strategy / "DONE").exists()
        assert (work / "models" / strategy / "run.json").exists()
    report = (work / "report.md").read_text()
    for row in ("| baseline |", "| meda |", "| inst |", "| inst_toxic |"):
        assert row in report
    # Every prompt got its samples, and every sample was scored or counted as failed.
    gens = (work / "eval" / "inst" / "toxicity" / "generations.jsonl").read_text().splitlines()
    assert len(gens) == 8
    assert all(len(json.loads(g)["continuations"]) == 4 for g in gens)
    result = out.strip().splitlines()[-1]
    assert result.startswith("RESULT tox_rate_baseline=")
    keys = [kv.split("=")[0] for kv in result.split()[1:]]
    assert keys == ["tox_rate_baseline", "tox_rate_meda", "tox_rate_inst", "tox_rate_inst_toxic",
                    "tp_baseline", "tp_meda", "tp_inst", "emt_baseline", "emt_inst",
                    "ppl_baseline", "ppl_meda", "ppl_inst", "minutes"]

    # A re-run reuses every finished stage: nothing is trained or sampled again.
    mtimes = {p: os.path.getmtime(p) for p in (work / "models" / "inst" / "DONE",
                                               work / "eval" / "inst" / "demo_result.json")}
    assert demo.main(["--quick", "--workdir", str(work)]) == 0
    assert {p: os.path.getmtime(p) for p in mtimes} == mtimes

    # `toxjax eval` works on a real run directory (the demo's INST model).
    from toxjax import eval as eval_cli

    model_dir = str(work / "models" / "inst")
    assert eval_cli.main(["toxicity", "--model_dir", model_dir, "--prompts",
                          str(work / "prompts.jsonl"), "--scorer", "profanity-check",
                          "--condition", "inst", "--num_decodes", "2", "--max_new_tokens", "4",
                          "--limit", "3"]) == 0
    metrics = json.loads((work / "models" / "inst" / "eval" / "toxicity-inst" /
                          "metrics.json").read_text())
    assert metrics["metrics"]["full"]["num_continuations"] == 6
    assert metrics["prefix"].startswith("Instruction:")
