"""Task features -> packed model features, with the per-token features and the schedule.

`FeatureConverter` is `seqio.DecoderFeatureConverter` (the same packing, the same five
model features) for a task with "targets" only. A task whose samples carry per-token
features (`toxjax.preprocessors.pipeline.token_features`) gets them packed with the
targets by the same `seqio.utils.trim_and_pack_dataset`, so its rows are the rows seqio
packs from the targets alone:

- "loss_weights" becomes `decoder_loss_weights` (seqio's is "every non-padding token");
- "prefix_mask" marks the conditioning-prefix tokens. A row of a training step outside
  the conditioning window (`AugmentConfig.condition_steps`) loses them: the rest of the
  row moves left, each sample starts from the BOS input with positions from 0 (a
  baseline sample), and the freed tail is padding.

How the schedule is measured: by the row's optimizer step. Each host packs its own
stream and puts `rows_per_step` rows into every global batch, so its `r`-th packed row
(0-based, counted inside the tf.data pipeline) belongs to step `r // rows_per_step`: a
pure function of the stream position and the run's budget. A run restored by position
(`toxjax.data.DataIterator` skips the batches it consumed) sees the same rows with the
same prefixes. Rows are packed with their prefixes and only then lose them, so every
schedule sees the same documents at the same step (rows outside the window carry a few
more padding tokens).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import seqio
import tensorflow as tf

from toxjax.preprocessors.pipeline import LOSS_WEIGHTS, PREFIX_MASK, TOKEN_FEATURES

_SPEC = seqio.FeatureConverter.FeatureSpec


@dataclasses.dataclass(frozen=True)
class ConditionWindow:
    """Which packed rows keep their conditioning prefixes.

    Attributes:
      first, stop: the 0-based steps `[first, stop)` that are conditioned (`stop` None:
        to the end), from `AugmentConfig.condition_steps(num_steps)`.
      rows_per_step: rows this host puts into each global batch.
    """

    first: int
    stop: int | None
    rows_per_step: int

    def __post_init__(self):
        if self.rows_per_step < 1:
            raise ValueError(f"rows_per_step={self.rows_per_step} must be >= 1")

    def conditioned(self, row: tf.Tensor) -> tf.Tensor:
        """`[]` bool: row `row` (0-based, int64) is in a conditioned step."""
        step = row // self.rows_per_step
        on = step >= self.first
        return on if self.stop is None else on & (step < self.stop)


class FeatureConverter(seqio.DecoderFeatureConverter):
    """`seqio.DecoderFeatureConverter` that packs toxjax's per-token features too.

    Args:
      pack: pack several samples per row (attention stays within each).
      window: the conditioning schedule of a task with a "prefix_mask"; required for
        such a task (without it, the schedule could not be applied).
      **kwargs: `seqio.DecoderFeatureConverter` arguments.
    """

    def __init__(self, pack: bool = True, window: ConditionWindow | None = None, **kwargs):
        super().__init__(pack=pack, **kwargs)
        self.window = window

    def __call__(
        self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]
    ) -> tf.data.Dataset:
        extra = tuple(k for k in TOKEN_FEATURES if k in ds.element_spec)
        if not extra or set(task_feature_lengths) != {"targets"}:
            return super().__call__(ds, task_feature_lengths)
        if PREFIX_MASK in extra and self.window is None:
            raise ValueError(
                "this task conditions only part of training (AugmentConfig.condition_start / "
                "condition_end): read it through toxjax.data.DataIterator(..., num_steps=) "
                "so each row knows its step"
            )
        length = task_feature_lengths["targets"]
        converter = _TokenFeaturesLM(extra, self.window, pack=self.pack, bos_id=self.bos_id)
        return converter(ds, {"targets": length, **{k: length for k in extra}})


class _TokenFeaturesLM(seqio.LMFeatureConverter):
    """seqio's LM converter over "targets" plus the per-token features `extra`."""

    def __init__(self, extra: Sequence[str], window: ConditionWindow | None, **kwargs):
        self.TASK_FEATURES = {k: _SPEC(dtype=tf.int32) for k in ("targets", *extra)}
        super().__init__(**kwargs)
        self.extra = tuple(extra)
        self.window = window if PREFIX_MASK in self.extra else None

    def _convert_features(
        self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]
    ) -> tf.data.Dataset:
        # seqio's packer keeps the first count_nonzero(x) entries of each feature (the
        # targets have no zeros): shift the 0/1 values to 1/2 for the packing.
        ds = ds.map(
            lambda x: {**x, **{k: x[k] + 1 for k in self.extra}},
            num_parallel_calls=tf.data.AUTOTUNE,
        )
        ds = self._pack_or_pad(ds, task_feature_lengths)
        if self.window is not None:
            ds = ds.enumerate().map(self._drop_prefixes, num_parallel_calls=tf.data.AUTOTUNE)
        return ds.map(self._convert, num_parallel_calls=tf.data.AUTOTUNE)

    def _drop_prefixes(self, row: tf.Tensor, x: dict) -> dict:
        """Removes the prefix tokens of a row outside the conditioning window."""
        drop = tf.logical_not(self.window.conditioned(row)) & tf.equal(x[PREFIX_MASK], 2)
        length = x["targets"].shape[0]
        x = dict(x)
        if self.pack:
            # A prefix opens its sample: the text after it moves back by the sample's
            # dropped-token count.
            segments = x["targets_segment_ids"]
            dropped = tf.math.unsorted_segment_sum(
                tf.cast(drop, tf.int32), segments, num_segments=length + 1
            )
            x["targets_positions"] -= tf.gather(dropped, segments)
        keep = tf.logical_not(drop)

        def compact(v):
            kept = tf.boolean_mask(v, keep)
            return tf.ensure_shape(tf.pad(kept, [[0, length - tf.size(kept)]]), [length])

        return {k: compact(v) for k, v in x.items()}

    def _convert(self, x: dict) -> dict:
        d = dict(self._convert_example(x))
        if LOSS_WEIGHTS in self.extra:
            d["decoder_loss_weights"] = tf.where(
                tf.not_equal(x["targets"], 0), x[LOSS_WEIGHTS] - 1, 0
            )
        return d
