"""Reading audio: WAV, FLAC, OGG and NIST SPHERE with soundfile, AAC (``.m4a``) with PyAV.

VoxCeleb2 is distributed as AAC in MP4 containers, which libsndfile cannot
read; PyAV ships FFmpeg in its wheels, so no system package is needed. Every
reader in the project goes through :func:`audio_info` and :func:`read_audio`
(or :func:`decode_bytes` for audio held in memory, e.g. a shard member), so
a format is added in one place.

Example
-------
>>> import numpy as np, os, tempfile, soundfile as sf
>>> path = os.path.join(tempfile.mkdtemp(), "a.wav")
>>> sf.write(path, np.zeros((800, 2), dtype="float32"), 8000)
>>> audio_info(path)[:3]
(800, 8000, 2)
>>> read_audio(path, start=100, frames=50).shape
(50, 2)
"""

import io
import os
from typing import NamedTuple

import numpy as np
import soundfile as sf

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".sph", ".m4a")
PYAV_EXTENSIONS = (".m4a", ".aac", ".mp4")  # AAC: decoded by FFmpeg through PyAV


class AudioInfo(NamedTuple):
    """What a file's header says: samples per channel, rate, channels, container and sample format."""

    frames: int
    samplerate: int
    channels: int
    format: str
    subtype: str


def is_audio_file(name):
    """True for a file name with one of :data:`AUDIO_EXTENSIONS` (any case)."""
    return name.lower().endswith(AUDIO_EXTENSIONS)


def uses_pyav(path):
    """True where the file is decoded with PyAV (AAC in MP4) rather than soundfile."""
    return str(path).lower().endswith(PYAV_EXTENSIONS)


def readable_info(path):
    """:func:`sincmi.audio.audio_info` of a file, or ``ValueError`` in one line naming it and why."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist")
    if os.path.isdir(path):
        raise ValueError(f"{path} is a folder, not an audio file")
    try:
        return audio_info(path)
    except Exception as error:  # soundfile and PyAV raise their own types
        raise ValueError(f"{path} cannot be read as audio ({str(error).strip() or type(error).__name__})") from error


def audio_info(path):
    """The header of an audio file (:class:`AudioInfo`), without decoding its samples.

    For AAC the number of samples comes from the container's duration; the
    decoded length may differ by a few milliseconds (readers pad or cut).
    Raises on a file that is not readable audio.
    """
    if not uses_pyav(path):
        info = sf.info(path)
        return AudioInfo(info.frames, info.samplerate, info.channels, info.format, info.subtype)
    import av

    with av.open(str(path)) as container:
        if not container.streams.audio:
            raise ValueError(f"{path}: no audio stream")
        stream = container.streams.audio[0]
        rate = stream.codec_context.sample_rate
        if stream.duration is not None and stream.time_base is not None:
            seconds = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            seconds = container.duration / 1_000_000  # av.time_base: microseconds
        else:
            seconds = 0.0
        return AudioInfo(int(round(seconds * rate)), rate, stream.codec_context.channels,
                         "MP4", stream.codec_context.name.upper())


def read_audio(path, start=0, frames=-1):
    """Samples ``[start, start + frames)`` of a file as float32, shaped ``(samples, channels)``.

    soundfile reads only those frames; an AAC file is decoded whole and
    sliced (VoxCeleb2's files are a few seconds long).
    """
    if not uses_pyav(path):
        data, _ = sf.read(path, start=start, frames=frames, dtype="float32", always_2d=True)
        return data
    with open(path, "rb") as f:
        data = _decode_pyav(f)[0]
    return data[start:] if frames < 0 else data[start : start + frames]


def read_blocks(path, frames):
    """The file as float32 ``(samples, channels)`` blocks of ``frames`` samples (bounded memory);
    an AAC file, which has no partial read, as one block."""
    if uses_pyav(path):
        return [read_audio(path)]
    return sf.blocks(path, blocksize=frames, dtype="float32", always_2d=True)


def decode_bytes(encoded, extension):
    """Decodes a whole encoded file held in memory: ``(float32 (samples, channels), rate)``.

    ``extension`` (``".flac"``, ``"wav"``, ``".m4a"``...) names the format.
    """
    extension = extension if extension.startswith(".") else "." + extension
    if extension.lower() in PYAV_EXTENSIONS:
        return _decode_pyav(io.BytesIO(encoded))
    data, rate = sf.read(io.BytesIO(encoded), dtype="float32", always_2d=True)
    return data, rate


def _decode_pyav(file):
    """Decodes the first audio stream of an open file object: ``(float32 (samples, channels), rate)``."""
    import av

    with av.open(file) as container:
        if not container.streams.audio:
            raise ValueError("no audio stream")
        stream = container.streams.audio[0]
        parts = []
        for frame in container.decode(stream):
            array = frame.to_ndarray()
            if frame.format.is_planar:  # (channels, samples)
                array = array.T
            else:  # (1, samples * channels), interleaved
                array = array.reshape(-1, len(frame.layout.channels))
            if array.dtype.kind == "i":
                array = array.astype(np.float32) / float(np.iinfo(array.dtype).max + 1)
            parts.append(array.astype(np.float32, copy=False))
        rate = stream.codec_context.sample_rate
        channels = stream.codec_context.channels or 1
    if not parts:
        return np.zeros((0, channels), dtype=np.float32), rate
    return np.concatenate(parts), rate


def to_mono(data):
    """``(samples, channels)`` -> ``(samples,)``: the channels' mean (a view for one channel)."""
    return data[:, 0] if data.shape[1] == 1 else data.mean(axis=1)


def write_aac(path, wav, sample_rate, bit_rate=64000):
    """Writes a mono float waveform as AAC in an MP4 container (``.m4a``), as VoxCeleb2 distributes audio.

    For tests and for the benchmark's generated corpora.
    """
    import av

    wav = np.asarray(wav, dtype=np.float32).reshape(1, -1)
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=sample_rate, layout="mono")
        stream.bit_rate = bit_rate
        frame = av.AudioFrame.from_ndarray(wav, format="flt", layout="mono")
        frame.sample_rate = sample_rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def file_extension(path):
    """The lower-case extension of ``path`` (``".flac"``)."""
    return os.path.splitext(str(path))[1].lower()
