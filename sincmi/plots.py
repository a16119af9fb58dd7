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
