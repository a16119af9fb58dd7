"""Same seed, same data, CPU: identical results."""

from conftest import run_recipe, write_tone_corpus


def test_same_seed_same_results(tmp_path):
    folder = write_tone_corpus(str(tmp_path / "corpus"), speakers=6, utterances=4, seconds=0.6)
    args = ["--data_folder=" + folder, "--num_verification_speakers=2", "--valid_per_speaker=1",
            "--test_per_speaker=1"]
    first, _ = run_recipe("Demo", "lim_nce.yaml", tmp_path / "a", *args)
    second, _ = run_recipe("Demo", "lim_nce.yaml", tmp_path / "b", *args)
    assert first["systems"] == second["systems"]
    third, _ = run_recipe("Demo", "lim_nce.yaml", tmp_path / "c", *args, "--seed=7")
    assert third["systems"] != first["systems"]  # the seed is what fixes them
