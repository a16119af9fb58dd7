"""Mutual-information objectives over positive and negative pair logits.

All three are losses to *minimise*, shared by encoder and discriminator
(cooperative training, no gradient reversal). Inputs:

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

OBJECTIVES = ("bce", "mine", "nce")


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


class LIMObjective(nn.Module):
    """Selects an objective by name; holds MINE's moving average if enabled.

    Arguments
    ---------
    name : str
        One of ``bce``, ``mine``, ``nce``.
    mine_ema_decay : float
        For ``mine`` only: if > 0, the gradient of ``log mean exp(s-)`` is
        divided by a moving average of ``mean exp(s-)`` instead of the batch
        value (MINE's bias correction, Belghazi et al. 2018). The value
        returned is still the plain bound. 0 disables it.

    Example
    -------
    >>> objective = LIMObjective("nce")
    >>> objective(torch.zeros(2), torch.zeros(2, 3)).shape
    torch.Size([])
    """

    def __init__(self, name="bce", mine_ema_decay=0.0):
        super().__init__()
        if name not in OBJECTIVES:
            raise ValueError(f"objective: unknown name {name!r}; choose one of {list(OBJECTIVES)}")
        if not 0.0 <= mine_ema_decay < 1.0:
            raise ValueError(f"mine_ema_decay must be in [0, 1), got {mine_ema_decay}")
        self.name = name
        self.mine_ema_decay = mine_ema_decay
        self.register_buffer("log_ema", torch.tensor(float("nan")))
        self.rows_without_negatives = 0  # counted since the last reset (see LIMBrain)

    def forward(self, pos, neg, valid=None):
        """Returns the loss for one batch."""
        if valid is not None:
            self.rows_without_negatives += int((~valid.any(dim=1)).sum())
        if self.name == "bce":
            return bce_loss(pos, neg, valid)
        if self.name == "nce":
            return nce_loss(pos, neg, valid)
        loss = mine_loss(pos, neg, valid)
        if self.mine_ema_decay > 0 and self.training and bool(_mask(neg, valid).any()):
            values = neg[_mask(neg, valid)]
            lme = torch.logsumexp(values, dim=0) - math.log(values.numel())
            with torch.no_grad():
                if torch.isnan(self.log_ema):
                    self.log_ema.copy_(lme.detach())
                else:  # log of (d * ema + (1 - d) * batch_mean_exp)
                    d = self.mine_ema_decay
                    stacked = torch.stack([self.log_ema + math.log(d), lme.detach() + math.log(1 - d)])
                    self.log_ema.copy_(torch.logsumexp(stacked, dim=0))
            # d/dθ exp(lme - log_ema) = (d/dθ mean exp(s-)) / ema: the corrected
            # gradient. Subtracting its detached value keeps the loss value unchanged.
            corrected = torch.exp(lme - self.log_ema)
            loss = loss - lme + lme.detach() + corrected - corrected.detach()
        return loss
