"""Verification back ends: transforms of utterance embeddings learned without labels.

A back end is fitted on the embeddings of the training speakers' utterances
(no labels are used) and applied to every verification embedding before
cosine scoring. The recipes offer the same back ends to every system, LIM
and baselines alike, and name the back end on each result row.

* ``none``: raw embeddings;
* ``center``: the training mean subtracted;
* ``standardize``: the training mean subtracted and each dimension divided
  by its training standard deviation (for MFCC statistics this is the
  standard baseline);
* ``whiten``: the training mean subtracted and the training covariance made
  the identity (PCA whitening), with the covariance shrunk towards its mean
  variance by :data:`WHITEN_SHRINKAGE` so that directions the training set
  barely spans (fewer utterances than dimensions) are not blown up.
"""

import os

import numpy as np
import torch
from speechbrain.utils.checkpoints import mark_as_loader, mark_as_saver, register_checkpoint_hooks

BACKENDS = ("none", "center", "standardize", "whiten")
BACKEND_LABELS = {"none": "", "center": ", centred", "standardize": ", standardised", "whiten": ", whitened"}
WHITEN_SHRINKAGE = 0.1


@register_checkpoint_hooks
class Backend:
    """A fitted back end: ``backend(embeddings)`` maps ``(N, D)`` to ``(N, D)``.

    Example
    -------
    >>> train = torch.tensor([[1.0, 10.0], [3.0, 30.0]])
    >>> Backend("standardize", train)(torch.tensor([[2.0, 40.0]]))
    tensor([[0.0000, 1.4142]])
    """

    def __init__(self, name, training_embeddings=None):
        if name not in BACKENDS:
            raise ValueError(f"verification back end {name!r} is unknown; choose one of {list(BACKENDS)}")
        self.name = name
        self.mean = self.std = self.whitening = None
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

    def __call__(self, embeddings):
        if self.name == "none":
            return embeddings
        out = embeddings.double() - self.mean
        if self.std is not None:
            out = out / self.std
        if self.whitening is not None:
            out = out @ self.whitening
        return out.to(embeddings.dtype)

    @mark_as_saver
    def save(self, path):
        """Writes the fitted statistics to ``path`` (``.npz``: NumPy alone reads it, see :mod:`sincmi.onnx_embed`).

        Arrays: ``name``; ``mean`` (``center``, ``standardize``, ``whiten``),
        ``std`` (``standardize``), ``whitening`` (``whiten``, ``(D, D)``), all
        float64: the transform is ``((x - mean) / std) @ whitening``.
        """
        arrays = {"name": np.array(self.name)}
        for key in ("mean", "std", "whitening"):
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
            for key in ("mean", "std", "whitening"):
                setattr(self, key, torch.from_numpy(arrays[key]) if key in arrays else None)

    def apply(self, embeddings):
        """Applies the back end to a ``{utterance id: embedding}`` dict."""
        if self.name == "none":
            return embeddings
        ids = list(embeddings)
        transformed = self(torch.stack([embeddings[key] for key in ids]))
        return dict(zip(ids, transformed))
