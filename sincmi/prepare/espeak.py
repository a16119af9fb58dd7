"""A minimal ctypes driver for the eSpeak NG library shipped by ``espeakng-loader``.

Only what corpus synthesis needs: pick a voice, set pitch / range / rate,
synthesise a sentence to a 16-bit waveform held in memory.
"""

import ctypes
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_PARAM = {"rate": 1, "volume": 2, "pitch": 3, "range": 4}

_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


class ESpeak:
    """Synthesises text with eSpeak NG into numpy arrays.

    The library keeps global state, so create one instance per process.

    Example
    -------
    >>> tts = ESpeak()  # doctest: +SKIP
    >>> wav = tts.synthesize("Hello.", voice="en-us+m3", pitch=40)  # doctest: +SKIP
    >>> tts.sample_rate  # doctest: +SKIP
    22050
    """

    def __init__(self):
        try:
            import espeakng_loader
        except ImportError as err:  # pragma: no cover - dependency of setup.py
            raise ImportError(
                "The Demo corpus is synthesised with eSpeak NG: "
                "pip install espeakng-loader"
            ) from err
        self._lib = ctypes.cdll.LoadLibrary(espeakng_loader.get_library_path())
        data_path = espeakng_loader.get_data_path().encode()
        rate = self._lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 0, ctypes.c_char_p(data_path), 0
        )
        if rate <= 0:
            raise RuntimeError(f"eSpeak NG failed to initialise ({data_path})")
        self.sample_rate = int(rate)
        self._chunks = []
        # Keep a reference: ctypes callbacks must outlive their registration.
        self._callback = _CALLBACK(self._collect)
        self._lib.espeak_SetSynthCallback(self._callback)
        self._lib.espeak_Synth.argtypes = [
            ctypes.c_char_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]

    def _collect(self, wav, num_samples, events):
        if num_samples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, (num_samples,)).copy())
        return 0

    def synthesize(self, text, voice, pitch=50, pitch_range=50, rate=175):
        """Returns the waveform of ``text`` (int16, ``self.sample_rate`` Hz).

        Arguments
        ---------
        text : str
            The sentence to speak.
        voice : str
            An eSpeak NG voice name, optionally with a variant (``en-us+f2``).
        pitch, pitch_range : int
            Base pitch and pitch range, 0-99.
        rate : int
            Speaking rate in words per minute (80-450).
        """
        if self._lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ValueError(f"eSpeak NG has no voice named {voice!r}")
        for name, value in (("pitch", pitch), ("range", pitch_range), ("rate", rate)):
            self._lib.espeak_SetParameter(_PARAM[name], int(value), 0)
        self._chunks = []
        data = text.encode("utf-8") + b"\0"
        status = self._lib.espeak_Synth(
            data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None
        )
        if status != 0:
            raise RuntimeError(f"eSpeak NG could not synthesise {text!r} ({status})")
        self._lib.espeak_Synchronize()
        if not self._chunks:
            return np.zeros(0, dtype=np.int16)
        return np.concatenate(self._chunks)


def synthesize_speaker(job):
    """Synthesises one speaker's sentences with this process's eSpeak NG.

    eSpeak NG carries state from one utterance to the next (the same call
    gives slightly different audio the second time), so for reproducible
    audio call it in a new process: see :func:`synthesize_in_subprocess`.

    Arguments
    ---------
    job : tuple
        ``(voice, pitch, pitch_range, rate, sentences)``.

    Returns
    -------
    sample_rate : int
    waveforms : list of np.ndarray (int16)
    """
    voice, pitch, pitch_range, rate, sentences = job
    tts = ESpeak()
    return tts.sample_rate, [tts.synthesize(s, voice, pitch, pitch_range, rate) for s in sentences]


def synthesize_in_subprocess(job):
    """:func:`synthesize_speaker` in a fresh Python process (only numpy loaded).

    The result depends on ``job`` alone, whatever was synthesised before.
    """
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "speaker.npz")
        subprocess.run(
            [sys.executable, "-m", "sincmi.prepare.espeak", out],
            input=json.dumps(list(job)),
            text=True,
            check=True,
        )
        with np.load(out) as saved:
            return int(saved["rate"]), [saved[f"w{i}"] for i in range(len(job[4]))]


if __name__ == "__main__":
    # python -m sincmi.prepare.espeak OUT.npz < job.json
    rate, waves = synthesize_speaker(json.load(sys.stdin))
    np.savez(sys.argv[1], rate=rate, **{f"w{i}": w for i, w in enumerate(waves)})
