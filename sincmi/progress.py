"""Progress bars for the package's long loops, as a run's options ask.

A bar shows only on the main process, only when ``--noprogressbar`` was not
given (:func:`configure`, called by :func:`sincmi.stages.start_experiment`),
and only on an interactive terminal: on a redirected stream (a batch job's
log) a bar would be one line of carriage returns, so one line is logged
when the loop ends instead.
"""

import logging
import sys
import time

from speechbrain.utils.distributed import if_main_process
from tqdm import tqdm

logger = logging.getLogger(__name__)
_settings = {"enabled": True}


def configure(run_opts):
    """Takes ``--noprogressbar`` from SpeechBrain's run options."""
    _settings["enabled"] = not (run_opts or {}).get("noprogressbar", False)


def interactive(stream=None):
    """True when ``stream`` (default: stderr, tqdm's) is a terminal."""
    stream = sys.stderr if stream is None else stream
    return hasattr(stream, "isatty") and stream.isatty()


def progress_bar(iterable, desc, total=None, enabled=True, **kwargs):
    """``iterable`` with a tqdm bar when one should show (see the module), else as it is.

    Without a bar, a loop of more than a few seconds logs ``desc: N items in T s``
    at its end.

    Example
    -------
    >>> list(progress_bar(range(3), "Counting"))  # not a terminal here: no bar
    [0, 1, 2]
    """
    if enabled and _settings["enabled"] and if_main_process() and interactive():
        yield from tqdm(iterable, desc=desc, total=total, **kwargs)
        return
    start, count = time.time(), 0
    for item in iterable:
        count += 1
        yield item
    elapsed = time.time() - start
    if enabled and elapsed > 5 and if_main_process():
        logger.info(f"{desc}: {count} items in {elapsed:.0f} s")
