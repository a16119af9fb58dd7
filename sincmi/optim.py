"""RMSprop (SincNet's optimiser) with a one-pass CPU update.

:class:`torch.optim.RMSprop` updates each parameter in five passes over its
size (``mul_``, ``addcmul_``, ``sqrt``, ``add_``, ``addcdiv_``) plus a
temporary: 31-37 ms per step for the 26 M parameters of SincNet's TIMIT
encoder and the MLP critic on two CPU cores (5-6 % of a training step).
:class:`RMSprop` does the same arithmetic in one native pass per parameter
(:func:`sincmi.cpu_kernels.rmsprop_step`): 12.5 ms there.
"""

import torch

from sincmi import cpu_kernels


class RMSprop(torch.optim.RMSprop):
    """:class:`torch.optim.RMSprop`, updating CPU parameters in one native pass each.

    Same arguments, same state and ``state_dict`` as PyTorch's RMSprop, so
    checkpoints move between the two. The native update covers the case the
    recipes use (no momentum, not centered, dense float32/float64 contiguous
    CPU tensors, a float learning rate, weight decay allowed); anything else
    (a GPU, momentum, ``centered``, ``maximize``, ``capturable``,
    ``differentiable``, no C compiler) runs PyTorch's own step.

    Example
    -------
    >>> w = torch.nn.Parameter(torch.ones(3))
    >>> optimizer = RMSprop([w], lr=0.1, alpha=0.95, eps=1e-8)
    >>> w.grad = torch.tensor([1.0, -2.0, 0.0])
    >>> optimizer.step()
    >>> w.detach()  # 1 - 0.1 * g / sqrt(0.05 g^2), 0 for g = 0
    tensor([0.5528, 1.4472, 1.0000])
    """

    def _native(self):
        for group in self.param_groups:
            if (group["momentum"] != 0 or group["centered"] or group["maximize"] or group["capturable"]
                    or group["differentiable"] or isinstance(group["lr"], torch.Tensor)):
                return False
            for p in group["params"]:
                grad = p.grad
                if grad is None:
                    continue
                square_avg = self.state.get(p, {}).get("square_avg")
                if (not cpu_kernels.available(p) or grad.is_sparse or grad.dtype != p.dtype
                        or not p.is_contiguous() or not grad.is_contiguous()
                        or (square_avg is not None and not square_avg.is_contiguous())):
                    return False
        return True

    @torch.no_grad()
    def step(self, closure=None):
        """One update of every parameter that has a gradient."""
        if not self._native():
            return super().step(closure)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, square_avgs, steps = [], [], [], []
            # PyTorch's own state initialisation, so that the state is PyTorch's
            # (a private method: setup.py pins the torch version it was checked with).
            self._init_group(group, params, grads, square_avgs, [], [], steps)
            for p, grad, square_avg, step in zip(params, grads, square_avgs, steps):
                step += 1
                cpu_kernels.rmsprop_step(p, grad, square_avg, group["lr"], group["alpha"], group["eps"],
                                         group["weight_decay"])
        return loss
