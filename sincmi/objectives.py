"""Mutual-information objectives over positive and negative pair logits.

The three estimators of the paper as functions and as the classes a yaml
declares (:class:`BCE`, :class:`MINE`, :class:`InfoNCE`; the contract every
objective keeps is :class:`MIObjective`'s docstring). All are losses to
*minimise*, shared by encoder and discriminator (cooperative training, no
gradient reversal). Inputs:

* ``pos``: ``(B,)`` logits of positive pairs (same sentence);
* ``neg``: ``(B, K)`` logits of negative pairs, row i holding anchor i's;
* ``valid``: optional ``(B, K)`` boolean mask of the negatives to use.

They are written with ``logsigmoid`` and ``logsumexp`` so that logits of any
magnitude give finite values and gradients. A row whose negatives are all
masked out (every other item of the batch is from its own sentence, as a
sequential loader over segments of one recording can produce) has nothing to
contrast: it is left out of every objective, and a batch with no negative at
all gives a loss of 0 (with a zero gradient).
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

def _mask(neg, valid):
    if valid is None:
        return torch.ones_like(neg, dtype=torch.bool)
    if valid.shape != neg.shape:
        raise ValueError(f"mask shape {tuple(valid.shape)} != logits shape {tuple(neg.shape)}")
    return valid


def _rows_with_negatives(pos, neg, valid):
    """``pos``, ``neg`` and ``valid`` restricted to the rows that have a valid negative."""
    rows = valid.any(dim=1)
    if bool(rows.all()):
        return pos, neg, valid
    return pos[rows], neg[rows], valid[rows]


def _zero(pos, neg):
    """A zero loss that still depends on the logits (so backward works)."""
    return (pos.sum() + neg.sum()) * 0.0


def bce_loss(pos, neg, valid=None):
    """Binary cross-entropy (Jensen-Shannon bound).

    ``-[mean log sigmoid(s+) + mean log(1 - sigmoid(s-))]``

    Example
    -------
    >>> round(bce_loss(torch.zeros(2), torch.zeros(2, 1)).item(), 4)  # 2 log 2
    1.3863
    """
    pos, neg, valid = _rows_with_negatives(pos, neg, _mask(neg, valid))
    if pos.numel() == 0:
        return _zero(pos, neg)
    neg_term = F.logsigmoid(-neg)[valid].mean()
    return -(F.logsigmoid(pos).mean() + neg_term)


def mine_loss(pos, neg, valid=None):
    """Donsker-Varadhan bound (MINE), without bias correction.

    ``-[mean s+ - log mean exp(s-)]``, the mean over all valid negatives.

    Example
    -------
    >>> round(mine_loss(torch.ones(2), torch.zeros(2, 3)).item(), 4)
    -1.0
    """
    pos, neg, valid = _rows_with_negatives(pos, neg, _mask(neg, valid))
    if pos.numel() == 0:
        return _zero(pos, neg)
    values = neg[valid]
    log_mean_exp = torch.logsumexp(values, dim=0) - math.log(values.numel())
    return -(pos.mean() - log_mean_exp)


def nce_loss(pos, neg, valid=None):
    """InfoNCE: ``-mean_i[s+_i - log(exp(s+_i) + sum_k exp(s-_ik))]``.

    Example
    -------
    >>> round(nce_loss(torch.zeros(2), torch.zeros(2, 3)).item(), 4)  # log 4
    1.3863
    """
    pos, neg, valid = _rows_with_negatives(pos, neg, _mask(neg, valid))
    if pos.numel() == 0:
        return _zero(pos, neg)
    neg = neg.masked_fill(~valid, float("-inf"))
    logits = torch.cat([pos.unsqueeze(1), neg], dim=1)
    return -(pos - torch.logsumexp(logits, dim=1)).mean()


class MIObjective(nn.Module):
    """A LIM objective (a mutual-information estimator), and the contract the stages rely on.

    A yaml declares one as ``objective: !new:<module>.<Class>``; LIM
    pretraining (:class:`sincmi.brains.LIMBrain`, :func:`sincmi.stages.pretrain`)
    uses nothing else of it than:

    * ``forward(pos, neg, valid=None)`` -> a scalar loss that encoder and
      critic both *minimise* (cooperative: no gradient reversal). ``pos``:
      ``(B,)`` positive logits; ``neg``: ``(B, K)`` negative logits, row i
      holding anchor i's; ``valid``: ``(B, K)`` bool mask of the negatives to
      use, or None for all. It is an ``nn.Module``: its parameters and
      buffers are trained and checkpointed with the critic's;
    * ``name``: a short label (``"nce"``) for logs; the yaml's
      ``objective_name`` (in the run's name and folder) must equal it;
    * ``rows_without_negatives``: a count LIMBrain resets at each stage start
      and reports; ``forward`` adds the rows whose negatives are all masked.

    A subclass sets ``name`` and implements :meth:`loss`, which sees only
    rows with at least one valid negative; ``forward`` does the masking, the
    counting and the batch with no negative at all (a zero loss that keeps
    the graph). See ``docs/new_objective.md`` for adding one from your own
    module.
    """

    name = "objective"

    def __init__(self):
        super().__init__()
        self.rows_without_negatives = 0

    def forward(self, pos, neg, valid=None):
        """The loss of one batch (see the class)."""
        if valid is not None:
            self.rows_without_negatives += int((~valid.any(dim=1)).sum())
        pos, neg, valid = _rows_with_negatives(pos, neg, _mask(neg, valid))
        if pos.numel() == 0:
            return _zero(pos, neg)
        return self.loss(pos, neg, valid)

    def loss(self, pos, neg, valid):
        """The objective on rows that all have a valid negative."""
        raise NotImplementedError


class BCE(MIObjective):
    """Binary cross-entropy between positive and negative pairs (Jensen-Shannon bound): :func:`bce_loss`.

    Example
    -------
    >>> round(BCE()(torch.zeros(2), torch.zeros(2, 1)).item(), 4)
    1.3863
    """

    name = "bce"

    def loss(self, pos, neg, valid):
        return bce_loss(pos, neg, valid)


class InfoNCE(MIObjective):
    """InfoNCE over the valid negatives of each anchor: :func:`nce_loss`.

    Example
    -------
    >>> round(InfoNCE()(torch.zeros(2), torch.zeros(2, 3)).item(), 4)  # log 4
    1.3863
    """

    name = "nce"

    def loss(self, pos, neg, valid):
        return nce_loss(pos, neg, valid)


class MINE(MIObjective):
    """Donsker-Varadhan bound (MINE): :func:`mine_loss`, with MINE's bias correction optional.

    Arguments
    ---------
    ema_decay : float
        If > 0, the gradient of ``log mean exp(s-)`` is divided by a moving
        average of ``mean exp(s-)`` instead of the batch value (Belghazi et
        al. 2018). The value returned is still the plain bound. 0 disables it.

    Example
    -------
    >>> round(MINE()(torch.ones(2), torch.zeros(2, 3)).item(), 4)
    -1.0
    """

    name = "mine"

    def __init__(self, ema_decay=0.0):
        super().__init__()
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"MINE ema_decay must be in [0, 1), got {ema_decay}")
        self.ema_decay = ema_decay
        self.register_buffer("log_ema", torch.tensor(float("nan")))

    def loss(self, pos, neg, valid):
        loss = mine_loss(pos, neg, valid)
        if self.ema_decay <= 0 or not self.training:
            return loss
        values = neg[valid]
        lme = torch.logsumexp(values, dim=0) - math.log(values.numel())
        with torch.no_grad():
            if torch.isnan(self.log_ema):
                self.log_ema.copy_(lme.detach())
            else:  # log of (d * ema + (1 - d) * batch_mean_exp)
                d = self.ema_decay
                stacked = torch.stack([self.log_ema + math.log(d), lme.detach() + math.log(1 - d)])
                self.log_ema.copy_(torch.logsumexp(stacked, dim=0))
        # d/dθ exp(lme - log_ema) = (d/dθ mean exp(s-)) / ema: the corrected
        # gradient. Subtracting its detached value keeps the loss value unchanged.
        corrected = torch.exp(lme - self.log_ema)
        return loss - lme + lme.detach() + corrected - corrected.detach()
