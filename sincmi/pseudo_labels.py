"""Pseudo-labels: speakers guessed by clustering self-supervised utterance embeddings.

The route from self-supervised to supervised-like embeddings that Hyperion and
3D-Speaker take after DINO: cluster the embeddings of the training audio (its
labels unused), then train a speaker classifier with an angular margin on the
clusters, and repeat with the better encoder. Here the clustering is
agglomerative (average linkage on the cosine distance, SciPy's ``linkage``)
cut into a given number of clusters; the purity against the true speakers is
a diagnostic only, never an input.
"""

import numpy as np
import torch


def cluster_embeddings(embeddings, num_clusters):
    """``{utterance id: cluster index}``: average-linkage clustering of the cosine distances.

    Example
    -------
    >>> emb = {"a": torch.tensor([1.0, 0.1]), "b": torch.tensor([1.0, 0.0]), "c": torch.tensor([0.0, 1.0])}
    >>> clusters = cluster_embeddings(emb, 2)
    >>> clusters["a"] == clusters["b"] != clusters["c"]
    True
    """
    from scipy.cluster.hierarchy import fcluster, linkage

    ids = sorted(embeddings)
    if not 1 <= num_clusters <= len(ids):
        raise ValueError(f"pseudo_label_clusters={num_clusters} must be between 1 and the {len(ids)} "
                         "training utterances")
    matrix = torch.nn.functional.normalize(torch.stack([embeddings[key] for key in ids]).double(), dim=1).numpy()
    tree = linkage(matrix, method="average", metric="cosine")
    labels = fcluster(tree, t=num_clusters, criterion="maxclust") - 1
    return dict(zip(ids, labels.tolist()))


def purity(clusters, speakers):
    """The share of utterances whose cluster's most frequent true speaker is their own.

    >>> purity({"a": 0, "b": 0, "c": 1}, {"a": "x", "b": "y", "c": "y"})
    0.6666666666666666
    """
    members = {}
    for key, cluster in clusters.items():
        members.setdefault(cluster, []).append(speakers[key])
    agree = sum(int(np.unique(names, return_counts=True)[1].max()) for names in members.values())
    return agree / len(clusters)


def relabelled(rows, clusters):
    """Manifest rows of the clustered utterances with ``spk_id`` replaced by their cluster's name."""
    return {key: {**row, "spk_id": f"cluster{clusters[key]}"} for key, row in rows.items() if key in clusters}
