"""The native CPU kernels compute what the PyTorch layers they replace compute.

Each kernel is checked against plain PyTorch on values where the answer is
known (ties, zeros, NaN), in float32 and float64, for the pool size SincNet
uses (3, a dedicated vectorised loop) and others (the general loop); the fused
sinc block is checked, outputs and gradients, with the kernels and with its
PyTorch fallback.
"""

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from sincmi import cpu_kernels, fast_ops

needs_kernels = pytest.mark.skipif(
    not cpu_kernels.available(torch.zeros(1)), reason="native kernels not built (no C compiler?)"
)


def _plain_abs_max_pool(y, pool):
    """Output and (position + 1) * sign code of each window, by PyTorch."""
    pooled = y.shape[-1] // pool
    windows = y[..., : pooled * pool].unflatten(-1, (pooled, pool))
    value, position = windows.abs().max(-1)
    sign = torch.sign(windows.gather(-1, position.unsqueeze(-1)).squeeze(-1))
    return value, ((position + 1) * sign.long()).to(torch.int8)


def _pool_codes(y, pool):
    """The fused forward kernel's output and winner codes for one channel (gain 1, bias 0, no slope)."""
    pooled = y.shape[-1] // pool
    out = torch.empty(1, 1, pooled, dtype=y.dtype)
    xhat, code = torch.empty_like(out), torch.empty(1, 1, pooled, dtype=torch.int8)
    ones, zeros = torch.ones(1, pooled, dtype=y.dtype), torch.zeros(1, pooled, dtype=y.dtype)
    cpu_kernels.pool_norm_act(y, pool, ones, zeros, 1.0, 1e-5, 1, out, torch.empty(1, dtype=y.dtype), xhat, code)
    return code


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("pool", [2, 3, 4])
def test_pooling_winners_match_pytorch(dtype, pool):
    torch.manual_seed(pool)
    y = torch.randn(1, 1, 61, dtype=dtype)
    assert torch.equal(_pool_codes(y, pool), _plain_abs_max_pool(y, pool)[1])


@needs_kernels
@pytest.mark.parametrize("pool", [3, 4])
def test_pooling_ties_and_silence(pool):
    y = torch.tensor([[[2.0, -2.0, 1.0, 0.0] * 3 + [0.0, 0.0, 0.0, 0.0] + [1.0, -5.0, 5.0, 0.0]]])
    y = y[..., : (y.shape[-1] // pool) * pool].contiguous()
    code = _pool_codes(y, pool)
    # A tie goes to the first sample of the window, as in max_pool1d; silence has code 0.
    assert torch.equal(code, _plain_abs_max_pool(y, pool)[1])
    assert (code == 0).any() and (code == 1).any()


def _norm_act(y, gain, bias, norm_over, slope=0.2):
    """Layer norm over time (or channels and time), the affine map, LeakyReLU: the plain tail of a block."""
    dims = y.shape[-1:] if norm_over == "time" else y.shape[-2:]
    return F.leaky_relu(F.layer_norm(y, dims) * gain + bias, slope)


def _plain_block(x, h, gain, bias, norm_over, pool=3, slope=0.2):
    return _norm_act(F.max_pool1d(F.conv1d(x.unsqueeze(1), h.unsqueeze(1)).abs(), pool), gain, bias, norm_over, slope)


@pytest.fixture(params=[True, False], ids=["native", "pytorch"])
def native(request, monkeypatch):
    """Each test twice: the native kernels (skipped when not built), then the PyTorch fallback."""
    if request.param and not cpu_kernels.available(torch.zeros(1)):
        pytest.skip("native kernels not built")
    if not request.param:
        monkeypatch.setattr(cpu_kernels, "available", lambda tensor: False)
    return request.param


@pytest.mark.parametrize("norm_over", ["time", "channel_time"])
@pytest.mark.parametrize("batch", [1, 13])
def test_sinc_block_matches_plain_layers_in_float64(native, norm_over, batch):
    torch.manual_seed(batch)
    f64 = dict(dtype=torch.float64, requires_grad=True)
    x, h = torch.randn(batch, 700, **f64), torch.randn(6, 41, **f64)
    pooled = (700 - 41 + 1) // 3
    gain, bias = (1 + 0.5 * torch.randn(6, pooled, dtype=torch.float64)).requires_grad_(), torch.randn(6, pooled, **f64)
    g = torch.randn(batch, 6, pooled, dtype=torch.float64)
    inputs = (x, h, gain, bias)
    ref = _plain_block(x, h, gain, bias, norm_over)
    ref_grads = torch.autograd.grad((ref * g).sum(), inputs)
    out = fast_ops.sinc_block(x, h, 3, gain, bias, 0.2, norm_over)
    grads = torch.autograd.grad((out * g).sum(), inputs)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    for name, grad, expected in zip("x h gain bias".split(), grads, ref_grads):
        torch.testing.assert_close(grad, expected, rtol=1e-9, atol=1e-10, msg=name)
    with torch.no_grad():  # the forward-only path
        torch.testing.assert_close(fast_ops.sinc_block(x, h, 3, gain, bias, 0.2, norm_over), ref)


@needs_kernels
def test_sinc_block_output_is_channels_last_for_the_next_convolution():
    x, h = torch.randn(2, 400), torch.randn(4, 31)
    gain, bias = torch.ones(4, 123), torch.zeros(4, 123)
    out = fast_ops.sinc_block(x, h, 3, gain, bias, 0.2)
    assert out.stride() == (4 * 123, 1, 4)
    assert out.unsqueeze(2).is_contiguous(memory_format=torch.channels_last)


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("channels", [5, 16, 37])  # fewer than, exactly, not a multiple of 16 rows per tile
@pytest.mark.parametrize("group_rows", ["one", "all"])
def test_pool_norm_act_writes_the_same_values_in_either_layout(dtype, channels, group_rows):
    # Channels-last output goes through a row-major tile buffer; the values
    # must be bit for bit those written directly row by row.
    y = torch.randn(3, channels, 301, dtype=dtype)
    gain, bias = torch.rand(channels, 100, dtype=dtype), torch.randn(channels, 100, dtype=dtype)
    rows = 1 if group_rows == "one" else channels
    results = []
    for out in (torch.empty(3, channels, 100, dtype=dtype), fast_ops._channels_last(y, 3, channels, 100)):
        out.fill_(float("nan"))  # an element left unwritten fails the comparison
        xhat, code = torch.empty(3, channels, 100, dtype=dtype), torch.empty(3, channels, 100, dtype=torch.int8)
        rstd = torch.empty(3 * channels // rows, dtype=dtype)
        cpu_kernels.pool_norm_act(y, 3, gain, bias, 0.2, 1e-5, rows, out, rstd, xhat, code)
        results.append((out, xhat, rstd, code))
    assert results[1][0].stride()[1] == 1  # channels-last
    for direct, tiled in zip(*results):
        assert torch.equal(direct, tiled)
    # Inference (nothing kept for a backward pass) writes the same outputs.
    for out in (torch.empty(3, channels, 100, dtype=dtype), fast_ops._channels_last(y, 3, channels, 100)):
        out.fill_(float("nan"))
        cpu_kernels.pool_norm_act(y, 3, gain, bias, 0.2, 1e-5, rows, out, torch.empty_like(results[0][2]))
        assert torch.equal(out, results[0][0])
    expected = F.leaky_relu(F.layer_norm(_plain_abs_max_pool(y, 3)[0], (100,) if rows == 1 else (channels, 100))
                            * gain + bias, 0.2)
    torch.testing.assert_close(results[1][0], expected)


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("channels", [5, 16, 37])
@pytest.mark.parametrize("group_rows", ["one", "all"])
def test_pool_norm_act_backward_reads_either_gradient_layout(dtype, channels, group_rows):
    # A channels-last gradient (what the next convolution's backward returns)
    # is transposed into row-major tiles first: the results must be bit for
    # bit those of the same values given row-major, and equal autograd's.
    torch.manual_seed(channels)
    y = torch.randn(3, channels, 301, dtype=dtype, requires_grad=True)
    gain, bias = torch.rand(channels, 100, dtype=dtype) + 0.5, torch.randn(channels, 100, dtype=dtype)
    rows = 1 if group_rows == "one" else channels
    out, xhat = torch.empty(3, channels, 100, dtype=dtype), torch.empty(3, channels, 100, dtype=dtype)
    code, rstd = torch.empty(3, channels, 100, dtype=torch.int8), torch.empty(3 * channels // rows, dtype=dtype)
    cpu_kernels.pool_norm_act(y.detach(), 3, gain, bias, 0.2, 1e-5, rows, out, rstd, xhat, code)
    grad_row_major = torch.randn(3, channels, 100, dtype=dtype)
    grad_channels_last = fast_ops._channels_last(y, 3, channels, 100).copy_(grad_row_major)
    assert grad_channels_last.stride()[1] == 1
    results = [cpu_kernels.pool_norm_act_backward(g, xhat, rstd, code, gain, bias, 0.2, rows, 301, 3)
               for g in (grad_row_major, grad_channels_last)]
    for direct, tiled in zip(*results):
        assert torch.equal(direct, tiled)
    dims = (100,) if rows == 1 else (channels, 100)
    plain = F.leaky_relu(F.layer_norm(F.max_pool1d(y.abs(), 3), dims) * gain + bias, 0.2)
    (expected,) = torch.autograd.grad(plain, y, grad_row_major)
    tolerance = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(results[1][1], expected, **tolerance)


def _resident_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@needs_kernels
@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")
def test_pool_norm_act_backward_frees_its_scratch_memory():
    # Each call allocates per-thread scratch rows; a version that never freed
    # them leaked pooled * 8 bytes per thread per call (here >= 400 kB, so
    # >= 40 MB over 100 calls).
    pooled = 50_000
    y = torch.randn(1, 1, 3 * pooled, dtype=torch.float64)
    gain, bias = torch.ones(1, pooled, dtype=torch.float64), torch.zeros(1, pooled, dtype=torch.float64)
    out, xhat = torch.empty(1, 1, pooled, dtype=torch.float64), torch.empty(1, 1, pooled, dtype=torch.float64)
    code, rstd = torch.empty(1, 1, pooled, dtype=torch.int8), torch.empty(1, dtype=torch.float64)
    cpu_kernels.pool_norm_act(y, 3, gain, bias, 0.2, 1e-5, 1, out, rstd, xhat, code)
    grad = torch.randn(1, 1, pooled, dtype=torch.float64)
    for _ in range(5):  # warm up the allocator
        cpu_kernels.pool_norm_act_backward(grad, xhat, rstd, code, gain, bias, 0.2, 1, 3 * pooled, 3)
    before = _resident_bytes()
    for _ in range(100):
        cpu_kernels.pool_norm_act_backward(grad, xhat, rstd, code, gain, bias, 0.2, 1, 3 * pooled, 3)
    assert _resident_bytes() - before < 10 * 2**20


def _plain_conv_block(x, w, gain, bias, norm_over, pool, slope=0.2):
    return _norm_act(F.max_pool1d(F.conv1d(x, w), pool), gain, bias, norm_over, slope)


@pytest.mark.parametrize("norm_over", ["time", "channel_time"])
@pytest.mark.parametrize("pool", [3, 4])
def test_conv_block_tail_matches_plain_layers_in_float64(native, norm_over, pool):
    torch.manual_seed(pool)
    f64 = dict(dtype=torch.float64, requires_grad=True)
    x, w = torch.randn(5, 7, 62, **f64), torch.randn(9, 7, 5, **f64)  # 58 outputs: a tail the pool drops
    pooled = 58 // pool
    gain = (1 + 0.5 * torch.randn(9, pooled, dtype=torch.float64)).requires_grad_()
    bias = torch.randn(9, pooled, **f64)
    g = torch.randn(5, 9, pooled, dtype=torch.float64)
    inputs = (x, w, gain, bias)
    ref = _plain_conv_block(x, w, gain, bias, norm_over, pool)
    ref_grads = torch.autograd.grad((ref * g).sum(), inputs)
    out = fast_ops.conv_block_tail(fast_ops.conv2d_channels_last(x, w), pool, gain, bias, 0.2, norm_over)
    grads = torch.autograd.grad((out * g).sum(), inputs)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    for name, grad, expected in zip("x w gain bias".split(), grads, ref_grads):
        torch.testing.assert_close(grad, expected, rtol=1e-11, atol=1e-12, msg=name)
    with torch.no_grad():  # the forward-only path
        out = fast_ops.conv_block_tail(fast_ops.conv2d_channels_last(x, w), pool, gain, bias, 0.2, norm_over)
        torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    if native:  # channels-last, the layout the next convolution reads
        assert out.unsqueeze(2).is_contiguous(memory_format=torch.channels_last)


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_channels_last_pool_follows_max_pool_on_ties_and_nan(dtype):
    # Channel 0: ties (the first sample of a window wins, as in max_pool2d);
    # channel 1: a NaN (its window outputs NaN); channel 2: random values.
    y = torch.randn(1, 3, 12, dtype=dtype)
    y[0, 0] = torch.tensor([1.0, 1.0, 0.0, -2.0, 3.0, 3.0, 5.0, 5.0, 5.0, 0.0, 0.0, 0.0])
    y[0, 1, 4] = float("nan")
    y = y.requires_grad_()
    gain, bias = torch.ones(3, 4, dtype=dtype), torch.zeros(3, 4, dtype=dtype)
    g = torch.randn(1, 3, 4, dtype=dtype)
    y_cl = y.unsqueeze(2).contiguous(memory_format=torch.channels_last)
    pooled_ref = F.max_pool1d(y, 3)
    out = fast_ops.conv_block_tail(y_cl, 3, gain, bias, 0.2)
    assert torch.equal(out.isnan(), F.leaky_relu(F.layer_norm(pooled_ref, (4,)), 0.2).isnan())
    assert out[0, 1].isnan().all()  # the NaN spreads through its channel's LayerNorm, as in PyTorch
    # Gradients of the channels without a NaN go to the same winners as max_pool1d's.
    finite = [0, 2]
    (grad,) = torch.autograd.grad((out[:, finite] * g[:, finite]).sum(), y)
    ref = F.leaky_relu(F.layer_norm(pooled_ref[:, finite], (4,)), 0.2)
    (expected,) = torch.autograd.grad((ref * g[:, finite]).sum(), y)
    torch.testing.assert_close(grad[:, finite], expected[:, finite])
    assert torch.equal(grad[0, 0] != 0, expected[0, 0] != 0)


def test_conv_block_tail_rejects_a_gain_of_the_wrong_length():
    y = torch.randn(2, 4, 1, 30).contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match=r"gain and bias must be \(4, 10\)"):
        fast_ops.conv_block_tail(y, 3, torch.ones(4, 9), torch.zeros(4, 9), 0.2)


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
@pytest.mark.parametrize("wanted", ["both", "x", "h"])
def test_spectral_gradients_match_the_pytorch_products(dtype, wanted):
    gen = torch.Generator().manual_seed(0)
    g, h, x = (torch.randn(*shape, dtype=dtype, generator=gen) for shape in [(5, 7, 131), (7, 131), (5, 131)])
    h_conj = h.conj().resolve_conj()
    grad_x = torch.full((5, 131), float("nan"), dtype=dtype) if wanted != "h" else None  # written
    start = torch.randn(7, 131, dtype=dtype, generator=gen)
    grad_h = start.clone() if wanted != "x" else None  # accumulated
    cpu_kernels.spectral_gradients(g, h_conj, x, grad_x, grad_h)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.complex64 else dict(rtol=1e-12, atol=1e-12)
    if grad_x is not None:
        torch.testing.assert_close(grad_x, (g * h).sum(1), **tol)
    if grad_h is not None:
        torch.testing.assert_close(grad_h, start + (g.conj() * x[:, None]).sum(0), **tol)
    with pytest.raises(ValueError, match="lazy conjugate"):
        cpu_kernels.spectral_gradients(g, h.conj(), x, grad_x, grad_h)


def _run_python(code, **env):
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
        env={**os.environ, **env},
    )


def test_without_a_compiler_the_pytorch_code_is_used(tmp_path):
    code = (
        "import warnings, torch\n"
        "from sincmi import cpu_kernels, fast_ops\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    assert not cpu_kernels.available(torch.zeros(1))\n"
        "assert any('could not build' in str(w.message) for w in caught), caught\n"
        "x, h = torch.randn(2, 400, dtype=torch.float64), torch.randn(4, 1, 31, dtype=torch.float64)\n"
        "ref = torch.nn.functional.max_pool1d(torch.nn.functional.conv1d(x[:, None], h).abs(), 3)\n"
        "assert torch.allclose(fast_ops.sinc_abs_maxpool(x, h, 3), ref)\n"
        "print('fallback ok')\n"
    )
    result = _run_python(code, CC=str(tmp_path / "no-such-compiler"), SINCMI_CACHE=str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "fallback ok" in result.stdout


def test_sincmi_native_0_disables_the_kernels(tmp_path):
    result = _run_python(
        "import torch; from sincmi import cpu_kernels; print(cpu_kernels.available(torch.zeros(1)))",
        SINCMI_NATIVE="0", SINCMI_CACHE=str(tmp_path),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
    assert not list(tmp_path.iterdir())  # nothing was built


@needs_kernels
def test_library_is_built_once_into_the_cache(tmp_path):
    code = "import torch; from sincmi import cpu_kernels; print(cpu_kernels.available(torch.zeros(1)))"
    for _ in range(2):
        result = _run_python(code, SINCMI_CACHE=str(tmp_path))
        assert result.stdout.strip() == "True", result.stderr
    built = list((tmp_path / "kernels").iterdir())
    assert len(built) == 1 and built[0].suffix == ".so"


@pytest.mark.parametrize("native", [True, False], ids=["native", "pytorch"])
def test_mlp_critic_grid_matches_plain_layers_in_float64(native, monkeypatch):
    if native and not cpu_kernels.available(torch.zeros(1)):
        pytest.skip("native kernels not built")
    if not native:
        monkeypatch.setattr(cpu_kernels, "available", lambda tensor: False)
    torch.manual_seed(0)
    f64 = dict(dtype=torch.float64, requires_grad=True)
    p, q = torch.randn(5, 24, **f64), torch.randn(7, 24, **f64)
    w, b = torch.randn(1, 24, **f64), torch.randn(1, **f64)
    g = torch.randn(5, 7, dtype=torch.float64)
    g[:, 2] = 0  # pairs that are not used (the kernel skips them)
    inputs = (p, q, w, b)
    ref = F.linear(F.leaky_relu(p.unsqueeze(1) + q.unsqueeze(0), 0.2), w, b).squeeze(-1)
    ref_grads = torch.autograd.grad((ref * g).sum(), inputs)
    out = fast_ops.mlp_critic_grid(p, q, w, b, 0.2)
    grads = torch.autograd.grad((out * g).sum(), inputs)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    for name, grad, expected in zip("p q w b".split(), grads, ref_grads):
        torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-12, msg=name)


def test_kernel_signatures_are_checked_against_the_c_source():
    with open(cpu_kernels.SOURCE) as f:
        source = f.read()
    cpu_kernels.check_signatures(source)  # the shipped source matches
    declared = cpu_kernels.declared_signatures(source)
    assert set(declared) == set(cpu_kernels._SIGNATURES)
    # An argument changed in C, a kernel added without a signature: both are named.
    changed = source.replace("int64_t hidden, double slope, T *logits", "int hidden, double slope, T *logits")
    assert changed != source
    with pytest.raises(RuntimeError, match="mlp_grid: C takes"):
        cpu_kernels.check_signatures(changed)
    added = source + "\nvoid extra_##SUFFIX(const T *x, int threads) {\n}\n"
    with pytest.raises(RuntimeError, match="extra: declared in C but not in _SIGNATURES"):
        cpu_kernels.check_signatures(added)


@needs_kernels
def test_a_failed_allocation_in_a_kernel_raises_memory_error():
    # No chunk to process (batch 0), but working memory for 2**58 channels: malloc fails.
    x = torch.zeros(1)
    ptr = cpu_kernels._pointer(x)
    with pytest.raises(MemoryError, match="cl_pool_norm_act"):
        cpu_kernels._call("cl_pool_norm_act", torch.float32, ptr, 0, 1, 2**58, 1, 1, 0, ptr, ptr, 0.2, 1e-5,
                          ptr, ptr, ptr, ptr, 1)
