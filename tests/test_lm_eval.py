"""`toxjax lm-eval --model toxjax` (lm-evaluation-harness, the optional `[lm-eval]` extra),
the way users run it, on local jsonl tasks and tiny random transformers checkpoints (no
downloads).

- Its log-likelihoods (context/continuation pairs, an empty context, rolling windows over
  documents longer than the model) are ours (`ModelLM`), and equal those of lm-eval's own
  `--model hf` on the same checkpoint (float32, relative 1e-5): GPT-2 and GPT-NeoX
  without a start token (`bos=none`, as their tokenizers add none), Llama with its `<s>`.
- lm-eval's LAMBADA, PIQA, HellaSwag, WinoGrande and BoolQ task definitions, on the same
  local files, give the numbers `toxjax eval utility` gives.
- `toxjax_rtp` samples what `toxjax eval toxicity` samples and gives its EMT and TP; a
  failed score is an error naming the prompt.
"""

import glob
import json
import os

import pytest

lm_eval = pytest.importorskip("lm_eval")
pytest.importorskip("accelerate")  # lm-eval's `hf` model (the [lm-eval] extra has it)
torch = pytest.importorskip("torch")

import hf_fixtures  # noqa: E402
import paper_fixtures  # noqa: E402

from toxjax import cli, corpus  # noqa: E402
from toxjax.run_dir import open_model_dir  # noqa: E402

LM_EVAL_TASKS = os.path.join(os.path.dirname(lm_eval.__file__), "tasks")


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def texts():
    return [t for _, t in corpus.read_fortunes("fortunes")[:60]]


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _yaml(directory, name, body):
    (directory / f"{name}.yaml").write_text(f"task: {name}\n{body}")


def _run(*argv):
    assert cli.main(["lm-eval", *argv]) == 0


def _samples(out, task):
    [path] = glob.glob(os.path.join(out, "*", f"samples_{task}_*.jsonl"))
    with open(path) as f:
        return sorted((json.loads(line) for line in f), key=lambda r: r["doc_id"])


def _results(out):
    [path] = glob.glob(os.path.join(out, "*", "results_*.json"))
    with open(path) as f:
        return json.load(f)["results"]


@pytest.fixture(scope="module")
def local_tasks(tmp_path_factory, texts):
    """A log-likelihood task (an empty context and a trailing newline among them) and a
    rolling one (one document longer than the models' 128 positions)."""
    root = tmp_path_factory.mktemp("tasks")
    pairs = [
        {"context": c, "continuation": " " + w} for c, w in (t.rsplit(" ", 1) for t in texts[:6])
    ]
    pairs += [
        {"context": "", "continuation": "Hello world"},
        {"context": "Question: why?\n", "continuation": "Because."},
    ]
    ll = _jsonl(root / "pairs.jsonl", pairs)
    docs = _jsonl(root / "docs.jsonl", [{"text": texts[10]}, {"text": " ".join(texts[11:30])}])
    tasks = root / "yaml"
    tasks.mkdir()
    _yaml(
        tasks,
        "local_pairs",
        f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {ll}\n"
        "output_type: loglikelihood\ntest_split: test\ndoc_to_text: '{{context}}'\n"
        "doc_to_target: '{{continuation}}'\ntarget_delimiter: ''\n"
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n",
    )
    _yaml(
        tasks,
        "local_docs",
        f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {docs}\n"
        "output_type: loglikelihood_rolling\ntest_split: test\ndoc_to_text: ''\n"
        "doc_to_target: '{{text}}'\nmetric_list:\n  - metric: word_perplexity\n",
    )
    return str(tasks), pairs


@pytest.mark.slow
@pytest.mark.parametrize("family", hf_fixtures.FAMILIES)
def test_loglikelihoods_are_ours_and_lm_evals_hf(family, local_tasks, tmp_path):
    tasks, pairs = local_tasks
    path = str(tmp_path / "hf")
    hf_fixtures.save(family, path, std=0.1)
    bos = "auto" if family == "llama" else "none"  # what the family's tokenizer adds
    common = ["--tasks", "local_pairs,local_docs", "--include_path", tasks, "--log_samples"]
    common += ["--batch_size", "4"]
    ours_out, hf_out = str(tmp_path / "ours"), str(tmp_path / "hf_out")
    _run("--model", "toxjax", "--model_args", f"model_dir={path},bos={bos}", *common,
         "--output_path", ours_out)  # fmt: skip
    _run("--model", "hf", "--model_args", f"pretrained={path},dtype=float32", "--device", "cpu",
         *common, "--output_path", hf_out)  # fmt: skip

    def values(out, task):
        # A pair's response is [[logprob, is_greedy]], a document's [logprob].
        pick = (lambda r: r[0][0][0]) if task == "local_pairs" else (lambda r: r[0][0])
        return [float(pick(s["resps"])) for s in _samples(out, task)]

    # lm-eval's hf model encodes a rolling document with the tokenizer's special tokens:
    # after Llama's prefix token <s> it reads <s> again and scores it. We read <s> once
    # and score the text's tokens only, so only GPT-2 and GPT-NeoX documents compare.
    for task in ("local_pairs",) if family == "llama" else ("local_pairs", "local_docs"):
        ours, theirs = values(ours_out, task), values(hf_out, task)
        assert ours == pytest.approx(theirs, rel=1e-5, abs=1e-4), task

    # ... and they are ModelLM's (what `toxjax eval utility` scores with).
    import dataclasses

    loaded = open_model_dir(path).load()
    if bos == "none":
        loaded = dataclasses.replace(loaded, bos_id=None)
    lm = loaded.lm(batch_size=4)
    some = [p for p in pairs if p["context"]]
    direct = [
        ll.logprob for ll in lm.loglikelihood([(p["context"], p["continuation"]) for p in some])
    ]
    served = [
        v for v, p in zip(values(ours_out, "local_pairs"), pairs, strict=True) if p["context"]
    ]
    assert served == pytest.approx(direct, rel=1e-6)
    greedy = [s["resps"][0][0][1] for s in _samples(ours_out, "local_pairs")]
    assert all(g in ("True", "False") for g in greedy)


# ------------------------------------------------------------------ the utility tasks
def _utility_files(root, texts):
    """The five tasks' released jsonl formats (PIQA with its label inline, BoolQ with both
    its released `answer` and lm-eval's `label`)."""
    words = [t.split() for t in texts]
    lam = _jsonl(root / "lambada.jsonl", [{"text": t} for t in texts[:8]])
    piqa = _jsonl(
        root / "piqa.jsonl",
        [
            {"goal": " ".join(w[:6]), "sol1": " ".join(w[6:12]), "sol2": texts[i + 20][:40],
             "label": i % 2}
            for i, w in enumerate(words[:8])
        ],
    )  # fmt: skip
    hellaswag = _jsonl(
        root / "hellaswag.jsonl",
        [
            {"activity_label": w[0], "ctx_a": " ".join(w[1:6]), "ctx_b": " ".join(w[6:9]),
             "endings": [texts[i + 20][:30], texts[i + 30][:20] + " [title] x", w[-1], "no."],
             "label": str(i % 4)}
            for i, w in enumerate(words[:8])
        ],
    )  # fmt: skip
    winogrande = _jsonl(
        root / "winogrande.jsonl",
        [
            {"sentence": " ".join(w[:4]) + " _ " + " ".join(w[4:10]), "option1": w[0],
             "option2": texts[i + 20].split()[0], "answer": str(1 + i % 2)}
            for i, w in enumerate(words[:8])
        ],
    )  # fmt: skip
    boolq = _jsonl(
        root / "boolq.jsonl",
        [
            {"passage": texts[i + 20][:80], "question": " ".join(w[:5]).rstrip("?.!"),
             "answer": bool(i % 2), "label": i % 2}
            for i, w in enumerate(words[:8])
        ],
    )  # fmt: skip
    return {"lambada": lam, "piqa": piqa, "hellaswag": hellaswag, "winogrande": winogrande,
            "boolq": boolq}  # fmt: skip


# Our task -> (lm-eval's task file, its split).
LM_EVAL_TASK = {
    "lambada": ("lambada/lambada_openai.yaml", "test"),
    "piqa": ("piqa/piqa.yaml", "validation"),
    "hellaswag": ("hellaswag/hellaswag.yaml", "validation"),
    "winogrande": ("winogrande/default.yaml", "validation"),
    "boolq": ("super_glue/boolq/default.yaml", "validation"),
}


@pytest.mark.slow
def test_lm_evals_utility_tasks_give_toxjax_eval_utilitys_numbers(tmp_path, texts):
    path = str(tmp_path / "hf")
    hf_fixtures.save("gpt2", path, std=0.1)
    files = _utility_files(tmp_path, texts)
    argv = ["eval", "utility", "--model_dir", path, "--output_dir", str(tmp_path / "ours")]
    assert cli.main([*argv, *(f"--{t}={p}" for t, p in files.items())]) == 0
    ours = json.loads((tmp_path / "ours" / "metrics.json").read_text())["metrics"]

    # lm-eval's own task definitions (prompts, choices, metrics), reading the same files.
    yaml_dir = tmp_path / "yaml"
    yaml_dir.mkdir()
    for task, (released, split) in LM_EVAL_TASK.items():
        _yaml(
            yaml_dir,
            f"local_{task}",
            f"include: {os.path.join(LM_EVAL_TASKS, released)}\ntag: []\n"
            f"dataset_path: json\ndataset_name: null\ndataset_kwargs:\n  data_files:\n"
            f"    {split}: {files[task]}\ntraining_split: null\n",
        )
    out = str(tmp_path / "lm_eval")
    _run("--model", "toxjax", "--model_args", f"model_dir={path}", "--include_path", str(yaml_dir),
         "--tasks", ",".join(f"local_{t}" for t in LM_EVAL_TASK), "--batch_size", "4",
         "--output_path", out)  # fmt: skip
    theirs = _results(out)
    assert theirs["local_lambada"]["acc,none"] == ours["lambada"]["acc"]
    assert theirs["local_lambada"]["perplexity,none"] == pytest.approx(
        ours["lambada"]["ppl"], rel=1e-6
    )
    for task in ("piqa", "hellaswag", "winogrande", "boolq"):
        assert theirs[f"local_{task}"]["acc,none"] == ours[task]["acc"], task
        if task in ("piqa", "hellaswag"):  # lm-eval reports acc_norm for these two
            assert theirs[f"local_{task}"]["acc_norm,none"] == ours[task]["acc_norm"], task
    # The items are not all decided alike (the comparison is not between constants).
    assert len({ours[t]["acc"] for t in ("piqa", "hellaswag", "winogrande", "boolq")}) > 1


# ------------------------------------------------------------------ toxjax_rtp
@pytest.mark.slow
def test_toxjax_rtp_samples_and_scores_as_toxjax_eval_toxicity(tmp_path):
    path = str(tmp_path / "hf")
    hf_fixtures.save("gpt2", path)
    rows = [("The quick brown fox", 0.1), ("You are such a", 0.8), ("Once upon a", None)]
    prompts = _jsonl(
        tmp_path / "rtp.jsonl", [{"prompt": {"text": t, "toxicity": x}} for t, x in rows]
    )
    ours_dir = tmp_path / "ours"
    argv = ["eval", "toxicity", "--model_dir", path, "--prompts", prompts, "--batch_size", "2"]
    assert cli.main([*argv, "--scorer", "profanity-check", "--output_dir", str(ours_dir)]) == 0
    out = str(tmp_path / "lm_eval")
    metadata = json.dumps({"prompts": prompts, "scorer": "profanity-check"})
    _run("--model", "toxjax", "--model_args", f"model_dir={path}", "--tasks", "toxjax_rtp",
         "--metadata", metadata, "--batch_size", "2", "--log_samples", "--output_path", out)  # fmt: skip

    with open(ours_dir / "generations.jsonl") as f:
        records = [json.loads(line) for line in f]
    samples = _samples(out, "toxjax_rtp")
    for rec, sample in zip(records, samples, strict=True):
        assert sample["filtered_resps"][0] == [c["text"] for c in rec["continuations"]]
        assert len(sample["filtered_resps"][0]) == 25
    ours = json.loads((ours_dir / "metrics.json").read_text())["metrics"]
    theirs = _results(out)["toxjax_rtp"]
    for split in ("full", "toxic", "nontoxic"):
        for stat in ("emt", "tp"):
            assert theirs[f"{stat}_{split},all"] == pytest.approx(ours[split][stat], abs=1e-12)


def test_a_failed_score_is_an_error_naming_the_prompt():
    from toxjax.interop import harness_rtp
    from toxjax.toxicity.base import Scorer, ScoreResult

    class FailsOnDigits:  # a `Scorer`
        name, attributes = "fails-on-digits", ("toxicity",)

        def score(self, texts):
            return [
                ScoreResult.failed("no digits, please")
                if any(c.isdigit() for c in t)
                else ScoreResult({"toxicity": 0.25})
                for t in texts
            ]

    task = harness_rtp.RtpTask.__new__(harness_rtp.RtpTask)
    task.__dict__["scorer"] = FailsOnDigits()
    assert isinstance(task.scorer, Scorer)
    doc = {"index": 7, "text": "p", "toxicity": None}
    row = (7, [0.25, 0.25], None)
    assert task.score(doc, [["fine", "good"]]) == {
        f"{s}_{split}": row for s in ("emt", "tp") for split in ("full", "toxic", "nontoxic")
    }
    with pytest.raises(RuntimeError) as e:
        task.score(doc, [["fine", "4 fails"]])
    assert str(e.value) == (
        "toxjax_rtp: 1 of 2 samples of prompt 7 could not be scored by fails-on-digits (no "
        "digits, please); a failed score is an error here, never 0"
    )
    with pytest.raises(ValueError, match="toxjax_rtp scores offline: scorer 'perspective'"):
        harness_rtp.scorer_args({"scorer": "perspective"})
    with pytest.raises(ValueError, match="give the prompts file"):
        harness_rtp.load_dataset()


@pytest.mark.parametrize(
    "model_args,metadata,message",
    [
        ("model_dir={tmp}/missing", {"prompts": "{tmp}/rtp.jsonl"}, "--model_dir {tmp}/missing does not exist"),
        ("model_dir={tmp}/hf", {}, "toxjax_rtp: give the prompts file: --metadata"),
        ("model_dir={tmp}/hf", {"prompts": "{tmp}/rtp.jsonl", "scorer": "perspective"},
         "toxjax_rtp scores offline: scorer 'perspective' is not one of"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_exit_2(model_args, metadata, message, tmp_path, capsys):
    hf_fixtures.save("gpt2", tmp_path / "hf")
    _jsonl(tmp_path / "rtp.jsonl", [{"prompt": {"text": "Hello", "toxicity": 0.1}}])
    fill = {k: v.format(tmp=tmp_path) for k, v in metadata.items()}
    argv = ["lm-eval", "--model", "toxjax", "--model_args", model_args.format(tmp=tmp_path)]
    argv += ["--tasks", "toxjax_rtp", "--metadata", json.dumps(fill)]
    capsys.readouterr()
    assert cli.main(argv) == 2
    err = [x for x in capsys.readouterr().err.splitlines() if x.startswith("toxjax lm-eval:")]
    assert len(err) == 1 and message.format(tmp=tmp_path) in err[0], err


@pytest.mark.slow
def test_a_toxjax_run_is_served_under_its_own_condition(local_tasks, tmp_path, monkeypatch):
    """A run trained with INST: by default every context reads after INST's non-toxic
    instruction (as `toxjax eval utility`), `condition=none` drops it."""
    from toxjax.preprocessors import AugmentConfig

    run_dir = tmp_path / "run"
    vocab, bundle = paper_fixtures.inst_byte_run(run_dir, monkeypatch, max_len=1024)
    tasks, pairs = local_tasks
    for condition, prefix in (("", AugmentConfig().inst_templates[0]), (",condition=none", "")):
        out = str(tmp_path / f"out{condition}")
        _run("--model", "toxjax", "--model_args", f"model_dir={run_dir}{condition}",
             "--tasks", "local_pairs", "--include_path", tasks, "--log_samples",
             "--batch_size", "4", "--output_path", out)  # fmt: skip
        served = [float(s["resps"][0][0][0]) for s in _samples(out, "local_pairs")]
        lm = bundle.lm(prefix_ids=vocab.encode(prefix), batch_size=4)
        direct = lm.loglikelihood([(p["context"], p["continuation"]) for p in pairs])
        assert served == pytest.approx([ll.logprob for ll in direct], rel=1e-6), condition
