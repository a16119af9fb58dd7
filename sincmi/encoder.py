"""SincNet encoder: raw waveform chunks -> speaker embeddings.

The reference configuration is SincNet's TIMIT one (Ravanelli & Bengio, 2018):
input LayerNorm; 80 sinc band-pass filters of 251 taps (valid convolution),
|.|, max-pool 3, LayerNorm, LeakyReLU(0.2); two 60x5 convolutions with the same
pool/norm/activation; flatten (60 x 107 for a 3200-sample chunk); three fully
connected layers of 2048 units with BatchNorm and LeakyReLU. The chunk
embedding is the output of the last fully connected layer.

The encoder contract: what the stages, the export and the inference use of an
encoder, so that another encoder class can take SincNetEncoder's place in a
yaml (``encoder: !new:...``):

* ``forward(chunks)``: ``(N, chunk_size)`` waveform chunks at ``sample_rate``
  -> ``(N, embedding_size)`` chunk embeddings; an ``nn.Module`` (trained,
  checkpointed, moved to the run's device);
* ``chunk_size``, ``sample_rate``, ``embedding_size``: ints (the classifier's
  input size, the utterance chunking);
* ``config``: the constructor's keyword arguments (``type(encoder)(**config)``
  makes an untrained copy: :func:`untrained_copy`, the random-weights baseline);
* optional ``embed_utterances(wavs, lens, shift)``: a faster utterance embedding
  than the default mean of L2-normalised chunk embeddings.

``python -m sincmi export`` packs a SincNetEncoder (its ONNX and TorchScript
exports trace its plain layers); the recipes' stages need only the contract.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from sincmi.fast_ops import conv2d_channels_last, conv_block_tail, sinc_block

IMPLEMENTATIONS = ("fast", "reference")
POOLINGS = ("flatten", "stats")
LAYER_NORMS = ("torch", "sincnet")
FC_INITS = ("torch", "sincnet")
SINCNET_NORM_EPS = 1e-6


def sincnet_layer_norm(x, dims, gain=None, bias=None, eps=SINCNET_NORM_EPS):
    """SincNet's LayerNorm: ``(x - mean) / (std + eps)`` over the last ``dims`` dimensions.

    Unlike ``F.layer_norm`` (biased variance, ``eps`` inside the square root)
    the standard deviation is the unbiased one and ``eps`` (1e-6) is added to
    it, as in SincNet's ``dnn_models.LayerNorm``; the two differ most on
    quiet input (17 % on chunks of standard deviation 1e-4).

    Example
    -------
    >>> x = torch.tensor([[1.0, 2.0, 3.0]])
    >>> sincnet_layer_norm(x, 1)  # std 1 (unbiased)
    tensor([[-1.0000,  0.0000,  1.0000]])
    """
    axes = tuple(range(-dims, 0))
    out = (x - x.mean(dim=axes, keepdim=True)) / (x.std(dim=axes, keepdim=True) + eps)
    if gain is not None:
        out = out * gain + bias
    return out


class SincNetLayerNorm(nn.Module):
    """``nn.LayerNorm`` with SincNet's formula (:func:`sincnet_layer_norm`), one gain and bias per feature."""

    def __init__(self, features):
        super().__init__()
        self.gain = nn.Parameter(torch.ones(features))
        self.bias = nn.Parameter(torch.zeros(features))

    def forward(self, x):
        return sincnet_layer_norm(x, 1, self.gain, self.bias)


def layer_norm_module(kind, features):
    """The LayerNorm of ``kind`` (:data:`LAYER_NORMS`) over ``features``."""
    return SincNetLayerNorm(features) if kind == "sincnet" else nn.LayerNorm(features)
CPU_CONV_MICRO_BATCH = 64


def hz_to_mel(hz):
    """Converts Hz to mel (O'Shaughnessy's formula)."""
    return 2595.0 * math.log10(1.0 + hz / 700.0)


def mel_to_hz(mel):
    """Converts mel to Hz (inverse of :func:`hz_to_mel`)."""
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


class SincConv(nn.Module):
    """Learnable band-pass sinc filters applied as a valid 1-D convolution.

    Each filter is the difference of two low-pass sinc filters with learnable
    low cut-off ``f1`` and bandwidth ``f2 - f1``, windowed by a Hamming window
    and normalised to unit gain at the band centre. Cut-offs are stored as
    fractions of the sample rate (as in the original SincNet ``sinc_conv``):
    stored in Hz, an optimiser's step of 1e-3 would barely move them.

    Arguments
    ---------
    out_channels : int
        Number of filters.
    kernel_size : int
        Number of taps (made odd if even).
    sample_rate : int
        Sample rate of the input, in Hz.
    min_low_hz, min_band_hz : float
        Lower bounds of the low cut-off and of the bandwidth, in Hz.

    Example
    -------
    >>> conv = SincConv(8, 51)
    >>> conv(torch.randn(2, 1, 400)).shape
    torch.Size([2, 8, 350])
    """

    def __init__(
        self,
        out_channels=80,
        kernel_size=251,
        sample_rate=16000,
        min_low_hz=50.0,
        min_band_hz=50.0,
    ):
        super().__init__()
        if kernel_size % 2 == 0:
            kernel_size += 1
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.sample_rate = sample_rate
        self.min_low = min_low_hz / sample_rate
        self.min_band = min_band_hz / sample_rate

        # Mel-spaced initial bands between 30 Hz and Nyquist.
        high_hz = sample_rate / 2 - (min_low_hz + min_band_hz)
        mels = torch.linspace(hz_to_mel(30.0), hz_to_mel(high_hz), out_channels + 1)
        edges = torch.tensor([mel_to_hz(float(m)) for m in mels]) / sample_rate
        self.low = nn.Parameter(edges[:-1].clone().unsqueeze(1))
        self.band = nn.Parameter((edges[1:] - edges[:-1]).unsqueeze(1))

        half = (kernel_size - 1) // 2
        n = torch.arange(-half, half + 1, dtype=torch.float32)
        self.register_buffer("n", n, persistent=False)
        self.register_buffer(
            "window", torch.hamming_window(kernel_size, periodic=False), persistent=False
        )

    def cutoffs(self):
        """Returns the low and high cut-offs ``(f1, f2)`` as fractions of fs."""
        f1 = self.min_low + self.low.abs()
        f2 = torch.clamp(f1 + self.min_band + self.band.abs(), self.min_low, 0.5)
        return f1, f2

    def filters(self):
        """Returns the filter bank, shape ``(out_channels, 1, kernel_size)``."""
        f1, f2 = self.cutoffs()
        n = self.n
        center = n == 0
        safe_n = torch.where(center, torch.ones_like(n), n)
        # h[n] = (sin(2 pi f2 n) - sin(2 pi f1 n)) / (pi n); h[0] = 2 (f2 - f1)
        h = (torch.sin(2 * math.pi * f2 * safe_n) - torch.sin(2 * math.pi * f1 * safe_n)) / (
            math.pi * safe_n
        )
        h = torch.where(center, 2 * (f2 - f1), h)
        h = h / (2 * (f2 - f1)) * self.window
        return h.unsqueeze(1)

    def forward(self, x):
        """Filters ``x`` of shape ``(batch, 1, time)``."""
        return F.conv1d(x, self.filters().to(x.dtype))


class ConvBlock(nn.Module):
    """Convolution -> (abs) -> max-pool -> LayerNorm -> LeakyReLU.

    The LayerNorm has one gain and bias per channel and time step. With
    ``norm_over="time"`` it normalises each channel over time, as SincNet's
    own LayerNorm does (this discards the relative energy of the channels);
    with ``"channel_time"`` it normalises the whole feature map at once.

    ``fast=True`` computes the same function with :mod:`sincmi.fast_ops`
    (FFT sinc layer fused with |.| and max-pool; channels-last convolutions).
    """

    def __init__(
        self, conv, out_length, pool, use_abs=False, negative_slope=0.2, norm_over="time", fast=False,
        layer_norm="torch",
    ):
        super().__init__()
        if norm_over not in ("time", "channel_time"):
            raise ValueError(f"norm_over must be 'time' or 'channel_time', got {norm_over!r}")
        # The fused kernels compute F.layer_norm; SincNet's formula takes the plain layers.
        self.fast = fast and layer_norm == "torch"
        self.layer_norm = layer_norm
        self.norm_over = norm_over
        self.conv = conv
        self.pool = pool
        self.use_abs = use_abs
        self.negative_slope = negative_slope
        channels = conv.out_channels
        self.gain = nn.Parameter(torch.ones(channels, out_length))
        self.bias = nn.Parameter(torch.zeros(channels, out_length))

    def forward(self, x, scratch_output=False):
        """Maps ``(batch, in_channels, time)`` to ``(batch, channels, time')``.

        ``scratch_output=True`` (fast sinc block, CPU, forward only) writes the
        output into a per-thread buffer that the next such call overwrites:
        for a caller that consumes it first (see :func:`sincmi.fast_ops.sinc_block`).
        """
        if self.fast:
            return self._fast_forward(x, scratch_output)
        x = self.conv(x)
        if self.use_abs:
            x = x.abs()
        if self.pool > 1:
            x = F.max_pool1d(x, self.pool)
        # The normalised shape comes from the parameters, not from x: a constant
        # for tracing and ONNX export.
        dims = 1 if self.norm_over == "time" else 2
        if self.layer_norm == "sincnet":
            x = sincnet_layer_norm(x, dims, self.gain, self.bias)
        else:
            x = F.layer_norm(x, self.gain.shape[-dims:]) * self.gain + self.bias
        return F.leaky_relu(x, self.negative_slope)

    def _fast_forward(self, x, scratch_output=False):
        if isinstance(self.conv, SincConv) and self.use_abs:
            return sinc_block(x.squeeze(1), self.conv.filters(), self.pool, self.gain, self.bias,
                              self.negative_slope, self.norm_over, scratch_output)
        # Channels-last 2-D convolution; on CPU its max-pool, LayerNorm and
        # activation are one native pass, and the output stays channels-last.
        x = conv2d_channels_last(x, self.conv.weight, self.conv.bias)
        if self.use_abs:
            x = x.abs()
        return conv_block_tail(x, self.pool, self.gain, self.bias, self.negative_slope, self.norm_over)


def fc_stack(in_features, fc_sizes, negative_slope, input_norm, linear_embedding, layer_norm, fc_init):
    """SincNet's fully connected layers: Linear + BatchNorm + LeakyReLU each (the last one
    linear with ``linear_embedding``), after a layer norm of the input with ``input_norm``."""
    layers = [layer_norm_module(layer_norm, in_features)] if input_norm else []
    for i, size in enumerate(fc_sizes):
        layers.append(nn.Linear(in_features, size))
        if fc_init == "sincnet":  # SincNet's MLP initialisation
            bound = math.sqrt(0.01 / (in_features + size))
            nn.init.uniform_(layers[-1].weight, -bound, bound)
            nn.init.zeros_(layers[-1].bias)
        if not (linear_embedding and i == len(fc_sizes) - 1):
            layers += [nn.BatchNorm1d(size, momentum=0.05), nn.LeakyReLU(negative_slope)]
        in_features = size
    return nn.Sequential(*layers)


class SincNetEncoder(nn.Module):
    """SincNet: waveform chunks ``(batch, chunk_size)`` -> embeddings ``(batch, D)``.

    Arguments
    ---------
    chunk_size : int
        Samples per chunk (3200 = 200 ms at 16 kHz).
    sample_rate : int
        Sample rate in Hz.
    sinc_filters, sinc_kernel : int
        Number and length of the sinc band-pass filters.
    conv_channels, conv_kernels : list of int
        Channels and kernel sizes of the ordinary convolutions after the sinc layer.
    pool : int
        Max-pool size after every convolution.
    fc_sizes : list of int
        Sizes of the fully connected layers; the last one is the embedding size.
    negative_slope : float
        LeakyReLU slope.
    min_low_hz, min_band_hz : float
        Lower bounds of the sinc cut-off and bandwidth, in Hz.
    norm_over : str
        ``"time"`` (SincNet: each channel normalised over time) or
        ``"channel_time"`` (the whole feature map), see :class:`ConvBlock`.
    implementation : str
        ``"fast"`` (default: FFT sinc layer fused with |.| and max-pool,
        channels-last convolutions, see :mod:`sincmi.fast_ops`) or
        ``"reference"`` (plain ``conv1d``/``max_pool1d``). Same parameters,
        same function: checkpoints load into either.
    pooling : str
        How the convolutional feature map ``(channels, frames)`` enters the
        fully connected layers: ``"flatten"`` (SincNet: every frame's
        position has its own weights) or ``"stats"`` (each channel's mean and
        standard deviation over the frames, as x-vectors pool: the same
        function of the sound wherever it lies in the chunk).
    fc_input_norm : bool
        LayerNorm on the fully connected layers' input (SincNet's
        ``fc_use_laynorm_inp=True``).
    linear_embedding : bool
        The last fully connected layer is linear (no BatchNorm and no
        activation), as contrastive and x-vector embeddings are taken; False
        is SincNet, whose every layer ends in BatchNorm and LeakyReLU.
    layer_norm : str
        ``"torch"`` (``F.layer_norm``) or ``"sincnet"`` (SincNet's formula,
        :func:`sincnet_layer_norm`) for every LayerNorm: input, convolution
        blocks, fully connected input. ``"sincnet"`` runs the convolution
        blocks on the plain layers (the fused CPU kernels compute the other).
    fc_init : str
        ``"torch"`` (PyTorch's default) or ``"sincnet"``: fully connected
        weights drawn from ``U(+-sqrt(0.01 / (in + out)))`` and zero biases,
        as SincNet's MLP (11 to 14 times smaller weights than PyTorch's in the paper's sizes).

    Example
    -------
    >>> enc = SincNetEncoder(chunk_size=800, sinc_filters=8, sinc_kernel=51,
    ...                      conv_channels=[8], conv_kernels=[5], fc_sizes=[16])
    >>> enc(torch.randn(4, 800)).shape
    torch.Size([4, 16])
    """

    def __init__(
        self,
        chunk_size=3200,
        sample_rate=16000,
        sinc_filters=80,
        sinc_kernel=251,
        conv_channels=(60, 60),
        conv_kernels=(5, 5),
        pool=3,
        fc_sizes=(2048, 2048, 2048),
        negative_slope=0.2,
        min_low_hz=50.0,
        min_band_hz=50.0,
        norm_over="time",
        implementation="fast",
        pooling="flatten",
        fc_input_norm=True,
        linear_embedding=False,
        layer_norm="torch",
        fc_init="torch",
    ):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(
                f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}"
            )
        fast = implementation == "fast"
        self.implementation = implementation
        # Constructor arguments, for exporting a trained encoder (sincmi/export.py).
        self.config = {
            "chunk_size": chunk_size, "sample_rate": sample_rate, "sinc_filters": sinc_filters,
            "sinc_kernel": sinc_kernel, "conv_channels": list(conv_channels),
            "conv_kernels": list(conv_kernels), "pool": pool, "fc_sizes": list(fc_sizes),
            "negative_slope": negative_slope, "min_low_hz": min_low_hz, "min_band_hz": min_band_hz,
            "norm_over": norm_over, "implementation": implementation, "pooling": pooling,
            "fc_input_norm": fc_input_norm, "linear_embedding": linear_embedding,
            "layer_norm": layer_norm, "fc_init": fc_init,
        }
        if layer_norm not in LAYER_NORMS or fc_init not in FC_INITS:
            raise ValueError(f"layer_norm must be one of {LAYER_NORMS} and fc_init one of {FC_INITS}, "
                             f"got {layer_norm!r} and {fc_init!r}")
        if len(conv_channels) != len(conv_kernels):
            raise ValueError(
                f"conv_channels ({list(conv_channels)}) and conv_kernels "
                f"({list(conv_kernels)}) must have the same length"
            )
        self.chunk_size = chunk_size
        self.sample_rate = sample_rate
        self.input_norm = layer_norm_module(layer_norm, chunk_size)

        sinc = SincConv(sinc_filters, sinc_kernel, sample_rate, min_low_hz, min_band_hz)
        length = (chunk_size - sinc.kernel_size + 1) // pool
        blocks = [ConvBlock(sinc, length, pool, True, negative_slope, norm_over, fast, layer_norm)]
        in_channels = sinc_filters
        for channels, kernel in zip(conv_channels, conv_kernels):
            length = (length - kernel + 1) // pool
            conv = nn.Conv1d(in_channels, channels, kernel)
            blocks.append(ConvBlock(conv, length, pool, False, negative_slope, norm_over, fast, layer_norm))
            in_channels = channels
        if length < 1:
            raise ValueError(
                f"chunk_size={chunk_size} is too short for the convolution stack "
                "(kernel sizes and pooling leave no output); use longer chunks"
            )
        self.conv_blocks = nn.ModuleList(blocks)
        self.conv_output_shape = (in_channels, length)

        self.pooling = pooling
        in_features = in_channels * length if pooling == "flatten" else 2 * in_channels
        self.fc = fc_stack(in_features, fc_sizes, negative_slope, fc_input_norm, linear_embedding, layer_norm,
                           fc_init)
        self.embedding_size = fc_sizes[-1] if fc_sizes else in_features

    def conv_features(self, chunks):
        """Returns the convolutional feature map ``(batch, channels, frames)``."""
        x = self.input_norm(chunks).unsqueeze(1)
        if self.implementation == "reference" or x.device.type != "cpu":
            return self._conv_stack(x)
        # On CPU, 64 chunks at a time keep the feature maps in cache.
        return torch.cat([self._conv_stack(part) for part in x.split(CPU_CONV_MICRO_BATCH)])

    def _conv_stack(self, x):
        last = len(self.conv_blocks) - 1
        for i, block in enumerate(self.conv_blocks):
            # Each output but the last is read once, by the next block, before
            # this loop's next call: it may live in a reused buffer.
            x = block(x, scratch_output=i < last)
        return x

    def forward(self, chunks, lens=None):
        """Embeds chunks of shape ``(batch, chunk_size)``.

        ``lens`` is accepted for SpeechBrain-style calls and ignored: every
        chunk is complete by construction.
        """
        if chunks.dim() != 2 or chunks.shape[1] != self.chunk_size:
            raise ValueError(
                f"expected chunks of shape (batch, {self.chunk_size}), "
                f"got {tuple(chunks.shape)}"
            )
        features = self.conv_features(chunks)
        if self.pooling == "stats":
            return self.fc(torch.cat([features.mean(dim=2), features.std(dim=2)], dim=1))
        return self.fc(features.flatten(1))

    def embed_utterances(self, wavs, lens=None, shift=None, max_chunks=64):
        """Utterance embeddings: mean of L2-normalised chunk embeddings.

        See :func:`utterance_embeddings`.
        """
        return utterance_embeddings(self, wavs, lens, self.chunk_size, shift, max_chunks)


def _chunk_windows(wavs, lens, chunk_size, shift):
    """The ``(batch, frames, chunk_size)`` window view of ``wavs`` and the
    (waveform, frame) indices of the chunks that lie inside their signal."""
    batch, time = wavs.shape
    if lens is None:
        samples = torch.full((batch,), time, device=wavs.device)
    else:
        samples = torch.round(lens.to(wavs.device) * time).long()
    if time < chunk_size:
        wavs = F.pad(wavs, (0, chunk_size - time))
    windows = wavs.unfold(1, chunk_size, shift)  # (batch, frames, chunk): a view, nothing copied
    starts = torch.arange(windows.shape[1], device=wavs.device) * shift
    valid = starts.unsqueeze(0) + chunk_size <= samples.unsqueeze(1)
    valid[:, 0] = True
    owner, frame = valid.nonzero(as_tuple=True)
    return windows, owner, frame


def chunk_waveforms(wavs, lens, chunk_size, shift):
    """Cuts padded waveforms into overlapping chunks, without Python loops.

    Arguments
    ---------
    wavs : torch.Tensor
        ``(batch, time)`` padded waveforms.
    lens : torch.Tensor or None
        Relative lengths in [0, 1] (SpeechBrain convention); None means full.
    chunk_size, shift : int
        Window and hop, in samples.

    Returns
    -------
    chunks : torch.Tensor
        ``(num_chunks, chunk_size)``, every chunk entirely inside its signal.
    owner : torch.Tensor
        ``(num_chunks,)`` index of the waveform each chunk comes from.

    A waveform shorter than ``chunk_size`` is zero-padded to one chunk so that
    every waveform owns at least one chunk. :func:`iter_chunks` gives the
    same chunks a batch at a time, without copying them all at once.

    Example
    -------
    >>> chunks, owner = chunk_waveforms(torch.ones(2, 10), torch.tensor([1.0, 0.6]), 4, 2)
    >>> owner.tolist()
    [0, 0, 0, 0, 1, 1]
    """
    windows, owner, frame = _chunk_windows(wavs, lens, chunk_size, shift)
    return windows[owner, frame], owner


def iter_chunks(wavs, lens, chunk_size, shift, max_chunks):
    """The chunks and owners of :func:`chunk_waveforms`, ``max_chunks`` at a time.

    Only the chunks of one batch are copied out of the waveforms at a time
    (all the chunks of a batch of sentences with a 10 ms hop are 20 times
    the size of the audio).

    Example
    -------
    >>> [owner.tolist() for _, owner in iter_chunks(torch.ones(2, 10), torch.tensor([1.0, 0.6]), 4, 2, 4)]
    [[0, 0, 0, 0], [1, 1]]
    """
    windows, owner, frame = _chunk_windows(wavs, lens, chunk_size, shift)
    for i in range(0, len(owner), max_chunks):
        part = slice(i, i + max_chunks)
        yield windows[owner[part], frame[part]], owner[part]


def default_shift(chunk_size):
    """The hop between the chunks of an utterance embedding when none is set: half a chunk.

    >>> default_shift(3200)
    1600
    """
    return chunk_size // 2


def utterance_embeddings(encoder, wavs, lens=None, chunk_size=3200, shift=None, max_chunks=64):
    """Embeds whole utterances as the mean of their L2-normalised chunk embeddings.

    Arguments
    ---------
    encoder : callable
        Maps ``(n, chunk_size)`` chunks to ``(n, D)`` embeddings.
    wavs : torch.Tensor
        ``(batch, time)`` padded waveforms.
    lens : torch.Tensor or None
        Relative lengths (SpeechBrain convention).
    chunk_size : int
        Chunk length in samples.
    shift : int or None
        Hop between chunks; defaults to half a chunk.
    max_chunks : int
        Chunks encoded per forward call, to bound memory on long inputs.

    Returns
    -------
    torch.Tensor
        ``(batch, D)`` utterance embeddings (not re-normalised).
    """
    return mean_unit_embedding(*chunk_embeddings(encoder, wavs, lens, chunk_size, shift, max_chunks), len(wavs))


def chunk_embeddings(encoder, wavs, lens=None, chunk_size=3200, shift=None, max_chunks=64):
    """``(embeddings, owner)``: the encoder's output for every chunk of the utterances (:func:`iter_chunks`,
    ``max_chunks`` per call) and the utterance each chunk belongs to."""
    pieces, owners = [], []
    for chunks, owner in iter_chunks(wavs, lens, chunk_size, shift or default_shift(chunk_size), max_chunks):
        pieces.append(encoder(chunks))
        owners.append(owner)
    return torch.cat(pieces), torch.cat(owners)


def mean_unit_embedding(embeddings, owner, count):
    """``(count, D)``: the mean of each utterance's L2-normalised chunk embeddings (``owner``: its index)."""
    total = torch.zeros(count, embeddings.shape[1], device=embeddings.device, dtype=embeddings.dtype)
    total.index_add_(0, owner, F.normalize(embeddings, dim=-1))
    counts = torch.bincount(owner, minlength=count).clamp(min=1)
    return total / counts.unsqueeze(1).to(embeddings.dtype)


def untrained_copy(encoder):
    """A new encoder with ``encoder``'s settings and freshly drawn weights (the random-weights baseline).

    A yaml declares its baseline from its encoder, so that the two never differ in anything but training:
    ``random_encoder: !apply:sincmi.encoder.untrained_copy [!ref <encoder>]``.

    Example
    -------
    >>> encoder = SincNetEncoder(chunk_size=800, sinc_filters=4, sinc_kernel=33, conv_channels=[4],
    ...                          conv_kernels=[5], fc_sizes=[8])
    >>> copy = untrained_copy(encoder)
    >>> copy.config == encoder.config, copy is encoder
    (True, False)
    """
    return type(encoder)(**encoder.config)
