"""Operating points: choosing the score above which two recordings are called the same speaker.

A verification system outputs a score; the decision needs a threshold, and the
right one depends on what a false acceptance costs against a false rejection.
:func:`score_summary` keeps what is needed to choose one later from scored
trials (the error curves, sampled, and the EER point); :func:`operating_point`
picks a threshold from it:

* ``"eer"``: where false acceptances and false rejections are equally frequent;
* ``"far=0.01"``: the lowest threshold that accepts at most 1 % of impostor trials;
* ``"frr=0.05"``: the highest threshold that rejects at most 5 % of genuine trials;
* a number, e.g. ``"0.62"``: that threshold (its error rates looked up on the trials).

As in :mod:`sincmi.metrics`, a trial is accepted when its score is strictly
above the threshold.

>>> summary = score_summary([0.9, 0.8, 0.7, 0.3], [0.1, 0.2, 0.4, 0.6])
>>> point = operating_point(summary, "far=0.25")
>>> point.threshold, point.far, point.frr
(0.4, 0.25, 0.25)
"""

import json
import os
from collections import namedtuple

import numpy as np
from speechbrain.utils.checkpoints import mark_as_loader, mark_as_saver, register_checkpoint_hooks

from sincmi.metrics import eer_from_curves, error_curves

OperatingPoint = namedtuple("OperatingPoint", "name threshold far frr")
OperatingPoint.__doc__ = """A threshold and the error rates it gave on the summarised trials
(``far``, ``frr``: None when the threshold was given without trials)."""

SPEC_HELP = "'eer', 'far=<rate>', 'frr=<rate>' (rates between 0 and 1) or a score threshold such as 0.62"


def score_summary(positive_scores, negative_scores, max_points=2000):
    """A JSON-ready summary of scored trials from which thresholds are chosen.

    Holds the trial counts, the mean and standard deviation of the target and
    non-target scores, the EER and its threshold (on all trials), and the
    error curves at no more than ``max_points`` thresholds (every distinct
    score when there are fewer; otherwise evenly spaced in rank, which keeps
    FAR and FRR steps below about ``1 / max_points``, plus the EER point).
    """
    positive = np.asarray(positive_scores, dtype=np.float64).ravel()
    negative = np.asarray(negative_scores, dtype=np.float64).ravel()
    thresholds, frr, far = error_curves(positive, negative)
    eer, eer_threshold = eer_from_curves(thresholds, frr, far)
    keep = np.arange(len(thresholds))
    if len(keep) > max_points:  # evenly spaced in rank, and the EER point itself
        spaced = np.linspace(0, len(thresholds) - 1, max_points - 1).round().astype(int)
        keep = np.unique(np.append(spaced, int(np.argmin(np.abs(far - frr)))))
    return {
        "target_trials": int(positive.size),
        "nontarget_trials": int(negative.size),
        "target_mean": float(positive.mean()), "target_std": float(positive.std()),
        "nontarget_mean": float(negative.mean()), "nontarget_std": float(negative.std()),
        "eer": eer,
        "eer_threshold": eer_threshold,
        "thresholds": [float(v) for v in thresholds[keep]],
        "far": [float(v) for v in far[keep]],
        "frr": [float(v) for v in frr[keep]],
    }


def parse_spec(spec):
    """``(kind, value)`` of an operating-point spec: ``("eer", None)``, ``("far", 0.01)``,
    ``("frr", 0.05)`` or ``("value", 0.62)``; ``ValueError`` naming the accepted forms otherwise."""
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        return "value", float(spec)
    text = str(spec).strip().lower()
    if text == "eer":
        return "eer", None
    kind, sep, rate = text.partition("=")
    try:
        if sep and kind in ("far", "frr"):
            value = float(rate)
            if not 0.0 <= value <= 1.0:
                raise ValueError
            return kind, value
        if not sep:
            value = float(text)
            if np.isfinite(value):
                return "value", value
    except ValueError:
        pass
    raise ValueError(f"unknown operating point {spec!r}: use {SPEC_HELP}")


def operating_point(summary, spec):
    """The :class:`OperatingPoint` that ``spec`` names, on the trials of ``summary``.

    ``summary`` may be None for a numeric spec (no error rates then).
    """
    kind, value = parse_spec(spec)
    if summary is None:
        if kind != "value":
            raise ValueError(f"operating point {spec!r} needs scored trials (a score summary); "
                             "give a numeric threshold, or score known pairs first")
        return OperatingPoint(str(spec), value, None, None)
    thresholds = np.asarray(summary["thresholds"])
    far, frr = np.asarray(summary["far"]), np.asarray(summary["frr"])
    if kind == "eer":
        index = int(np.argmin(np.abs(thresholds - summary["eer_threshold"])))
        return OperatingPoint("eer", float(summary["eer_threshold"]), float(far[index]), float(frr[index]))
    if kind == "far":  # FAR falls as the threshold rises: the first one at or below the rate
        allowed = np.flatnonzero(far <= value)
        index = int(allowed[0]) if allowed.size else len(thresholds) - 1
    elif kind == "frr":  # FRR rises with the threshold: the last one at or below the rate
        allowed = np.flatnonzero(frr <= value)
        index = int(allowed[-1]) if allowed.size else 0
    else:
        # Error rates at the highest summarised threshold not above the value.
        index = max(int(np.searchsorted(thresholds, value, side="right")) - 1, 0)
        if value < thresholds[0]:  # below every score: everything is accepted
            return OperatingPoint(f"{value:g}", value, 1.0, 0.0)
        return OperatingPoint(f"{value:g}", value, float(far[index]), float(frr[index]))
    return OperatingPoint(f"{kind}={value:g}", float(thresholds[index]), float(far[index]), float(frr[index]))


def describe(point):
    """One line saying what a decision at ``point`` means.

    >>> describe(OperatingPoint("far=0.01", 0.5, 0.01, 0.2))
    'operating point far=0.01: threshold 0.5000 (on the scored trials: FAR 1.00 %, FRR 20.00 %)'
    """
    text = f"operating point {point.name}: threshold {point.threshold:.4f}"
    if point.far is not None:
        text += f" (on the scored trials: FAR {100 * point.far:.2f} %, FRR {100 * point.frr:.2f} %)"
    return text


@register_checkpoint_hooks
class ScoreSummary:
    """The :func:`score_summary` a model chooses operating points on (``summary``: the dict, or None).

    A SpeechBrain ``Pretrainer`` loadable: ``score_summary.ckpt`` of a model folder, JSON.
    """

    def __init__(self, summary=None):
        self.summary = summary

    @mark_as_saver
    def save(self, path):
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.summary, f)
        os.replace(tmp, path)

    @mark_as_loader
    def recover(self, path, end_of_epoch=False):
        with open(path) as f:
            self.summary = json.load(f)
