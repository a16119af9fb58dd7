"""Running on several processes (``torchrun``): sharding evaluation, gathering, leaving cleanly.

Evaluation is split between the processes and summed (or gathered), so that a
DDP run reports the figures of a single process.
"""

import atexit
import logging
import os
import sys

import speechbrain as sb
import torch

from sincmi.inference import embed_dataset

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


def embed_all_processes(encoder, dataset, device, batch_size, shift):
    """Utterance embeddings of ``dataset``; under DDP each process embeds 1/N and all get all."""
    embeddings = embed_dataset(encoder, dataset, device=device, batch_size=batch_size, shift=shift,
                               sampler=ShardSampler(len(dataset)))
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        parts = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(parts, embeddings)
        embeddings = {key: value for part in parts for key, value in part.items()}
    return embeddings


def leave_process_group_at_exit():
    """Makes the processes of a DDP run leave their group together at exit, without crashing.

    Gloo's worker threads drop the tensors of a collective some time after the
    caller sees it finish. If this process is already shutting Python down by
    then, dropping a tensor that Python created needs the GIL and aborts the
    process ("terminate called without an active exception", SIGABRT) after a
    successful run (pytorch/pytorch#190489). Neither destroying the group nor
    waiting for the other processes at a barrier closes that window (measured
    with torch 2.14: 1 abort in 40 runs with both), so a process that ends
    normally waits for the others at a barrier (a non-main process would
    otherwise leave while the main one still writes the report), destroys the
    group, flushes its logs and output, and ends at once with status 0
    (``os._exit``): the interpreter's own shutdown, where the abort happens,
    never runs. After an uncaught exception there is neither barrier (the
    others may never arrive) nor early end: the process fails as usual.
    """
    failed = []
    previous_hook = sys.excepthook

    def note_failure(*exc_info):
        failed.append(True)
        previous_hook(*exc_info)

    def leave():
        if not torch.distributed.is_initialized() or failed:
            return
        sb.utils.distributed.ddp_barrier()
        torch.distributed.destroy_process_group()
        logger.info("Left the process group; ending this process without interpreter shutdown")
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os._exit(0)

    sys.excepthook = note_failure
    atexit.register(leave)
