"""Calibration: known values, a hand computation of PAV, the fitted map against the true log-likelihood ratio."""

import itertools
import math

import numpy as np
import pytest
import torch

from sincmi.calibration import (Calibration, act_dcf, bayes_threshold, calibration_trials, cllr,
                                fit_on_training_speakers, min_cllr, pav_llrs, required_trials, score_transform)
from sincmi.plda import COSINE
from sincmi.metrics import min_dcf


def test_cllr_known_values():
    assert cllr([0.0], [0.0]) == pytest.approx(1.0)  # a system that always says "no idea"
    big = 50.0
    assert cllr([big], [-big]) == pytest.approx(0.0, abs=1e-12)
    # By hand: (log2(1 + e^-1) + log2(1 + e^-2)) / 2
    assert cllr([1.0], [-2.0]) == pytest.approx((math.log2(1 + math.exp(-1)) + math.log2(1 + math.exp(-2))) / 2)


def test_pav_llrs_by_hand():
    # Scores 1 < 2 < 3 < 4 with labels n, t, n, t: PAV pools (t, n) into 0.5 -> posteriors 0, .5, .5, 1.
    targets, nontargets = pav_llrs([2.0, 4.0], [1.0, 3.0])
    assert nontargets[0] == -np.inf and targets[1] == np.inf
    assert targets[0] == pytest.approx(0.0) and nontargets[1] == pytest.approx(0.0)  # prior odds 1
    assert min_cllr([2.0, 4.0], [1.0, 3.0]) == pytest.approx(0.5)  # two trials at llr 0 cost 1 bit each


def test_min_cllr_is_the_best_monotonic_map():
    rng = np.random.default_rng(0)
    targets, nontargets = rng.normal(1, 1, 200), rng.normal(-1, 1, 2000)
    best = min_cllr(targets, nontargets)
    for scale, offset in itertools.product((0.5, 1, 2, 4), (-2, -1, 0, 1)):  # no affine map does better
        assert cllr(scale * targets + offset, scale * nontargets + offset) >= best - 1e-9
    assert min_cllr(targets, nontargets) == min_cllr(3 * targets + 5, 3 * nontargets + 5)  # rank only


def test_fit_recovers_the_true_log_likelihood_ratio():
    """Gaussian scores of equal variance: the true llr is affine, ((m1 - m0) / s^2) x - (m1^2 - m0^2) / (2 s^2)."""
    rng = np.random.default_rng(1)
    sigma = 0.5
    targets, nontargets = rng.normal(1.0, sigma, 20000), rng.normal(0.0, sigma, 200000)
    for prior in (0.5, 0.01):
        calibration = Calibration.fit(targets, nontargets, prior)
        assert calibration.scale == pytest.approx(1 / sigma**2, rel=0.03)
        assert calibration.offset == pytest.approx(-1 / (2 * sigma**2), rel=0.05)
    metrics = calibration.metrics(targets, nontargets)
    assert metrics["Cllr"] - metrics["minCllr"] < 0.01
    assert metrics["actDCF_0.01"] <= 1.05 * min_dcf(targets, nontargets)[0]


def test_atanh_fit_recovers_the_true_log_likelihood_ratio_of_cosines():
    """Cosines whose Fisher z is Gaussian (equal variances): the true llr is affine in atanh(cosine), not in the
    cosine; the atanh map recovers it, and calibrates better than a map affine in the cosine."""
    rng = np.random.default_rng(4)
    sigma, same, different = 0.5, 2.0, 0.5  # same-speaker cosines crowd against 1 (tanh(2) = 0.96)
    targets, nontargets = np.tanh(rng.normal(same, sigma, 20000)), np.tanh(rng.normal(different, sigma, 200000))
    for prior in (0.5, 0.01):
        calibration = Calibration.fit(targets, nontargets, prior, transform="atanh")
        assert calibration.scale == pytest.approx((same - different) / sigma**2, rel=0.03)
        assert calibration.offset == pytest.approx(-(same**2 - different**2) / (2 * sigma**2), rel=0.05)
        metrics = calibration.metrics(targets, nontargets)
        affine = Calibration.fit(targets, nontargets, prior).metrics(targets, nontargets)
        assert metrics["Cllr"] - metrics["minCllr"] < 0.005 < 0.02 < affine["Cllr"] - affine["minCllr"]
    # The threshold in score units is the inverse map; a cosine of exactly 1 is finite.
    assert calibration(calibration.score_at(bayes_threshold(0.01))) == pytest.approx(bayes_threshold(0.01))
    assert np.isfinite(calibration(1.0)) and calibration(1.0) > calibration(0.999)


def test_score_transform_by_scorer_and_normalisation():
    assert score_transform(COSINE) == "atanh"
    assert score_transform(COSINE, "as-norm") == score_transform(COSINE, "s-norm") == "identity"
    from sincmi.backend import Backend

    rng = np.random.default_rng(5)
    train, labels = torch.tensor(rng.normal(0, 1, (40, 6))), [f"s{i % 8}" for i in range(40)]
    assert score_transform(Backend("plda", train, labels).scorer) == "identity"  # already a log-likelihood ratio
    with pytest.raises(ValueError, match="unknown"):
        Calibration(1.0, 0.0, transform="log")


def test_act_dcf_by_hand_and_against_min_dcf():
    # p = 0.01: threshold log(99) = 4.595; targets 5 (hit) and 3 (miss), non-targets 6 (false alarm), 0.
    assert act_dcf([5.0, 3.0], [6.0, 0.0], 0.01) == pytest.approx((0.01 * 0.5 + 0.99 * 0.5) / 0.01)
    assert bayes_threshold(0.5) == 0.0
    rng = np.random.default_rng(2)
    targets, nontargets = rng.normal(2, 1, 300), rng.normal(-2, 1, 3000)
    assert act_dcf(targets, nontargets) >= min_dcf(targets, nontargets)[0] - 1e-12


def test_calibration_saves_and_loads():
    calibration = Calibration.fit([1.0, 2.0, 3.0], [0.0, -1.0, 0.5], source="test")
    path = pytest.importorskip("tempfile").mkdtemp() + "/calibration.ckpt"
    calibration.save(path)
    loaded = Calibration.from_file(path)
    assert loaded.as_dict() == calibration.as_dict()
    assert loaded(0.7) == calibration(0.7)
    cosine = Calibration.fit([0.9, 0.8, 0.95], [0.1, -0.2, 0.85], transform="atanh")
    cosine.save(path)
    assert Calibration.from_file(path)(0.7) == cosine(0.7) == cosine.scale * math.atanh(0.7) + cosine.offset
    # A file written before the transform existed is affine in the score.
    with open(path, "w") as f:
        f.write('{"scale": 2.0, "offset": -1.0, "prior": 0.01, "target_trials": 3, "nontarget_trials": 3, '
                '"source": "old"}')
    assert Calibration.from_file(path)(0.7) == pytest.approx(2.0 * 0.7 - 1.0)


def test_calibration_trials_counts():
    speakers = ["a"] * 3 + ["b"] * 2 + ["c"]
    trials = calibration_trials(speakers)
    assert int(trials.label.sum()) == 3 + 1 and len(trials.label) == 15  # every pair
    assert all((speakers[i] == speakers[j]) == label for i, j, label in zip(trials.enrol, trials.test, trials.label))
    capped = calibration_trials(speakers * 50, max_targets=100, max_nontargets=500)
    assert int(capped.label.sum()) == 100 and int((~capped.label).sum()) == 500
    assert required_trials(0.01) == 300


def test_fit_on_training_speakers_holds_the_back_end_out():
    """Each fold's trials are scored after a back end fitted on the other folds only."""
    rng = np.random.default_rng(3)
    centres = rng.normal(0, 1, (20, 8))
    embeddings, speakers = {}, {}
    for s in range(20):
        for u in range(4):
            key = f"s{s}_u{u}"
            embeddings[key] = torch.tensor(centres[s] + 0.5 * rng.normal(0, 1, 8), dtype=torch.float32)
            speakers[key] = f"s{s}"
    raw = fit_on_training_speakers(embeddings, speakers, "none", folds=10)
    assert raw.target_trials == 20 * 6 and raw.nontarget_trials == 80 * 79 // 2 - 120  # one fold: every pair
    assert raw.transform == "atanh"  # cosine scores
    held_out = fit_on_training_speakers(embeddings, speakers, "whiten", folds=10)
    assert held_out.target_trials == 120 and held_out.nontarget_trials == 10 * (8 * 7 // 2 - 12)
    assert "10 folds" in held_out.source and held_out.scale > 0
