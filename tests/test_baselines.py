"""The MFCC-statistics baseline and the verification back ends."""

import numpy as np
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
        Backend("ivector")
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


def plda_data(speakers=12, per_speaker=6, dim=5, seed=2):
    """Embeddings drawn from a two-covariance model: speaker offsets plus utterance noise."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(speakers, dim)) * 2.0
    x = np.repeat(centres, per_speaker, axis=0) + rng.normal(size=(speakers * per_speaker, dim))
    return torch.from_numpy(x), [k // per_speaker for k in range(speakers * per_speaker)]


def test_plda_scores_are_the_two_covariance_log_likelihood_ratio_by_hand():
    """The scorer's closed form against the ratio of the two hypotheses' Gaussian densities of (x, y),
    computed directly with the model SpeechBrain's PLDA fitted (mean, F, Sigma)."""
    from scipy.stats import multivariate_normal

    from sincmi.plda import fit_plda

    x, labels = plda_data()
    scorer, (mean, factors, residual) = fit_plda(x, labels)
    between = factors @ factors.T
    total = between + residual
    same = np.block([[total, between], [between, total]])
    a, b = torch.randn(3, x.shape[1], dtype=torch.float64), torch.randn(3, x.shape[1], dtype=torch.float64) + 1
    by_hand = [multivariate_normal(np.concatenate([mean, mean]), same).logpdf(np.concatenate([u, v]))
               - multivariate_normal(mean, total).logpdf(u) - multivariate_normal(mean, total).logpdf(v)
               for u, v in zip(a.numpy(), b.numpy())]
    assert np.allclose(scorer.pairs(a, b).numpy(), by_hand, atol=1e-4)
    assert torch.allclose(scorer.cross(a, b).diagonal(), scorer.pairs(a, b))
    assert torch.allclose(scorer.cross(a, b), scorer.cross(b, a).T, atol=1e-5)  # symmetric in the two sides


def test_plda_scores_equal_speechbrains_fast_plda_scoring():
    from speechbrain.processing.PLDA_LDA import Ndx, StatObject_SB, fast_PLDA_scoring

    from sincmi.plda import fit_plda

    x, labels = plda_data()
    scorer, (mean, factors, residual) = fit_plda(x, labels)
    enrol, test = torch.randn(4, x.shape[1], dtype=torch.float64), torch.randn(5, x.shape[1], dtype=torch.float64)

    def stat(rows, prefix):
        ids = np.array([f"{prefix}{i}" for i in range(len(rows))], dtype=object)
        none = np.array([None] * len(rows))
        return StatObject_SB(modelset=ids, segset=ids, start=none, stop=none, stat0=np.ones((len(rows), 1)),
                             stat1=rows.numpy().copy())

    enrol_stat, test_stat = stat(enrol, "e"), stat(test, "t")
    reference = fast_PLDA_scoring(enrol_stat, test_stat, Ndx(models=enrol_stat.modelset, testsegs=test_stat.segset),
                                  mean, factors, residual).scoremat
    assert np.allclose(scorer.cross(enrol, test).numpy(), reference, atol=1e-4)


def test_plda_back_end_is_lda_then_length_norm_then_plda_and_round_trips(tmp_path):
    x, labels = plda_data(dim=8)
    fitted = Backend("plda", x, labels)
    lda = Backend("lda", x, labels)
    out = fitted(x)
    d = lda(x).shape[1]
    assert out.shape == (len(x), d) and torch.allclose(out.norm(dim=1), torch.full((len(x),), d ** 0.5, dtype=torch.float64))
    assert torch.allclose(out, lda(x) / lda(x).norm(dim=1, keepdim=True) * d ** 0.5)
    same = fitted.scorer.pairs(out[:6:2], out[1:6:2])  # speaker 0's utterances
    different = fitted.scorer.pairs(out[:30:6], out[6:36:6])  # speakers 0-4 against 1-5
    assert same.min() > different.max()  # well separated speakers: every target LLR above every non-target
    fitted.save(str(tmp_path / "backend.ckpt"))
    loaded = Backend.load(str(tmp_path / "backend.ckpt"))
    probe = torch.randn(4, 8, dtype=torch.float64)
    assert loaded.name == "plda" and torch.equal(loaded(probe), fitted(probe))
    assert torch.equal(loaded.scorer.pairs(loaded(probe[:2]), loaded(probe[2:])),
                       fitted.scorer.pairs(fitted(probe[:2]), fitted(probe[2:])))
    with pytest.raises(ValueError, match="needs the speaker of every training utterance"):
        Backend("plda", x)
