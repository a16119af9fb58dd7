"""In-batch construction of positive and negative pairs for LIM.

A batch holds, for each of B sentences, two random chunks of that sentence:
``anchor[i]`` and ``positive[i]``. Positives are the pairs
``(anchor[i], positive[i])``. Negatives pair ``anchor[i]`` with
``positive[j]`` of another sentence ``j`` (samples from the product of the
marginals), so the 2B encodings of the step are reused and nothing extra is
encoded.
"""

import torch


def sentence_codes(sentence_ids, device=None):
    """Maps sentence identifiers (any hashables) to integer codes.

    Example
    -------
    >>> sentence_codes(["a", "b", "a"]).tolist()
    [0, 1, 0]
    """
    if isinstance(sentence_ids, torch.Tensor):
        return sentence_ids.to(device)
    table = {}
    codes = [table.setdefault(s, len(table)) for s in sentence_ids]
    return torch.tensor(codes, dtype=torch.long, device=device)


def negative_indices(sentence_ids, num_negatives=None, generator=None, device=None):
    """Chooses, for every anchor, the columns of its negatives.

    Arguments
    ---------
    sentence_ids : list or torch.Tensor
        The sentence of each batch element (length B).
    num_negatives : int or None
        Negatives per anchor, K. None (or K >= B - 1) takes every other batch
        element; otherwise K distinct elements are drawn at random among
        those of other sentences.
    generator : torch.Generator, optional
        Source of randomness when K < B - 1.

    Returns
    -------
    index : torch.LongTensor
        ``(B, K)``: ``index[i, k]`` is the batch element whose positive chunk
        is the k-th negative of anchor i. Never i itself.
    valid : torch.BoolTensor
        ``(B, K)``: False where ``index[i, k]`` belongs to the same sentence as
        anchor i (possible only when a sentence occurs twice in the batch, or
        when a batch has too few other sentences); such pairs must be ignored.

    Example
    -------
    >>> index, valid = negative_indices(["s1", "s2", "s3"])
    >>> index.tolist()
    [[1, 2], [0, 2], [0, 1]]
    >>> valid.all().item()
    True
    """
    codes = sentence_codes(sentence_ids, device)
    batch = codes.shape[0]
    if batch < 2:
        raise ValueError("negative pairs need at least two sentences in a batch")
    same = codes.unsqueeze(0) == codes.unsqueeze(1)
    if num_negatives is None or num_negatives >= batch - 1:
        cols = torch.arange(batch - 1, device=codes.device).unsqueeze(0)
        rows = torch.arange(batch, device=codes.device).unsqueeze(1)
        index = cols + (cols >= rows).long()  # every column but the diagonal
    else:
        if num_negatives < 1:
            raise ValueError(f"num_negatives must be >= 1, got {num_negatives}")
        noise = torch.rand(batch, batch, generator=generator).to(codes.device)
        # Same-sentence columns (the diagonal included) rank last.
        noise = noise.masked_fill(same, -1.0)
        index = noise.topk(num_negatives, dim=1).indices
    valid = ~same.gather(1, index)
    return index, valid


def pair_logits(discriminator, anchors, positives, sentence_ids, num_negatives=None, generator=None):
    """Scores positive and negative pairs of one batch.

    Arguments
    ---------
    discriminator : sincmi.discriminator.PairDiscriminator
        The critic.
    anchors, positives : torch.Tensor
        ``(B, D)`` embeddings of the two chunks of each sentence.
    sentence_ids : list or torch.Tensor
        Sentence of each batch element.
    num_negatives : int or None
        See :func:`negative_indices`.

    Returns
    -------
    pos : torch.Tensor
        ``(B,)`` logits of the positive pairs.
    neg : torch.Tensor
        ``(B, K)`` logits of the negative pairs.
    valid : torch.BoolTensor
        ``(B, K)`` mask of the negative pairs to use.
    """
    index, valid = negative_indices(sentence_ids, num_negatives, generator, anchors.device)
    diagonal = torch.arange(anchors.shape[0], device=anchors.device).unsqueeze(1)
    both = torch.cat([diagonal, index], dim=1)
    logits = discriminator(anchors, positives, both)  # forward: DDP-safe
    return logits[:, 0], logits[:, 1:], valid
