"""The MFCC-statistics baseline and the verification back ends."""

import pytest
import torch

from sincmi.backend import Backend
from sincmi.baselines import MFCCStatistics


def test_mfcc_statistics_are_the_mean_and_std_of_40_mfccs():
    torch.manual_seed(0)
    model = MFCCStatistics()
    wav = torch.randn(1, 16000)
    feats = model.mfcc(wav)[0]
    assert feats.shape[1] == 40
    expected = torch.cat([feats.mean(0), feats.std(0)])
    assert torch.allclose(model.embed_utterances(wav)[0], expected, atol=1e-5)
    assert torch.allclose(model(wav)[0], expected, atol=1e-5)


def test_padding_does_not_change_an_utterances_statistics():
    torch.manual_seed(0)
    model = MFCCStatistics()
    short, long = torch.randn(8000), torch.randn(16000)
    batch = torch.stack([torch.nn.functional.pad(short, (0, 8000)), long])
    lens = torch.tensor([0.5, 1.0])
    together = model.embed_utterances(batch, lens)
    alone = model.embed_utterances(short.unsqueeze(0))[0]
    # The padded copy sees a frame or two more at its edge; statistics agree closely.
    assert float((together[0] - alone).norm() / alone.norm()) < 0.01
    assert torch.allclose(together[1], model.embed_utterances(long.unsqueeze(0))[0], atol=1e-5)


def test_standardize_uses_training_statistics_only():
    train = torch.tensor([[0.0, 100.0], [2.0, 300.0], [4.0, 200.0]])
    backend = Backend("standardize", train)
    out = backend(torch.tensor([[2.0, 200.0], [6.0, 400.0]]))
    assert torch.allclose(out, torch.tensor([[0.0, 0.0], [2.0, 2.0]]))
    centred = Backend("center", train)(torch.tensor([[2.0, 200.0]]))
    assert torch.allclose(centred, torch.zeros(1, 2))
    assert Backend("none")(train) is train


def test_unknown_or_unfitted_backend_is_explained():
    with pytest.raises(ValueError, match="unknown; choose one of"):
        Backend("plda")
    with pytest.raises(ValueError, match="needs the embeddings of at least 2 training utterances"):
        Backend("standardize")


def test_whiten_makes_the_training_covariance_the_identity():
    torch.manual_seed(0)
    train = torch.randn(500, 4) @ torch.tensor([[3.0, 1, 0, 0], [0, 1, 0, 0], [0, 0, 0.1, 0], [0, 0, 0, 2]])
    from sincmi import backend as backends

    out = Backend("whiten", train)(train).double()
    cov = out.T @ out / len(out)
    # Without shrinkage the covariance would be the identity; with it every
    # eigenvalue v becomes v / (v + s * mean variance).
    train_cov = torch.cov(train.T.double(), correction=0)
    values = torch.linalg.eigvalsh(train_cov)
    shrunk = values / (values + backends.WHITEN_SHRINKAGE * train_cov.diagonal().mean())
    assert torch.allclose(torch.linalg.eigvalsh(cov), shrunk, atol=1e-4)
    assert out.mean(0).abs().max() < 1e-5


def test_lda_is_fishers_discriminant_against_a_hand_computation():
    """Two speakers: the one LDA direction is Fisher's, w ~ Sw^-1 (m1 - m0), with Sw shrunk as documented,
    scaled to unit within-speaker variance (w' Sw w = 1)."""
    from sincmi import backend as backends

    torch.manual_seed(1)
    mix = torch.tensor([[1.0, 0.5, 0.0], [0.0, 1.0, 0.3], [0.0, 0.0, 0.2]], dtype=torch.float64)
    spk0 = torch.randn(40, 3, dtype=torch.float64) @ mix
    spk1 = torch.randn(60, 3, dtype=torch.float64) @ mix + torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    train, labels = torch.cat([spk0, spk1]), ["a"] * 40 + ["b"] * 60
    fitted = Backend("lda", train, labels)
    assert fitted.projection.shape == (3, 1)
    # By hand: within-speaker scatter (per utterance), shrunk; Fisher's direction.
    within = ((spk0 - spk0.mean(0)).T @ (spk0 - spk0.mean(0)) + (spk1 - spk1.mean(0)).T @ (spk1 - spk1.mean(0))) / 100
    within += backends.WHITEN_SHRINKAGE * within.diagonal().mean() * torch.eye(3, dtype=torch.float64)
    fisher = torch.linalg.solve(within, spk1.mean(0) - spk0.mean(0))
    fisher = fisher / torch.sqrt(fisher @ within @ fisher)  # unit within-speaker variance
    w = fitted.projection[:, 0]
    assert torch.allclose(w * torch.sign(w @ fisher), fisher, atol=1e-8)
    out = fitted(train)
    assert out.shape == (100, 1) and abs(float(out.mean())) < 1e-9  # centred on the training mean
    with pytest.raises(ValueError, match="needs the speaker of every training utterance"):
        Backend("lda", train)


def test_lda_back_end_saves_and_loads(tmp_path):
    train = torch.randn(30, 5, dtype=torch.float64)
    fitted = Backend("lda", train, [i % 3 for i in range(30)])
    fitted.save(str(tmp_path / "backend.ckpt"))
    loaded = Backend.load(str(tmp_path / "backend.ckpt"))
    x = torch.randn(4, 5, dtype=torch.float64)
    assert loaded.name == "lda" and loaded(x).shape == (4, 2) and torch.equal(loaded(x), fitted(x))
