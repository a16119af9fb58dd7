"""Calibration: verification scores as log-likelihood ratios, and how well they are calibrated.

A cosine score ranks trials but says nothing by itself about how likely a
same-speaker trial is. The field's standard calibration (Brümmer, FoCal;
Hyperion) is an affine map fitted by prior-weighted logistic regression on
trials with known labels::

    llr = scale * f(score) + offset

so that ``llr`` is the log-likelihood ratio ``log p(score | same) / p(score | different)``.
``f`` is the identity for scores that are already log-likelihood ratios or
normalised (PLDA, AS-norm) and Fisher's z, ``atanh``, for plain cosines:
same-speaker cosines crowd against 1, where an affine map of the cosine
cannot follow the log-likelihood ratio over all operating points; ``atanh``
spreads them out (it makes a correlation's sampling spread independent of its
value), so that one affine map fits the decisions at a low prior and Cllr
alike.
With it a decision is made at a stated prior ``p_target`` (the Bayes threshold
``llr > log((1 - p_target) / p_target)``, costs of both errors equal), and its
quality is measured by:

* ``Cllr``: the cost of the log-likelihood ratios over all operating points
  (bits; 0 perfect, 1 a system that always says ``llr = 0``);
* ``minCllr``: the Cllr after the best monotonic recalibration of the same
  scores (pool adjacent violators): what discrimination alone allows;
  ``Cllr - minCllr`` is the calibration loss;
* ``actDCF``: the normalised detection cost of the Bayes decisions at
  ``p_target``, beside ``minDCF`` (the cost at the best threshold in hindsight).

The recipes fit the calibration on trials among the training speakers'
utterances, never the verification speakers (:func:`calibration_trials`).

>>> cal = Calibration.fit([2.0, 3.0, 2.5, 0.5], [0.0, -1.0, 1.0, -0.5])
>>> cal.scale > 0
True
>>> cosine = Calibration(scale=2.0, offset=-1.0, transform="atanh")
>>> round(float(cosine(0.5)), 4), round(cosine.score_at(cosine(0.5)), 4)
(0.0986, 0.5)
>>> round(bayes_threshold(0.01), 3)
4.595
"""

import json
import math
import os
from collections import namedtuple

import numpy as np
import torch
from scipy.optimize import isotonic_regression, minimize
from scipy.special import expit, log_expit, logit
from speechbrain.utils.checkpoints import mark_as_loader, mark_as_saver, register_checkpoint_hooks

LOG2 = math.log(2.0)

CalibrationTrials = namedtuple("CalibrationTrials", "enrol test label")
SCORE_TRANSFORMS = ("identity", "atanh")
COSINE_LIMIT = 1 - 1e-7  # cosines are clipped to +-COSINE_LIMIT before atanh (a file against itself scores 1)


def score_transform(scorer, score_norm=None):
    """The ``f`` of a calibration for scores of ``scorer`` normalised by ``score_norm``: ``atanh`` for plain
    cosines, ``identity`` otherwise (PLDA's log-likelihood ratios, normalised scores).

    >>> from sincmi.plda import COSINE
    >>> score_transform(COSINE), score_transform(COSINE, "as-norm")
    ('atanh', 'identity')
    """
    from sincmi.plda import CosineScorer

    return "atanh" if isinstance(scorer, CosineScorer) and not score_norm else "identity"


def transformed(scores, transform):
    """``f(scores)`` of :func:`score_transform`'s ``transform`` (float64 array)."""
    scores = np.asarray(scores, dtype=np.float64)
    if transform == "atanh":
        return np.arctanh(np.clip(scores, -COSINE_LIMIT, COSINE_LIMIT))
    if transform != "identity":
        raise ValueError(f"score transform {transform!r} is unknown; choose one of {list(SCORE_TRANSFORMS)}")
    return scores


def bayes_threshold(p_target):
    """The log-likelihood ratio above which the Bayes decision at ``p_target`` says "same speaker"."""
    if not 0.0 < p_target < 1.0:
        raise ValueError(f"p_target must be between 0 and 1 (exclusive), got {p_target!r}")
    return -float(logit(p_target))


def required_trials(rate):
    """Trials needed to show an error rate of ``rate`` with 95 % confidence when none is seen (rule of three).

    >>> required_trials(0.01), required_trials(0.05)
    (300, 60)
    """
    return int(math.ceil(3.0 / rate - 1e-9))


def cllr(target_llrs, nontarget_llrs):
    """The log-likelihood-ratio cost in bits (Brümmer and du Preez, 2006).

    >>> round(cllr([0.0], [0.0]), 6)
    1.0
    """
    targets = np.asarray(target_llrs, dtype=np.float64)
    nontargets = np.asarray(nontarget_llrs, dtype=np.float64)
    value = (-log_expit(targets).mean() - log_expit(-nontargets).mean()) / (2 * LOG2)
    return float(value) if value > 0 else 0.0  # never below 0 but by rounding (perfectly separated trials)


def pav_llrs(target_scores, nontarget_scores):
    """The log-likelihood ratios of the best monotonic map of the scores (pool adjacent violators).

    Returns ``(target llrs, nontarget llrs)``; blocks of one class alone get
    ``+inf`` (targets) or ``-inf`` (non-targets), which cost nothing.
    """
    targets = np.asarray(target_scores, dtype=np.float64).ravel()
    nontargets = np.asarray(nontarget_scores, dtype=np.float64).ravel()
    scores = np.concatenate([targets, nontargets])
    labels = np.concatenate([np.ones(len(targets)), np.zeros(len(nontargets))])
    # Ties: non-targets first, the pessimistic order (as BOSARIS does).
    order = np.lexsort((labels, scores))
    posterior = isotonic_regression(labels[order]).x
    prior_logit = math.log(len(targets) / len(nontargets))
    with np.errstate(divide="ignore"):
        llr_sorted = np.log(posterior) - np.log1p(-posterior) - prior_logit
    llrs = np.empty_like(llr_sorted)
    llrs[order] = llr_sorted
    return llrs[: len(targets)], llrs[len(targets):]


def min_cllr(target_scores, nontarget_scores):
    """The Cllr of the scores after the best monotonic calibration: discrimination alone."""
    return cllr(*pav_llrs(target_scores, nontarget_scores))


def act_dcf(target_llrs, nontarget_llrs, p_target=0.01):
    """Normalised detection cost of the Bayes decisions at ``p_target`` (C_miss = C_fa = 1).

    >>> act_dcf([5.0, 6.0], [-1.0, 4.0], 0.01)
    0.0
    """
    threshold = bayes_threshold(p_target)
    p_miss = float(np.mean(np.asarray(target_llrs) <= threshold))
    p_fa = float(np.mean(np.asarray(nontarget_llrs) > threshold))
    return (p_target * p_miss + (1 - p_target) * p_fa) / min(p_target, 1 - p_target)


@register_checkpoint_hooks
class Calibration:
    """A score-to-log-likelihood-ratio map: ``llr = scale * f(score) + offset`` (``f``: ``transform``).

    Fitted with :meth:`fit`; saved and loaded as a small JSON file (a
    SpeechBrain ``Pretrainer`` loadable: ``calibration.ckpt`` of a model folder;
    a file without ``transform``, written before it existed, is affine in the score).
    """

    def __init__(self, scale=None, offset=None, prior=0.5, target_trials=0, nontarget_trials=0, source=None,
                 transform="identity"):
        transformed(0.0, transform)  # refuses an unknown transform
        self.scale, self.offset, self.prior, self.transform = scale, offset, prior, transform
        self.target_trials, self.nontarget_trials, self.source = target_trials, nontarget_trials, source

    @property
    def fitted(self):
        return self.scale is not None

    @classmethod
    def fit(cls, target_scores, nontarget_scores, prior=0.5, source=None, transform="identity"):
        """Prior-weighted logistic regression of the labels on ``f(score)`` (FoCal's objective).

        Targets and non-targets weigh ``prior`` and ``1 - prior`` whatever their
        counts; the fitted offset is that of a log-likelihood ratio (the prior's
        log-odds taken out). ``transform``: see :func:`score_transform`.
        """
        targets = transformed(target_scores, transform).ravel()
        nontargets = transformed(nontarget_scores, transform).ravel()
        if not len(targets) or not len(nontargets):
            raise ValueError(f"calibration needs target and non-target trials (has {len(targets)} and "
                             f"{len(nontargets)})")
        prior_logit = float(logit(prior))

        def cost(params):
            scale, offset = params
            t = scale * targets + offset + prior_logit
            n = scale * nontargets + offset + prior_logit
            value = -prior * log_expit(t).mean() - (1 - prior) * log_expit(-n).mean()
            gt, gn = -prior * expit(-t) / len(t), (1 - prior) * expit(n) / len(n)
            grad = np.array([gt @ targets + gn @ nontargets, gt.sum() + gn.sum()])
            return value, grad

        spread = max(float(np.std(np.concatenate([targets, nontargets]))), 1e-6)
        start = np.array([1.0 / spread, 0.0])
        result = minimize(cost, start, jac=True, method="L-BFGS-B")
        scale, offset = (float(v) for v in result.x)
        return cls(scale, offset, prior, len(targets), len(nontargets), source, transform)

    def __call__(self, scores):
        """Log-likelihood ratios of ``scores`` (array or float)."""
        if not self.fitted:
            raise ValueError("the calibration is not fitted")
        return self.scale * transformed(scores, self.transform) + self.offset

    def score_at(self, llr):
        """The score whose log-likelihood ratio is ``llr`` (the inverse map: a threshold in score units)."""
        if not self.fitted:
            raise ValueError("the calibration is not fitted")
        value = (llr - self.offset) / self.scale
        return float(np.tanh(value) if self.transform == "atanh" else value)

    def describe(self):
        """The map in words, e.g. ``llr = 12.300 atanh(score) - 4.100``."""
        term = "atanh(score)" if self.transform == "atanh" else "score"
        return f"llr = {self.scale:.3f} {term} {'+' if self.offset >= 0 else '-'} {abs(self.offset):.3f}"

    def metrics(self, target_scores, nontarget_scores, p_target=0.01):
        """``{"Cllr", "minCllr", "actDCF_<p>"}`` of these trials' scores with this calibration."""
        return {"Cllr": cllr(self(target_scores), self(nontarget_scores)),
                "minCllr": min_cllr(target_scores, nontarget_scores),
                f"actDCF_{p_target:g}": act_dcf(self(target_scores), self(nontarget_scores), p_target)}

    def as_dict(self):
        return {"scale": self.scale, "offset": self.offset, "prior": self.prior, "transform": self.transform,
                "target_trials": self.target_trials, "nontarget_trials": self.nontarget_trials,
                "source": self.source}

    @mark_as_saver
    def save(self, path):
        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            json.dump(self.as_dict(), f, indent=2)
        os.replace(tmp, path)

    @mark_as_loader
    def load(self, path, end_of_epoch=False):
        """Reads a saved calibration into this object (in place, as SpeechBrain's loaders do)."""
        with open(path) as f:
            values = json.load(f)
        self.__init__(**values)

    @classmethod
    def from_file(cls, path):
        calibration = cls()
        calibration.load(path)
        return calibration


def calibration_trials(speakers, max_targets=20000, max_nontargets=200000, seed=0):
    """Trials among labelled utterances for fitting a calibration: :class:`CalibrationTrials` of indices.

    Every same-speaker pair (at most ``max_targets``, drawn at random beyond)
    and ``max_nontargets`` different-speaker pairs drawn at random (all of them
    when there are fewer).

    >>> trials = calibration_trials(["a", "a", "b", "b"])
    >>> int(trials.label.sum()), len(trials.label)
    (2, 6)
    """
    labels = np.unique(np.asarray(speakers), return_inverse=True)[1]
    n = len(labels)
    rng = np.random.default_rng(seed)
    if n * (n - 1) // 2 <= max_targets + max_nontargets:
        enrol, test = np.triu_indices(n, k=1)
        same = labels[enrol] == labels[test]
        keep = np.concatenate([_sample(np.flatnonzero(same), max_targets, rng),
                               _sample(np.flatnonzero(~same), max_nontargets, rng)])
        enrol, test = enrol[keep], test[keep]
    else:
        enrol, test = _target_pairs(labels, max_targets, rng)
        other_a = rng.integers(0, n, size=2 * max_nontargets)
        other_b = rng.integers(0, n, size=2 * max_nontargets)
        different = labels[other_a] != labels[other_b]
        other_a, other_b = other_a[different][:max_nontargets], other_b[different][:max_nontargets]
        enrol, test = np.concatenate([enrol, other_a]), np.concatenate([test, other_b])
    return CalibrationTrials(enrol, test, labels[enrol] == labels[test])


def fit_on_training_speakers(embeddings, speakers, backend="none", cohort=None, score_norm=None, top_k=None,
                             prior=0.01, folds=10, seed=0):
    """The calibration of a system, fitted on trials among the training speakers' utterances.

    The verification speakers are unseen by the back end; so are the
    calibration trials' here: the training speakers are split into ``folds``
    groups, and each group's trials (:func:`calibration_trials`, within the
    group) are scored after a back end fitted on the other groups' utterances
    (and normalised against the cohort after that back end). The pooled scores
    fit :meth:`Calibration.fit` at ``prior``.

    Arguments
    ---------
    embeddings : dict
        ``{utterance id: embedding}`` of the training speakers' utterances, before any back end.
    speakers : dict
        ``{utterance id: speaker}``.
    backend : str
        The :mod:`sincmi.backend` the verification scores use.
    cohort : dict, optional
        ``{utterance id: embedding}``: the score-normalisation cohort before the
        back end; a fold's own utterances are left out of it, as the
        verification utterances are not in it.
    """
    from sincmi.backend import Backend

    ids = sorted(key for key in embeddings if key in speakers)
    names = sorted({speakers[key] for key in ids})
    np.random.default_rng(seed).shuffle(names)
    # Held out in folds what the trials must not have seen: a fitted back end's data, the cohort's own utterances.
    folds = max(1, min(folds, len(names) // 2)) if backend != "none" or cohort is not None else 1
    target_scores, nontarget_scores = [], []
    for k in range(folds):
        group = set(names[k::folds])
        inside = [key for key in ids if speakers[key] in group]
        outside = [key for key in ids if speakers[key] not in group] if folds > 1 else ids
        fitted = Backend(backend, torch.stack([embeddings[key] for key in outside]) if backend != "none" else None,
                         [speakers[key] for key in outside])
        others = None if cohort is None else cohort_matrix(cohort, exclude=set(inside))
        targets, nontargets = speaker_trial_scores(embeddings, speakers, inside, fitted, others, score_norm, top_k,
                                                   seed)
        target_scores.append(targets)
        nontarget_scores.append(nontargets)
    held_out = f", in {folds} folds of speakers held out of the back end and cohort" if folds > 1 else ""
    return Calibration.fit(np.concatenate(target_scores), np.concatenate(nontarget_scores), prior,
                           source=f"trials among {len(ids)} utterances of {len(names)} training speakers{held_out}",
                           transform=score_transform(fitted.scorer, score_norm))


def fit_on_held_out_speakers(embeddings, speakers, backend, cohort=None, score_norm=None, top_k=None, prior=0.01,
                             seed=0):
    """The calibration fitted on trials among speakers that neither the encoder nor the back end saw.

    ``embeddings``: ``{utterance id: embedding}`` of the held-out training
    speakers (``calibration_speakers``), scored with the system's fitted
    :class:`~sincmi.backend.Backend` as the verification trials are.
    """
    ids = sorted(key for key in embeddings if key in speakers)
    cohort = None if cohort is None else cohort_matrix(cohort, exclude=set(ids))
    targets, nontargets = speaker_trial_scores(embeddings, speakers, ids, backend, cohort, score_norm, top_k, seed)
    count = len({speakers[key] for key in ids})
    return Calibration.fit(targets, nontargets, prior,
                           source=f"trials among {len(ids)} utterances of {count} training speakers held out of "
                                  "training and back end", transform=score_transform(backend.scorer, score_norm))


def cohort_matrix(cohort, exclude=()):
    """The ``(M, D)`` matrix of a ``{utterance id: embedding}`` cohort, in id order, without ``exclude``.

    >>> cohort_matrix({"b": torch.ones(2), "a": torch.zeros(2), "c": torch.ones(2)}, exclude={"c"}).tolist()
    [[0.0, 0.0], [1.0, 1.0]]
    """
    return torch.stack([cohort[key] for key in sorted(cohort) if key not in exclude])


def speaker_trial_scores(embeddings, speakers, keys, backend, cohort=None, score_norm=None, top_k=None, seed=0):
    """``(target scores, non-target scores)`` of :func:`calibration_trials` among ``keys``, after ``backend``
    (a fitted :class:`~sincmi.backend.Backend`; the raw ``cohort`` goes through it too)."""
    from sincmi.scoring import score_trials

    pairs = calibration_trials([speakers[key] for key in keys], seed=seed)
    trials = [(int(label), keys[a], keys[b]) for a, b, label in zip(pairs.enrol, pairs.test, pairs.label)]
    if cohort is not None and top_k is not None:  # a fold's cohort lacks the fold's own utterances
        top_k = min(top_k, len(cohort))
    scores, labels = score_trials(backend.apply({key: embeddings[key] for key in keys}), trials,
                                  None if cohort is None else backend(cohort), score_norm, top_k, backend.scorer)
    return scores[labels].numpy(), scores[~labels].numpy()


def _sample(indices, limit, rng):
    return indices if len(indices) <= limit else np.sort(rng.choice(indices, size=limit, replace=False))


def _target_pairs(labels, limit, rng):
    """Same-speaker pairs of a large set: every pair of each speaker, then at most ``limit`` of them."""
    order = np.argsort(labels, kind="stable")
    bounds = np.flatnonzero(np.diff(labels[order])) + 1
    enrol, test = [], []
    for members in np.split(order, bounds):
        a, b = np.triu_indices(len(members), k=1)
        enrol.append(members[a])
        test.append(members[b])
    enrol, test = np.concatenate(enrol), np.concatenate(test)
    keep = _sample(np.arange(len(enrol)), limit, rng)
    return enrol[keep], test[keep]
