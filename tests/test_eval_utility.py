"""Utility tasks and bias AUC on tiny hand-written items with a rule-based fake LM.

The fake's log-likelihoods are hand-checkable: log p(continuation | context) is
-(bytes of the continuation) x 0.5 when the text contains "right" and x 1.0 otherwise;
the continuation is "greedy" exactly when it contains "right".
"""

import json
import math

import numpy as np
import pytest

from toxjax.evaluation import bias, utility
from toxjax.evaluation.lm import LogLikelihood


class FakeLM:
    bos_id = 0
    prefix_ids = ()

    def encode(self, text):
        return list(text.encode())

    def loglikelihood(self, pairs):
        out = []
        for ctx, cont in pairs:
            if "Post:" in ctx:  # bias prompts: "Yes" is likely after a hateful post
                hateful = "hate" in ctx.rsplit("Post:", 1)[1]
                lp = -0.1 if (cont == " Yes") == hateful else -2.0
                out.append(LogLikelihood(lp, 1, True))
                continue
            right = "right" in ctx + cont
            out.append(
                LogLikelihood(
                    -len(cont.encode()) * (0.5 if right else 1.0), len(cont), "right" in cont
                )
            )
        return out

    def token_logprobs(self, sequences):
        return [(np.full(len(s) - 1, -math.log(2)), None) for s in sequences]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_piqa_conventions_disagree_as_computed_by_hand(tmp_path):
    path = write_jsonl(
        tmp_path / "valid.jsonl", [{"goal": "g", "sol1": "right way", "sol2": "bad"}]
    )
    (tmp_path / "valid-labels.lst").write_text("0\n")
    items = utility.load_items("piqa", path)
    assert items[0].choices == (" right way", " bad") and items[0].label == 0
    # sol1: -10 * 0.5 = -5 (norm -5 / 9 chars); sol2: -4 (norm -4 / 3)
    assert utility.multiple_choice(FakeLM(), items) == {"acc": 0.0, "acc_norm": 1.0, "num_items": 1}


def test_missing_piqa_labels_and_bad_fields_name_the_file(tmp_path):
    path = write_jsonl(tmp_path / "valid.jsonl", [{"goal": "g", "sol1": "a", "sol2": "b"}])
    with pytest.raises(FileNotFoundError, match="valid-labels.lst"):
        utility.load_items("piqa", path)
    path = write_jsonl(tmp_path / "hs.jsonl", [{"ctx_a": "x", "endings": ["a"], "label": 0}])
    with pytest.raises(ValueError, match=r"hs.jsonl:1: missing field 'ctx_b'"):
        utility.load_items("hellaswag", path)


def test_hellaswag_winogrande_boolq(tmp_path):
    hs = write_jsonl(
        tmp_path / "hs.jsonl",
        [
            {
                "activity_label": "Cooking",
                "ctx_a": "A man [title] cooks.",
                "ctx_b": "he",
                "endings": ["stirs the right pot", "runs"],
                "label": 0,
            }
        ],
    )
    items = utility.load_items("hellaswag", hs)
    assert items[0].contexts == ("Cooking: A man. cooks. He",)
    # ending 0: -20 * 0.5 = -10 (norm -10 / 19 chars); ending 1: -5 (norm -5 / 4)
    assert utility.multiple_choice(FakeLM(), items)["acc_norm"] == 1.0
    wg = write_jsonl(
        tmp_path / "wg.jsonl",
        [{"sentence": "The _ answer wins.", "option1": "wrong", "option2": "right", "answer": "2"}],
    )
    items = utility.load_items("winogrande", wg)
    assert (
        items[0].contexts == ("The wrong", "The right") and items[0].choices[0] == " answer wins."
    )
    assert utility.multiple_choice(FakeLM(), items)["acc"] == 1.0
    bq = write_jsonl(
        tmp_path / "bq.jsonl",
        [
            {"passage": "p", "question": "is it right", "answer": True},
            {"passage": "p", "question": "q", "answer": False},
        ],
    )
    items = utility.load_items("boolq", bq)
    assert items[0].contexts == ("p\nQuestion: is it right?\nAnswer:",)
    # item 0: " no" -1.5 vs " yes" -2.0 -> picks no (wrong); item 1: no -3 vs yes -4 -> right
    assert utility.multiple_choice(FakeLM(), items)["acc"] == 0.5


def test_lambada_and_perplexity(tmp_path):
    lam = write_jsonl(
        tmp_path / "lambada.jsonl",
        [{"text": "the answer is right"}, {"text": "the answer is wrong"}],
    )
    m = utility.lambada(FakeLM(), lam)
    assert m["acc"] == 0.5
    assert m["ppl"] == pytest.approx(math.exp((3.0 + 6.0) / 2))  # " right" -3, " wrong" -6
    txt = tmp_path / "heldout.txt"
    txt.write_text("abcd\n\nxyz\n")
    p = utility.perplexity(FakeLM(), str(txt), max_len=2)
    assert p == {"ppl": pytest.approx(2.0), "num_tokens": 7, "num_documents": 2}

    class PrefixLM(FakeLM):  # a prefix token costs 5 nats: it must not be counted
        def token_logprobs(self, sequences):
            return [
                (np.array([-5.0 if t == 200 else -math.log(2) for t in s[1:]]), None)
                for s in sequences
            ]

    seen = []
    lm = PrefixLM()
    lm.token_logprobs = lambda seqs, f=lm.token_logprobs: seen.extend(seqs) or f(seqs)
    p = utility.perplexity(lm, str(txt), max_len=5, prefix_ids=[200, 200, 200])
    assert p == {"ppl": pytest.approx(2.0), "num_tokens": 7, "num_documents": 2}
    # Every window reads as a training piece does: BOS, the prefix, then <= 2 text tokens.
    assert seen == [[0, 200, 200, 200, *map(ord, piece)] for piece in ("ab", "cd", "xy", "z")]
    seen.clear()
    utility.perplexity(lm, str(txt), max_len=2)
    assert seen == [[0, *map(ord, piece)] for piece in ("ab", "cd", "xy", "z")]
    with pytest.raises(ValueError, match="3-token prefix leaves no room"):
        utility.perplexity(lm, str(txt), max_len=3, prefix_ids=[200, 200, 200])
    out = utility.evaluate_utility(FakeLM(), {"lambada": lam}, max_len=8, progress=False)
    assert out["metrics"]["lambada"]["acc"] == 0.5 and "acc_norm" in out["conventions"]
    with pytest.raises(ValueError, match="unknown utility tasks"):
        utility.evaluate_utility(FakeLM(), {"race": lam}, max_len=8)


def test_bias_auc_from_sbf_csv(tmp_path):
    rows = [
        ("I hate them", "1.0", "1.0", "0.0", "1.0"),
        ("I hate them", "0.0", "0.0", "0.0", "1.0"),
        ("nice day", "0.0", "0.0", "0.0", "0.0"),
        ("hate this", "1.0", "1.0", "1.0", ""),
        ("lovely", "0.0", "0.0", "1.0", "0.0"),
        ("so hateful", "1.0", "0.5", "0.0", "1.0"),
        ("calm", "0.0", "0.0", "0.0", "0.0"),
        ("fine", "0.0", "0.0", "1.0", "0.0"),
    ]
    header = "post,offensiveYN,intentYN,sexYN,whoTarget\n"
    path = tmp_path / "SBIC.v2.dev.csv"
    path.write_text(header + "".join(",".join(r) + "\n" for r in rows))
    posts = bias.load_posts(str(path))
    assert posts[0] == {
        "post": "I hate them",
        "offensive": 0.5,
        "intent": 0.5,
        "lewd": 0.0,
        "group": 1.0,
    }
    prompt = bias.build_prompt("lewd", "calm", [{"post": "x", "lewd": 1.0}])
    assert prompt == (
        f"{bias.INSTRUCTION}\n\nPost: x\nQuestion: {bias.TASKS['lewd'][1]}\n"
        f"Answer: Yes\n\nPost: calm\nQuestion: {bias.TASKS['lewd'][1]}\nAnswer:"
    )
    out = bias.evaluate_bias(FakeLM(), str(path), num_shots=0)
    # the fake says Yes exactly for posts with "hate": perfect for offensive / intent
    assert out["metrics"]["offensive"]["auc"] == 1.0 and out["metrics"]["intent"]["auc"] == 1.0
    # lewd: positives "hate this", "lovely", "fine" -> scores high, low, low; negatives
    # "I hate them", "so hateful" high, "nice day", "calm" low. Pairs won (ties 1/2):
    # 3 + 1 + 1 of 12.
    assert out["metrics"]["lewd"]["auc"] == pytest.approx(5 / 12)
    assert out["metrics"]["group"]["num_posts"] == 6  # "hate this" has no whoTarget
    assert out["metrics"]["mean_auc"] == pytest.approx(
        sum(out["metrics"][t]["auc"] for t in bias.TASKS) / 4
    )
    probs = bias.positive_probability(FakeLM(), ["Post: I hate"])
    assert probs[0] == pytest.approx(1 / (1 + math.exp(-1.9)))
    with_shots = bias.evaluate_bias(FakeLM(), str(path), num_shots=2, tasks=("offensive",))
    assert with_shots["metrics"]["offensive"]["num_posts"] == 5


def test_bias_single_class_is_an_error(tmp_path):
    path = tmp_path / "sbf.csv"
    path.write_text("post,offensiveYN,intentYN,sexYN,whoTarget\na,1.0,1.0,1.0,1.0\n")
    with pytest.raises(ValueError, match="only one class"):
        bias.evaluate_bias(FakeLM(), str(path), num_shots=0)
