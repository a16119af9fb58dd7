"""Native CPU kernels for the SincNet encoder and the MLP critic, compiled on first use.

``cpu_kernels.c`` holds the loops that PyTorch can only express as several
passes over large tensors: the sinc block's |.|, max-pool, LayerNorm, gain,
bias and LeakyReLU (forward and backward), the same tail for the ordinary
convolutions on their channels-last output, the sinc layer's spectral
gradient products and the MLP critic's grid of pair scores. They are compiled with the system's C compiler
(``$CC``, else ``cc``) for this CPU the first time they are needed, and cached
under ``$SINCMI_CACHE`` (default ``~/.cache/sincmi``), keyed by the source,
the compiler flags and the CPU's instruction sets.

Without a compiler, or with ``SINCMI_NATIVE=0``, :func:`available` is False and
:mod:`sincmi.fast_ops` uses PyTorch's code instead: same results, slower.
The source's function declarations are checked against the argument types
given to ctypes (:data:`_SIGNATURES`) before the library is loaded, and the
kernels that allocate working memory report a failed allocation, raised here
as ``MemoryError``.
"""

import ctypes
import hashlib
import os
import re
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings

import torch

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cpu_kernels.c")
# -fno-trapping-math lets the compiler vectorise comparisons, -fno-math-errno
# square roots (results unchanged: no kernel takes the root of a negative).
FLAGS = ["-O3", "-march=native", "-fno-trapping-math", "-fno-math-errno", "-fopenmp", "-std=c99", "-shared",
         "-fPIC"]
_TYPES = {torch.float32: "f32", torch.float64: "f64"}

# Argument types of the exported functions (each has an _f32 and an _f64 version).
_p, _i64, _f64, _int = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double, ctypes.c_int
_SIGNATURES = {
    "pool_norm_act": [_p] + [_i64] * 6 + [_p, _p, _f64, _f64] + [_p, _i64, _i64] + [_p] * 3 + [_int],
    "pool_norm_act_backward": [_p, _i64, _i64] + [_p] * 5 + [_i64] * 6 + [_f64, _p, _p, _int],
    "spectral_gradients": [_p] * 3 + [_i64] * 3 + [_p, _p, _int],
    "mlp_grid": [_p] * 3 + [_i64] * 3 + [_f64, _p, _int],
    "mlp_grid_backward": [_p] * 4 + [_i64] * 3 + [_f64] + [_p] * 3 + [_int],
    "cl_pool_norm_act": [_p] + [_i64] * 5 + [_int, _p, _p, _f64, _f64] + [_p] * 4 + [_int],
    "cl_pool_norm_act_backward": [_p] * 6 + [_i64] * 5 + [_int, _f64] + [_p] * 3 + [_int],
}

# Kernels that allocate working memory: they return 0, or 1 when an allocation failed.
_RETURN_STATUS = {"pool_norm_act", "pool_norm_act_backward", "cl_pool_norm_act", "cl_pool_norm_act_backward"}
_C_TYPES = {"int64_t": _i64, "double": _f64, "int": _int}

_library = None
_loaded = False
_lock = threading.Lock()


def _cpu_signature():
    """The CPU's model and instruction sets: a library built with -march=native runs only there."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [line for line in f if line.startswith(("flags", "model name", "Features"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.processor() or platform.machine()


def declared_signatures(source):
    """``{name: (return type, [ctypes argument types])}`` of the kernels in the C source.

    Reads the declarations ``void|int name_##SUFFIX(type arg, ...)`` of the
    exported (macro-generated) functions; any pointer is ``c_void_p``.

    >>> returns, types = declared_signatures("int f_##SUFFIX(const T *x, int64_t n, double a) {")["f"]
    >>> returns, [t.__name__ for t in types] == ["c_void_p", ctypes.c_int64.__name__, "c_double"]
    ('int', True)
    """
    declared = {}
    for match in re.finditer(r"^(void|int) (\w+)_##SUFFIX\((.*?)\)\s*\{", source, re.S | re.M):
        returns, name, params = match.groups()
        types = []
        for param in params.replace("\\", " ").split(","):
            words = param.replace("const ", "").split()
            types.append(_p if "*" in param else _C_TYPES.get(words[0] if words else "", None))
        declared[name] = (returns, types)
    return declared


def check_signatures(source):
    """Raises ``RuntimeError`` naming every kernel whose C declaration and :data:`_SIGNATURES` differ.

    A mismatch would make ctypes pass arguments the C code reads wrongly (a
    crash or wrong numbers): it is caught before the library is loaded.
    """
    declared = declared_signatures(source)
    problems = [f"{name}: declared in C but not in _SIGNATURES" for name in sorted(set(declared) - set(_SIGNATURES))]
    for name, argtypes in _SIGNATURES.items():
        if name not in declared:
            problems.append(f"{name}: in _SIGNATURES but not declared in {os.path.basename(SOURCE)}")
            continue
        returns, types = declared[name]
        if types != argtypes:
            problems.append(f"{name}: C takes {[getattr(t, '__name__', t) for t in types]}, "
                            f"_SIGNATURES gives {[t.__name__ for t in argtypes]}")
        if (returns == "int") != (name in _RETURN_STATUS):
            problems.append(f"{name}: returns {returns} in C, but _RETURN_STATUS says otherwise")
    if problems:
        raise RuntimeError("native kernel signatures do not match: " + "; ".join(problems))


def _cache_dir():
    base = os.environ.get("SINCMI_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "sincmi"
    )
    return os.path.join(base, "kernels")


def _build(compiler):
    with open(SOURCE, "rb") as f:
        source = f.read()
    check_signatures(source.decode())
    key = hashlib.sha256(
        source + " ".join([compiler] + FLAGS).encode() + _cpu_signature().encode()
    ).hexdigest()[:16]
    folder = _cache_dir()
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError:  # read-only home: build in a temporary folder
        folder = tempfile.mkdtemp(prefix="sincmi-kernels-")
    target = os.path.join(folder, f"cpu_kernels-{key}.so")
    if not os.path.exists(target):
        # Build beside the target and rename: concurrent processes never load a partial file.
        handle, partial = tempfile.mkstemp(suffix=".so", dir=folder)
        os.close(handle)
        try:
            subprocess.run(
                [compiler, *FLAGS, SOURCE, "-o", partial],
                check=True, capture_output=True, text=True, timeout=120,
            )
            os.replace(partial, target)
        finally:
            if os.path.exists(partial):
                os.remove(partial)
    library = ctypes.CDLL(target)
    for name, argtypes in _SIGNATURES.items():
        for suffix in _TYPES.values():
            function = getattr(library, f"{name}_{suffix}")
            function.argtypes = argtypes
            function.restype = ctypes.c_int if name in _RETURN_STATUS else None
    return library


def _library_or_none():
    global _library, _loaded
    if _loaded:
        return _library
    with _lock:
        if not _loaded:
            compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
            if os.environ.get("SINCMI_NATIVE", "1") == "0" or not compiler:
                _library = None
            else:
                try:
                    _library = _build(compiler)
                except (OSError, subprocess.SubprocessError, RuntimeError) as error:
                    detail = getattr(error, "stderr", None) or error
                    warnings.warn(
                        f"sincmi: could not build {SOURCE} ({detail}); using the slower PyTorch "
                        "code for the sinc layer's pooling (same results). Install a C compiler "
                        "with OpenMP (gcc) or set SINCMI_NATIVE=0 to silence this."
                    )
                    _library = None
            _loaded = True
    return _library


def available(tensor):
    """True when the native kernels can process ``tensor`` (CPU, float32/64)."""
    return tensor.device.type == "cpu" and tensor.dtype in _TYPES and _library_or_none() is not None


def _pointer(tensor):
    """The tensor's data address, or NULL for None (an optional output)."""
    return ctypes.c_void_p(tensor.data_ptr()) if tensor is not None else None


def _call(name, dtype, *args):
    """Runs kernel ``name`` for ``dtype``, labelled for ``torch.profiler`` as ``sincmi::name``."""
    with torch.profiler.record_function(f"sincmi::{name}"):
        status = getattr(_library_or_none(), f"{name}_{_TYPES[dtype]}")(*args)
    if status:
        raise MemoryError(f"sincmi native kernel {name}: could not allocate its working memory")


def pool_norm_act(y, pool, gain, bias, slope, eps, group_rows, out, rstd, xhat=None, code=None):
    """|.| + max-pool, LayerNorm, gain and bias, LeakyReLU, in one pass over ``y``.

    Arguments
    ---------
    y : torch.Tensor
        ``(batch, channels, time)`` contiguous sinc-layer output.
    pool : int
        Max-pool window (= stride).
    gain, bias : torch.Tensor
        ``(channels, pooled)`` contiguous, y's dtype.
    slope, eps : float
        LeakyReLU slope, LayerNorm epsilon.
    group_rows : int
        1 to normalise each channel over time, ``channels`` to normalise each
        chunk over channels and time.
    out : torch.Tensor
        ``(batch, channels, pooled)``, written with the block's output; any
        channel and time strides (channels-last suits the next convolution),
        chunks contiguous.
    rstd : torch.Tensor
        ``(batch * channels // group_rows,)``: 1 / standard deviation per group.
    xhat : torch.Tensor or None
        ``(batch, channels, pooled)`` contiguous, written with the normalised
        values (for the backward pass; None in inference).
    code : torch.Tensor or None
        ``(batch, channels, pooled)`` int8: each window's winner, (position + 1)
        * sign of its largest |y| (0 for an all-zero window), for the backward
        pass; None in inference.
    """
    batch, channels, time = y.shape
    pooled = out.shape[-1]
    if out.stride(0) != channels * pooled:
        raise ValueError("pool_norm_act: the chunks of `out` must be contiguous")
    _call(
        "pool_norm_act", y.dtype,
        _pointer(y), batch * channels // group_rows, group_rows, channels, time, pooled, pool,
        _pointer(gain), _pointer(bias), slope, eps, _pointer(out), out.stride(1), out.stride(2),
        _pointer(xhat), _pointer(rstd), _pointer(code), torch.get_num_threads(),
    )


def pool_norm_act_backward(grad_out, xhat, rstd, code, gain, bias, slope, group_rows, time, pool,
                           dz=None, grad_y=None):
    """Backward of :func:`pool_norm_act`.

    ``grad_out`` may have any channel and time strides (chunks contiguous).
    ``dz`` and ``grad_y``, when given (contiguous, of the shapes below), are
    written in place of new tensors.

    Returns
    -------
    dz : torch.Tensor
        ``(batch, channels, pooled)`` gradient before the LeakyReLU (the gain's
        gradient is ``(dz * xhat).sum(0)``, the bias's ``dz.sum(0)``).
    grad_y : torch.Tensor
        ``(batch, channels, time)`` gradient of the sinc-layer output.
    """
    batch, channels, pooled = code.shape
    row_major, channels_last = grad_out.stride(2) == 1, grad_out.stride(1) == 1
    if grad_out.stride(0) != channels * pooled or not (row_major or channels_last):
        grad_out = grad_out.contiguous()
    dz = torch.empty_like(xhat) if dz is None else dz
    grad_y = grad_out.new_empty(batch, channels, time) if grad_y is None else grad_y
    _call(
        "pool_norm_act_backward", grad_out.dtype,
        _pointer(grad_out), grad_out.stride(1), grad_out.stride(2), _pointer(xhat), _pointer(rstd),
        _pointer(code), _pointer(gain), _pointer(bias),
        batch * channels // group_rows, group_rows, channels, time, pooled, pool,
        slope, _pointer(dz), _pointer(grad_y), torch.get_num_threads(),
    )
    return dz, grad_y


def spectral_gradients(grad_spec, h_conj, x_spec, grad_x=None, grad_h=None):
    """The sinc layer's input and filter gradients in the frequency domain, in one pass.

    For ``y = irfft(X * conj(H))`` and the spectra ``grad_spec`` (n, channels,
    bins) of dL/dy, writes ``grad_x = (grad_spec * H).sum(1)`` (n, bins) and
    adds ``(conj(grad_spec) * X).sum(0)`` to ``grad_h`` (channels, bins), each
    when given. ``h_conj`` is conj(H) (channels, bins), ``x_spec`` is X (n,
    bins); all contiguous, complex64 or complex128.
    """
    n, channels, bins = grad_spec.shape
    for tensor in (grad_spec, h_conj, x_spec, grad_x, grad_h):
        if tensor is not None and (not tensor.is_contiguous() or tensor.is_conj()):
            raise ValueError("spectral_gradients: tensors must be contiguous, without a lazy conjugate")
    _call("spectral_gradients", torch.view_as_real(grad_spec).dtype,
          _pointer(grad_spec), _pointer(h_conj), _pointer(x_spec), n, channels, bins,
          _pointer(grad_x) if grad_x is not None else None,
          _pointer(grad_h) if grad_h is not None else None, torch.get_num_threads())


def mlp_grid(p, q, w, slope):
    """``(leaky_relu(p[:, None] + q[None]) * w).sum(-1)``: ``(rows, cols)`` logits.

    ``p`` ``(rows, hidden)``, ``q`` ``(cols, hidden)`` and ``w`` ``(hidden,)``
    are contiguous tensors of one dtype.
    """
    rows, hidden = p.shape
    logits = p.new_empty(rows, q.shape[0])
    _call("mlp_grid", p.dtype, _pointer(p), _pointer(q), _pointer(w), rows, q.shape[0], hidden, slope,
          _pointer(logits), torch.get_num_threads())
    return logits


def mlp_grid_backward(p, q, w, grad, slope):
    """Gradients of :func:`mlp_grid` with respect to ``p``, ``q`` and ``w``."""
    rows, hidden = p.shape
    cols, threads = q.shape[0], torch.get_num_threads()
    grad_p = torch.empty_like(p)
    grad_q_parts = p.new_empty(threads, cols, hidden)
    grad_w_parts = p.new_empty(threads, hidden)
    _call("mlp_grid_backward", p.dtype, _pointer(p), _pointer(q), _pointer(w), _pointer(grad.contiguous()),
          rows, cols, hidden, slope, _pointer(grad_p), _pointer(grad_q_parts), _pointer(grad_w_parts),
          threads)
    return grad_p, grad_q_parts.sum(0), grad_w_parts.sum(0)


def channels_last_pool_norm_act(y, pool, gain_t, bias_t, slope, eps, whole, out, xhat=None, rstd=None,
                                code=None):
    """Max-pool over time, LayerNorm, gain and bias, LeakyReLU on a channels-last map, in one pass.

    The tail of an ordinary convolution block (no |.|), see :func:`sincmi.fast_ops.conv_block_tail`.

    Arguments
    ---------
    y : torch.Tensor
        ``(batch, time, channels)`` contiguous convolution output.
    pool : int
        Max-pool window (= stride), at most 127.
    gain_t, bias_t : torch.Tensor
        ``(pooled, channels)`` contiguous: the block's gain and bias, transposed.
    slope, eps : float
        LeakyReLU slope, LayerNorm epsilon.
    whole : bool
        False to normalise each channel over time, True to normalise each
        chunk over channels and time.
    out : torch.Tensor
        ``(batch, pooled, channels)`` contiguous, written with the block's output.
    xhat, rstd, code : torch.Tensor or None
        For a backward pass: ``(batch, pooled, channels)`` normalised values,
        ``(batch, channels)`` (``(batch, 1)`` when ``whole``) 1 / standard
        deviations, ``(batch, pooled, channels)`` int8 winners' positions in
        their windows. All three or none (inference).
    """
    batch, time, channels = y.shape
    _call("cl_pool_norm_act", y.dtype, _pointer(y), batch, time, channels, out.shape[1], pool, int(whole),
          _pointer(gain_t), _pointer(bias_t), slope, eps, _pointer(out),
          _pointer(xhat), _pointer(rstd), _pointer(code), torch.get_num_threads())


def channels_last_pool_norm_act_backward(grad_out, xhat, rstd, code, gain_t, bias_t, slope, whole, time, pool):
    """Backward of :func:`channels_last_pool_norm_act`.

    ``grad_out`` is ``(batch, pooled, channels)`` contiguous. Returns the
    ``(batch, time, channels)`` gradient of the convolution output and the
    ``(pooled, channels)`` gradients of ``gain_t`` and ``bias_t``.
    """
    batch, pooled, channels = xhat.shape
    threads = torch.get_num_threads()
    grad_y = grad_out.new_empty(batch, time, channels)
    grad_gain_parts = grad_out.new_empty(threads, pooled, channels)
    grad_bias_parts = grad_out.new_empty(threads, pooled, channels)
    _call("cl_pool_norm_act_backward", grad_out.dtype, _pointer(grad_out), _pointer(xhat), _pointer(rstd),
          _pointer(code), _pointer(gain_t), _pointer(bias_t), batch, time, channels, pooled, pool,
          int(whole), slope, _pointer(grad_y), _pointer(grad_gain_parts), _pointer(grad_bias_parts),
          threads)
    return grad_y, grad_gain_parts.sum(0), grad_bias_parts.sum(0)
