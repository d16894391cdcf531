"""Precision-recall curves: the counts at each threshold, and the pane that draws them.

    tp, fp, tn, fn = counts(labels, probabilities, thresholds=127)    # numpy, off the training thread
    data, layout = figure(entries)                                      # the latest steps' curves

A prediction is positive at threshold ``i / (thresholds - 1)`` when its bucket,
``floor(p * (thresholds - 1))`` computed in the predictions' own precision (bfloat16 as float16),
is ``i`` or more: the same buckets as TensorBoard's PR curves, so the counts equal those in its
event file. Predictions below 0, from ``1 + 1 / (thresholds - 1)`` up (logits, say) and NaN are
in no bucket.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

MOST_THRESHOLDS = 127  # as TensorBoard: more are taken as this many
CURVES = 5  # the latest steps drawn, older ones fainter
_SMALLEST = 1e-7  # a denominator of no predictions: precision and recall 0, as TensorBoard's


def counts(labels: Any, predictions: Any, thresholds: int = MOST_THRESHOLDS,
           weights: Any = None) -> tuple[list[float], list[float], list[float], list[float]]:
    """True positives, false positives, true negatives and false negatives at each threshold,
    each weighted by ``weights`` (1 by default; broadcast to the predictions' shape). ``labels``
    are 0 to 1 (bools, 0/1, or soft labels: a label of 0.3 counts 0.3 positive, 0.7 negative)."""
    scores = np.asarray(predictions)
    weight = np.broadcast_to(np.asarray(1.0 if weights is None else weights, dtype=np.float64), scores.shape)
    truth, scores, weight = np.asarray(labels).reshape(-1), scores.reshape(-1), weight.reshape(-1)
    if truth.size != scores.size:
        raise ValueError(f"labels and predictions must have as many values, got {truth.size} and {scores.size}")
    outside = truth[~((truth >= 0) & (truth <= 1))]
    if outside.size:
        raise ValueError(f"labels must be 0 to 1 (0/1 or bools: which are positives), got {outside[:5].tolist()}")
    if not np.issubdtype(scores.dtype, np.floating):
        scores = scores.astype(np.float64)
    buckets = np.floor(scores * (thresholds - 1))
    inside = (buckets >= 0) & (buckets <= thresholds - 1)  # NaN is in none
    where = buckets[inside].astype(np.int64)
    positive = truth[inside].astype(np.float64) * weight[inside]
    negative = weight[inside] - positive
    tp = np.cumsum(np.bincount(where, positive, thresholds)[::-1])[::-1]
    fp = np.cumsum(np.bincount(where, negative, thresholds)[::-1])[::-1]
    return tp.tolist(), fp.tolist(), (fp[0] - fp).tolist(), (tp[0] - tp).tolist()


def precision_recall(entry: dict[str, Any]) -> tuple[list[float], list[float]]:
    """An entry's precision and recall at each threshold: as the loop gave them, else from its counts."""
    if "precision" in entry:
        return entry["precision"], entry["recall"]
    tp, fp, fn = (np.asarray(entry[key], dtype=np.float64) for key in ("tp", "fp", "fn"))
    return (tp / np.maximum(_SMALLEST, tp + fp)).tolist(), (tp / np.maximum(_SMALLEST, tp + fn)).tolist()


def figure(entries: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Plotly traces and layout: precision against recall for each entry (a step), the latest in
    colour and the earlier ones in fading grey, or for each run of a comparison (entries with a
    ``run`` label); hovering a point shows its threshold and counts."""
    data = []
    for age, entry in enumerate(reversed(entries)):
        precision, recall = ([v if math.isfinite(v) else None for v in part] for part in precision_recall(entry))
        thresholds = len(precision) - 1
        text = [f"threshold {i / thresholds:.3f}<br>TP {tp:g}, FP {fp:g}, TN {tn:g}, FN {fn:g}"
                for i, (tp, fp, tn, fn) in enumerate(zip(entry["tp"], entry["fp"], entry["tn"], entry["fn"]))]
        name = f"step {_number(entry['x'])}" if "run" not in entry else f"{entry['run']}, step {_number(entry['x'])}"
        trace = {"x": recall, "y": precision, "text": text, "name": name, "type": "scatter", "mode": "lines",
                 "marker": {"line": {"width": 0}},  # Visdom's smoothing button writes there (monitor.windows)
                 "hovertemplate": "recall %{x:.3f}, precision %{y:.3f}<br>%{text}<extra>%{fullData.name}</extra>"}
        if age and "run" not in entry:  # an earlier step: grey, fainter with age (Visdom resets a trace's opacity)
            trace["line"] = {"color": f"rgba(127,127,127,{0.6 - 0.1 * age:.1f})"}
        data.append(trace)
    data.reverse()  # the latest last: drawn on top
    layout = {"showlegend": True, "margin": {"l": 60, "r": 30, "t": 30, "b": 50},
              "xaxis": {"title": "recall", "range": [0, 1.02]},
              "yaxis": {"title": "precision", "range": [0, 1.05]}}
    return data, layout


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"
