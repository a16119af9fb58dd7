"""The MI objectives against values computed by hand."""

import math

import pytest
import torch

from sincmi.config import check_objective
from sincmi.objectives import BCE, MINE, InfoNCE, MIObjective, bce_loss, mine_loss, nce_loss

CLASSES = {"bce": BCE, "mine": MINE, "nce": InfoNCE}


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


POS = [2.0, -1.0]
NEG = [[0.5, -3.0], [1.0, 0.0]]


def test_bce_by_hand():
    expected = -(
        sum(math.log(sigmoid(p)) for p in POS) / 2
        + sum(math.log(1 - sigmoid(n)) for row in NEG for n in row) / 4
    )
    assert bce_loss(torch.tensor(POS), torch.tensor(NEG)).item() == pytest.approx(expected, rel=1e-6)


def test_mine_by_hand():
    expected = -(sum(POS) / 2 - math.log(sum(math.exp(n) for row in NEG for n in row) / 4))
    assert mine_loss(torch.tensor(POS), torch.tensor(NEG)).item() == pytest.approx(expected, rel=1e-6)


def test_nce_by_hand():
    terms = [p - math.log(math.exp(p) + sum(math.exp(n) for n in row)) for p, row in zip(POS, NEG)]
    expected = -sum(terms) / 2
    assert nce_loss(torch.tensor(POS), torch.tensor(NEG)).item() == pytest.approx(expected, rel=1e-6)


def test_nce_uniform_logits_is_log_of_candidates():
    # With K negatives and all logits equal, InfoNCE is log(K + 1).
    loss = nce_loss(torch.zeros(4), torch.zeros(4, 7))
    assert loss.item() == pytest.approx(math.log(8), rel=1e-6)


@pytest.mark.parametrize("fn", [bce_loss, mine_loss, nce_loss])
def test_extreme_logits_stay_finite(fn):
    pos = torch.tensor([1e4, -1e4, 80.0], requires_grad=True)
    neg = torch.tensor([[1e4, -1e4], [-1e4, 1e4], [90.0, -90.0]], requires_grad=True)
    loss = fn(pos, neg)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(pos.grad).all() and torch.isfinite(neg.grad).all()


def test_extreme_values_by_hand():
    # Perfect separation by a huge margin: BCE and NCE are ~0, not NaN.
    pos, neg = torch.full((2,), 1e4), torch.full((2, 3), -1e4)
    assert bce_loss(pos, neg).item() == pytest.approx(0.0, abs=1e-6)
    assert nce_loss(pos, neg).item() == pytest.approx(0.0, abs=1e-6)
    # DV: -(1e4 - (-1e4)) = -2e4 exactly, computed without overflow.
    assert mine_loss(pos, neg).item() == pytest.approx(-2e4, rel=1e-6)


@pytest.mark.parametrize("fn", [bce_loss, mine_loss, nce_loss])
def test_mask_drops_negatives(fn):
    pos = torch.tensor([0.3, -0.2])
    neg = torch.tensor([[1.0, 50.0], [-2.0, 0.5]])
    valid = torch.tensor([[True, False], [True, True]])
    masked = fn(pos, neg, valid)
    # Same value as computing without the masked entry.
    if fn is nce_loss:
        expected = (nce_loss(pos[:1], neg[:1, :1]) + nce_loss(pos[1:], neg[1:])) / 2
    else:
        expected = fn(pos, torch.tensor([[1.0, -2.0, 0.5]]).expand(2, 3)[:1].reshape(1, 3).expand(2, 3))
    assert masked.item() == pytest.approx(expected.item(), rel=1e-6)


def test_objectives_decrease_when_positives_rise():
    neg = torch.zeros(3, 4)
    for fn in (bce_loss, mine_loss, nce_loss):
        assert fn(torch.full((3,), 2.0), neg) < fn(torch.zeros(3), neg)


@pytest.mark.parametrize("name, function", [("bce", bce_loss), ("mine", mine_loss), ("nce", nce_loss)])
def test_each_class_is_its_function_with_the_contract(name, function):
    torch.manual_seed(1)
    pos, neg = torch.randn(4), torch.randn(4, 3)
    objective = CLASSES[name]()
    assert isinstance(objective, MIObjective) and objective.name == name
    assert objective(pos, neg).item() == pytest.approx(function(pos, neg).item(), abs=1e-6)
    check_objective(objective, name)


def test_an_objective_that_breaks_the_contract_or_its_name_is_refused():
    with pytest.raises(ValueError, match="objective_name='bce' names the run, but the yaml's objective is InfoNCE"):
        check_objective(InfoNCE(), "bce")
    with pytest.raises(ValueError, match="does not keep the contract of sincmi.objectives.MIObjective"):
        check_objective(torch.nn.Identity(), None)
    with pytest.raises(ValueError, match="ema_decay must be in"):
        MINE(ema_decay=1.0)


def test_mine_moving_average_keeps_value_and_rescales_gradient():
    objective = MINE(ema_decay=0.9)
    pos = torch.tensor([1.0, 2.0])
    first = torch.tensor([[0.0, 1.0], [2.0, 0.5]])
    objective(pos, first)  # initialises the average with this batch's mean exp
    ema = torch.exp(first).mean()
    neg = torch.tensor([[0.3, -0.2], [1.5, 0.1]], requires_grad=True)
    loss = objective(pos, neg)
    assert loss.item() == pytest.approx(mine_loss(pos, neg).item(), rel=1e-6)
    loss.backward()
    batch = torch.exp(neg.detach()).mean()
    new_ema = 0.9 * ema + 0.1 * batch
    # d loss / d s-_k = exp(s-_k) / (n * ema)  (bias-corrected gradient)
    expected = torch.exp(neg.detach()) / (4 * new_ema)
    assert torch.allclose(neg.grad, expected, rtol=1e-5)


@pytest.mark.parametrize("name", ["bce", "mine", "nce"])
def test_rows_without_negatives_are_left_out_and_counted(name):
    # Row 1's negatives are all masked (every other item is from its sentence):
    # the loss is that of the other rows alone, finite, and the row is counted.
    torch.manual_seed(0)
    pos, neg = torch.randn(3, requires_grad=True), torch.randn(3, 2, requires_grad=True)
    valid = torch.tensor([[True, True], [False, False], [True, False]])
    objective = CLASSES[name]()
    loss = objective(pos, neg, valid)
    rows = torch.tensor([0, 2])
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(CLASSES[name]()(pos[rows], neg[rows], valid[rows]).item(), abs=1e-6)
    assert objective.rows_without_negatives == 1
    loss.backward()
    assert torch.isfinite(pos.grad).all() and pos.grad[1] == 0


@pytest.mark.parametrize("name", ["bce", "mine", "nce"])
def test_a_batch_without_any_negative_gives_zero_loss(name):
    pos, neg = torch.randn(2, requires_grad=True), torch.randn(2, 1, requires_grad=True)
    objective = MINE(ema_decay=0.9) if name == "mine" else CLASSES[name]()
    loss = objective(pos, neg, torch.zeros(2, 1, dtype=torch.bool))
    assert loss.item() == 0.0
    loss.backward()
    assert (pos.grad == 0).all() and (neg.grad == 0).all()
