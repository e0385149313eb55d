"""Gin-configured pretraining entry point.

    python -m toxjax.train --gin_file=gin_configs/runs/pretrain.gin \
        --gin_file=gin_configs/models/tiny.gin --gin.MODEL_DIR=/tmp/run

The run resumes from the newest checkpoint in MODEL_DIR, writes the operative gin config
(`config.gin`), `run.json` (what inference needs), per-step metrics (`metrics.jsonl`)
and TensorBoard summaries (`train/`) there.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import math
import os
import re
import sys
import time
from collections.abc import Sequence

import gin
import jax
import tensorflow as tf

from toxjax import checkpoint as ckpt_lib
from toxjax import fileio, locking, registry, run_logs, steps, train_guards
from toxjax import sharding as sh
from toxjax.data import DataConfig, DataIterator, DataStateMismatchError
from toxjax.errors import ConfigError
from toxjax.flops import measure_peak_flops, peak_flops_per_device
from toxjax.model import ModelConfig
from toxjax.optim import OptimizerConfig
from toxjax.preprocessors import AugmentConfig
from toxjax.run_info import RunInfo
from toxjax.train_state import param_count
from toxjax.vocab import vocab_spec

# Frozen config dataclasses are the only library objects gin binds.
for _cls in (ModelConfig, DataConfig, OptimizerConfig, AugmentConfig):
    gin.external_configurable(_cls, module="toxjax")


class NonFiniteLossError(FloatingPointError):
    """The loss, gradient or updated state became NaN/inf; the last good checkpoint is kept."""


@dataclasses.dataclass
class TrainResult:
    steps: list[int]
    losses: list[float]
    final_step: int
    model_dir: str


def _import_modules(modules: Sequence[str]) -> None:
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise ImportError(f"train.module_imports: cannot import {name!r}: {e}") from e


def resolve_vocab_size(model_config: ModelConfig, vocab) -> ModelConfig:
    """Fills `vocab_size=None` from the task vocabulary, padded to a multiple of 128
    (so the embedding shards evenly); checks an explicit size is large enough."""
    if vocab is None:
        return model_config
    if model_config.vocab_size is None:
        return dataclasses.replace(model_config, vocab_size=-(-vocab.vocab_size // 128) * 128)
    if model_config.vocab_size < vocab.vocab_size:
        raise ValueError(
            f"ModelConfig.vocab_size={model_config.vocab_size} is smaller than the "
            f"task vocabulary ({vocab.vocab_size} ids)"
        )
    return model_config


def task_vocabulary(task: str):
    """The "targets" vocabulary of a registered seqio task or mixture."""
    import seqio

    if not task:
        raise train_guards.TrainConfigError(
            "DataConfig.mixture_or_task_name is empty: bind TASK (e.g. --gin.TASK=fortunes_inst_v1)"
        )
    if task not in seqio.TaskRegistry.names() and task not in seqio.MixtureRegistry.names():
        raise train_guards.TrainConfigError(
            f"no seqio task or mixture named {task!r} is registered; import the module that "
            "registers it (train.module_imports) or check the name"
        )
    return seqio.get_mixture_or_task(task).output_features["targets"].vocabulary


def check_augment_bindings(task: str, info) -> None:
    """`AugmentConfig.*` bindings must reach the task, or they would be silently ignored.

    Gin binds an `AugmentConfig` only where a gin file passes `@AugmentConfig()` (the
    experiment bases pass it to `scored_corpus_task.augment`). A task registered with a
    fixed config (e.g. at import time) does not see the bindings: that is an error.
    """
    if not gin.get_bindings(AugmentConfig):
        return
    bound = gin.get_configurable(AugmentConfig)()
    if info is None or info.config != bound:
        how = (
            "it is not a toxjax.registry task"
            if info is None
            else "it was registered with a fixed AugmentConfig"
        )
        raise train_guards.TrainConfigError(
            f"the AugmentConfig.* bindings do not reach task {task!r} ({how}); register it "
            "with `config=` or through `scored_corpus_task.augment = @AugmentConfig()` "
            "(experiments/bases/common.gin does this)"
        )


@gin.configurable(denylist=["progress"])
def train(
    model_dir: str = gin.REQUIRED,
    model_config: ModelConfig = gin.REQUIRED,
    data: DataConfig = gin.REQUIRED,
    optimizer: OptimizerConfig = OptimizerConfig(),
    num_steps: int = 1000,
    batch_size: int = 8,
    mesh_shape: Sequence[int] = (-1, 1, 1),
    grad_accum_steps: int = 1,
    seed: int = 0,
    log_every: int = 10,
    checkpoint_every: int = 500,
    keep_checkpoints: int = 3,
    async_checkpoint: bool = True,
    module_imports: Sequence[str] = (),
    stop_after: int | None = None,
    progress: bool = True,
) -> TrainResult:
    """Trains `model_config` on `data` for `num_steps` steps, resuming from MODEL_DIR.

    Args:
      model_dir: run directory (local path or gs://); checkpoints and logs go here.
      model_config: the model (see gin_configs/models/).
      data: the seqio task and sequence length.
      optimizer: AdamW + schedule settings.
      num_steps: total optimizer steps of the run (the schedule's length).
      batch_size: global batch size in packed rows.
      mesh_shape: sizes of the ('data', 'fsdp', 'tensor') mesh axes; -1 = the rest.
      grad_accum_steps: microbatches per step (batch_size must divide by it).
      seed: parameter-init and dropout seed (the data seed is `data.seed`).
      log_every: steps between console / TensorBoard logs.
      checkpoint_every: steps between (async) checkpoints; the last step always saves.
      keep_checkpoints: checkpoints kept on disk.
      module_imports: modules imported first (they register seqio tasks).
      stop_after: stop (with a checkpoint) after this step without finishing the run;
        used to simulate preemption.
      progress: show a progress bar.

    Returns:
      The steps and losses this invocation ran.
    """
    train_guards.check_train_arguments(
        model_dir=model_dir,
        model_config=model_config,
        data=data,
        optimizer=optimizer,
        num_steps=num_steps,
        batch_size=batch_size,
        mesh_shape=mesh_shape,
        grad_accum_steps=grad_accum_steps,
        seed=seed,
        log_every=log_every,
        checkpoint_every=checkpoint_every,
        keep_checkpoints=keep_checkpoints,
        stop_after=stop_after,
    )
    model_dir = fileio.resolve(model_dir)
    tf.io.gfile.makedirs(model_dir)
    # Before anything expensive (data, compile): a second trainer stops here.
    lock = train_guards.lock_model_dir(model_dir)
    with contextlib.ExitStack() as cleanup:
        if lock is not None:
            cleanup.callback(lock.release)
        _import_modules(module_imports)
        task = data.mixture_or_task_name
        vocab = task_vocabulary(task)
        seq_len = data.sequence_length
        try:
            model_config = resolve_vocab_size(model_config, vocab)
            info = registry.task_info(task)
            mesh = sh.make_mesh(mesh_shape)
            ts = steps.build_train_step(
                model_config,
                optimizer,
                num_steps=num_steps,
                batch_size=batch_size,
                seq_len=seq_len,
                mesh=mesh,
                grad_accum_steps=grad_accum_steps,
                seed=seed,
            )
        except ValueError as e:  # a mixture of strategies, a batch that does not split, ...
            raise train_guards.TrainConfigError(str(e)) from None
        check_augment_bindings(task, info)

        lead = jax.process_index() == 0  # one process writes the run's files
        ckpt = ckpt_lib.Checkpointer(
            model_dir, checkpoint_every, keep_checkpoints, async_checkpoint
        )
        latest = ckpt.latest_step()
        if lead:
            run = RunInfo(
                model_config=model_config,
                vocabulary=vocab_spec(vocab, model_dir),
                task=task,
                sequence_length=seq_len,
                strategy=info.strategy if info else None,
                augment=info.config if info else None,
                corpus=None
                if info is None
                else {
                    "name": info.corpus,
                    "source": info.source,
                    "fraction": info.fraction,
                    "scorer": info.scorer(),
                },
            )
            if latest is not None:
                earlier = RunInfo.read(model_dir)
                changed = run.resume_mismatches(earlier)
                if changed:
                    raise ckpt_lib.CheckpointMismatchError(
                        f"{model_dir} holds a run trained on other data than this one "
                        f"({'; '.join(changed)}); resuming would mix the two. Use a fresh "
                        "MODEL_DIR, or restore the original settings."
                    )
            run.write(model_dir)
            fileio.write_text(
                os.path.join(model_dir, "config.gin"),
                gin.operative_config_str() or gin.config_str(),
            )

        data_iter = DataIterator(data, batch_size, mesh)
        if latest is None:
            state = ts.init(jax.random.key(seed))
        else:
            # Newest step whose arrays match their checksums; newer corrupt ones moved aside.
            latest, state, data_state = ckpt.restore_latest(ts.abstract_state)
            data_iter.restore(data_state)
        start = int(jax.device_get(state.step))
        metrics_log = run_logs.MetricsLog(model_dir) if lead else None
        if lead and latest is not None:
            metrics_log.truncate_after(latest)

        flops_per_step = model_config.train_flops_per_token(seq_len) * batch_size * seq_len
        peak = peak_flops_per_device() * jax.device_count()
        # A CPU's peak is measured, and a busy host measures low: keep the best seen, re-checked
        # at every log, so MFU is not inflated (above 100%) after a noisy start.
        remeasure_peak = jax.devices()[0].platform == "cpu"
        n_params = param_count(state.params)
        writer = run_logs.SummaryWriter(model_dir) if lead else None
        end = num_steps if stop_after is None else min(num_steps, stop_after)
        bar = None
        if progress and lead:
            from tqdm import tqdm

            bar = tqdm(
                total=num_steps, initial=start, desc="train", unit="step", dynamic_ncols=True
            )
            bar.write(
                f"model: {n_params / 1e6:.2f}M params, mesh {dict(mesh.shape)}, "
                f"resume from step {start}"
                if start
                else f"model: {n_params / 1e6:.2f}M params, mesh {dict(mesh.shape)}"
            )

        pending: list[tuple[int, dict]] = []  # per-step device metrics, synced at log/save time
        result = TrainResult([], [], start, model_dir)
        t_last, steps_since = time.perf_counter(), 0

        def flush(step_now: int) -> None:
            nonlocal t_last, steps_since, peak
            if not pending:
                return
            host = jax.device_get([m for _, m in pending])
            elapsed = time.perf_counter() - t_last
            rate = steps_since / elapsed if elapsed > 0 else float("nan")
            records = []
            for (s, _), m in zip(pending, host, strict=True):
                if int(m["nonfinite"]):
                    ckpt.wait()
                    what = (
                        "the updated weights or optimizer state became"
                        if all(map(math.isfinite, (float(m["loss"]), float(m["grad_norm"]))))
                        else "loss became"
                    )
                    raise NonFiniteLossError(
                        f"{what} non-finite at step {s} (loss={float(m['loss'])}, "
                        f"grad_norm={float(m['grad_norm'])}); the update was skipped and no "
                        f"checkpoint was written after it. Last good checkpoint: step "
                        f"{ckpt.latest_step()} in {model_dir}. Lower the learning rate or check "
                        "the data."
                    )
                rec = {
                    "step": s,
                    "loss": float(m["loss"]),
                    "grad_norm": float(m["grad_norm"]),
                    "learning_rate": float(m["learning_rate"]),
                    "tokens": float(m["tokens"]),
                }
                result.steps.append(s)
                result.losses.append(rec["loss"])
                records.append(rec)
            last = dict(records[-1])
            last["tokens_per_s"] = rate * batch_size * seq_len
            if remeasure_peak:
                peak = max(peak, measure_peak_flops(repeats=3) * jax.device_count())
            last["mfu"] = rate * flops_per_step / peak
            if lead:
                metrics_log.append(records)
                writer.write(step_now, last)
                if bar is not None:
                    bar.set_postfix(
                        loss=f"{last['loss']:.3f}",
                        lr=f"{last['learning_rate']:.2e}",
                        tok_s=f"{last['tokens_per_s']:.0f}",
                        mfu=f"{last['mfu']:.1%}",
                    )
            pending.clear()
            t_last, steps_since = time.perf_counter(), 0

        try:
            for step in range(start + 1, end + 1):
                batch = next(data_iter)
                state, metrics = ts(state, batch)
                pending.append((step, metrics))
                steps_since += 1
                if bar is not None:
                    bar.update(1)
                save_now = step % checkpoint_every == 0 or step == end
                if step % log_every == 0 or save_now:
                    flush(step)
                if save_now:
                    # A lead that lost its lease (gs://) must not write another checkpoint.
                    train_guards.check_lock(lock)
                    ckpt.save(step, state, data_iter.state(), force=True)
                    if lead:
                        metrics_log.sync()
            flush(end)
            if lead:
                metrics_log.sync()
            result.final_step = int(jax.device_get(state.step))
        finally:
            ckpt.wait()
            ckpt.close()
            if bar is not None:
                bar.close()
            if writer is not None:
                writer.close()
        return result


# ----------------------------------------------------------------------------- CLI


def _binding(text: str) -> str:
    """`--gin.MODEL_DIR=/tmp/x` -> `MODEL_DIR = '/tmp/x'` (bare strings get quoted)."""
    key, sep, value = text.partition("=")
    if not sep:
        raise ValueError(f"gin binding {text!r} must look like NAME=VALUE")
    value = value.strip()
    try:
        gin.config.parse_value(value)
    except Exception:  # not a gin literal: treat as a string
        value = repr(value)
    return f"{key.strip()} = {value}"


def parse_flags(argv: Sequence[str]) -> tuple[list[str], list[str], list[str]]:
    """Splits argv into gin files, gin bindings and search paths."""
    files, bindings, paths = [], [], [os.getcwd()]
    it = iter(argv)
    for arg in it:
        if arg.startswith("--gin_file"):
            files.append(arg.split("=", 1)[1] if "=" in arg else next(it))
        elif arg.startswith("--gin_search_paths"):
            value = arg.split("=", 1)[1] if "=" in arg else next(it)
            paths.extend(value.split(","))
        elif arg.startswith("--gin."):
            bindings.append(_binding(arg[len("--gin.") :]))
        elif arg.startswith("--gin_bindings"):
            bindings.append(arg.split("=", 1)[1] if "=" in arg else next(it))
        else:
            raise ValueError(
                f"unknown flag {arg!r}; expected --gin_file, --gin.NAME=VALUE, "
                "--gin_bindings or --gin_search_paths"
            )
    return files, bindings, paths


REPO_CONFIGS = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "gin_configs"
)


def _roots(search_paths: Sequence[str]) -> list[str]:
    """Where gin files are looked up, in order (see `toxjax train --help`)."""
    return ["", *search_paths, REPO_CONFIGS, os.path.dirname(REPO_CONFIGS)]


def find_gin_file(name: str, search_paths: Sequence[str] = ()) -> str:
    for root in _roots(search_paths):
        if os.path.exists(os.path.join(root, name)):
            return os.path.join(root, name)
    raise FileNotFoundError(
        f"gin file {name!r} not found (searched the working directory, "
        f"{', '.join(search_paths) or '-'} and {REPO_CONFIGS})"
    )


def parse_gin(files: Sequence[str], bindings: Sequence[str], search_paths: Sequence[str] = ()):
    """Parses gin files and bindings; errors name the file or binding at fault."""
    for path in _roots(search_paths)[1:]:
        gin.add_config_file_search_path(path)
    # Resolved here: gin itself would log an error for each miss first.
    resolved = [find_gin_file(f, search_paths) for f in files]
    gin.parse_config_files_and_bindings(
        resolved, list(bindings), finalize_config=False, skip_unknown=False
    )


_DISTRIBUTED_FLAGS = {"coordinator_address": str, "num_processes": int, "process_id": int}


def init_distributed(argv: Sequence[str]) -> list[str]:
    """Handles `--multihost`: calls `jax.distributed.initialize`, one process per host.

    On Cloud TPU the coordinator and process ids are discovered; elsewhere (several
    processes on one machine, GPU clusters) pass `--coordinator_address=HOST:PORT`,
    `--num_processes=N` and `--process_id=I`.

    Returns:
      `argv` without these flags.
    """
    rest, kwargs, multihost = [], {}, False
    for arg in argv:
        name, _, value = arg.partition("=")
        if arg == "--multihost":
            multihost = True
        elif name.startswith("--") and name[2:] in _DISTRIBUTED_FLAGS:
            try:
                kwargs[name[2:]] = _DISTRIBUTED_FLAGS[name[2:]](value)
            except ValueError:
                raise ValueError(
                    f"{arg!r}: expected {name}=<{_DISTRIBUTED_FLAGS[name[2:]].__name__}>"
                ) from None
        else:
            rest.append(arg)
    if kwargs and not multihost:
        raise ValueError(f"--{', --'.join(kwargs)} only make sense with --multihost")
    if multihost:
        jax.distributed.initialize(**kwargs)
    return rest


_ASSIGN = re.compile(r"^\s*([A-Z_][A-Z0-9_]*)\s*=\s*(\S.*)$", re.M)
_INCLUDE = re.compile(r"^\s*include\s+['\"]([^'\"]+)['\"]", re.M)


def required_macros(files: Sequence[str], search_paths: Sequence[str] = ()) -> dict[str, str]:
    """`{macro: gin file}` for every macro the files (and their includes, in gin's
    order) leave at `%gin.REQUIRED`: what a user must bind."""
    last: dict[str, tuple[str, str]] = {}  # macro -> (value text, file)
    seen: set[str] = set()

    def visit(name: str) -> None:
        try:
            path = find_gin_file(name, search_paths)
        except FileNotFoundError:
            return
        if path in seen:
            return
        seen.add(path)
        with open(path) as f:
            lines = f.read().splitlines()
        for line in lines:
            include = _INCLUDE.match(line)
            if include:
                visit(include.group(1))
                continue
            assign = _ASSIGN.match(line)
            if assign:
                last[assign.group(1)] = (assign.group(2), os.path.relpath(path, REPO_CONFIGS))

    for name in files:
        visit(name)
    return {m: where for m, (value, where) in last.items() if value.startswith("%gin.REQUIRED")}


def usage(files: Sequence[str] = (), search_paths: Sequence[str] = ()) -> str:
    """`toxjax train --help`: flags, the gin search path and the REQUIRED macros."""
    configs = [list(files)] if files else [["runs/pretrain.gin"], ["experiments/inst_125m.gin"]]
    required = []
    for shown in configs:
        required.append(f"REQUIRED macros of {', '.join(shown)}:")
        macros = required_macros(shown, search_paths)
        required += [f"  {m:<14} (from {where})" for m, where in macros.items()]
    lines = [
        "usage: toxjax train --gin_file=FILE [--gin_file=FILE ...] [--gin.NAME=VALUE ...]",
        "       (or: python -m toxjax.train ...)",
        "",
        "Trains a model configured by gin files; resumes from the newest checkpoint in",
        "MODEL_DIR. Example (the paper's setting, tiny for a first try):",
        "  toxjax train --gin_file=experiments/inst_125m.gin --gin.MODEL_DIR=runs/inst \\",
        "      --gin.CORPUS_FILES='scored.jsonl'",
        "",
        "flags:",
        "  --gin_file=FILE           a gin file (repeatable; later files override earlier)",
        "  --gin.NAME=VALUE          a binding or macro, e.g. --gin.NUM_STEPS=100,",
        "                            --gin.ModelConfig.num_layers=2 (bare words are strings)",
        "  --gin_bindings='A = 1'    a raw gin binding line (repeatable)",
        "  --gin_search_paths=D1,D2  more directories to look up gin files in",
        "  --multihost               one process per host (jax.distributed); on Cloud TPU",
        "                            the rest is discovered, elsewhere also pass",
        "  --coordinator_address=HOST:PORT --num_processes=N --process_id=I",
        "  -h, --help                this text (with --gin_file: that config's REQUIRED macros)",
        "",
        f"gin files are looked up in: the working directory, --gin_search_paths, {REPO_CONFIGS}",
        "  (models/*.gin, runs/pretrain.gin, mesh/*.gin, experiments/*.gin)",
        "",
        *required,
        "",
        "exit codes: 0 done, 2 configuration error, 3 non-finite loss or state, 4 checkpoint or",
        "  data settings do not match this run, 5 another trainer holds MODEL_DIR/LOCK,",
        "  6 no intact checkpoint (every step failed its checksums)",
    ]
    return "\n".join(lines)


# Exit codes of `toxjax train`, one per kind of refusal (scripts can tell them apart).
EXIT_CONFIG, EXIT_NONFINITE, EXIT_MISMATCH, EXIT_LOCKED, EXIT_CORRUPT = 2, 3, 4, 5, 6


def _message(error: BaseException) -> str:
    """The error's message without the line gin appends ("In call to configurable ...")."""
    return re.sub(r"\n\s*In call to configurable .*", "", str(error))


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a in ("-h", "--help", "help") for a in argv):
        try:
            files, _, paths = parse_flags([a for a in argv if a not in ("-h", "--help", "help")])
        except ValueError:
            files, paths = [], []
        print(usage(files, paths))
        return 0
    try:
        argv = init_distributed(argv)
    except ValueError as e:
        print(f"toxjax train: {e}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        files, bindings, paths = parse_flags(argv)
        parse_gin(files, bindings, paths)
        train_guards.check_macros_used(bindings)
    except (ValueError, KeyError, FileNotFoundError) as e:
        print(f"toxjax train: configuration error: {_message(e)}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        result = train()
    except ConfigError as e:  # TrainConfigError, a bad ModelConfig / AugmentConfig / attention
        print(f"toxjax train: configuration error: {_message(e)}", file=sys.stderr)
        return EXIT_CONFIG
    except NonFiniteLossError as e:
        print(f"toxjax train: {_message(e)}", file=sys.stderr)
        return EXIT_NONFINITE
    except (ckpt_lib.CheckpointMismatchError, DataStateMismatchError) as e:
        print(f"toxjax train: {_message(e)}", file=sys.stderr)
        return EXIT_MISMATCH
    except locking.LockHeldError as e:
        print(f"toxjax train: {_message(e)}", file=sys.stderr)
        return EXIT_LOCKED
    except ckpt_lib.CorruptCheckpointError as e:
        print(f"toxjax train: {_message(e)}", file=sys.stderr)
        return EXIT_CORRUPT
    if result.losses:
        print(f"done: step {result.final_step}, last loss {result.losses[-1]:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
