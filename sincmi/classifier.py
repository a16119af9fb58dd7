"""Speaker classifiers on chunk embeddings (the downstream heads).

Both return log-posteriors from ``forward`` (used to score sentences) and the
training loss from ``forward(embeddings, labels)`` (``training_loss``, called
through ``forward`` so that a DDP-wrapped classifier synchronises its
gradients).
"""

import torch
import torch.nn as nn
import torch.nn.functional as F


class SpeakerClassifier(nn.Module):
    """Embeddings ``(batch, D)`` -> speaker log-posteriors ``(batch, num_speakers)``.

    Arguments
    ---------
    input_size : int
        Embedding size D.
    num_speakers : int
        Number of classes.
    hidden_sizes : list of int
        Hidden layers (Linear + BatchNorm + LeakyReLU); empty for a linear probe.
    input_norm : bool
        Standardise the embeddings first (BatchNorm without affine), so that
        one learning rate suits inputs of any scale (e.g. raw MFCCs).

    Example
    -------
    >>> import torch
    >>> clf = SpeakerClassifier(16, 3, hidden_sizes=[8])
    >>> clf(torch.randn(4, 16)).exp().sum(1).allclose(torch.ones(4))
    True
    """

    def __init__(self, input_size, num_speakers, hidden_sizes=(), negative_slope=0.2, input_norm=True):
        super().__init__()
        layers = [nn.BatchNorm1d(input_size, affine=False)] if input_norm else []
        for size in hidden_sizes:
            layers += [nn.Linear(input_size, size), nn.BatchNorm1d(size), nn.LeakyReLU(negative_slope)]
            input_size = size
        layers += [nn.Linear(input_size, num_speakers), nn.LogSoftmax(dim=-1)]
        self.layers = nn.Sequential(*layers)

    def forward(self, embeddings, labels=None):
        """Returns log-posteriors, or with ``labels`` the training loss."""
        if labels is not None:
            return self.training_loss(embeddings, labels)
        return self.layers(embeddings)

    def training_loss(self, embeddings, labels):
        """Cross-entropy (softmax)."""
        return F.nll_loss(self.layers(embeddings), labels)


class AAMClassifier(nn.Module):
    """Cosine classifier trained with additive angular margin (ArcFace / AAM-softmax).

    Training logits are ``scale * cos(theta_y + margin)`` for the true class
    and ``scale * cos(theta_j)`` for the others; ``forward`` returns the
    log-softmax of ``scale * cos(theta)`` (no margin) for scoring.

    Arguments
    ---------
    input_size, num_speakers : int
    margin : float
        Angular margin in radians.
    scale : float
        Logit scale.

    Example
    -------
    >>> clf = AAMClassifier(8, 3)
    >>> clf(torch.randn(2, 8)).shape
    torch.Size([2, 3])
    """

    def __init__(self, input_size, num_speakers, margin=0.2, scale=30.0, input_norm=True):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_speakers, input_size))
        nn.init.xavier_uniform_(self.weight)
        self.norm = nn.BatchNorm1d(input_size, affine=False) if input_norm else nn.Identity()
        self.margin = margin
        self.scale = scale

    def cosines(self, embeddings):
        """Cosine of each embedding with each class weight."""
        return F.normalize(self.norm(embeddings), dim=1) @ F.normalize(self.weight, dim=1).T

    def forward(self, embeddings, labels=None):
        """Log-posteriors without margin, or with ``labels`` the training loss."""
        if labels is not None:
            return self.training_loss(embeddings, labels)
        return F.log_softmax(self.scale * self.cosines(embeddings), dim=1)

    def training_loss(self, embeddings, labels):
        """Cross-entropy with the angular margin on the true class."""
        cos = self.cosines(embeddings).clamp(-1 + 1e-7, 1 - 1e-7)
        target = torch.cos(torch.acos(cos.gather(1, labels.unsqueeze(1))) + self.margin)
        logits = cos.scatter(1, labels.unsqueeze(1), target)
        return F.cross_entropy(self.scale * logits, labels)
