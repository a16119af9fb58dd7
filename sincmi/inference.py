"""Embedding utterances with a trained encoder."""

import torch
from speechbrain.dataio.batch import PaddedBatch
from torch.utils.data import DataLoader
from tqdm import tqdm

from sincmi.encoder import utterance_embeddings


@torch.no_grad()
def embed_dataset(encoder, dataset, device="cpu", batch_size=8, shift=None, progress=True):
    """Utterance embeddings of every item of a sentence dataset.

    Arguments
    ---------
    encoder : torch.nn.Module
        A chunk encoder (``SincNetEncoder`` or anything with ``chunk_size``
        and, optionally, its own ``embed_utterances``).
    dataset : DynamicItemDataset
        Items with ``id`` and ``sig`` (see :func:`sincmi.data.sentence_dataset`).
    shift : int, optional
        Hop between chunks (default: half a chunk).

    Returns
    -------
    dict
        ``{id: embedding}`` on the CPU.
    """
    encoder = encoder.to(device).eval()
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=PaddedBatch)
    embeddings = {}
    for batch in tqdm(loader, desc="Embedding utterances", disable=not progress):
        wavs, lens = batch.sig
        wavs, lens = wavs.to(device), lens.to(device)
        if hasattr(encoder, "embed_utterances"):
            emb = encoder.embed_utterances(wavs, lens, shift=shift)
        else:
            emb = utterance_embeddings(encoder, wavs, lens, encoder.chunk_size, shift)
        for utt_id, vector in zip(batch.id, emb.cpu()):
            embeddings[utt_id] = vector
    return embeddings
