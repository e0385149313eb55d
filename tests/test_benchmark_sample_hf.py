"""`benchmarks/sample_hf.py --toy`: the imported-checkpoint sampling benchmark runs end to
end (a transformers checkpoint saved, imported through toxjax.interop, sampled by ours
and by transformers' generate) and reports its RESULT line. Timings are not asserted."""

import os
import re
import subprocess
import sys

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_toy_run_reports_both_rates():
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
    done = subprocess.run(
        [sys.executable, os.path.join(REPO, "benchmarks", "sample_hf.py"), "--toy"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    m = re.search(
        r"^RESULT ours_tok_s=(\S+) transformers_tok_s=(\S+) ratio=(\S+) import_s=(\S+)$",
        done.stdout,
        re.M,
    )
    assert m, done.stdout
    assert all(float(v) > 0 for v in m.groups())
