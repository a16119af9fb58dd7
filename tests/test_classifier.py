"""Speaker classifiers: softmax and additive angular margin."""

import math

import pytest
import torch
import torch.nn.functional as F

from sincmi.classifier import AAMClassifier, SpeakerClassifier


def test_aam_without_margin_is_scaled_cosine_softmax():
    torch.manual_seed(0)
    clf = AAMClassifier(6, 4, margin=0.0, scale=10.0, input_norm=False)
    emb, labels = torch.randn(5, 6), torch.tensor([0, 1, 2, 3, 0])
    cos = F.normalize(emb, dim=1) @ F.normalize(clf.weight, dim=1).T
    assert torch.allclose(clf.training_loss(emb, labels), F.cross_entropy(10 * cos, labels), atol=1e-5)
    assert torch.allclose(clf(emb), F.log_softmax(10 * cos, dim=1), atol=1e-5)


def test_aam_margin_applies_to_the_true_class_only():
    clf = AAMClassifier(2, 2, margin=0.3, scale=1.0, input_norm=False)
    with torch.no_grad():
        clf.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    emb = torch.tensor([[math.cos(0.5), math.sin(0.5)]])  # 0.5 rad from class 0
    loss = clf.training_loss(emb, torch.tensor([0]))
    logits = torch.tensor([[math.cos(0.8), math.cos(math.pi / 2 - 0.5)]])
    assert loss.item() == pytest.approx(F.cross_entropy(logits, torch.tensor([0])).item(), rel=1e-5)


def test_softmax_classifier_loss_is_nll():
    clf = SpeakerClassifier(4, 3, input_norm=False)
    emb, labels = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    assert torch.allclose(clf.training_loss(emb, labels), F.nll_loss(clf(emb), labels))
