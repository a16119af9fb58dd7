"""Speaker classifier on chunk embeddings (the downstream head)."""

import torch.nn as nn


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

    def forward(self, embeddings):
        """Returns log-posteriors."""
        return self.layers(embeddings)
