"""EER, minDCF and sentence-level error against known answers and SpeechBrain."""

import pytest
import torch
from speechbrain.utils.metric_stats import EER, minDCF

from sincmi.metrics import SpeakerIdErrorStats, eer, min_dcf, sentence_predictions
from sincmi.scoring import cosine_trial_scores, read_trials


def test_eer_known_cases():
    assert eer([0.9, 0.8], [0.1, 0.2])[0] == 0.0
    assert eer([0.1, 0.2], [0.8, 0.9])[0] == 1.0
    # 4 targets, 4 non-targets, one of each on the wrong side: EER 25 %.
    value, threshold = eer([0.9, 0.8, 0.7, 0.3], [0.1, 0.2, 0.4, 0.75])
    assert value == pytest.approx(0.25)
    assert threshold == pytest.approx(0.4)


def test_min_dcf_known_case():
    # Accept when score > threshold. Candidate thresholds and costs (p_target 0.01):
    #   0.40: P_miss = 1/4 (0.3), P_fa = 1/4 (0.75) -> 0.0025 + 0.2475 = 0.25
    #   0.75: P_miss = 2/4 (0.3, 0.7), P_fa = 0     -> 0.005  (the minimum)
    #   0.90: P_miss = 1, P_fa = 0                  -> 0.01
    pos, neg = [0.9, 0.8, 0.7, 0.3], [0.1, 0.2, 0.4, 0.75]
    raw, threshold = min_dcf(pos, neg, p_target=0.01, normalize=False)
    assert raw == pytest.approx(0.005) and threshold == pytest.approx(0.75)
    assert min_dcf(pos, neg, p_target=0.01)[0] == pytest.approx(0.5)  # / min(0.01, 0.99)
    # p_target 0.05: 0.05 * 0.5 = 0.025 at 0.75, against 0.25 at 0.40
    assert min_dcf(pos, neg, p_target=0.05, normalize=False)[0] == pytest.approx(0.025)


@pytest.mark.parametrize("seed", range(8))
def test_equal_to_speechbrain_on_random_scores(seed):
    gen = torch.Generator().manual_seed(seed)
    pos = torch.randn(int(torch.randint(10, 400, (1,), generator=gen)), generator=gen) + 1.5
    neg = torch.randn(int(torch.randint(10, 600, (1,), generator=gen)), generator=gen)
    if seed % 2:  # ties
        pos, neg = torch.round(pos * 4) / 4, torch.round(neg * 4) / 4
    sb_eer, sb_thr = EER(pos, neg)
    value, thr = eer(pos, neg)
    assert value == pytest.approx(sb_eer, abs=1e-6)
    assert thr == pytest.approx(sb_thr, abs=1e-6)
    for p_target in (0.01, 0.05):
        sb_dcf, _ = minDCF(pos, neg, p_target=p_target)
        assert min_dcf(pos, neg, p_target=p_target, normalize=False)[0] == pytest.approx(sb_dcf, abs=1e-6)


def test_metrics_reject_empty_or_nan():
    with pytest.raises(ValueError, match="target and non-target"):
        eer([], [0.1])
    with pytest.raises(ValueError, match="NaN"):
        eer([float("nan")], [0.1])


def test_sentence_cer_sums_log_posteriors():
    # Chunk 0 votes weakly for class 0, chunk 1 strongly for class 1: the sum picks 1.
    lp = torch.log(torch.tensor([[0.6, 0.4], [0.05, 0.95], [0.3, 0.7], [0.9, 0.1]]))
    owner = torch.tensor([0, 0, 1, 1])
    assert sentence_predictions(lp, owner, 2).tolist() == [1, 0]
    stats = SpeakerIdErrorStats()
    stats.append(lp, owner, torch.tensor([1, 1]))
    summary = stats.summarize()
    assert summary["sentence_error"] == 0.5
    assert summary["chunk_error"] == 0.5  # chunks 0 and 3 wrong


def test_read_trials_and_cosine_scores(tmp_path):
    path = tmp_path / "trials.txt"
    path.write_text("1 a b\n0 a c\n\n")
    trials = read_trials(path)
    emb = {"a": torch.tensor([1.0, 0.0]), "b": torch.tensor([2.0, 0.0]), "c": torch.tensor([0.0, 3.0])}
    pos, neg = cosine_trial_scores(emb, trials)
    assert pos.tolist() == [1.0] and neg.tolist() == [0.0]
    path.write_text("1 a b\n2 a c\n")
    with pytest.raises(ValueError, match=r"trials.txt:2"):
        read_trials(path)


def direct_norm(emb, trials, cohort, method, top_k=None):
    """Score normalisation computed trial by trial, the way it is defined."""
    import numpy as np

    def unit(v):
        return v / np.linalg.norm(v)

    cohort = [unit(c) for c in cohort.numpy()]
    out = []
    for _, a, b in trials:
        ea, eb = unit(emb[a].numpy()), unit(emb[b].numpy())
        s = float(ea @ eb)

        def stats(e):
            c = np.array([float(e @ x) for x in cohort])
            if top_k:
                c = np.sort(c)[::-1][:top_k]
            return c.mean(), c.std(ddof=1)

        (ma, sa), (mb, sb) = stats(ea), stats(eb)
        z, t = (s - ma) / sa, (s - mb) / sb
        out.append({"z-norm": z, "t-norm": t, "s-norm": (z + t) / 2, "as-norm": (z + t) / 2}[method])
    return out


@pytest.mark.parametrize("method,top_k", [("z-norm", None), ("t-norm", None), ("s-norm", None), ("as-norm", 3)])
def test_score_normalisation_matches_direct_computation(method, top_k):
    from sincmi.scoring import cohort_statistics, score_trials, trial_indices

    gen = torch.Generator().manual_seed(0)
    emb = {f"u{i}": torch.randn(6, generator=gen) for i in range(7)}
    trials = [(1, "u0", "u1"), (0, "u2", "u3"), (0, "u4", "u0"), (1, "u5", "u6")]
    cohort = torch.randn(9, 6, generator=gen)
    scores, labels = score_trials(emb, trials, cohort, method, top_k)
    expected = direct_norm(emb, trials, cohort, method, top_k)
    assert torch.allclose(scores.double(), torch.tensor(expected, dtype=torch.float64), atol=1e-5)
    assert labels.tolist() == [True, False, False, True]
    # Statistics computed in chunks equal the one-shot computation.
    matrix = trial_indices(emb, trials)[0].matrix
    one = cohort_statistics(matrix, cohort, top_k)
    chunked = cohort_statistics(matrix, cohort, top_k, chunk=2)
    assert torch.allclose(one[0], chunked[0]) and torch.allclose(one[1], chunked[1])


def test_score_normalisation_errors_name_the_problem():
    from sincmi.scoring import score_trials

    emb = {"a": torch.ones(2), "b": torch.ones(2)}
    with pytest.raises(ValueError, match="unknown method 'x-norm'"):
        score_trials(emb, [(1, "a", "b")], torch.ones(3, 2), "x-norm")
    with pytest.raises(ValueError, match="needs a cohort"):
        score_trials(emb, [(1, "a", "b")], None, "s-norm")
    with pytest.raises(ValueError, match="top_k must be in"):
        score_trials(emb, [(1, "a", "b")], torch.ones(3, 2), "as-norm", top_k=5)
    with pytest.raises(KeyError, match="no embedding"):
        score_trials(emb, [(1, "a", "zzz")])


def test_scoring_a_table_in_chunks_equals_scoring_at_once():
    """Chunked cosine scoring of an un-normalised table (what Vox1-E/H scoring uses) gives the scores
    of the normalised embeddings, whatever the chunk."""
    from sincmi.scoring import EmbeddingTable, pair_scores, score_trials

    gen = torch.Generator().manual_seed(1)
    matrix = 3 * torch.randn(50, 8, generator=gen)
    ids = [f"u{i}" for i in range(50)]
    pairs = torch.randint(0, 50, (2, 333), generator=gen)
    trials = [(int(a % 2), ids[a], ids[b]) for a, b in pairs.T.tolist()]
    normalised = torch.nn.functional.normalize(matrix, dim=1)
    expected = (normalised[pairs[0]] * normalised[pairs[1]]).sum(1)
    assert torch.allclose(pair_scores(matrix, pairs[0], pairs[1], chunk=7), expected, atol=1e-6)
    scores, labels = score_trials(EmbeddingTable(ids, matrix), trials)
    assert torch.equal(scores, pair_scores(matrix, pairs[0], pairs[1]))
    dict_scores, _ = score_trials(dict(zip(ids, matrix)), trials)
    assert torch.allclose(scores, dict_scores, atol=1e-6)
    with pytest.raises(KeyError, match="no embedding"):
        score_trials(EmbeddingTable(ids[:10], matrix[:10]), trials)
