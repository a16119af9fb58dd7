"""Verification: utterance embeddings of a dataset, a system's trials scored after each back end, calibrated.

:func:`verify` is the scoring behind the recipes' verification stage
(:func:`sincmi.stages.verification`): every process embeds its share
(:func:`embed_all_processes`), the main one fits the back ends and
calibrations, scores the trials and keeps what ``python -m sincmi export``
packs (:func:`save_model_parts`).
"""

import os

import numpy as np
import torch
from speechbrain.dataio.batch import PaddedBatch
from speechbrain.utils.distributed import if_main_process
from torch.utils.data import DataLoader

from sincmi import layout
from sincmi.backend import BACKEND_LABELS, Backend
from sincmi.calibration import cohort_matrix, fit_on_held_out_speakers, fit_on_training_speakers
from sincmi.distributed import ShardSampler, in_process_group
from sincmi.encoder import utterance_embeddings
from sincmi.metrics import verification_metrics
from sincmi.plots import det_curve, embedding_map
from sincmi.progress import progress_bar
from sincmi.scoring import read_trials, score_trials, write_scores


@torch.no_grad()
def embed_dataset(encoder, dataset, device="cpu", batch_size=8, shift=None, progress=True, sampler=None,
                  num_workers=0, max_chunks=64):
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
    sampler : torch.utils.data.Sampler, optional
        The items to embed (default: all, in order).
    num_workers : int
        Loader processes reading (and decoding) the utterances while the
        encoder runs: at Vox1-E/H size the reading is no longer serial.
    max_chunks : int
        Chunks encoded per forward call (``eval_chunks_per_batch``).

    Returns
    -------
    dict
        ``{id: embedding}`` on the CPU.
    """
    encoder = encoder.to(device).eval()
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=PaddedBatch, sampler=sampler,
                        num_workers=num_workers, prefetch_factor=4 if num_workers else None)
    embeddings = {}
    for batch in progress_bar(loader, desc="Embedding utterances", enabled=progress):
        wavs, lens = batch.sig
        wavs, lens = wavs.to(device), lens.to(device)
        with torch.no_grad():
            if hasattr(encoder, "embed_utterances"):
                emb = encoder.embed_utterances(wavs, lens, shift=shift, max_chunks=max_chunks)
            else:
                emb = utterance_embeddings(encoder, wavs, lens, encoder.chunk_size, shift, max_chunks)
        for utt_id, vector in zip(batch.id, emb.cpu()):
            embeddings[utt_id] = vector
    return embeddings


def embed_all_processes(encoder, dataset, device, batch_size, shift, num_workers=0, max_chunks=64):
    """Utterance embeddings of ``dataset``; under DDP each process embeds 1/N and the main one gets all.

    Scoring then runs on the main process alone (the others get ``None``), so
    that Vox1-E/H's embeddings are held once, not once per rank.
    """
    embeddings = embed_dataset(encoder, dataset, device=device, batch_size=batch_size, shift=shift,
                               sampler=ShardSampler(len(dataset)), num_workers=num_workers, max_chunks=max_chunks)
    if in_process_group():
        parts = [None] * torch.distributed.get_world_size() if torch.distributed.get_rank() == 0 else None
        torch.distributed.gather_object(embeddings, parts, dst=0)
        if parts is None:
            return None
        embeddings = {key: value for part in parts for key, value in part.items()}
    return embeddings



def verify(encoder, dataset, trials_file, device, batch_size=8, shift=None, cohort_set=None,
           score_norm=None, top_k=None, out_folder=None, name="system", speakers=None,
           backends=("none",), backend_set=None, save_scores=True, num_workers=0, max_chunks=64,
           training_speakers=None, calibration_prior=None, p_target=0.01, calibration_set=None,
           backend_speakers=None):
    """Scores a trial list by cosine on utterance embeddings, after each back end, and calibrates the scores.

    Every process embeds its share of the utterances (with ``num_workers``
    loader processes, ``max_chunks`` chunks per forward call); the main
    process alone scores, in bounded memory (:func:`sincmi.scoring.score_trials`).

    Arguments
    ---------
    shift : int, optional
        Hop between the chunks of an utterance embedding (default: half a chunk).
    cohort_set, score_norm, top_k : the score normalisation's cohort, see :func:`sincmi.scoring.score_trials`.
    out_folder : str, optional
        Where ``scores_<name>[_<back end>].txt.gz`` and DET curves go (with
        ``save_scores``), and what the export packs (:func:`save_model_parts`).
    speakers : dict, optional
        ``{utterance id: speaker}``: also draws ``embeddings_<name>.png`` (with ``out_folder``).
    backends : sequence of str
        Back ends (:mod:`sincmi.backend`) applied before scoring, each scored.
    backend_set : dataset, optional
        Training speakers' utterances that the back ends are fitted on;
        needed by every back end but ``none``, with ``backend_speakers``
        (``{utterance id: speaker}``) for ``lda``.
    training_speakers : dict, optional
        ``{utterance id: speaker}``: trials among them fit each back end's
        calibration at ``calibration_prior`` (default ``p_target``): those of
        ``backend_set`` (:func:`sincmi.calibration.fit_on_training_speakers`), or
        of ``calibration_set``, speakers held out of LIM and the back ends
        (:func:`sincmi.calibration.fit_on_held_out_speakers`). Every row then
        gets ``Cllr``, ``minCllr`` and ``actDCF`` at ``p_target``.

    Returns
    -------
    dict
        ``{back end: metrics}`` (EER, minDCF, calibration, trial counts); empty on the other processes.
    """
    def embed(items):
        return embed_all_processes(encoder, items, device, batch_size, shift, num_workers, max_chunks)

    embeddings = embed(dataset)
    cohort_emb = training = None
    if score_norm is not None:
        if cohort_set is None:
            raise ValueError(f"score_norm={score_norm!r} needs a cohort")
        cohort_emb = embed(cohort_set)
    if any(b != "none" for b in backends) or training_speakers:
        if backend_set is None:
            raise ValueError(f"verification back ends {list(backends)} need the training utterances (backend_set)")
        training = cohort_emb if backend_set is cohort_set and score_norm is not None else embed(backend_set)
    held_out = embed(calibration_set) if calibration_set is not None else None
    if embeddings is None:  # not the main process: it only embedded its share
        return {}
    trials = read_trials(trials_file)
    raw_cohort = None if cohort_emb is None else cohort_matrix(cohort_emb)
    results = {}
    for backend_name in backends:
        backend = Backend(backend_name, None if training is None else torch.stack(list(training.values())),
                          None if training is None or backend_speakers is None
                          else [backend_speakers[key] for key in training])
        cohort = None if raw_cohort is None else backend(raw_cohort)
        scores, labels = score_trials(backend.apply(embeddings), trials, cohort, score_norm, top_k, backend.scorer)
        results[backend_name] = {**verification_metrics(scores[labels], scores[~labels]), "backend": backend_name}
        calibration = None
        if training_speakers:
            calibration = (fit_on_held_out_speakers(held_out, training_speakers, backend, cohort_emb, score_norm,
                                                    top_k, calibration_prior or p_target) if held_out is not None
                           else fit_on_training_speakers(training, training_speakers, backend_name, cohort_emb,
                                                         score_norm, top_k, calibration_prior or p_target))
            results[backend_name].update(calibration.metrics(scores[labels].numpy(), scores[~labels].numpy(),
                                                             p_target))
        if out_folder is not None and save_scores and if_main_process():
            save_model_parts(out_folder, name, backend, cohort, calibration)
            write_system_scores(out_folder, name, backend_name, trials, scores, labels)
    if out_folder is not None and speakers and if_main_process():
        draw_embedding_map(embeddings, speakers, out_folder, name)
    return results


def draw_embedding_map(embeddings, speakers, out_folder, name):
    """``embeddings_<name>.png``: a 2-D map of the utterance embeddings, coloured by speaker."""
    ids = [key for key in embeddings if key in speakers]
    embedding_map(torch.stack([embeddings[key] for key in ids]).numpy(), [speakers[key] for key in ids],
                  os.path.join(out_folder, f"embeddings_{layout.file_slug(name)}.png"), title=f"{name}: embeddings (PCA)")


def write_system_scores(out_folder, name, backend_name, trials, scores, labels):
    """The scores file and DET curve of system ``name`` with ``backend_name``."""
    scores_path = layout.scores_file(out_folder, name, backend_name)
    write_scores(scores_path, trials, scores.tolist())
    slug = os.path.basename(scores_path)[len("scores_"):].split(".")[0]
    det_curve({name: (scores[labels], scores[~labels])}, os.path.join(out_folder, f"det_{slug}.png"))


def save_model_parts(out_folder, system, backend, cohort=None, calibration=None):
    """Keeps what ``python -m sincmi export`` packs with the encoder: back end, cohort, calibration.

    The back end (not for ``none``) goes to :func:`sincmi.layout.backend_file`,
    the cohort embeddings after it (with score normalisation) to
    :func:`sincmi.layout.cohort_file`, the calibration to :func:`sincmi.layout.calibration_file`.
    """
    if backend.name != "none":
        path = layout.backend_file(out_folder, system, backend.name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        backend.save(path)
    if calibration is not None:
        path = layout.calibration_file(out_folder, system, backend.name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        calibration.save(path)
    if cohort is not None:
        path = layout.cohort_file(out_folder, system, backend.name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        np.savez(path, embeddings=cohort.numpy())


def result_rows(system, by_backend, stats=None):
    """One results row per back end: ``{row name: metrics + stats}``.

    The row of the ``none`` back end is named after the system, the others
    add the back end (``"MFCC statistics, standardised"``).

    Example
    -------
    >>> sorted(result_rows("LIM", {"none": {"EER": 0.1}, "standardize": {"EER": 0.2}}))
    ['LIM', 'LIM, standardised']
    """
    return {system + BACKEND_LABELS[name]: {**metrics, **(stats or {})} for name, metrics in by_backend.items()}


