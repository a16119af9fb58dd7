"""Operating points: known values, the spec forms, and agreement with the metrics."""

import numpy as np
import pytest

from sincmi.metrics import eer
from sincmi.thresholds import describe, operating_point, parse_spec, score_summary


def rates(targets, nontargets, threshold):
    return float((nontargets > threshold).mean()), float((targets <= threshold).mean())


@pytest.fixture(scope="module")
def scores():
    rng = np.random.default_rng(0)
    return rng.normal(0.7, 0.1, 3000), rng.normal(0.2, 0.15, 20000)


def test_spec_forms():
    assert parse_spec("eer") == ("eer", None) and parse_spec(" EER ") == ("eer", None)
    assert parse_spec("far=0.01") == ("far", 0.01) and parse_spec("frr=0.05") == ("frr", 0.05)
    assert parse_spec("0.62") == ("value", 0.62) and parse_spec(-0.5) == ("value", -0.5)
    for bad in ("far", "far=2", "frr=-0.1", "fa=0.1", "high", "nan", "inf", "far=x"):
        with pytest.raises(ValueError, match="eer"):
            parse_spec(bad)


@pytest.mark.parametrize("max_points", [2000, 100000])
def test_operating_points_deliver_the_rates_they_name(scores, max_points):
    targets, nontargets = scores
    summary = score_summary(targets, nontargets, max_points=max_points)
    assert summary["target_trials"] == 3000 and summary["nontarget_trials"] == 20000
    assert len(summary["thresholds"]) <= max_points
    assert summary["eer"] == pytest.approx(eer(targets, nontargets)[0])
    for rate in (0.001, 0.01, 0.1):
        point = operating_point(summary, f"far={rate}")
        far, frr = rates(targets, nontargets, point.threshold)
        assert far <= rate and (far, frr) == pytest.approx((point.far, point.frr))
        # Within the summary's resolution: at most `gap` distinct scores lie between two kept thresholds.
        gap = int(np.ceil(23000 / (max_points - 1))) if max_points < 23000 else 1
        assert rate - far <= gap / 20000
        point = operating_point(summary, f"frr={rate}")
        far, frr = rates(targets, nontargets, point.threshold)
        assert frr <= rate and (far, frr) == pytest.approx((point.far, point.frr))
    point = operating_point(summary, "eer")
    far, frr = rates(targets, nontargets, point.threshold)
    assert (far + frr) / 2 == pytest.approx(summary["eer"], abs=1e-12)  # the EER point is always kept
    assert operating_point(summary, point.threshold)[2:] == point[2:]   # the same rates, asked by value
    # A numeric threshold: its rates on the trials.
    point = operating_point(summary, 0.45)
    assert point.threshold == 0.45
    assert (point.far, point.frr) == pytest.approx(rates(targets, nontargets, 0.45), abs=1.0 / 1000)


def test_unreachable_rates_and_thresholds_outside_the_scores():
    summary = score_summary([0.9, 0.8], [0.85, 0.1])
    assert operating_point(summary, "far=0").far == 0.0   # the highest threshold accepts nothing
    assert operating_point(summary, "frr=0").frr == 0.0
    assert operating_point(summary, -5.0)[2:] == (1.0, 0.0)   # below every score: all accepted
    assert operating_point(summary, 5.0)[2:] == (0.0, 1.0)    # above every score: all rejected


def test_without_trials_only_a_number_will_do():
    assert operating_point(None, "0.3") == ("0.3", 0.3, None, None)
    with pytest.raises(ValueError, match="needs scored trials"):
        operating_point(None, "far=0.01")
    assert describe(operating_point(None, 0.3)) == "operating point 0.3: threshold 0.3000"
