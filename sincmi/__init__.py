"""sincmi: speaker representations from raw speech by mutual-information maximisation.

A SincNet encoder trained with Local Info Max (Ravanelli & Bengio, 2018), as
SpeechBrain recipes.
"""

__version__ = "0.1.0"
