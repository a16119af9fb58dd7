"""PLDA scoring: the log-likelihood ratio of two embeddings under a two-covariance model.

The model is SpeechBrain's simplified PLDA (:class:`speechbrain.processing.PLDA_LDA.PLDA`):
an embedding is ``x = mean + F h + e``, with a speaker factor ``h ~ N(0, I)``
shared by a speaker's utterances and a residual ``e ~ N(0, Sigma)``. It is
fitted by SpeechBrain's EM; this module keeps only what scoring needs, the
closed form that SpeechBrain's ``fast_PLDA_scoring`` evaluates:

``llr(x, y) = x'Phi x / 2 + y'Phi y / 2 + x'Psi y + offset`` (``x``, ``y`` centred on ``mean``),

for any number of pairs at once, and for an embedding against a whole cohort
(score normalisation), which ``fast_PLDA_scoring``'s trial objects do not offer.
"""

import numpy as np
import torch
import torch.nn.functional as F


class CosineScorer:
    """The cosine of two embeddings: the score of every back end but PLDA.

    Example
    -------
    >>> CosineScorer().pairs(torch.tensor([[3.0, 4.0]]), torch.tensor([[1.0, 0.0]]))
    tensor([0.6000])
    """

    def pairs(self, a, b):
        """``(N,)`` scores of rows ``a[i]`` and ``b[i]``."""
        return (F.normalize(a.float(), dim=1) * F.normalize(b.float(), dim=1)).sum(1)

    def cross(self, a, c):
        """``(N, M)`` scores of every row of ``a`` against every row of ``c``."""
        return F.normalize(a.float(), dim=1) @ F.normalize(c.float(), dim=1).T


COSINE = CosineScorer()


class PLDAScorer:
    """The PLDA log-likelihood ratio of two embeddings (see the module's docstring).

    Arguments: ``mean`` ``(d,)``, ``phi`` and ``psi`` ``(d, d)``, ``offset`` (a
    number), all float64 tensors, as :func:`fit_plda` returns them.
    """

    def __init__(self, mean, phi, psi, offset):
        self.mean, self.phi, self.psi, self.offset = mean, phi, psi, float(offset)

    def own_terms(self, x):
        """The rows centred on the mean, and each row's ``x'Phi x / 2``."""
        x = x.double() - self.mean
        return x, ((x @ self.phi) * x).sum(1) / 2

    def pairs(self, a, b):
        (a, own_a), (b, own_b) = self.own_terms(a), self.own_terms(b)
        return (own_a + own_b + ((a @ self.psi) * b).sum(1) + self.offset).float()

    def cross(self, a, c):
        (a, own_a), (c, own_c) = self.own_terms(a), self.own_terms(c)
        return (own_a[:, None] + own_c[None, :] + a @ self.psi @ c.T + self.offset).float()

    def arrays(self):
        """The scorer as NumPy arrays, named as :meth:`sincmi.backend.Backend.save` stores them."""
        return {"plda_mean": self.mean.numpy(), "plda_phi": self.phi.numpy(), "plda_psi": self.psi.numpy(),
                "plda_offset": np.array(self.offset)}

    @classmethod
    def from_arrays(cls, arrays):
        return cls(*(torch.from_numpy(np.asarray(arrays[key])) for key in ("plda_mean", "plda_phi", "plda_psi")),
                   float(arrays["plda_offset"]))


def fit_plda(embeddings, labels, rank=None, iterations=10):
    """A :class:`PLDAScorer` fitted by SpeechBrain's PLDA on ``embeddings`` ``(N, d)`` with speaker ``labels``.

    ``rank``: the speaker subspace's dimension (default: ``d``, at most the speakers less one).

    Returns
    -------
    scorer : PLDAScorer
    model : tuple
        ``(mean, F, Sigma)`` as SpeechBrain fitted them (NumPy), for checks.
    """
    from speechbrain.processing.PLDA_LDA import PLDA, StatObject_SB

    x = embeddings.double().numpy()
    labels = np.asarray([str(label) for label in labels], dtype=object)
    speakers = len(set(labels))
    if speakers < 2:
        raise ValueError("back end 'plda' needs at least 2 training speakers")
    rank = min(rank or x.shape[1], x.shape[1], speakers - 1)
    empty = np.array([None] * len(x))
    stats = StatObject_SB(modelset=labels, segset=np.array([f"u{i}" for i in range(len(x))], dtype=object),
                          start=empty, stop=empty, stat0=np.ones((len(x), 1)), stat1=x.copy())
    model = PLDA(rank_f=rank, nb_iter=iterations)
    model.plda(stats)
    return scoring_matrices(model.mean, model.F, model.Sigma), (model.mean, model.F, model.Sigma)


def scoring_matrices(mean, factors, residual):
    """The :class:`PLDAScorer` of a PLDA model (``mean``, speaker ``factors`` F, ``residual`` covariance Sigma).

    With ``B = F F'`` (between speakers) and ``T = B + Sigma`` (total), the
    ratio of the two hypotheses' Gaussian densities of ``(x, y)`` is, in log,
    ``Phi = inv(T) - inv(T - B inv(T) B)``, ``Psi = inv(T) B inv(T - B inv(T) B)``
    and the offset from the determinants (as ``fast_PLDA_scoring`` computes them).
    """
    between = factors @ factors.T
    total = between + residual
    total_inv = np.linalg.inv(total)
    conditional_inv = np.linalg.inv(total - between @ total_inv @ between)
    phi = total_inv - conditional_inv
    psi = total_inv @ between @ conditional_inv
    k = factors.T @ np.linalg.inv(residual) @ factors
    eye = np.eye(len(k))
    offset = np.linalg.slogdet(np.linalg.inv(2 * k + eye))[1] / 2 - np.linalg.slogdet(np.linalg.inv(k + eye))[1]
    as_tensor = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))  # noqa: E731
    return PLDAScorer(as_tensor(mean), as_tensor(phi), as_tensor((psi + psi.T) / 2), offset)
