"""The fast encoder computes the same function as the plain one.

In float64 the two agree to rounding (1e-10): the FFT correlation, the fused
|.| + max-pool and the channels-last convolutions are exact rewrites. In
float32 the outputs agree to ~1e-6; a gradient can differ more locally where
the FFT's rounding (~1e-6) flips which of two near-equal samples wins a
max-pool window (the gradient then goes to the other sample), so float32
gradients are compared by relative L2 norm with a 1e-2 tolerance.
"""

import pytest
import torch
import torch.nn.functional as F

from sincmi import fast_ops
from sincmi.encoder import SincNetEncoder

SMALL = dict(chunk_size=800, sinc_filters=8, sinc_kernel=51, conv_channels=[6, 5], conv_kernels=[5, 3],
             fc_sizes=[32, 16])
TIMIT = dict(chunk_size=3200, sinc_filters=80, sinc_kernel=251, conv_channels=[60, 60], conv_kernels=[5, 5],
             fc_sizes=[256, 128])


def _outputs_and_grads(model, chunks):
    model.zero_grad()
    out = model(chunks)
    weights = torch.linspace(-1, 1, out.shape[1], dtype=out.dtype)
    (out * weights).sum().backward()
    return out.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


def _pair(config, dtype, norm_over="time"):
    torch.manual_seed(0)
    ref = SincNetEncoder(**config, norm_over=norm_over, implementation="reference").to(dtype)
    fast = SincNetEncoder(**config, norm_over=norm_over, implementation="fast").to(dtype)
    fast.load_state_dict(ref.state_dict())  # same parameters: checkpoints load into either
    return ref, fast


@pytest.mark.parametrize("config", [SMALL, TIMIT], ids=["small", "timit"])
@pytest.mark.parametrize("norm_over", ["time", "channel_time"])
def test_fast_encoder_equals_reference_in_float64(config, norm_over):
    ref, fast = _pair(config, torch.float64, norm_over)
    chunks = torch.randn(11, config["chunk_size"], dtype=torch.float64)  # not a multiple of the micro-batch
    out_ref, grads_ref = _outputs_and_grads(ref, chunks)
    out_fast, grads_fast = _outputs_and_grads(fast, chunks)
    torch.testing.assert_close(out_fast, out_ref, rtol=1e-10, atol=1e-10)
    for name, grad in grads_ref.items():
        torch.testing.assert_close(grads_fast[name], grad, rtol=1e-8, atol=1e-10, msg=name)


def test_fast_encoder_close_to_reference_in_float32():
    ref, fast = _pair(TIMIT, torch.float32)
    chunks = torch.randn(16, 3200)
    out_ref, grads_ref = _outputs_and_grads(ref, chunks)
    out_fast, grads_fast = _outputs_and_grads(fast, chunks)
    assert ((out_fast - out_ref).norm() / out_ref.norm()).item() < 1e-5
    for name, grad in grads_ref.items():
        if grad.norm() > 1e-3:  # conv biases before a norm have ~0 gradient
            assert ((grads_fast[name] - grad).norm() / grad.norm()).item() < 1e-2, name


def test_fast_encoder_eval_mode_and_no_grad_path():
    ref, fast = _pair(SMALL, torch.float64)
    ref.eval(), fast.eval()
    chunks = torch.randn(9, 800, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(fast(chunks), ref(chunks), rtol=1e-10, atol=1e-10)


def test_inference_with_the_reused_sinc_buffer_equals_fresh_memory():
    """In inference the sinc block writes into a per-thread buffer that later calls
    overwrite; results already returned must not change, and must equal those
    computed with fresh memory."""
    torch.manual_seed(0)
    fast = SincNetEncoder(**SMALL, implementation="fast").eval()
    first, second = torch.randn(70, 800), torch.randn(5, 800)  # 70: two conv micro-batches
    with torch.no_grad():
        out_first = fast(first)
        kept = out_first.clone()
        out_second = fast(second)
        assert torch.equal(out_first, kept)
        x = fast.input_norm(first).unsqueeze(1)
        block = fast.conv_blocks[0]
        fresh = block(x, scratch_output=False)
        reused = block(x, scratch_output=True)
        assert torch.equal(reused, fresh)
        block(fast.input_norm(second).unsqueeze(1), scratch_output=True)
        assert not torch.equal(reused[:5], fresh[:5])  # the buffer was overwritten, as documented
        expected = torch.cat([fast.fc(fast._conv_stack(c[None]).flatten(1)) for c in fast.input_norm(second)])
    torch.testing.assert_close(out_second, expected, rtol=1e-5, atol=1e-6)


def test_sinc_output_is_not_a_reused_buffer_when_it_is_the_encoder_output():
    """With no convolution after the sinc block its output leaves the encoder: fresh memory."""
    fast = SincNetEncoder(chunk_size=800, sinc_filters=8, sinc_kernel=51, conv_channels=[], conv_kernels=[],
                          fc_sizes=[16], implementation="fast").eval()
    with torch.no_grad():
        a = fast.conv_features(torch.randn(3, 800))
        kept = a.clone()
        fast.conv_features(torch.randn(3, 800))
    assert torch.equal(a, kept)


def test_scratch_buffers_are_per_thread():
    import threading

    pointers = {}
    # Each thread holds its buffer until both have one: a thread's buffer is freed when it ends, and the
    # next thread's could then reuse that address although the buffers are per thread.
    both_allocated = threading.Barrier(2)

    def grab(name):
        pointers[name] = fast_ops.scratch_channels_last(torch.empty(0), 4, 3, 5).data_ptr()
        if name != "main":
            both_allocated.wait(timeout=60)

    grab("main")  # first, so that its buffer lives throughout too
    threads = [threading.Thread(target=grab, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(pointers.values())) == 3


@pytest.mark.parametrize("batch", [1, 8, 13])
def test_sinc_abs_maxpool_matches_plain_layers(batch):
    torch.manual_seed(batch)
    x = torch.randn(batch, 700, dtype=torch.float64, requires_grad=True)
    h = torch.randn(6, 1, 41, dtype=torch.float64, requires_grad=True)
    g = torch.randn(batch, 6, (700 - 41 + 1) // 3, dtype=torch.float64)
    ref = F.max_pool1d(F.conv1d(x.unsqueeze(1), h).abs(), 3)
    grad_x_ref, grad_h_ref = torch.autograd.grad((ref * g).sum(), (x, h))
    fast = fast_ops.sinc_abs_maxpool(x, h, 3)
    grad_x, grad_h = torch.autograd.grad((fast * g).sum(), (x, h))
    torch.testing.assert_close(fast, ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(grad_x, grad_x_ref, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(grad_h, grad_h_ref, rtol=1e-9, atol=1e-10)


def test_sinc_abs_maxpool_gradient_is_zero_where_the_output_is_zero():
    """|.| has gradient sign(0) = 0 at 0, as torch's abs: silent input gives no gradient."""
    x = torch.zeros(2, 300, dtype=torch.float64, requires_grad=True)
    h = torch.randn(4, 1, 31, dtype=torch.float64, requires_grad=True)
    out = fast_ops.sinc_abs_maxpool(x, h, 3)
    grad_x, grad_h = torch.autograd.grad(out.sum(), (x, h))
    assert out.abs().max().item() < 1e-12
    assert grad_h.abs().max().item() < 1e-12
    assert grad_x.abs().max().item() < 1e-12


def test_conv2d_channels_last_matches_conv1d():
    x = torch.randn(3, 8, 50, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 8, 5, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, dtype=torch.float64, requires_grad=True)
    g = torch.randn(3, 5, 46, dtype=torch.float64)
    ref_grads = torch.autograd.grad((F.conv1d(x, w, b) * g).sum(), (x, w, b))
    out = fast_ops.conv2d_channels_last(x, w, b).squeeze(2)
    grads = torch.autograd.grad((out * g).sum(), (x, w, b))
    torch.testing.assert_close(out, F.conv1d(x, w, b))
    for grad, ref in zip(grads, ref_grads):
        torch.testing.assert_close(grad, ref)
    # An input already channels-last (channels varying fastest) is used as it is.
    x_cl = torch.randn(3, 50, 8, dtype=torch.float64).transpose(1, 2)
    torch.testing.assert_close(fast_ops.conv2d_channels_last(x_cl, w, b).squeeze(2), F.conv1d(x_cl, w, b))


def test_unknown_implementation_is_rejected():
    with pytest.raises(ValueError, match="implementation must be one of"):
        SincNetEncoder(**SMALL, implementation="turbo")
