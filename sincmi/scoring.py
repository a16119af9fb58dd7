"""Verification scoring: trial lists, trial scores and score normalisation.

Reads the VoxCeleb-style trial lists (``label enrol test``) and the score files
the recipes write (``enrol test score label``), and scores trials by the cosine
of the embeddings (or a back end's own scorer: PLDA, :mod:`sincmi.plda`),
optionally normalised against a cohort (z-, t-, s- or adaptive s-norm). The
error rates of the scores are in :mod:`sincmi.metrics`.
"""

import gzip
import os
from typing import List, NamedTuple

import numpy as np
import torch
from speechbrain.utils.checkpoints import mark_as_loader, mark_as_saver, register_checkpoint_hooks

from sincmi.plda import COSINE

# Bytes of embeddings gathered at once while scoring: memory stays bounded whatever the number of trials.
SCORING_CHUNK_BYTES = 128 << 20


class EmbeddingTable(NamedTuple):
    """Utterance embeddings as one ``(N, D)`` matrix (any norm) and the id of each row.

    What scoring reads at Vox1-E/H size: the matrix is used as it is, never
    copied, normalised or stacked again.
    """

    ids: List[str]
    matrix: torch.Tensor


def embedding_table(embeddings, needed=None):
    """An :class:`EmbeddingTable` from ``{id: 1-D tensor}`` (only the ``needed`` ids), or the table itself.

    Raises ``KeyError`` naming a needed utterance without an embedding.
    """
    if isinstance(embeddings, EmbeddingTable):
        if needed is not None:
            have = set(embeddings.ids)
            missing = [u for u in sorted(needed) if u not in have]
            if missing:
                raise KeyError(f"{len(missing)} trial utterance(s) have no embedding, e.g. {missing[0]!r}")
        return embeddings
    ids = sorted(needed) if needed is not None else sorted(embeddings)
    missing = [u for u in ids if u not in embeddings]
    if missing:
        raise KeyError(f"{len(missing)} trial utterance(s) have no embedding, e.g. {missing[0]!r}")
    return EmbeddingTable(ids, torch.stack([embeddings[u].float() for u in ids]))


def chunk_rows(dim, budget=SCORING_CHUNK_BYTES):
    """Rows of ``dim`` float32 values that fit in ``budget`` bytes (at least one).

    >>> chunk_rows(2048)
    16384
    """
    return max(1, budget // (4 * dim))


def labelled_lines(path, form, label_field, comments=False):
    """``(line number, fields)`` of each line of a whitespace-separated file laid out as ``form``.

    ``form`` names the fields (``"label enrol test"``); the one at
    ``label_field`` must be 0 or 1. Blank lines (and, with ``comments``,
    lines starting with ``#``) are skipped; any other line that does not fit
    raises ``ValueError`` naming the file, the line and the form. A file
    whose name ends in ``.gz`` is read through gzip.
    """
    width = len(form.split())
    with open_text(path) as f:
        for number, line in enumerate(f, start=1):
            fields = line.split()
            if not fields or (comments and fields[0].startswith("#")):
                continue
            if len(fields) != width or fields[label_field] not in ("0", "1"):
                raise ValueError(f"{path}:{number}: expected '{form}' with label 0 or 1, got {line.strip()!r}")
            yield number, fields


def open_text(path, mode="r"):
    """Opens a text file, through gzip when its name ends in ``.gz``."""
    if str(path).endswith(".gz"):
        return gzip.open(path, mode + "t", compresslevel=6) if "w" in mode else gzip.open(path, mode + "t")
    return open(path, mode)


def write_scores(path, trials, scores):
    """Writes ``enrol test score label`` lines (gzip-compressed when ``path`` ends in ``.gz``)."""
    with open_text(path, "w") as f:
        for (label, enrol, test), score in zip(trials, scores):
            f.write(f"{enrol} {test} {score:.6f} {label}\n")


def read_scores(path):
    """Reads a scores file (``enrol test score label`` per line, as the recipes write).

    Returns ``(target scores, non-target scores)`` as NumPy arrays.
    """
    rows = [(float(fields[2]), fields[3] == "1") for _, fields in labelled_lines(path, "enrol test score label", 3)]
    scores = np.asarray([score for score, _ in rows])
    labels = np.asarray([label for _, label in rows], dtype=bool)
    return scores[labels], scores[~labels]


def read_trials(path):
    """Reads a trial list in the VoxCeleb format ``label enrol test`` (label 0/1).

    Returns a list of ``(label, enrol, test)``; a malformed line raises
    ``ValueError`` naming the file and line number.
    """
    return [(int(fields[0]), fields[1], fields[2]) for _, fields in labelled_lines(path, "label enrol test", 0)]


def trial_indices(embeddings, trials):
    """The embeddings a trial list needs, and the rows of its trials.

    Arguments
    ---------
    embeddings : dict or EmbeddingTable
        ``{utterance id: 1-D tensor}`` (only the trials' utterances are
        stacked), or a table (used as it is).
    trials : list
        ``(label, enrol, test)`` tuples.

    Returns
    -------
    table : EmbeddingTable
    enrol, test : torch.LongTensor
        Row of each trial's enrolment and test utterance.
    labels : torch.BoolTensor
        True for target trials.
    """
    table = embedding_table(embeddings, {u for _, a, b in trials for u in (a, b)})
    row = {utt: i for i, utt in enumerate(table.ids)}
    enrol = torch.tensor([row[a] for _, a, _ in trials], dtype=torch.long)
    test = torch.tensor([row[b] for _, _, b in trials], dtype=torch.long)
    labels = torch.tensor([label for label, _, _ in trials], dtype=torch.bool)
    return table, enrol, test, labels


def pair_scores(matrix, enrol, test, scorer=COSINE, chunk=None):
    """Scores of rows ``enrol[i]`` and ``test[i]`` of ``matrix``, in bounded memory.

    ``scorer``: the cosine (the rows need not be normalised; each gathered row
    is, so no normalised copy of the matrix is made) or a back end's
    ``scorer``. ``chunk`` trials at a time (default: :data:`SCORING_CHUNK_BYTES`
    of rows), so the memory used does not grow with the number of trials.

    Example
    -------
    >>> pair_scores(torch.tensor([[3.0, 4.0], [1.0, 0.0]]), torch.tensor([0]), torch.tensor([1]))
    tensor([0.6000])
    """
    chunk = chunk or chunk_rows(matrix.shape[1])
    scores = torch.empty(len(enrol), dtype=torch.float32)
    for i in range(0, len(enrol), chunk):
        scores[i : i + chunk] = scorer.pairs(matrix[enrol[i : i + chunk]], matrix[test[i : i + chunk]])
    return scores


def cohort_statistics(matrix, cohort, top_k=None, chunk=4096, scorer=COSINE):
    """Mean and standard deviation of each embedding's scores against a cohort.

    Arguments
    ---------
    matrix : torch.Tensor
        ``(N, D)`` embeddings, a chunk of rows at a time.
    cohort : torch.Tensor
        ``(M, D)`` cohort embeddings.
    top_k : int or None
        Use only the ``top_k`` highest cohort scores of each embedding (the
        adaptive variant); None uses the whole cohort.
    scorer : the cosine, or a back end's ``scorer``.

    Returns
    -------
    mean, std : torch.Tensor
        ``(N,)`` each.
    """
    if top_k is not None and not 0 < top_k <= len(cohort):
        raise ValueError(f"top_k must be in [1, {len(cohort)}] (the cohort size), got {top_k}")
    means, stds = [], []
    for i in range(0, len(matrix), chunk):
        scores = scorer.cross(matrix[i : i + chunk], cohort)
        if top_k is not None:
            scores = scores.topk(top_k, dim=1).values
        means.append(scores.mean(1))
        stds.append(scores.std(1).clamp(min=1e-6))
    return torch.cat(means), torch.cat(stds)


SCORE_NORMS = (None, "z-norm", "t-norm", "s-norm", "as-norm")


@register_checkpoint_hooks
class Cohort:
    """A score normalisation: its ``method``, ``top_k`` and cohort ``embeddings`` ``(M, D)``.

    A SpeechBrain ``Pretrainer`` loadable (``cohort.ckpt`` of a model folder:
    an ``.npz`` with ``embeddings``).

    Example
    -------
    >>> cohort = Cohort("s-norm", embeddings=torch.eye(3))
    >>> round(cohort.normalize(torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0])), 4)
    -0.5774
    """

    def __init__(self, method=None, top_k=None, embeddings=None):
        if method not in SCORE_NORMS:
            raise ValueError(f"score_norm: unknown method {method!r}; choose one of {list(SCORE_NORMS)}")
        self.method, self.top_k, self.embeddings = method, top_k if method == "as-norm" else None, embeddings

    def normalize(self, emb_a, emb_b, scorer=COSINE):
        """The normalised score of two embeddings (the raw score without a method), by ``scorer``."""
        pair = torch.stack([emb_a.flatten(), emb_b.flatten()]).cpu()
        score = scorer.pairs(pair[:1], pair[1:])
        if self.method is None:
            return float(score[0])
        mean, std = cohort_statistics(pair, self.embeddings, self.top_k, scorer=scorer)
        return float(normalize_scores(score, torch.tensor([0]), torch.tensor([1]), mean, std, self.method)[0])

    @mark_as_saver
    def save(self, path):
        tmp = path + ".tmp.npz"
        np.savez(tmp, embeddings=self.embeddings.numpy())
        os.replace(tmp, path)

    @mark_as_loader
    def recover(self, path, end_of_epoch=False):
        with np.load(path) as arrays:
            self.embeddings = torch.from_numpy(arrays["embeddings"])


def normalize_scores(scores, enrol, test, mean, std, method):
    """Applies score normalisation with per-utterance cohort statistics.

    * ``z-norm``: ``(s - mean_e) / std_e`` (enrolment side);
    * ``t-norm``: ``(s - mean_t) / std_t`` (test side);
    * ``s-norm`` and ``as-norm``: the average of the two; ``as-norm`` is
      s-norm with statistics from each side's top-k cohort scores
      (see :func:`cohort_statistics`).

    Example
    -------
    >>> s = torch.tensor([0.5]); i = torch.tensor([0]); j = torch.tensor([1])
    >>> normalize_scores(s, i, j, torch.tensor([0.1, 0.3]), torch.tensor([0.2, 0.1]), "s-norm")
    tensor([2.])
    """
    if method not in SCORE_NORMS:
        raise ValueError(f"score_norm: unknown method {method!r}; choose one of {list(SCORE_NORMS)}")
    if method is None:
        return scores
    z = (scores - mean[enrol]) / std[enrol]
    t = (scores - mean[test]) / std[test]
    if method == "z-norm":
        return z
    if method == "t-norm":
        return t
    return (z + t) / 2


def score_trials(embeddings, trials, cohort=None, method=None, top_k=None, scorer=COSINE):
    """Scores of a trial list (cosine, or ``scorer``), optionally normalised against a cohort.

    Arguments
    ---------
    embeddings : dict or EmbeddingTable
        ``{utterance id: 1-D tensor}``, or a table used without a copy (the
        memory then grows with neither the number of trials nor of
        utterances: see :func:`pair_scores`).
    trials : list
        ``(label, enrol, test)`` tuples.
    cohort : torch.Tensor, optional
        ``(M, D)`` cohort embeddings (e.g. training-speaker means); needed by
        every normalisation.
    method : str or None
        One of :data:`SCORE_NORMS`.
    top_k : int, optional
        Cohort size kept per utterance for ``as-norm``.
    scorer : the cosine, or a fitted back end's ``scorer`` (the embeddings and cohort after that back end).

    Returns
    -------
    scores : torch.Tensor
        One score per trial, in the trial list's order.
    labels : torch.BoolTensor
        True for target trials.
    """
    if method not in SCORE_NORMS:
        raise ValueError(f"score_norm: unknown method {method!r}; choose one of {list(SCORE_NORMS)}")
    table, enrol, test, labels = trial_indices(embeddings, trials)
    scores = pair_scores(table.matrix, enrol, test, scorer)
    if method is not None:
        if cohort is None:
            raise ValueError(f"score normalisation {method!r} needs a cohort of embeddings")
        mean, std = cohort_statistics(table.matrix, cohort, top_k if method == "as-norm" else None, scorer=scorer)
        scores = normalize_scores(scores, enrol, test, mean, std, method)
    return scores, labels


def cosine_trial_scores(embeddings, trials):
    """Cosine scores split into target and non-target trials.

    Returns
    -------
    positive_scores, negative_scores : torch.Tensor
    """
    scores, labels = score_trials(embeddings, trials)
    return scores[labels], scores[~labels]
