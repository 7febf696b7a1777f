"""Training never dies and never loses a run: non-finite gradients, rollbacks, divergence,
checkpoints of the wrong run, truncated checkpoints, signals, reproducibility.

Failures are forced by wrapping `train.loop.loss_value` (the function the compiled chunk
traces): a host callback makes the loss NaN on chosen steps, or a `where` whose other branch
has an infinite derivative makes one gradient entry NaN while the loss stays finite. The
chunk's compile cache is cleared around each such test so the wrapper is traced.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from smartsplat_jax import codec, load_image, metrics, num_gaussians, save_image
from smartsplat_jax import params as P
from smartsplat_jax.pipeline import load_params, run_fit
from smartsplat_jax.render import render
from smartsplat_jax.train import TrainingDiverged, config_for_method, fit, initialize
from smartsplat_jax.train import loop
from smartsplat_jax.train.checkpoint import list_checkpoints

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    """A 64 x 80 crop of the demo image, its file and N at CR 20."""
    from smartsplat_jax import DEMO_IMAGE

    img = load_image(DEMO_IMAGE)[180:244, 300:380]
    path = tmp_path_factory.mktemp("img") / "crop.png"
    save_image(path, img)
    img = load_image(path)
    return path, img, num_gaussians(64, 80, 20)


@pytest.fixture()
def patched_loss(monkeypatch):
    """patch(wrapper) replaces loss_value by wrapper(original) for the chunks compiled next."""
    original = loop.loss_value

    def patch(make):
        loop._run_chunk.clear_cache()
        monkeypatch.setattr(loop, "loss_value", make(original))

    yield patch
    loop._run_chunk.clear_cache()


def _nan_on_calls(bad_calls):
    """A loss wrapper whose loss is NaN on the given (1-based) training-step calls; the
    calls are counted on the host, so a retried chunk sees new call numbers."""
    count = {"n": 0}

    def host(_):
        count["n"] += 1
        return np.float32(np.nan if bad_calls(count["n"]) else 0.0)

    def make(original):
        def loss_value(params, image, config, capacity=None):
            loss, mse = original(params, image, config, capacity)
            poison = jax.pure_callback(host, jax.ShapeDtypeStruct((), jnp.float32),
                                       jax.lax.stop_gradient(params.colors[0, 0]))
            return loss * (1.0 + jax.lax.stop_gradient(poison)), mse
        return loss_value

    return make, count


def _cfg(**kw):
    base = dict(steps=40, chunk_steps=10, eval_every=0, checkpoint_every=10, backend="xla")
    return config_for_method("smartsplat", **{**base, **kw})


def _finite(tree):
    return all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree_util.tree_leaves(tree))


def test_non_finite_gradients_never_reach_the_optimizer(photo, patched_loss):
    _, img, n = photo
    p0, _ = initialize("smartsplat", jax.random.PRNGKey(0), img, n)

    def make(original):
        def loss_value(params, image, config, capacity=None):
            loss, mse = original(params, image, config, capacity)
            # d/dx sqrt(0 * x) is infinite: Gaussian 0's x gradient is NaN, the loss is finite.
            trap = jnp.where(True, 0.0, jnp.sqrt(params.means[0, 0] * 0.0))
            return loss + trap, mse
        return loss_value

    patched_loss(make)
    params, hist = fit(img, p0, _cfg(steps=20), progress=False)
    assert _finite(params)
    assert float(params.means[0, 0]) == float(p0.means[0, 0])  # its gradient was zeroed
    assert float(params.means[0, 1]) != float(p0.means[0, 1])  # the rest trained
    assert [e["means"] for e in hist["nonfinite_grads"]] == [10, 10]  # 1 Gaussian x 10 steps
    assert all(e["scales"] == 0 for e in hist["nonfinite_grads"]) and not hist["rollbacks"]
    assert hist["eval"][-1]["psnr"] > metrics.psnr(render(p0, 64, 80), img) + 1.0


def test_a_nan_chunk_rolls_back_and_the_run_finishes(photo, patched_loss, capsys):
    _, img, n = photo
    p0, _ = initialize("smartsplat", jax.random.PRNGKey(0), img, n)
    make, count = _nan_on_calls(lambda k: k == 15)  # step 15, once
    patched_loss(make)
    params, hist = fit(img, p0, _cfg(steps=30), progress=True)
    assert _finite(params) and hist["step"][-1] == 30
    assert len(hist["rollbacks"]) == 1
    rb = hist["rollbacks"][0]
    assert (rb["step"], rb["from"], rb["lr_scale"]) == (15, 10, 0.25)
    assert count["n"] == 40  # 30 steps + the 10 of the rolled-back chunk
    out = capsys.readouterr().out
    assert "step 15: the loss became nan (non-finite gradients zeroed: means 109" in out
    assert "rolled back to step 10" in out
    assert "x0.25" in out and "back to x1" in out


def test_divergence_without_workdir_carries_the_last_good_parameters(photo, patched_loss):
    _, img, n = photo
    p0, _ = initialize("smartsplat", jax.random.PRNGKey(0), img, n)
    make, _ = _nan_on_calls(lambda k: True)
    patched_loss(make)
    with pytest.raises(TrainingDiverged, match=r"stopped at step 1: the loss became nan .*, "
                                               r"after 3 retries from step 0") as err:
        fit(img, p0, _cfg(steps=20), progress=False)
    e = err.value
    assert e.good_step == 0
    assert [r["lr_scale"] for r in e.history["rollbacks"]] == [0.25, 0.0625, 0.015625]
    for a, b in zip(jax.tree_util.tree_leaves(e.params), jax.tree_util.tree_leaves(p0)):
        np.testing.assert_array_equal(a, b)


def test_forced_divergence_keeps_checkpoints_and_writes_the_best_file(photo, patched_loss,
                                                                      tmp_path):
    path, img, n = photo
    make, _ = _nan_on_calls(lambda k: k > 25)  # every step from the 26th on
    patched_loss(make)
    cfg = dict(steps=40, chunk_steps=10, eval_every=0, checkpoint_every=10, backend="xla",
               max_retries=2)
    with pytest.raises(TrainingDiverged) as err:
        run_fit(path, tmp_path, cr=20, visualize=False, progress=False, **cfg)
    e = err.value
    assert e.good_step == 20 and [r["step"] for r in e.history["rollbacks"]] == [26, 21]
    assert e.step == 21  # the last retry failed at its first step
    assert "after 2 retries" in str(e) and "image.ssplat" in str(e)
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == [
        "ckpt_000000020.npz", "ckpt_000000010.npz"]
    # The parameters of step 20 were written, as params.npz and as a decodable file.
    saved, h, w = load_params(tmp_path / "params.npz")
    assert _finite(saved) and (h, w) == (64, 80)
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["diverged"]["params_step"] == 20 and m["rollbacks"] == 2
    decoded, dh, dw = codec.decode((tmp_path / "image.ssplat").read_bytes())
    assert decoded.num == n
    assert m["psnr"] == pytest.approx(metrics.psnr(render(decoded, dh, dw), img), abs=1e-6)
    assert m["psnr"] > 15


def test_checkpoints_of_another_run_are_refused_or_cleared(photo, tmp_path):
    _, img, n = photo
    p0, _ = initialize("smartsplat", jax.random.PRNGKey(0), img, n)
    fit(img, p0, _cfg(steps=20), workdir=tmp_path, progress=False, run_info={"seed": 0})
    other = np.ascontiguousarray(img[::-1])  # same size, another image
    with pytest.raises(ValueError, match=r"another run \(differs in: image"):
        fit(other, p0, _cfg(steps=20), workdir=tmp_path, progress=False, run_info={"seed": 0})
    with pytest.raises(ValueError, match=r"config.lr_colors \(0.005 there, 0.01 now\)"):
        fit(img, p0, _cfg(steps=20, lr_colors=0.01), workdir=tmp_path, progress=False,
            run_info={"seed": 0})
    with pytest.raises(ValueError, match=r"seed \(0 there, 1 now\)"):
        fit(img, p0, _cfg(steps=20), workdir=tmp_path, progress=False, run_info={"seed": 1})
    # Starting over deletes the old run's checkpoints: a later resume finds the new run's.
    fit(other, p0, _cfg(steps=10), workdir=tmp_path, progress=False, resume=False)
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == ["ckpt_000000010.npz"]
    _, hist = fit(other, p0, _cfg(steps=20), workdir=tmp_path, progress=False)
    assert hist["resumed_from"] == 10
    # Longer, and relocating after the steps still to come: a change of schedule, the same
    # run (resumed).
    _, hist = fit(other, p0, _cfg(steps=30, relocate_every=5), workdir=tmp_path,
                  progress=False)
    assert hist["resumed_from"] == 20 and [r["step"] for r in hist["relocated"]] == [25]


def test_checkpoints_without_a_fingerprint_are_refused_with_their_own_message(photo, tmp_path):
    from smartsplat_jax.train.checkpoint import save_checkpoint
    from smartsplat_jax.train.optim import make_optimizer

    _, img, n = photo
    p0, _ = initialize("smartsplat", jax.random.PRNGKey(0), img, n)
    cfg = _cfg(steps=20)
    save_checkpoint(tmp_path / "checkpoints", 10, (p0, make_optimizer(cfg).init(p0)),
                    {"history": {}})  # the layout of older releases
    with pytest.raises(ValueError, match="without a run fingerprint.*--noresume"):
        fit(img, p0, cfg, workdir=tmp_path, progress=False)


def test_checkpoints_of_an_older_training_state_are_refused_by_name(photo, tmp_path):
    from smartsplat_jax.train.checkpoint import save_checkpoint
    from smartsplat_jax.train.loop import run_fingerprint

    _, img, n = photo
    p0, _ = initialize("smartsplat", jax.random.PRNGKey(0), img, n)
    cfg = _cfg(steps=20)
    old_fp = {k: v for k, v in run_fingerprint(img, n, cfg).items() if k != "state_format"}
    labels = P.GaussianParams(means="a", scales="a", rotation="a", colors="a", opacity="z")
    old_opt = optax.multi_transform({"a": optax.adam(1e-3), "z": optax.set_to_zero()}, labels)
    save_checkpoint(tmp_path / "checkpoints", 10, (p0, old_opt.init(p0)),
                    {"history": {}, "fingerprint": old_fp})  # format 1's optimizer layout
    with pytest.raises(ValueError, match="training-state format 1.*format 2.*--noresume"):
        fit(img, p0, cfg, workdir=tmp_path, progress=False)


def test_a_truncated_newest_checkpoint_falls_back_to_the_previous(photo, tmp_path, capsys):
    _, img, n = photo
    p0, _ = initialize("smartsplat", jax.random.PRNGKey(0), img, n)
    full, _ = fit(img, p0, _cfg(steps=30), progress=False)
    fit(img, p0, _cfg(steps=20), workdir=tmp_path, progress=False)
    newest = tmp_path / "checkpoints" / "ckpt_000000020.npz"
    newest.write_bytes(newest.read_bytes()[:1000])  # a disk that filled up mid-write
    resumed, hist = fit(img, p0, _cfg(steps=30), workdir=tmp_path, progress=True)
    assert hist["resumed_from"] == 10
    assert "skipped an unreadable checkpoint" in capsys.readouterr().out
    for a, b in zip(jax.tree_util.tree_leaves(full), jax.tree_util.tree_leaves(resumed)):
        np.testing.assert_array_equal(a, b)


def test_same_seed_and_config_give_bit_identical_runs_on_cpu(photo):
    _, img, n = photo
    runs = []
    for _ in range(2):
        p0, _ = initialize("smartsplat", jax.random.PRNGKey(3), img, n)
        runs.append(fit(img, p0, _cfg(steps=20, eval_every=20), progress=False))
    (a, ha), (b, hb) = runs
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(x, y)
    assert ha["eval"][-1]["psnr"] == hb["eval"][-1]["psnr"]


def test_scales_stay_at_or_above_the_floor(photo):
    _, img, n = photo
    p0, _ = initialize("smartsplat", jax.random.PRNGKey(0), img, n)
    p0 = p0.replace(scales=p0.scales.at[:5, 0].set(jnp.array([0.0, 1e-9, -1e-7, 3e-3, -0.01])))
    params, _ = fit(img, p0, _cfg(steps=10, lr_scales=0.0), progress=False)
    assert float(jnp.min(jnp.abs(params.scales))) >= P.SCALE_FLOOR
    np.testing.assert_array_equal(np.sign(params.scales[:5, 0]), [1, 1, -1, 1, -1])


def test_a_constant_image_gives_strict_json(tmp_path):
    path = tmp_path / "white.png"
    save_image(path, np.ones((24, 32, 3), np.float32))
    m = run_fit(path, tmp_path / "w", cr=4, steps=10, visualize=False, progress=False,
                chunk_steps=10, eval_every=0, backend="xla")
    strict = lambda name: json.loads((tmp_path / "w" / name).read_text(),  # noqa: E731
                                     parse_constant=lambda c: pytest.fail(f"{name}: {c}"))
    written = strict("metrics.json")
    strict("history.json")
    assert written["lossless"] == m["lossless"]
    if m["lossless"]:  # the white image is covered: every pixel clamps to exactly 1
        assert written["psnr"] is None and m["psnr"] == float("inf")


# ------------------------------------------------------------------- signals (subprocesses)

def _env():
    return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")


def _wait_for_checkpoint(proc, ckpt_dir: Path, timeout=300.0) -> int:
    """Waits until a checkpoint exists; returns its step."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        files = sorted(ckpt_dir.glob("ckpt_*.npz")) if ckpt_dir.is_dir() else []
        if files:
            return int(files[-1].stem.split("_")[1])
        if proc.poll() is not None:
            raise AssertionError(f"exited early: {proc.communicate()}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("no checkpoint appeared")


def _commands(photo, tmp_path, tool):
    path = photo[0]
    if tool == "compress":
        out = tmp_path / "x.ssplat"
        cmd = [sys.executable, "-m", "smartsplat_jax", "compress", str(path), str(out),
               "--cr=20", "--steps=150", "--checkpoint-every=20", "--backend=xla"]
        return cmd, out, tmp_path / ".x.ssplat.checkpoints" / "checkpoints"
    work = tmp_path / "w"
    cmd = [sys.executable, "-m", "experiments.fit", f"--image={path}", "--cr=20",
           "--steps=150", f"--workdir={work}", "--config.chunk_steps=10",
           "--config.eval_every=0", "--config.checkpoint_every=20", "--backend=xla"]
    return cmd, work / "image.ssplat", work / "checkpoints"


@pytest.mark.parametrize("tool,sig", [
    ("compress", signal.SIGINT),  # ~35 s each (two subprocesses); the others are slow
    pytest.param("compress", signal.SIGKILL, marks=pytest.mark.slow),
    pytest.param("fit", signal.SIGINT, marks=pytest.mark.slow),
    pytest.param("fit", signal.SIGKILL, marks=pytest.mark.slow),
])
def test_a_killed_run_resumes_losing_at_most_one_interval(photo, tmp_path, tool, sig):
    cmd, output, ckpt_dir = _commands(photo, tmp_path, tool)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    seen = _wait_for_checkpoint(proc, ckpt_dir)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=300)
    assert not output.exists()  # no partial output
    saved = max(int(p.stem.split("_")[1]) for p in ckpt_dir.glob("ckpt_*.npz"))
    assert saved >= seen
    if sig == signal.SIGINT:
        assert proc.returncode == 130, err[-2000:]
        assert "Traceback" not in err and "rerun the same command to resume" in err
    again = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resumed from step {saved}" in again.stdout + again.stderr
    # N trained; the file leaves out the Gaussians the render does not draw (codec.prune).
    assert output.is_file() and 0 < codec.read_info(output.read_bytes()).num_gaussians <= photo[2]
    if tool == "compress":
        assert not ckpt_dir.parent.exists()  # removed after success
