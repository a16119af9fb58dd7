"""sincmi.optim.RMSprop updates parameters as torch.optim.RMSprop does.

Checked over several steps against PyTorch's optimiser (float32 and float64,
small and large tensors, weight decay, a learning rate changed between
steps), state_dict round trips in both directions, and the fallback to
PyTorch's step for the settings the native update does not cover.
"""

import copy

import pytest
import torch

from sincmi import cpu_kernels
from sincmi.optim import RMSprop

needs_kernels = pytest.mark.skipif(
    not cpu_kernels.available(torch.zeros(1)), reason="native kernels not built (no C compiler?)"
)
# Sizes below and above the kernel's threshold for using several threads.
SHAPES = [(3,), (60, 80, 1, 5), (300, 700)]


def _parameters(dtype, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(*shape, dtype=dtype, generator=generator)) for shape in SHAPES]


def _run(optimizer_class, params, steps, seed=1, **options):
    generator = torch.Generator().manual_seed(seed)
    optimizer = optimizer_class(params, **options)
    for step in range(steps):
        for i, p in enumerate(params):
            # The first tensor has no gradient on odd steps: it must be left alone.
            p.grad = None if (i == 0 and step % 2) else torch.randn(p.shape, dtype=p.dtype, generator=generator)
        if step == 2:
            optimizer.param_groups[0]["lr"] *= 0.5  # as a scheduler would
        optimizer.step()
    return optimizer


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_rmsprop_matches_pytorch_over_several_steps(dtype, weight_decay, monkeypatch):
    calls = []
    native_step = cpu_kernels.rmsprop_step
    monkeypatch.setattr(cpu_kernels, "rmsprop_step", lambda *args: calls.append(1) or native_step(*args))
    options = dict(lr=1e-3, alpha=0.95, eps=1e-8, weight_decay=weight_decay)
    ours, theirs = _parameters(dtype), _parameters(dtype)
    ours_opt = _run(RMSprop, ours, 5, **options)
    theirs_opt = _run(torch.optim.RMSprop, theirs, 5, **options)
    assert len(calls) == 3 * 5 - 2  # the native update ran, for every tensor that had a gradient
    # PyTorch's vectorised sqrt can be an ulp off the correctly rounded one used here.
    tolerance = dict(rtol=1e-6, atol=1e-7) if dtype == torch.float32 else dict(rtol=1e-14, atol=1e-15)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, **tolerance)
        state_a, state_b = ours_opt.state[a], theirs_opt.state[b]
        assert state_a.keys() == state_b.keys()
        assert torch.equal(state_a["step"], state_b["step"])
        torch.testing.assert_close(state_a["square_avg"], state_b["square_avg"], **tolerance)
    assert float(ours_opt.state[ours[0]]["step"]) == 3 and float(ours_opt.state[ours[1]]["step"]) == 5


@needs_kernels
def test_rmsprop_state_dict_moves_between_sincmi_and_pytorch():
    options = dict(lr=1e-3, alpha=0.95, eps=1e-8)
    start = _run(RMSprop, _parameters(torch.float32), 3, **options)
    for first, second in ((RMSprop, torch.optim.RMSprop), (torch.optim.RMSprop, RMSprop)):
        finished = []
        for resumed in (first, second):  # continue the same run with either class
            params = [torch.nn.Parameter(p.detach().clone()) for p in start.param_groups[0]["params"]]
            optimizer = resumed(params, **options)
            # A copy: loading keeps same-dtype state tensors, which step() updates in place.
            optimizer.load_state_dict(copy.deepcopy(start.state_dict()))
            for p in params:
                p.grad = torch.ones_like(p)
            optimizer.step()
            finished.append(params)
        for a, b in zip(*finished):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("options", [dict(momentum=0.9), dict(centered=True), dict(maximize=True)])
def test_rmsprop_falls_back_to_pytorch_for_other_settings(options, monkeypatch):
    monkeypatch.setattr(cpu_kernels, "rmsprop_step", lambda *args: pytest.fail("native update used"))
    ours, theirs = _parameters(torch.float32), _parameters(torch.float32)
    _run(RMSprop, ours, 3, lr=1e-3, **options)
    _run(torch.optim.RMSprop, theirs, 3, lr=1e-3, **options)
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)
