"""Fast kernels for the SincNet encoder and the MLP critic, numerically equal to the plain layers.

The sinc layer dominates SincNet's cost: 80 filters of 251 taps over 3200
samples is 59 M multiply-adds per chunk, three times over in training
(forward, input and filter gradients), and its 80 x 2950 output is then read
and written again by |.|, max-pool, LayerNorm, gain and bias, LeakyReLU and
their backward passes. Here the whole first block is one autograd function
(:func:`sinc_block`) that

* correlates in the frequency domain (the filters are short, the chunk is
  long: one real FFT of the chunk, a product with the 80 filter spectra, one
  inverse FFT), a few chunks at a time so that the chunks x filters x samples
  intermediate stays in the CPU cache, and
* on CPU, hands each micro-batch's output to a native kernel
  (:mod:`sincmi.cpu_kernels`) that takes |.|, the max-pool, the LayerNorm,
  gain, bias and LeakyReLU in one pass, keeping for the backward pass only the
  normalised values and which pooled sample won and its sign (one int8 per
  output); in the backward pass another kernel forms the input and filter
  gradients' spectral products in one read of the gradient spectra.
  Elsewhere (GPU, or no C compiler) the same function is composed from
  :func:`sinc_abs_maxpool` and PyTorch's layers.

The ordinary convolutions run as 2-D convolutions in channels-last layout,
which oneDNN computes about 1.6 times faster than the 1-D layout on CPU; the
sinc block writes its output in that layout, and on CPU each convolution's
max-pool, LayerNorm, gain and bias and LeakyReLU are one native pass
(:func:`conv_block_tail`) whose output stays channels-last, so that no layer
copies a feature map between layouts. :func:`mlp_critic_grid`
scores every pair of a batch with the paper's MLP critic without storing its
(pairs x hidden) activations.
"""

import threading

import torch
import torch.nn.functional as F

from sincmi import cpu_kernels

# Chunks per pass of the sinc layer: 8 x 80 x 3200 floats (8 MiB) stay in the
# CPU cache; on a GPU the whole batch at once is faster.
CPU_MICRO_BATCH = 8
GPU_MICRO_BATCH = 256
# F.layer_norm's default, used by the plain layers.
LAYER_NORM_EPS = 1e-5


def _micro_batch(device):
    return CPU_MICRO_BATCH if device.type == "cpu" else GPU_MICRO_BATCH


class _Spectra:
    """The sinc layer in the frequency domain: ``y = x (*) h`` (correlation).

    A circular correlation of length N = time is exact for the valid outputs
    t <= time - taps, which are the only ones kept.
    """

    def __init__(self, x, h):
        self.time, self.taps = x.shape[-1], h.shape[-1]
        self.x = torch.fft.rfft(x, n=self.time)
        self.h_conj = torch.fft.rfft(h, n=self.time).conj().resolve_conj()
        self._buffers = {}

    def buffer(self, kind, n):
        """A ``(n, channels, bins)`` complex (``"spectrum"``: the forward product) or
        ``(n, channels, time)`` real (``"signal"``: the backward's ``grad_y``) work
        buffer, reused by every micro-batch (fresh ones cost page faults)."""
        buffer = self._buffers.get(kind)
        if buffer is None or buffer.shape[0] < n:
            h = self.h_conj
            if kind == "spectrum":
                buffer = torch.empty(n, *h.shape, dtype=h.dtype, device=h.device)
            else:
                buffer = torch.empty(n, h.shape[0], self.time, dtype=h.real.dtype, device=h.device)
            self._buffers[kind] = buffer
        return buffer[:n]

    def output(self, start, stop):
        """``(n, channels, time)`` sinc-layer output of chunks start..stop."""
        x = self.x[start:stop, None]
        product = torch.mul(x, self.h_conj, out=self.buffer("spectrum", x.shape[0]))
        # No out=: PyTorch's FFTs compute into a new tensor and copy it into
        # `out`, which costs more than the allocation it saves.
        return torch.fft.irfft(product, n=self.time)


class _SpectralGradients:
    """Accumulates dL/dx and dL/dh from dL/dy, micro-batch by micro-batch."""

    def __init__(self, spectra, need_x, need_h):
        self.spectra = spectra
        x = spectra.x
        self.x = x.new_zeros(x.shape) if need_x else None
        self.h_grad = x.new_zeros(spectra.h_conj.shape) if need_h else None

    def add(self, start, grad_y):
        grad_spec = torch.fft.rfft(grad_y)
        stop = start + grad_y.shape[0]
        if cpu_kernels.available(grad_y):  # both products in one pass over grad_spec
            cpu_kernels.spectral_gradients(
                grad_spec, self.spectra.h_conj, self.spectra.x[start:stop],
                self.x[start:stop] if self.x is not None else None, self.h_grad)
            return
        # y = x (*) h (correlation): dL/dx = gy conv h, dL/dh = x corr gy.
        if self.x is not None:
            self.x[start:stop] = (grad_spec * self.spectra.h_conj.conj()).sum(1)
        if self.h_grad is not None:
            self.h_grad += (grad_spec.conj() * self.spectra.x[start:stop, None]).sum(0)

    def result(self):
        time, taps = self.spectra.time, self.spectra.taps
        grad_x = torch.fft.irfft(self.x, n=time) if self.x is not None else None
        grad_h = torch.fft.irfft(self.h_grad, n=time)[:, :taps] if self.h_grad is not None else None
        return grad_x, grad_h


class _SincAbsMaxPool(torch.autograd.Function):
    """``max_pool1d(|conv1d(x, h)|, pool)`` for real ``x`` (B, T), ``h`` (C, K)."""

    @staticmethod
    def forward(ctx, x, h, pool):
        batch, time = x.shape
        channels, taps = h.shape
        pooled = (time - taps + 1) // pool
        used = pooled * pool
        spectra = _Spectra(x, h)
        out = x.new_empty(batch, channels, pooled)
        # Code of the winner of each pool window: (position + 1) * sign, 0 if y = 0.
        code = torch.empty(batch, channels, pooled, dtype=torch.int8, device=x.device)
        step = _micro_batch(x.device)
        for i in range(0, batch, step):
            n = min(step, batch - i)
            y = spectra.output(i, i + n)
            windows = y[..., :used].unflatten(-1, (pooled, pool))
            value, position = windows.abs().max(dim=-1)
            out[i : i + n] = value
            signed = windows.gather(-1, position.unsqueeze(-1)).squeeze(-1)
            code[i : i + n] = (position + 1).mul_(torch.sign(signed).long())
        ctx.spectra = spectra
        ctx.save_for_backward(code)
        ctx.pool = pool
        return out

    @staticmethod
    def backward(ctx, grad_out):
        (code,) = ctx.saved_tensors
        spectra, pool = ctx.spectra, ctx.pool
        gradients = _SpectralGradients(spectra, *ctx.needs_input_grad[:2])
        step = _micro_batch(grad_out.device)
        for i in range(0, code.shape[0], step):
            grad_y = _scatter_to_winners(code[i : i + step], grad_out[i : i + step], spectra.time, pool)
            gradients.add(i, grad_y)
        return (*gradients.result(), None)


class _SincBlock(torch.autograd.Function):
    """The whole first block on CPU: ``leaky_relu(layer_norm(max_pool(|x (*) h|)) * gain + bias)``.

    After the FFT correlation, native kernels (:mod:`sincmi.cpu_kernels`) take
    |.|, the max-pool, the LayerNorm, gain, bias and LeakyReLU in one pass, and
    their backward in another; only the int8 winners, the normalised values and
    one 1/std per group are kept for the backward pass. The output is stored
    channels-last, the layout the next (channels-last) convolution reads.
    """

    @staticmethod
    def forward(ctx, x, h, gain, bias, pool, slope, group_rows):
        batch, time = x.shape
        channels, pooled = gain.shape
        spectra = _Spectra(x, h)
        out = _channels_last(x, batch, channels, pooled)
        xhat = x.new_empty(batch, channels, pooled)
        code = torch.empty(batch, channels, pooled, dtype=torch.int8)
        rstd = x.new_empty(batch, channels // group_rows)
        for i in range(0, batch, CPU_MICRO_BATCH):
            n = min(CPU_MICRO_BATCH, batch - i)
            part = slice(i, i + n)
            cpu_kernels.pool_norm_act(spectra.output(i, i + n), pool, gain, bias, slope, LAYER_NORM_EPS,
                                      group_rows, out[part], rstd[part], xhat[part], code[part])
        ctx.spectra = spectra
        ctx.save_for_backward(gain, bias, xhat, rstd, code)
        ctx.options = (pool, slope, group_rows)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        gain, bias, xhat, rstd, code = ctx.saved_tensors
        spectra, (pool, slope, group_rows) = ctx.spectra, ctx.options
        gradients = _SpectralGradients(spectra, *ctx.needs_input_grad[:2])
        grad_gain, grad_bias = torch.zeros_like(gain), torch.zeros_like(bias)
        dz_buffer = torch.empty_like(xhat[:CPU_MICRO_BATCH])
        for i in range(0, code.shape[0], CPU_MICRO_BATCH):
            part = slice(i, i + CPU_MICRO_BATCH)
            n = code[part].shape[0]
            dz, grad_y = cpu_kernels.pool_norm_act_backward(
                grad_out[part], xhat[part], rstd[part], code[part], gain, bias, slope, group_rows,
                spectra.time, pool, dz=dz_buffer[:n], grad_y=spectra.buffer("signal", n))
            grad_gain += (dz * xhat[part]).sum(0)
            grad_bias += dz.sum(0)
            gradients.add(i, grad_y)
        return (*gradients.result(), grad_gain, grad_bias, None, None, None)


def sinc_block(x, filters, pool, gain, bias, negative_slope, norm_over="time", scratch_output=False):
    """``leaky_relu(layer_norm(sinc_abs_maxpool(x, filters, pool)) * gain + bias)``.

    The LayerNorm covers each channel over time (``norm_over="time"``) or each
    chunk's whole map (``"channel_time"``); ``gain`` and ``bias`` are
    ``(channels, pooled)``. On CPU with the native kernels available this is
    one fused pass (see :class:`_SincBlock`); otherwise the same function is
    composed from :func:`sinc_abs_maxpool` and PyTorch's layers.

    ``scratch_output=True`` lets the CPU forward-only path write into this
    thread's reusable buffer (:func:`scratch_channels_last`) instead of fresh
    memory, for a caller that consumes the output before its next call; it
    is ignored when gradients are recorded or on other devices.

    Example
    -------
    >>> x, h = torch.randn(3, 400), torch.randn(8, 1, 51)
    >>> gain, bias = torch.rand(8, 116), torch.randn(8, 116)
    >>> ref = F.leaky_relu(F.layer_norm(F.max_pool1d(F.conv1d(x[:, None], h).abs(), 3), (116,)) * gain + bias, 0.2)
    >>> torch.allclose(sinc_block(x, h, 3, gain, bias, 0.2), ref, atol=1e-4)
    True
    """
    dtype = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    x, filters = x.to(dtype), filters.reshape(filters.shape[0], -1).to(dtype)
    gain, bias = gain.to(dtype).contiguous(), bias.to(dtype).contiguous()
    if not cpu_kernels.available(x):
        return norm_act(sinc_abs_maxpool(x, filters, pool), gain, bias, negative_slope, norm_over)
    group_rows = 1 if norm_over == "time" else gain.shape[0]
    x = x.contiguous()
    if torch.is_grad_enabled() and any(t.requires_grad for t in (x, filters, gain, bias)):
        return _SincBlock.apply(x, filters, gain, bias, pool, negative_slope, group_rows)
    return _sinc_block_inference(x, filters, pool, gain, bias, negative_slope, group_rows, scratch_output)


def norm_act(x, gain, bias, negative_slope, norm_over="time"):
    """``leaky_relu(layer_norm(x) * gain + bias)`` in PyTorch, for ``(batch, channels, time)`` maps.

    LayerNorm over time per channel (``norm_over="time"``) or over the whole
    map (``"channel_time"``); the affine part is one fused call, the
    activation in place.
    """
    gain, bias = gain.to(x.dtype), bias.to(x.dtype)
    if norm_over == "time":
        x = torch.addcmul(bias, F.layer_norm(x, x.shape[-1:]), gain)
    else:
        x = F.layer_norm(x, x.shape[-2:], gain, bias)
    return F.leaky_relu(x, negative_slope, inplace=True)


def _sinc_block_inference(x, h, pool, gain, bias, slope, group_rows, scratch_output=False):
    """Forward only: nothing is kept for a backward pass."""
    batch = x.shape[0]
    channels, pooled = gain.shape
    spectra = _Spectra(x, h)
    if scratch_output:
        out = scratch_channels_last(x, batch, channels, pooled)
    else:
        out = _channels_last(x, batch, channels, pooled)
    step = min(CPU_MICRO_BATCH, batch)
    rstd = x.new_empty(step, channels // group_rows)  # scratch, reused by every micro-batch
    for i in range(0, batch, step):
        n = min(step, batch - i)
        cpu_kernels.pool_norm_act(spectra.output(i, i + n), pool, gain, bias, slope, LAYER_NORM_EPS,
                                  group_rows, out[i : i + n], rstd[:n])
    return out


def _channels_last(like, batch, channels, length):
    """An empty ``(batch, channels, length)`` tensor stored channels-last (channels fastest)."""
    return like.new_empty(batch, length, channels).transpose(1, 2)


_SCRATCH = threading.local()


def scratch_channels_last(like, batch, channels, length):
    """Like :func:`_channels_last`, but in a buffer that this thread reuses on every call.

    With glibc's default settings a fresh multi-megabyte tensor is often new
    memory from the system, and every one of its pages faults on first
    write: for the sinc block's output in evaluation (20 MB per 64 TIMIT
    chunks) that cost more than a tenth of the encoder's time. The buffer
    grows to the largest request and is kept per thread, so concurrent
    threads never share one; its contents are overwritten by the next call.

    Example
    -------
    >>> a = scratch_channels_last(torch.empty(0), 2, 3, 4)
    >>> b = scratch_channels_last(torch.empty(0), 1, 3, 4)
    >>> a.shape, a.stride(1), b.data_ptr() == a.data_ptr()
    (torch.Size([2, 3, 4]), 1, True)
    """
    size = batch * channels * length
    buffer = getattr(_SCRATCH, "buffer", None)
    if buffer is None or buffer.numel() < size or buffer.dtype != like.dtype or buffer.device != like.device:
        buffer = _SCRATCH.buffer = like.new_empty(size)
    return buffer[:size].view(batch, length, channels).transpose(1, 2)


def _scatter_to_winners(code, grad_out, time, pool):
    """The gradient of the max-pool of |y| with respect to ``y``: each window's signed winner
    (``code`` = (position + 1) * sign, 0 for an all-zero window) gets its gradient."""
    c = code.long()
    batch, channels, pooled = c.shape
    grad_y = grad_out.new_zeros(batch, channels, time)
    windows = grad_y[..., : pooled * pool].unflatten(-1, (pooled, pool))
    position = (c.abs() - 1).clamp(min=0).unsqueeze(-1)
    windows.scatter_(-1, position, (grad_out * torch.sign(c).to(grad_out.dtype)).unsqueeze(-1))
    return grad_y


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
    spectra = _Spectra(x, h)
    out = x.new_empty(batch, h.shape[0], pooled)
    step = _micro_batch(x.device)
    for i in range(0, batch, step):
        y = spectra.output(i, i + step)
        # Pooling the whole length and dropping the tail avoids a copy of y.
        out[i : i + step] = F.max_pool1d(y.abs_(), pool)[..., :pooled]
    return out


class _MLPCriticGrid(torch.autograd.Function):
    """``(leaky_relu(p[:, None] + q[None]) * w).sum(-1)`` by the native kernels."""

    @staticmethod
    def forward(ctx, p, q, w, slope):
        ctx.save_for_backward(p, q, w)
        ctx.slope = slope
        return cpu_kernels.mlp_grid(p, q, w, slope)

    @staticmethod
    def backward(ctx, grad):
        p, q, w = ctx.saved_tensors
        return (*cpu_kernels.mlp_grid_backward(p, q, w, grad, ctx.slope), None)


def mlp_critic_grid(p, q, weight, bias, negative_slope):
    """Logits of a one-hidden-layer MLP critic for every pair (i, j).

    ``F.linear(F.leaky_relu(p[:, None] + q[None], slope), weight, bias)[..., 0]``
    where ``p`` ``(rows, hidden)`` and ``q`` ``(cols, hidden)`` are the first
    layer's two halves applied to each embedding. On CPU the native kernels
    compute it without storing the ``(rows, cols, hidden)`` activations.

    Example
    -------
    >>> p, q, w, b = torch.randn(3, 8), torch.randn(4, 8), torch.randn(1, 8), torch.randn(1)
    >>> ref = F.linear(F.leaky_relu(p[:, None] + q[None], 0.2), w, b)[..., 0]
    >>> torch.allclose(mlp_critic_grid(p, q, w, b, 0.2), ref, atol=1e-5)
    True
    """
    tensors = (p, q, weight)
    if cpu_kernels.available(p) and all(t.dtype == p.dtype and t.device == p.device for t in tensors):
        w = weight.reshape(-1).contiguous()
        return _MLPCriticGrid.apply(p.contiguous(), q.contiguous(), w, negative_slope) + bias
    hidden = F.leaky_relu(p.unsqueeze(1) + q.unsqueeze(0), negative_slope)
    return F.linear(hidden, weight, bias).squeeze(-1)


class _ConvBlockTail(torch.autograd.Function):
    """``leaky_relu(layer_norm(max_pool(y)) * gain + bias)`` on a channels-last convolution output."""

    @staticmethod
    def forward(ctx, y, gain, bias, pool, slope, whole):
        batch, channels, _, time = y.shape
        pooled = gain.shape[1]
        gain_t, bias_t = gain.t().contiguous(), bias.t().contiguous()
        out = y.new_empty(batch, pooled, channels)
        xhat = torch.empty_like(out)
        code = torch.empty(batch, pooled, channels, dtype=torch.int8)
        rstd = y.new_empty(batch, 1 if whole else channels)
        cpu_kernels.channels_last_pool_norm_act(_time_by_channels(y), pool, gain_t, bias_t, slope,
                                                LAYER_NORM_EPS, whole, out, xhat, rstd, code)
        ctx.save_for_backward(xhat, rstd, code, gain_t, bias_t)
        ctx.options = (pool, slope, whole, time)
        return out.transpose(1, 2)

    @staticmethod
    def backward(ctx, grad_out):
        xhat, rstd, code, gain_t, bias_t = ctx.saved_tensors
        pool, slope, whole, time = ctx.options
        grad_y, grad_gain, grad_bias = cpu_kernels.channels_last_pool_norm_act_backward(
            grad_out.transpose(1, 2).contiguous(), xhat, rstd, code, gain_t, bias_t, slope, whole, time, pool)
        batch, _, channels = grad_y.shape
        grad_y = grad_y.view(batch, 1, time, channels).permute(0, 3, 1, 2)  # channels-last (B, C, 1, T)
        return grad_y, grad_gain.t().contiguous(), grad_bias.t().contiguous(), None, None, None


def conv_block_tail(y, pool, gain, bias, negative_slope, norm_over="time"):
    """``leaky_relu(layer_norm(max_pool1d(y, pool)) * gain + bias)`` for a convolution's output.

    ``y`` is the ``(batch, channels, 1, time)`` channels-last output of
    :func:`conv2d_channels_last`; ``gain`` and ``bias`` are ``(channels,
    pooled)``. The result is ``(batch, channels, pooled)``, stored
    channels-last, the layout the next convolution reads. On CPU one native
    pass (:func:`sincmi.cpu_kernels.channels_last_pool_norm_act`) replaces the
    max-pool, the layout copies, the LayerNorm, the affine part and the
    activation; elsewhere they are PyTorch's.

    Example
    -------
    >>> x, w = torch.randn(2, 4, 20), torch.randn(3, 4, 5)
    >>> gain, bias = torch.rand(3, 5), torch.randn(3, 5)
    >>> ref = F.leaky_relu(F.layer_norm(F.max_pool1d(F.conv1d(x, w), 3), (5,)) * gain + bias, 0.2)
    >>> torch.allclose(conv_block_tail(conv2d_channels_last(x, w), 3, gain, bias, 0.2), ref, atol=1e-5)
    True
    """
    batch, channels, _, time = y.shape
    if gain.shape != (channels, time // pool) or bias.shape != gain.shape:
        raise ValueError(f"gain and bias must be {(channels, time // pool)} for this input, got "
                         f"{tuple(gain.shape)} and {tuple(bias.shape)}")
    native = cpu_kernels.available(y) and gain.dtype == bias.dtype == y.dtype
    if not native:
        x = F.max_pool2d(y, (1, pool)).squeeze(2).contiguous()
        return norm_act(x, gain, bias, negative_slope, norm_over)
    whole = norm_over != "time"
    y = y.contiguous(memory_format=torch.channels_last)
    if torch.is_grad_enabled() and any(t.requires_grad for t in (y, gain, bias)):
        return _ConvBlockTail.apply(y, gain, bias, pool, negative_slope, whole)
    out = y.new_empty(batch, time // pool, channels)
    cpu_kernels.channels_last_pool_norm_act(_time_by_channels(y), pool, gain.t().contiguous(),
                                            bias.t().contiguous(), negative_slope, LAYER_NORM_EPS, whole, out)
    return out.transpose(1, 2)


def _time_by_channels(y):
    """The ``(batch, time, channels)`` view of a channels-last ``(batch, channels, 1, time)`` tensor."""
    return y.permute(0, 2, 3, 1).reshape(y.shape[0], y.shape[3], y.shape[1])


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
