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
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def error_curves(positive_scores, negative_scores):
    """False rejection and false acceptance rates at every distinct score.

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
    pos = _as_numpy(positive_scores).ravel()
    neg = _as_numpy(negative_scores).ravel()
    if pos.size == 0 or neg.size == 0:
        raise ValueError(
            f"need target and non-target trials, got {pos.size} and {neg.size}"
        )
    if not (np.isfinite(pos).all() and np.isfinite(neg).all()):
        raise ValueError("scores contain NaN or infinite values")
    scores = np.concatenate([pos, neg])
    is_target = np.concatenate([np.ones(pos.size, bool), np.zeros(neg.size, bool)])
    order = np.argsort(scores, kind="stable")
    scores, is_target = scores[order], is_target[order]
    # Last index of each run of equal scores: counts there are "<= threshold".
    last = np.flatnonzero(np.append(scores[1:] != scores[:-1], True))
    pos_le = np.cumsum(is_target)[last]
    neg_le = (last + 1) - pos_le
    frr = pos_le / pos.size
    far = (neg.size - neg_le) / neg.size
    return scores[last], frr, far


def eer(positive_scores, negative_scores):
    """Equal error rate and its threshold.

    Example
    -------
    >>> eer([0.6, 0.7, 0.8, 0.5], [0.4, 0.3, 0.2, 0.1])[0]
    0.0
    >>> eer([0.2, 0.9], [0.1, 0.5])[0]  # one target below one non-target
    0.5
    """
    thresholds, frr, far = error_curves(positive_scores, negative_scores)
    index = int(np.argmin(np.abs(far - frr)))
    return float((far[index] + frr[index]) / 2), float(thresholds[index])


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
    thresholds, frr, far = error_curves(positive_scores, negative_scores)
    cost = c_miss * frr * p_target + c_fa * far * (1 - p_target)
    index = int(np.argmin(cost))
    value = cost[index]
    if normalize:
        value = value / min(c_miss * p_target, c_fa * (1 - p_target))
    return float(value), float(thresholds[index])


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
    >>> stats.summarize()
    {'sentence_error': 0.5, 'chunk_error': 0.6666666666666666, 'sentences': 2, 'chunks': 3}
    """

    def __init__(self):
        self.sentence_errors = 0
        self.sentences = 0
        self.chunk_errors = 0
        self.chunks = 0

    def append(self, chunk_log_posteriors, owner, labels):
        """Adds a batch: chunk log-posteriors, chunk owners, sentence labels."""
        labels = labels.to(chunk_log_posteriors.device)
        predicted = sentence_predictions(chunk_log_posteriors, owner, labels.shape[0])
        self.sentence_errors += int((predicted != labels).sum())
        self.sentences += int(labels.shape[0])
        chunk_predicted = chunk_log_posteriors.argmax(dim=1)
        self.chunk_errors += int((chunk_predicted != labels[owner]).sum())
        self.chunks += int(owner.shape[0])

    def summarize(self):
        """Returns the error rates (fractions) and counts."""
        return {
            "sentence_error": self.sentence_errors / max(self.sentences, 1),
            "chunk_error": self.chunk_errors / max(self.chunks, 1),
            "sentences": self.sentences,
            "chunks": self.chunks,
        }


def read_trials(path):
    """Reads a trial list in the VoxCeleb format ``label enrol test`` (label 0/1).

    Returns a list of ``(label, enrol, test)``; a malformed line raises
    ``ValueError`` naming the file and line number.
    """
    trials = []
    with open(path) as f:
        for number, line in enumerate(f, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 3 or fields[0] not in ("0", "1"):
                raise ValueError(
                    f"{path}:{number}: expected 'label enrol test' with label 0 or 1, got {line.strip()!r}"
                )
            trials.append((int(fields[0]), fields[1], fields[2]))
    return trials


def cosine_trial_scores(embeddings, trials):
    """Cosine scores of trials.

    Arguments
    ---------
    embeddings : dict
        ``{utterance id: 1-D tensor}``.
    trials : list
        ``(label, enrol, test)`` tuples.

    Returns
    -------
    positive_scores, negative_scores : torch.Tensor
    """
    ids = sorted(embeddings)
    row = {utt: i for i, utt in enumerate(ids)}
    missing = [u for _, a, b in trials for u in (a, b) if u not in row]
    if missing:
        raise KeyError(f"{len(missing)} trial utterance(s) have no embedding, e.g. {missing[0]!r}")
    matrix = torch.nn.functional.normalize(torch.stack([embeddings[u].float() for u in ids]), dim=1)
    enrol = torch.tensor([row[a] for _, a, _ in trials])
    test = torch.tensor([row[b] for _, _, b in trials])
    labels = torch.tensor([label for label, _, _ in trials], dtype=torch.bool)
    scores = (matrix[enrol] * matrix[test]).sum(dim=1)
    return scores[labels], scores[~labels]


def verification_metrics(positive_scores, negative_scores, p_target=0.01):
    """EER and normalised minDCF, as fractions, in a dict."""
    value, threshold = eer(positive_scores, negative_scores)
    dcf, _ = min_dcf(positive_scores, negative_scores, p_target=p_target)
    return {
        "EER": value,
        "EER_threshold": threshold,
        f"minDCF_{p_target:g}": dcf,
        "target_trials": int(len(positive_scores)),
        "nontarget_trials": int(len(negative_scores)),
    }
