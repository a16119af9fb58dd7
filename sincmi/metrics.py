"""Speaker-recognition metrics: sentence-level error rate, EER and minDCF.

EER and minDCF are computed by sorting the scores once (O(n log n) time,
O(n) memory), not by sweeping thresholds. They follow the conventions of
``speechbrain.utils.metric_stats.EER`` / ``minDCF``: a trial is accepted when
its score is strictly above the threshold, the candidate thresholds are the
observed scores, and the EER is ``(FAR + FRR) / 2`` at the threshold where
``|FAR - FRR|`` is smallest (the lowest such threshold on ties).
"""

import numpy as np
import torch


def _as_numpy(x):
    """1-D float array, keeping float32/float64 as given (comparisons stay exact)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x).ravel()
    return x if x.dtype in (np.float32, np.float64) else x.astype(np.float64)


def error_curves(positive_scores, negative_scores):
    """False rejection and false acceptance rates at every distinct score.

    One sort of all scores plus a binary search into the sorted target
    scores: O(n log n) time, O(n) memory.

    Arguments
    ---------
    positive_scores, negative_scores : array-like
        Scores of target and non-target trials (higher = more likely target).

    Returns
    -------
    thresholds : np.ndarray
        The distinct scores, ascending.
    frr : np.ndarray
        Fraction of target scores ``<= threshold`` (rejected).
    far : np.ndarray
        Fraction of non-target scores ``> threshold`` (accepted).
    """
    pos = _as_numpy(positive_scores)
    neg = _as_numpy(negative_scores)
    if pos.size == 0 or neg.size == 0:
        raise ValueError(
            f"need target and non-target trials, got {pos.size} and {neg.size}"
        )
    if not (np.isfinite(pos).all() and np.isfinite(neg).all()):
        raise ValueError("scores contain NaN or infinite values")
    dtype = np.result_type(pos.dtype, neg.dtype)
    scores = np.sort(np.concatenate([pos, neg]).astype(dtype, copy=False))
    # Last index of each run of equal scores: the counts there are "<= threshold".
    last = np.flatnonzero(np.append(scores[1:] != scores[:-1], True))
    thresholds = scores[last]
    pos_le = np.searchsorted(np.sort(pos.astype(dtype, copy=False)), thresholds, side="right")
    neg_le = (last + 1) - pos_le
    frr = pos_le / pos.size
    far = (neg.size - neg_le) / neg.size
    return thresholds, frr, far


def eer_from_curves(thresholds, frr, far):
    """``(EER, threshold)`` from :func:`error_curves`' output (for callers that need the curves too)."""
    index = int(np.argmin(np.abs(far - frr)))
    return float((far[index] + frr[index]) / 2), float(thresholds[index])


def _min_dcf_from_curves(thresholds, frr, far, p_target, c_miss, c_fa, normalize):
    cost = c_miss * frr * p_target + c_fa * far * (1 - p_target)
    index = int(np.argmin(cost))
    value = cost[index]
    if normalize:
        value = value / min(c_miss * p_target, c_fa * (1 - p_target))
    return float(value), float(thresholds[index])


def eer(positive_scores, negative_scores):
    """Equal error rate and its threshold.

    Example
    -------
    >>> eer([0.6, 0.7, 0.8, 0.5], [0.4, 0.3, 0.2, 0.1])[0]
    0.0
    >>> eer([0.2, 0.9], [0.1, 0.5])[0]  # one target below one non-target
    0.5
    """
    return eer_from_curves(*error_curves(positive_scores, negative_scores))


def min_dcf(positive_scores, negative_scores, p_target=0.01, c_miss=1.0, c_fa=1.0, normalize=True):
    """Minimum detection cost and its threshold.

    ``C_det = c_miss * P_miss * p_target + c_fa * P_fa * (1 - p_target)``,
    minimised over thresholds. With ``normalize`` (the NIST and Kaldi
    convention, and what results tables report) it is divided by
    ``min(c_miss * p_target, c_fa * (1 - p_target))``, the cost of a system
    that always accepts or always rejects; ``normalize=False`` gives the raw
    value that ``speechbrain.utils.metric_stats.minDCF`` returns.

    Example
    -------
    >>> min_dcf([0.6, 0.7], [0.4, 0.3])[0]
    0.0
    """
    curves = error_curves(positive_scores, negative_scores)
    return _min_dcf_from_curves(*curves, p_target, c_miss, c_fa, normalize)


def sentence_predictions(chunk_log_posteriors, owner, num_sentences):
    """Sentence decisions from chunk log-posteriors, as in SincNet.

    Sums the log-posteriors of all chunks of each sentence and takes the
    arg-max.

    Arguments
    ---------
    chunk_log_posteriors : torch.Tensor
        ``(num_chunks, num_classes)``.
    owner : torch.LongTensor
        ``(num_chunks,)`` sentence index of each chunk.
    num_sentences : int
        Number of sentences.

    Example
    -------
    >>> lp = torch.log(torch.tensor([[0.6, 0.4], [0.1, 0.9], [0.8, 0.2]]))
    >>> sentence_predictions(lp, torch.tensor([0, 0, 1]), 2).tolist()
    [1, 0]
    """
    totals = torch.zeros(
        num_sentences, chunk_log_posteriors.shape[1],
        dtype=chunk_log_posteriors.dtype, device=chunk_log_posteriors.device,
    )
    totals.index_add_(0, owner, chunk_log_posteriors)
    return totals.argmax(dim=1)


class SpeakerIdErrorStats:
    """Accumulates chunk- and sentence-level classification errors.

    Example
    -------
    >>> stats = SpeakerIdErrorStats()
    >>> lp = torch.log(torch.tensor([[0.6, 0.4], [0.1, 0.9], [0.8, 0.2]]))
    >>> stats.append(lp, torch.tensor([0, 0, 1]), torch.tensor([1, 1]))
    >>> stats.summarize()["sentence_error"], stats.summarize()["chunk_error"]
    (0.5, 0.6666666666666666)
    >>> round(stats.summarize()["loss"], 4)  # mean chunk NLL: -(log .4 + log .9 + log .2) / 3
    0.877
    """

    def __init__(self):
        self.sentence_errors = 0
        self.sentences = 0
        self.chunk_errors = 0
        self.chunks = 0
        self.nll_sum = 0.0

    def append(self, chunk_log_posteriors, owner, labels):
        """Adds a batch: chunk log-posteriors, chunk owners, sentence labels."""
        labels = labels.to(chunk_log_posteriors.device)
        predicted = sentence_predictions(chunk_log_posteriors, owner, labels.shape[0])
        self.sentence_errors += int((predicted != labels).sum())
        self.sentences += int(labels.shape[0])
        chunk_predicted = chunk_log_posteriors.argmax(dim=1)
        self.chunk_errors += int((chunk_predicted != labels[owner]).sum())
        self.chunks += int(owner.shape[0])
        self.nll_sum -= float(chunk_log_posteriors.gather(1, labels[owner].unsqueeze(1)).double().sum())

    def reduce_across_processes(self, device="cpu"):
        """Sums the counts of every process (DDP); a no-op in a single process."""
        if not torch.distributed.is_available() or not torch.distributed.is_initialized():
            return
        fields = ("sentence_errors", "sentences", "chunk_errors", "chunks", "nll_sum")
        totals = torch.tensor([float(getattr(self, f)) for f in fields], dtype=torch.float64, device=device)
        torch.distributed.all_reduce(totals)
        for field, value in zip(fields, totals.tolist()):
            setattr(self, field, value if field == "nll_sum" else int(round(value)))

    def summarize(self):
        """Returns the error rates (fractions), the mean chunk NLL (``loss``) and counts."""
        return {
            "sentence_error": self.sentence_errors / max(self.sentences, 1),
            "chunk_error": self.chunk_errors / max(self.chunks, 1),
            "loss": self.nll_sum / max(self.chunks, 1),
            "sentences": self.sentences,
            "chunks": self.chunks,
        }


def verification_metrics(positive_scores, negative_scores, p_targets=(0.01, 0.05)):
    """EER and normalised minDCF at each ``p_target`` (C_miss = C_fa = 1), in a dict.

    The scores are sorted once for all the metrics.
    """
    curves = error_curves(positive_scores, negative_scores)
    value, threshold = eer_from_curves(*curves)
    results = {"EER": value, "EER_threshold": threshold}
    for p_target in p_targets:
        results[f"minDCF_{p_target:g}"] = _min_dcf_from_curves(*curves, p_target, 1.0, 1.0, True)[0]
    results["target_trials"] = int(len(positive_scores))
    results["nontarget_trials"] = int(len(negative_scores))
    return results
