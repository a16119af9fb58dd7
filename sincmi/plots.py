"""Figures written as PNG files (headless)."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy.special import ndtri  # noqa: E402

from sincmi.metrics import eer, error_curves  # noqa: E402

DET_TICKS = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8]


def det_curve(curves, path, title="DET curve"):
    """Plots DET curves (miss vs false-alarm probability, normal-deviate axes).

    Arguments
    ---------
    curves : dict
        ``{label: (positive_scores, negative_scores)}``.
    path : str
        Output PNG file.
    """
    fig, ax = plt.subplots(figsize=(5, 5))
    clip = 1e-4
    for label, (pos, neg) in curves.items():
        _, frr, far = error_curves(pos, neg)
        value = eer(pos, neg)[0]
        ax.plot(ndtri(np.clip(far, clip, 1 - clip)), ndtri(np.clip(frr, clip, 1 - clip)),
                label=f"{label} (EER {100 * value:.2f} %)")
    ticks = ndtri(np.array(DET_TICKS))
    labels = [f"{100 * t:g}" for t in DET_TICKS]
    ax.set_xticks(ticks, labels)
    ax.set_yticks(ticks, labels)
    ax.set_xlim(ticks[0], ticks[-1])
    ax.set_ylim(ticks[0], ticks[-1])
    ax.plot(ticks, ticks, color="0.8", linewidth=0.8)
    ax.set_xlabel("false alarm probability (%)")
    ax.set_ylabel("miss probability (%)")
    ax.set_title(title)
    ax.grid(True, color="0.9")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def read_train_log(path):
    """Parses a SpeechBrain train log into ``{stage: {series: ([epochs], [values])}}``.

    Lines look like ``stage: pretrain, epoch: 3, lr: 1.00e-03 - train loss: 3.81 -
    valid loss: 2.74, valid pair_accuracy: 8.73e-01``; lines without a stage
    are grouped under ``"train"``.

    Example
    -------
    >>> import tempfile, os
    >>> log = os.path.join(tempfile.mkdtemp(), "train_log.txt")
    >>> _ = open(log, "w").write("stage: pretrain, epoch: 1 - train loss: 5.1 - valid loss: 3.6\\n")
    >>> read_train_log(log)["pretrain"]["valid loss"]
    ([1], [3.6])
    """
    stages = {}
    with open(path) as f:
        for line in f:
            parts = [p.strip() for p in line.strip().split(" - ")]
            meta = dict(_pairs(parts[0]))
            if "epoch" not in meta:
                continue
            stage, epoch = meta.get("stage", "train"), int(float(meta["epoch"]))
            for part in parts[1:]:
                for key, value in _pairs(part):
                    epochs, values = stages.setdefault(stage, {}).setdefault(key, ([], []))
                    epochs.append(epoch)
                    values.append(float(value))
    return stages


def _pairs(text):
    for item in text.split(", "):
        if ": " in item:
            key, value = item.rsplit(": ", 1)
            try:
                float(value)
            except ValueError:
                if key != "stage":
                    continue
            yield key, value


def training_curves(train_log, path):
    """Plots every series of a train log, one row per stage (losses | other metrics)."""
    stages = read_train_log(train_log)
    if not stages:
        raise ValueError(f"{train_log} holds no epoch lines to plot")
    fig, axes = plt.subplots(len(stages), 2, figsize=(10, 3 * len(stages)), squeeze=False)
    for row, (stage, series) in zip(axes, stages.items()):
        for key, (epochs, values) in series.items():
            if key.split()[-1] in ("sentences", "chunks"):  # counts, not metrics
                continue
            ax = row[0] if "loss" in key else row[1]
            ax.plot(epochs, values, marker="o", markersize=3, label=key)
        for ax, title in zip(row, ("loss", "metrics")):
            ax.set_title(f"{stage}: {title}")
            ax.set_xlabel("epoch")
            ax.grid(True, color="0.9")
            if ax.lines:
                ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def embedding_map(embeddings, speakers, path, max_speakers=20, title="Utterance embeddings (PCA)"):
    """2-D PCA map of L2-normalised utterance embeddings, coloured by speaker.

    Arguments
    ---------
    embeddings : array-like
        ``(N, D)`` embeddings.
    speakers : list of str
        Speaker of each embedding; the first ``max_speakers`` speakers are drawn.
    """
    x = np.asarray(embeddings, dtype=np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    keep_speakers = sorted(set(speakers))[:max_speakers]
    keep = np.array([s in keep_speakers for s in speakers])
    x, speakers = x[keep], [s for s, k in zip(speakers, keep) if k]
    if len(x) < 2:
        raise ValueError("an embedding map needs at least 2 embeddings")
    x = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    points = x @ vt[:2].T
    fig, ax = plt.subplots(figsize=(6, 6))
    colours = plt.get_cmap("tab20")
    for i, speaker in enumerate(keep_speakers):
        mask = np.array([s == speaker for s in speakers])
        ax.scatter(points[mask, 0], points[mask, 1], s=12, color=colours(i % 20), label=speaker)
    ax.set_title(title)
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    if len(keep_speakers) <= 20:
        ax.legend(fontsize=6, markerscale=0.8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
