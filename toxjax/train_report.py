"""What a training run reports while it trains: one reporter per destination.

The loop (`toxjax.train`) hands every logged step to a `Reporters` fan-out; each
reporter owns one destination:

- `MetricsFile`: `MODEL_DIR/metrics.jsonl` (every step once, consistent on resume);
- `TensorBoard`: scalars under `MODEL_DIR/train/`;
- `ProgressBar`: a tqdm bar with loss, learning rate, tokens/s and MFU.

`Throughput` turns step counts and wall time into tokens/s and MFU (model FLOPs per
second over the devices' peak, `toxjax.flops`). An eval-during-training or a profiler is
one more reporter.
"""

from __future__ import annotations

import time
from typing import Protocol

from toxjax import run_logs


class Reporter(Protocol):
    """A destination of training metrics (every method may be a no-op)."""

    def start(self, step: int, num_steps: int, describe: str) -> None: ...

    def step(self, step: int) -> None: ...

    def log(self, step: int, records: list[dict], last: dict) -> None:
        """`records`: every step since the last log; `last` adds tokens_per_s and mfu."""
        ...

    def checkpoint(self, step: int) -> None:
        """A checkpoint of `step` was saved: make what was logged so far durable."""
        ...

    def close(self) -> None: ...


class _Quiet:
    def start(self, step, num_steps, describe):
        pass

    def step(self, step):
        pass

    def log(self, step, records, last):
        pass

    def checkpoint(self, step):
        pass

    def close(self):
        pass


class MetricsFile(_Quiet):
    """Per-step records in MODEL_DIR/metrics.jsonl.

    On start the log is cut back to the checkpoint the run resumes from (`resumed_from`,
    0 when it starts fresh): the steps after it are trained again and logged once more,
    so a run that died before a checkpoint committed does not log them twice.
    """

    def __init__(self, model_dir: str, resumed_from: int):
        self._log = run_logs.MetricsLog(model_dir)
        self._log.truncate_after(resumed_from)

    def log(self, step, records, last):
        self._log.append(records)

    def checkpoint(self, step):
        self._log.sync()

    def close(self):
        self._log.sync()


class TensorBoard(_Quiet):
    """Scalars of each logged step under MODEL_DIR/train."""

    def __init__(self, model_dir: str):
        self._writer = run_logs.SummaryWriter(model_dir)

    def log(self, step, records, last):
        self._writer.write(step, last)

    def close(self):
        self._writer.close()


class ProgressBar(_Quiet):
    """A tqdm bar: steps, loss, learning rate, tokens/s, MFU."""

    def __init__(self):
        self._bar = None

    def start(self, step, num_steps, describe):
        from tqdm import tqdm

        self._bar = tqdm(
            total=num_steps, initial=step, desc="train", unit="step", dynamic_ncols=True
        )
        self._bar.write(describe)

    def step(self, step):
        self._bar.update(1)

    def log(self, step, records, last):
        self._bar.set_postfix(
            loss=f"{last['loss']:.3f}",
            lr=f"{last['learning_rate']:.2e}",
            tok_s=f"{last['tokens_per_s']:.0f}",
            mfu=f"{last['mfu']:.1%}",
        )

    def close(self):
        if self._bar is not None:
            self._bar.close()


class Reporters(_Quiet):
    """Hands each event to every reporter; `close` closes all, even after an error."""

    def __init__(self, reporters: list[Reporter]):
        self.reporters = reporters

    def start(self, step, num_steps, describe):
        for r in self.reporters:
            r.start(step, num_steps, describe)

    def step(self, step):
        for r in self.reporters:
            r.step(step)

    def log(self, step, records, last):
        for r in self.reporters:
            r.log(step, records, last)

    def checkpoint(self, step):
        for r in self.reporters:
            r.checkpoint(step)

    def close(self):
        errors = []
        for r in self.reporters:
            try:
                r.close()
            except Exception as e:  # close the others; report the first
                errors.append(e)
        if errors:
            raise errors[0]


class Throughput:
    """Tokens/s and MFU since the last call of `measure`.

    Args:
      tokens_per_step: global batch rows x sequence length.
      flops_per_step: model FLOPs of one step (6N + 12LHQT per token, times tokens).
      peak: the devices' peak FLOP/s (`toxjax.flops.peak_flops`); on CPU a measured peak
        that a busy host measures low: the best seen is kept, re-checked at every call,
        so MFU is not inflated (above 100%) after a noisy start.
      remeasure: re-measure the peak at every call (CPU).
    """

    def __init__(self, tokens_per_step: int, flops_per_step: float, peak: float, remeasure):
        self.tokens_per_step, self.flops_per_step = tokens_per_step, flops_per_step
        self.peak, self._remeasure = peak, remeasure
        self._t, self._steps = time.perf_counter(), 0

    def step(self) -> None:
        self._steps += 1

    def measure(self) -> dict:
        """`{"tokens_per_s", "mfu"}` over the steps since the last call; restarts the clock."""
        elapsed = time.perf_counter() - self._t
        rate = self._steps / elapsed if elapsed > 0 else float("nan")
        if self._remeasure is not None:
            self.peak = max(self.peak, self._remeasure())
        out = {
            "tokens_per_s": rate * self.tokens_per_step,
            "mfu": rate * self.flops_per_step / self.peak,
        }
        self._t, self._steps = time.perf_counter(), 0
        return out
