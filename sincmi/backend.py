"""Verification back ends: transforms of utterance embeddings fitted on the training speakers.

A back end is fitted on the embeddings of the training speakers' utterances
and applied to every verification embedding before scoring. The recipes
offer the same back ends to every system, LIM and baselines alike, and name
the back end on each result row. All but ``lda`` and ``plda`` use no labels.

* ``none``: raw embeddings;
* ``center``: the training mean subtracted;
* ``standardize``: the training mean subtracted and each dimension divided
  by its training standard deviation (for MFCC statistics this is the
  standard baseline);
* ``whiten``: the training mean subtracted and the training covariance made
  the identity (PCA whitening), with the covariance shrunk towards its mean
  variance by :data:`WHITEN_SHRINKAGE` so that directions the training set
  barely spans (fewer utterances than dimensions) are not blown up.
* ``lda``: linear discriminant analysis with the training speakers' labels:
  the mean subtracted, then the directions that best separate the speakers
  (at most one fewer than the speakers), scaled to unit within-speaker
  variance; the within-speaker scatter is shrunk as whitening's covariance.
  SpeechBrain's ``PLDA_LDA.LDA`` is not used: it inverts the within-speaker
  scatter, singular whenever the utterances are fewer than the dimensions
  plus the speakers (60 speakers x 4 utterances in 256 dimensions here), and
  takes a symmetric eigendecomposition of a non-symmetric product.
* ``plda``: the field's x-vector back end (as Kaldi's recipes): ``lda``, then
  length normalisation (each embedding scaled to norm ``sqrt(d)``), then
  SpeechBrain's PLDA fitted with the labels; trials are scored by its
  log-likelihood ratio (:mod:`sincmi.plda`) instead of the cosine.

Every back end scores through its ``scorer`` (:class:`sincmi.plda.CosineScorer`
for all but ``plda``).
"""

import os

import numpy as np
import torch
from speechbrain.utils.checkpoints import mark_as_loader, mark_as_saver, register_checkpoint_hooks

from sincmi.plda import COSINE, PLDAScorer, fit_plda

BACKENDS = ("none", "center", "standardize", "whiten", "lda", "plda")
BACKEND_LABELS = {"none": "", "center": ", centred", "standardize": ", standardised", "whiten": ", whitened",
                  "lda": ", LDA", "plda": ", PLDA"}
LABELLED_BACKENDS = ("lda", "plda")
WHITEN_SHRINKAGE = 0.1


@register_checkpoint_hooks
class Backend:
    """A fitted back end: ``backend(embeddings)`` maps ``(N, D)`` to ``(N, D)`` (``lda``, ``plda``: ``(N, d)``);
    ``backend.scorer`` scores the transformed embeddings (``pairs(a, b)``, ``cross(a, cohort)``).

    ``labels``: the speaker of each training embedding, for ``lda`` and ``plda`` only.

    Example
    -------
    >>> train = torch.tensor([[1.0, 10.0], [3.0, 30.0]])
    >>> Backend("standardize", train)(torch.tensor([[2.0, 40.0]]))
    tensor([[0.0000, 1.4142]])
    """

    def __init__(self, name, training_embeddings=None, labels=None):
        if name not in BACKENDS:
            raise ValueError(f"verification back end {name!r} is unknown; choose one of {list(BACKENDS)}")
        self.name = name
        self.mean = self.std = self.whitening = self.projection = None
        self.scorer = COSINE
        if name != "none":
            if training_embeddings is None or len(training_embeddings) < 2:
                raise ValueError(f"back end {name!r} needs the embeddings of at least 2 training utterances")
            train = training_embeddings.double()
            self.mean = train.mean(0)
            if name == "standardize":
                self.std = train.std(0).clamp(min=1e-8)
            if name == "whiten":
                centred = train - self.mean
                cov = centred.T @ centred / len(train)
                cov += WHITEN_SHRINKAGE * cov.diagonal().mean().clamp(min=1e-12) * torch.eye(len(cov), dtype=cov.dtype)
                values, vectors = torch.linalg.eigh(cov)
                self.whitening = vectors @ torch.diag(values.rsqrt()) @ vectors.T
            if name in LABELLED_BACKENDS:
                if labels is None or len(labels) != len(train):
                    raise ValueError(f"back end {name!r} needs the speaker of every training utterance")
                self.projection = lda_projection(train, labels)
            if name == "plda":
                self.scorer = fit_plda(self(train), labels)[0]

    def __call__(self, embeddings):
        if self.name == "none":
            return embeddings
        out = embeddings.double() - self.mean
        if self.std is not None:
            out = out / self.std
        if self.whitening is not None:
            out = out @ self.whitening
        if self.projection is not None:
            out = out @ self.projection
        if self.name == "plda":  # length normalisation, before PLDA as in Kaldi's recipes
            out = out * (out.shape[1] ** 0.5 / out.norm(dim=1, keepdim=True).clamp(min=1e-12))
        return out.to(embeddings.dtype)

    @mark_as_saver
    def save(self, path):
        """Writes the fitted statistics to ``path`` (``.npz``: NumPy alone reads it, see :mod:`sincmi.onnx_embed`).

        Arrays: ``name``; ``mean`` (every back end but ``none``), ``std``
        (``standardize``), ``whitening`` (``whiten``, ``(D, D)``), ``projection``
        (``lda``, ``plda``: ``(D, d)``), all float64: the transform is
        ``((x - mean) / std) @ whitening @ projection``, each part when present,
        then for ``plda`` the length normalisation to ``sqrt(d)`` and the
        scorer's ``plda_mean``, ``plda_phi``, ``plda_psi``, ``plda_offset``
        (:class:`sincmi.plda.PLDAScorer`).
        """
        arrays = {"name": np.array(self.name)}
        if isinstance(self.scorer, PLDAScorer):
            arrays.update(self.scorer.arrays())
        for key in ("mean", "std", "whitening", "projection"):
            value = getattr(self, key)
            if value is not None:
                arrays[key] = value.numpy()
        tmp = path + ".tmp.npz"
        np.savez(tmp, **arrays)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path):
        """The back end saved by :meth:`save`.

        Example
        -------
        >>> import tempfile
        >>> train = torch.randn(20, 3)
        >>> fitted = Backend("whiten", train)
        >>> path = os.path.join(tempfile.mkdtemp(), "backend.npz")
        >>> fitted.save(path)
        >>> x = torch.randn(4, 3)
        >>> torch.equal(Backend.load(path)(x), fitted(x))
        True
        """
        backend = cls("none")
        backend.recover(path)
        return backend

    @mark_as_loader
    def recover(self, path, end_of_epoch=False):
        """Reads a saved back end into this object (a SpeechBrain ``Pretrainer`` loadable)."""
        with np.load(path) as arrays:  # allow_pickle=False: arrays only, never code
            if "name" not in arrays:
                raise ValueError(f"{path} is not a saved back end (no 'name' array): export the model again")
            name = str(arrays["name"])
            if name not in BACKENDS:
                raise ValueError(f"{path}: unknown back end {name!r}")
            self.name = name
            for key in ("mean", "std", "whitening", "projection"):
                setattr(self, key, torch.from_numpy(arrays[key]) if key in arrays else None)
            self.scorer = PLDAScorer.from_arrays(arrays) if name == "plda" else COSINE

    def apply(self, embeddings):
        """Applies the back end to a ``{utterance id: embedding}`` dict."""
        if self.name == "none":
            return embeddings
        ids = list(embeddings)
        transformed = self(torch.stack([embeddings[key] for key in ids]))
        return dict(zip(ids, transformed))


def lda_projection(train, labels, shrinkage=WHITEN_SHRINKAGE):
    """The ``(D, d)`` LDA projection of ``train`` ``(N, D)`` with speaker ``labels``, ``d`` = speakers - 1 at most.

    Solves ``Sb v = lambda Sw v`` (between- and within-speaker scatter, Sw shrunk towards its mean
    variance by ``shrinkage``, as whitening's covariance is) and keeps the directions with a positive
    ratio, largest first, scaled so that ``v' Sw v = 1``.

    Example
    -------
    >>> x = torch.tensor([[0.0, 0.0], [0.0, 2.0], [1.0, 0.0], [1.0, 2.0]], dtype=torch.float64)
    >>> w = lda_projection(x, ["a", "a", "b", "b"])  # the speakers differ along the first axis alone
    >>> w.shape, bool(abs(w[1, 0]) < 1e-9)
    (torch.Size([2, 1]), True)
    """
    from scipy.linalg import eigh

    x = train.double().numpy()
    _, index = np.unique(np.asarray(labels), return_inverse=True)
    speakers = index.max() + 1
    if speakers < 2:
        raise ValueError("back end 'lda' needs at least 2 training speakers")
    mean = x.mean(0)
    within = np.zeros((x.shape[1], x.shape[1]))
    between = np.zeros_like(within)
    for k in range(speakers):
        members = x[index == k]
        centred = members - members.mean(0)
        within += centred.T @ centred
        between += len(members) * np.outer(members.mean(0) - mean, members.mean(0) - mean)
    within /= len(x)
    between /= len(x)
    within += shrinkage * max(within.diagonal().mean(), 1e-12) * np.eye(len(within))
    values, vectors = eigh(between, within)  # ascending; vectors' Sw-norm is 1
    keep = np.flatnonzero(values > 1e-10 * max(values.max(), 1e-30))[::-1][: speakers - 1]
    return torch.from_numpy(np.ascontiguousarray(vectors[:, keep]))

