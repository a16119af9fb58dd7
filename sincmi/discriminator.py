"""Pair discriminators (critics): g(z1, z2) -> one logit per pair.

Every critic has two entry points:

* ``forward(z1, z2)`` scores aligned pairs, ``(N, D), (N, D) -> (N,)``;
* ``pairwise(a, b, index)`` scores ``a[i]`` against ``b[index[i, k]]``,
  ``(B, D), (M, D), (B, K) -> (B, K)``, computing each embedding's share of the
  work once instead of once per pair (what makes many negatives cheap).
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from sincmi.fast_ops import mlp_critic_grid


class PairDiscriminator(nn.Module):
    """Base class: ``forward(z1, z2)`` scores aligned pairs, ``forward(a, b, index)`` is ``pairwise``.

    Going through ``forward`` for both keeps a DDP-wrapped critic's gradients
    synchronised across processes.
    """

    def forward(self, z1, z2, index=None):
        """Scores aligned pairs ``(z1[n], z2[n])``, or ``pairwise(z1, z2, index)``."""
        if index is not None:
            return self.pairwise(z1, z2, index)
        index = torch.arange(z1.shape[0], device=z1.device).unsqueeze(1)
        return self.pairwise(z1, z2, index).squeeze(1)

    def pairwise(self, a, b, index):
        """Scores ``(a[i], b[index[i, k]])`` for every i and k."""
        raise NotImplementedError


class MLPDiscriminator(PairDiscriminator):
    """The paper's critic: an MLP on the concatenation ``[z1, z2]``.

    The first layer ``W [z1; z2] = W1 z1 + W2 z2`` is split so that each
    embedding is projected once, whatever the number of pairs it enters.

    Arguments
    ---------
    input_size : int
        Embedding size D.
    hidden_size : int
        Units of each hidden layer.
    num_layers : int
        Number of hidden layers (at least 1).
    negative_slope : float
        LeakyReLU slope.

    Example
    -------
    >>> critic = MLPDiscriminator(8, 16)
    >>> critic(torch.randn(5, 8), torch.randn(5, 8)).shape
    torch.Size([5])
    """

    def __init__(self, input_size, hidden_size=1024, num_layers=1, negative_slope=0.2):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        self.first = nn.Linear(input_size, hidden_size)
        self.second = nn.Linear(input_size, hidden_size, bias=False)
        layers = []
        for _ in range(num_layers - 1):
            layers += [nn.LeakyReLU(negative_slope), nn.Linear(hidden_size, hidden_size)]
        layers += [nn.LeakyReLU(negative_slope), nn.Linear(hidden_size, 1)]
        self.rest = nn.Sequential(*layers)

    def pairwise(self, a, b, index):
        """See :class:`PairDiscriminator`."""
        first, second = self.first(a), self.second(b)
        if 2 * index.shape[1] >= b.shape[0]:
            # Most pairs are needed (all negatives): score the whole grid and
            # pick. A broadcast's backward is a sum; indexing's is a slow scatter.
            if len(self.rest) == 2:  # one hidden layer: fused, see fast_ops
                activation, last = self.rest
                grid = mlp_critic_grid(first, second, last.weight, last.bias, activation.negative_slope)
            else:
                grid = self.rest(first.unsqueeze(1) + second.unsqueeze(0)).squeeze(-1)
            return grid.gather(1, index)
        hidden = first.unsqueeze(1) + second.index_select(0, index.flatten()).unflatten(0, index.shape)
        return self.rest(hidden).squeeze(-1)


class CosineDiscriminator(PairDiscriminator):
    """Scaled cosine similarity: ``s * cos(z1, z2) + c`` with learnable s, c.

    Matches how verification scores embeddings (cosine), so what the critic
    learns to separate is what the back end measures.

    Example
    -------
    >>> critic = CosineDiscriminator(init_scale=5.0)
    >>> z = torch.randn(3, 4)
    >>> torch.allclose(critic(z, z), torch.full((3,), 5.0))
    True
    """

    def __init__(self, input_size=None, init_scale=10.0, init_bias=0.0, learnable=True):
        super().__init__()
        log_scale = torch.tensor(float(init_scale)).log()
        bias = torch.tensor(float(init_bias))
        if learnable:
            self.log_scale = nn.Parameter(log_scale)
            self.bias = nn.Parameter(bias)
        else:
            self.register_buffer("log_scale", log_scale)
            self.register_buffer("bias", bias)

    def pairwise(self, a, b, index):
        """See :class:`PairDiscriminator`."""
        a = F.normalize(a, dim=-1)
        b = F.normalize(b, dim=-1)
        cos = (a @ b.T).gather(1, index)
        return self.log_scale.exp() * cos + self.bias


class CosineThresholdDiscriminator(CosineDiscriminator):
    """Scaled cosine around a learnable threshold: ``s * (cos(z1, z2) - t)``, learnable s and t.

    The same function family as :class:`CosineDiscriminator` (``c = -s t``),
    with the offset learned in cosine units. It matters for BCE, whose optimum
    depends on where the critic puts its decision point: an optimiser step of
    a given size moves ``t`` by that much in cosine, but a logit offset ``c``
    only by that much against logits of about ``s`` (10), so the plain cosine
    critic can barely move its threshold in a short run and the encoder must
    push negative pairs to a cosine near 0 instead. InfoNCE and MINE do not
    depend on the offset.

    Example
    -------
    >>> critic = CosineThresholdDiscriminator(init_scale=5.0, init_threshold=0.5)
    >>> z = torch.randn(3, 4)
    >>> torch.allclose(critic(z, z), torch.full((3,), 2.5))
    True
    """

    def __init__(self, input_size=None, init_scale=10.0, init_threshold=0.0):
        super().__init__(input_size, init_scale)
        del self.bias
        self.threshold = nn.Parameter(torch.tensor(float(init_threshold)))

    def pairwise(self, a, b, index):
        """See :class:`PairDiscriminator`."""
        cos = (F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T).gather(1, index)
        return self.log_scale.exp() * (cos - self.threshold)


class BilinearDiscriminator(PairDiscriminator):
    """Bilinear critic ``z1^T W z2 + c``, W initialised to a scaled identity.

    Example
    -------
    >>> critic = BilinearDiscriminator(4)
    >>> critic(torch.randn(2, 4), torch.randn(2, 4)).shape
    torch.Size([2])
    """

    def __init__(self, input_size, init_scale=None):
        super().__init__()
        scale = init_scale if init_scale is not None else 1.0 / input_size
        self.weight = nn.Parameter(torch.eye(input_size) * scale)
        self.bias = nn.Parameter(torch.zeros(()))

    def pairwise(self, a, b, index):
        """See :class:`PairDiscriminator`."""
        return (a @ self.weight @ b.T).gather(1, index) + self.bias


CRITICS = {"mlp": MLPDiscriminator, "cosine": CosineDiscriminator, "cosine_threshold": CosineThresholdDiscriminator,
           "bilinear": BilinearDiscriminator}


def build_critic(critics, critic, input_size):
    """The critic named ``critic`` among the classes a yaml declares, made for ``input_size`` embeddings.

    ``critics`` maps names to critic classes or partials (``!name:`` in the
    yaml), so that ``--critic=mlp`` switches the critic with one override and
    a new critic is one class and one line of the yaml. Only the chosen one is
    made (the random draws of the others' weights would change the run).

    Example
    -------
    >>> import functools
    >>> critics = {"cosine": CosineDiscriminator, "mlp": functools.partial(MLPDiscriminator, hidden_size=16)}
    >>> build_critic(critics, "mlp", 8).first
    Linear(in_features=8, out_features=16, bias=True)
    """
    if critic not in critics:
        raise ValueError(f"critic={critic!r} is invalid: choose one of {sorted(critics)} (the yaml's critics)")
    made = critics[critic](input_size=input_size)
    if not isinstance(made, PairDiscriminator):
        raise TypeError(f"critic {critic!r} is a {type(made).__name__}, not a sincmi.discriminator.PairDiscriminator")
    return made
