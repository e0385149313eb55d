"""The last step of benchmarks/accelerator.sh: one JSON per benchmark and a short table.

    python benchmarks/summary.py --out $OUT --logs LOGDIR train_step_accel=0:212 ...

Each positional argument is `NAME=EXIT_CODE:SECONDS` of one benchmark whose output is
`LOGDIR/NAME.log`. A benchmark that wrote no `$OUT/NAME.json` of its own gets one made
from its last `RESULT key=value ...` line. `$OUT/summary.json` holds every benchmark's
status (ok, failed with its exit code, or stopped at its time limit), seconds and
RESULT fields; the table printed last says the same in one line each.
"""

from __future__ import annotations

import argparse
import json
import os

TIMED_OUT = (124, 137)  # timeout(1): the limit, then the kill after it


def result_fields(log_text: str) -> dict:
    """The fields of the last `RESULT k=v ...` line: numbers as floats, the rest text."""
    lines = [ln for ln in log_text.splitlines() if ln.startswith("RESULT ")]
    if not lines:
        return {}
    fields = {}
    for item in lines[-1].split()[1:]:
        key, _, value = item.partition("=")
        try:
            fields[key] = float(value)
        except ValueError:
            fields[key] = value
    return fields


def status(code: int) -> str:
    if code == 0:
        return "ok"
    return "time limit" if code in TIMED_OUT else f"failed (exit {code})"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="the results folder ($OUT)")
    p.add_argument("--logs", required=True, help="the folder of NAME.log files")
    p.add_argument("runs", nargs="+", help="NAME=EXIT_CODE:SECONDS")
    args = p.parse_args(argv)
    summary = {}
    for run in args.runs:
        name, _, rest = run.partition("=")
        code, _, seconds = rest.partition(":")
        log = os.path.join(args.logs, f"{name}.log")
        text = open(log, errors="replace").read() if os.path.exists(log) else ""
        fields = result_fields(text)
        path = os.path.join(args.out, f"{name}.json")
        if not os.path.exists(path) and fields:
            with open(path, "w") as f:
                json.dump({"result": fields, "from": f"the RESULT line of {name}"}, f, indent=2)
        summary[name] = {
            "status": status(int(code)),
            "seconds": float(seconds),
            "result": fields,
        }
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(f"\n{'benchmark':18}{'status':>16}{'seconds':>9}  result")
    for name, s in summary.items():
        shown = " ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in s["result"].items()
        )
        print(f"{name:18}{s['status']:>16}{s['seconds']:9.0f}  {shown or '-'}")
    return 0 if all(s["status"] == "ok" for s in summary.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
