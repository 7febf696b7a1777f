"""gaussians="auto": the ladder search for the number of Gaussians a byte budget buys."""

import json
import math

import pytest

from smartsplat_jax import gaussian_count as G
from smartsplat_jax.codec.rate import gaussians_for_budget
from smartsplat_jax.io import load_image, save_image


def _calls(f, max_trials):
    seen = []

    def score(k):
        seen.append(k)
        return f(k)

    return G.climb(score, max_trials), seen


def test_climb_goes_up_while_it_gains_and_stops_at_the_first_loss():
    assert _calls(lambda k: -(k - 2) ** 2, 5) == (2, [0, 1, 2, 3])
    assert _calls(lambda k: -(k - 9) ** 2, 5) == (4, [0, 1, 2, 3, 4])  # out of trials


def test_climb_goes_down_when_the_first_step_up_does_not_gain():
    assert _calls(lambda k: -(k + 1) ** 2, 5) == (-1, [0, 1, -1, -2])
    assert _calls(lambda k: -abs(k), 5) == (0, [0, 1, -1])  # the paper's N is best
    assert _calls(lambda k: 1.0, 5) == (0, [0, 1, -1])  # ties keep the smaller move
    # An unusable rung (over the budget, -inf) is never chosen.
    assert _calls(lambda k: -math.inf if k >= 1 else k, 5) == (0, [0, 1, -1])
    assert _calls(lambda k: 0.0, 1) == (0, [0])


def test_ladder():
    assert [G.ladder_gaussians(100, k, 10**6) for k in (-2, -1, 0, 1, 2, 4)] == \
        [71, 84, 100, 119, 141, 200]
    assert G.ladder_gaussians(100, 3, 150) == 150 and G.ladder_gaussians(1, -8, 9) == 1


def test_bad_search_arguments_are_named():
    from smartsplat_jax.train import config_for_method

    cfg = config_for_method("smartsplat", steps=30, backend="xla")
    with pytest.raises(ValueError, match=r"max_trials=0 must be an integer >= 1"):
        G.choose_num_gaussians(None, 20, method="smartsplat", config=cfg, key=None,
                               backend="xla", max_trials=0)
    with pytest.raises(ValueError, match=r"pilot_steps=31 must be an integer in \[1, 30\]"):
        G.choose_num_gaussians(None, 20, method="smartsplat", config=cfg, key=None,
                               backend="xla", pilot_steps=31)


def test_auto_keeps_the_best_pilot_and_a_resumed_run_reuses_the_search(tmp_path, monkeypatch):
    """Pilots are whole runs: the result is the best pilot's (its decoded PSNR and bytes),
    nothing is trained again; the pilots follow the ladder from the paper's N; a resumed run
    neither searches nor trains again (it loads the chosen pilot's last checkpoint). Two
    pilots (each compiles its own N's training step) keep the test short."""
    from smartsplat_jax import DEMO_IMAGE
    from smartsplat_jax.pipeline import run_fit

    monkeypatch.setattr(G, "MAX_TRIALS", 2)
    path = tmp_path / "crop.png"
    save_image(path, load_image(DEMO_IMAGE)[200:240, 320:368])
    kw = dict(cr=8, steps=30, visualize=False, progress=False, gaussians="auto",
              chunk_steps=10, eval_every=0, checkpoint_every=0, backend="xla")
    m = run_fit(path, tmp_path / "w", **kw)
    search = m["gaussians_search"]
    trials = search["trials"]
    n_paper = gaussians_for_budget(40, 48, 8)
    assert search["n_paper"] == n_paper and search["pilot_steps"] == 30
    assert [t["k"] for t in trials] == [0, 1] and trials[0]["n"] == n_paper
    assert all(t["n"] == G.ladder_gaussians(n_paper, t["k"], 40 * 48) for t in trials)
    best = max((t for t in trials if t["fits_budget"]), key=lambda t: t["psnr"])
    assert m["num_gaussians"] == search["n"] == best["n"]
    assert m["psnr"] == best["psnr"] and m["file_bytes"] == best["file_bytes"]
    assert m["file_bytes"] <= m["budget_bytes"]
    for t in trials:  # each pilot's final checkpoint
        assert list((tmp_path / "w" / "gaussians_search" / f"n{t['n']}" / "checkpoints")
                    .glob("ckpt_*30.npz")), t
    written = json.loads((tmp_path / "w" / "metrics.json").read_text())
    assert written["gaussians_search"]["n"] == m["num_gaussians"]

    def no_search(*a, **k):
        raise AssertionError("searched again")

    monkeypatch.setattr(G, "choose_num_gaussians", no_search)
    again = run_fit(path, tmp_path / "w", **kw)
    assert again["num_gaussians"] == m["num_gaussians"] and again["resumed_from"] == 30
    assert again["psnr"] == m["psnr"]
    with pytest.raises(AssertionError, match="searched again"):  # another CR: a new search
        run_fit(path, tmp_path / "w", **{**kw, "cr": 9})
    with pytest.raises(AssertionError, match="searched again"):  # shorter pilots: new search
        run_fit(path, tmp_path / "w", **{**kw, "auto_pilot_steps": 10})
    with pytest.raises(AssertionError, match="searched again"):  # a longer run: new search
        run_fit(path, tmp_path / "w", **{**kw, "steps": 40})
