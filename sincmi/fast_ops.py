"""Fast kernels for the SincNet encoder, numerically equal to the plain layers.

The sinc layer dominates SincNet's cost: 80 filters of 251 taps over 3200
samples is 59 M multiply-adds per chunk, three times over in training
(forward, input and filter gradients), and its 80 x 2950 output is then read
and written again by |.|, max-pool and their backward passes. Here the layer
is one autograd function that

* correlates in the frequency domain (the filters are short, the chunk is
  long: one real FFT of the chunk, a product with the 80 filter spectra, one
  inverse FFT), and
* takes |.| and the max-pool in the same pass, keeping for the backward pass
  only which of the pooled samples won and its sign (one int8 per output),

processing a few chunks at a time so that the large intermediate (chunks x
filters x samples) stays in the CPU cache instead of memory.

The ordinary convolutions run as 2-D convolutions in channels-last layout,
which oneDNN computes about 1.6 times faster than the 1-D layout on CPU; their
max-pool runs in that layout too, so that only the pooled map is copied back.
"""

import torch
import torch.nn.functional as F

# Chunks per pass of the sinc layer: 8 x 80 x 3200 floats (8 MiB) stay in the
# CPU cache; on a GPU the whole batch at once is faster.
CPU_MICRO_BATCH = 8
GPU_MICRO_BATCH = 256


def _micro_batch(device):
    return CPU_MICRO_BATCH if device.type == "cpu" else GPU_MICRO_BATCH


class _SincAbsMaxPool(torch.autograd.Function):
    """``max_pool1d(|conv1d(x, h)|, pool)`` for real ``x`` (B, T), ``h`` (C, K)."""

    @staticmethod
    def forward(ctx, x, h, pool):
        batch, time = x.shape
        channels, taps = h.shape
        pooled = (time - taps + 1) // pool
        used = pooled * pool
        # A circular correlation of length N = time is exact for the valid
        # outputs t <= time - taps, which are the only ones kept.
        x_spec = torch.fft.rfft(x, n=time)
        h_spec_conj = torch.fft.rfft(h, n=time).conj()
        out = x.new_empty(batch, channels, pooled)
        # Code of the winner of each pool window: (position + 1) * sign, 0 if y = 0.
        code = torch.empty(batch, channels, pooled, dtype=torch.int8, device=x.device)
        step = _micro_batch(x.device)
        position = torch.empty(min(step, batch), channels, pooled, dtype=torch.long, device=x.device)
        for i in range(0, batch, step):
            n = min(step, batch - i)
            y = torch.fft.irfft(x_spec[i : i + n, None] * h_spec_conj, n=time)
            windows = y[..., :used].unflatten(-1, (pooled, pool))
            torch.max(windows.abs(), dim=-1, out=(out[i : i + n], position[:n]))
            signed = windows.gather(-1, position[:n].unsqueeze(-1)).squeeze(-1)
            code[i : i + n] = (position[:n] + 1).mul_(torch.sign(signed).long())
        ctx.save_for_backward(x_spec, h, code)
        ctx.shape = (time, taps, pool)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x_spec, h, code = ctx.saved_tensors
        time, taps, pool = ctx.shape
        batch, channels, pooled = code.shape
        h_spec = torch.fft.rfft(h, n=time)
        need_x, need_h = ctx.needs_input_grad[:2]
        grad_x_spec = x_spec.new_zeros(x_spec.shape) if need_x else None
        grad_h_spec = x_spec.new_zeros(channels, x_spec.shape[-1]) if need_h else None
        step = _micro_batch(grad_out.device)
        for i in range(0, batch, step):
            c = code[i : i + step].long()
            grad_y = grad_out.new_zeros(c.shape[0], channels, time)
            windows = grad_y[..., : pooled * pool].unflatten(-1, (pooled, pool))
            sign = torch.sign(c).to(grad_out.dtype)
            position = (c.abs() - 1).clamp(min=0).unsqueeze(-1)
            windows.scatter_(-1, position, (grad_out[i : i + step] * sign).unsqueeze(-1))
            grad_spec = torch.fft.rfft(grad_y)
            # y = x (*) h (correlation): dL/dx = gy conv h, dL/dh = x corr gy.
            if need_x:
                grad_x_spec[i : i + step] = (grad_spec * h_spec).sum(1)
            if need_h:
                grad_h_spec += (grad_spec.conj() * x_spec[i : i + step, None]).sum(0)
        grad_x = torch.fft.irfft(grad_x_spec, n=time) if need_x else None
        grad_h = torch.fft.irfft(grad_h_spec, n=time)[:, :taps] if need_h else None
        return grad_x, grad_h, None


def sinc_abs_maxpool(x, filters, pool):
    """``F.max_pool1d(F.conv1d(x[:, None], filters).abs(), pool)``, computed fast.

    Arguments
    ---------
    x : torch.Tensor
        ``(batch, time)`` signals.
    filters : torch.Tensor
        ``(channels, 1, taps)`` or ``(channels, taps)`` filter bank.
    pool : int
        Non-overlapping max-pool size.

    Returns
    -------
    torch.Tensor
        ``(batch, channels, (time - taps + 1) // pool)``; float32 for
        half-precision inputs, else the input's dtype.

    Example
    -------
    >>> x, h = torch.randn(3, 400), torch.randn(8, 1, 51)
    >>> ref = F.max_pool1d(F.conv1d(x[:, None], h).abs(), 3)
    >>> torch.allclose(sinc_abs_maxpool(x, h, 3), ref, atol=1e-4)
    True
    """
    # cuFFT has no half-precision path for these sizes: run such inputs in fp32.
    dtype = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    x, filters = x.to(dtype), filters.reshape(filters.shape[0], -1).to(dtype)
    if torch.is_grad_enabled() and (x.requires_grad or filters.requires_grad):
        return _SincAbsMaxPool.apply(x, filters, pool)
    return _sinc_abs_maxpool_inference(x, filters, pool)


def _sinc_abs_maxpool_inference(x, h, pool):
    """Forward only: nothing is kept for a backward pass."""
    batch, time = x.shape
    pooled = (time - h.shape[1] + 1) // pool
    x_spec = torch.fft.rfft(x, n=time)
    h_spec_conj = torch.fft.rfft(h, n=time).conj()
    out = x.new_empty(batch, h.shape[0], pooled)
    step = _micro_batch(x.device)
    for i in range(0, batch, step):
        y = torch.fft.irfft(x_spec[i : i + step, None] * h_spec_conj, n=time)
        # Pooling the whole length and dropping the tail avoids a copy of y.
        out[i : i + step] = F.max_pool1d(y.abs_(), pool)[..., :pooled]
    return out


def conv2d_channels_last(x, weight, bias=None):
    """``F.conv1d(x, weight, bias)`` run as a channels-last 2-D convolution.

    Returns the ``(batch, out_channels, 1, time')`` channels-last output
    (``.squeeze(2)`` gives the 1-D result), on which |.| and pooling can run
    before the (smaller) pooled map is copied back to the usual layout. An
    input already in channels-last layout (channels varying fastest) is not copied.

    Example
    -------
    >>> x, w = torch.randn(2, 4, 20), torch.randn(3, 4, 5)
    >>> torch.allclose(conv2d_channels_last(x, w).squeeze(2), F.conv1d(x, w), atol=1e-5)
    True
    """
    x4 = x.unsqueeze(2).contiguous(memory_format=torch.channels_last)
    w4 = weight.unsqueeze(2).contiguous(memory_format=torch.channels_last)
    return F.conv2d(x4, w4, bias)
