"""Running on several processes (``torchrun``): sharding evaluation, gathering, leaving cleanly.

Evaluation is split between the processes and summed (or gathered), so that a
DDP run reports the figures of a single process.
"""

import logging
import os
import sys

import numpy as np
import speechbrain as sb
import torch


logger = logging.getLogger(__name__)


class ShardSampler(torch.utils.data.Sampler):
    """Items ``rank, rank + N, rank + 2N, ...`` of a dataset, in order, for process ``rank`` of N.

    Unlike ``DistributedSampler`` it never repeats items to even out the
    shards, so that counts summed over processes are those of one process.

    Example
    -------
    >>> list(ShardSampler(5, rank=1, world_size=2))
    [1, 3]
    """

    def __init__(self, num_items, rank=None, world_size=None):
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        self.rank = rank if rank is not None else (torch.distributed.get_rank() if distributed else 0)
        world = world_size if world_size is not None else (torch.distributed.get_world_size() if distributed else 1)
        self.indices = list(range(self.rank, num_items, world))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)


def process_seed(seed, rank=None):
    """The seed of this process's random streams: ``seed`` on rank 0 (a single process is unchanged),
    a different one on every other rank, so that ranks do not draw the same chunk offsets and gains.

    >>> process_seed(1234, rank=0), process_seed(1234, rank=1) != process_seed(1234, rank=2)
    (1234, True)
    """
    if rank is None:
        rank = torch.distributed.get_rank() if in_process_group() else 0
    return seed if rank == 0 else int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])


def seed_this_process(seed):
    """Seeds Python's, NumPy's and torch's global generators with :func:`process_seed` (rank 0: untouched).

    Under ``torchrun`` the yaml seeds every rank alike (the models start
    equal); the data drawn after that must differ between ranks.
    """
    if in_process_group() and torch.distributed.get_rank() > 0:
        sb.utils.seed_everything(process_seed(seed))


def in_process_group():
    """True under ``torchrun`` once the process group is open."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def run_recipe(main, argv):
    """Runs a recipe's ``main(argv)`` and ends the process with the status it earned.

    In a single process this is plain Python: an exception ends the process
    with status 1 and its traceback, ``sys.exit(n)`` with ``n``.

    Under ``torchrun`` (the process group open once ``main`` has joined it):

    * success: the process waits for the others at a barrier (the main one
      may still write its report), leaves the group and ends at once with
      status 0, skipping the interpreter's shutdown (see below);
    * failure on this rank (an exception, or ``sys.exit`` with a non-zero
      status): the traceback goes through ``sys.excepthook`` (SpeechBrain's
      logs it to ``log.txt`` on the main process), and the process ends at
      once with a non-zero status, without waiting for the others; torchrun
      then stops the other ranks and itself exits non-zero.

    Why not the interpreter's shutdown after a success: gloo's worker threads
    drop the tensors of a collective some time after the caller sees it
    finish; if Python is already shutting down by then, dropping a tensor that
    Python created needs the GIL and aborts the process ("terminate called
    without an active exception", SIGABRT) after a successful run
    (pytorch/pytorch#190489). Neither destroying the group nor a barrier
    closes that window (torch 2.14: 1 abort in 40 runs with both).
    """
    try:
        main(argv)
    except SystemExit as request:
        if request.code in (None, 0):
            leave_process_group()
            raise
        if not in_process_group():
            raise
        status = request.code if isinstance(request.code, int) else 1
        if not isinstance(request.code, int):
            print(request.code, file=sys.stderr)
        end_process(status)
    except BaseException:
        if not in_process_group():
            raise
        sys.excepthook(*sys.exc_info())
        end_process(1)
    leave_process_group()


def leave_process_group():
    """After a success under DDP: barrier, leave the group, end with status 0 (see :func:`run_recipe`)."""
    if not in_process_group():
        return
    sb.utils.distributed.ddp_barrier()
    torch.distributed.destroy_process_group()
    logger.info("Left the process group; ending this process without interpreter shutdown")
    end_process(0)


def end_process(status):
    """Flushes the logs and the output, then ends the process at once with ``status``."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(status)
