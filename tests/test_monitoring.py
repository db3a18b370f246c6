"""The monitoring package on its own: the description of a digit, the rotating prediction
log, the drift comparison (real Evidently), the `monitor:` params. The served path, end to
end, is tests/test_monitor_served.py."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mnist_mlops.core.config import ConfigError, parse_params
from mnist_mlops.core.runtime import UserError
from mnist_mlops.monitoring import drift, predlog
from mnist_mlops.monitoring.features import FEATURES, describe
from mnist_mlops.monitoring.monitor import window
from mnist_mlops.monitoring.settings import MonitorParams, monitor_params

from .test_config import with_change

ABOUT = {"version": "3", "architecture": "cnn_32_64_64"}


def feature(images: np.ndarray, name: str) -> np.ndarray:
    return describe(images)[:, FEATURES.index(name)]


def test_description_of_simple_shapes() -> None:
    bar = np.zeros((1, 28, 28), np.uint8)
    bar[0, 4:24, 12:15] = 255                      # an upright stroke 3 pixels wide
    lying = np.rot90(bar, 1, axes=(1, 2)).copy()
    f = dict(zip(FEATURES, describe(bar)[0], strict=True))
    assert f["cx"] == pytest.approx(13) and f["cy"] == pytest.approx(13.5)
    assert (f["width"], f["height"]) == (3, 20) and f["stroke"] == pytest.approx(3, abs=0.6)
    assert f["border"] == 0 and f["ink"] == pytest.approx(60 / 784)
    assert (feature(lying, "width")[0], feature(lying, "height")[0]) == (20, 3)
    assert feature(255 - bar, "border")[0] == pytest.approx(1)   # inverted: the frame is ink
    assert not describe(np.zeros((2, 28, 28), np.uint8)).any()   # blank: zeros, no NaN


def test_mnist_description_is_stable_and_perturbations_move_it(mnist: dict) -> None:
    x = mnist["x_test"][:500]
    assert abs(feature(x, "cx").mean() - 14) < 0.5 and feature(x, "border").max() < 0.05
    assert feature(255 - x, "border").min() > 0.9
    rot = np.rot90(x, 1, axes=(1, 2))
    assert feature(rot, "width").mean() > feature(x, "width").mean() + 3


def batch(n: int, start: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n images and probabilities whose confidence counts down from 1 - start/1e4 (an
    order tag)."""
    proba = np.full((n, 10), 0.0)
    proba[:, 0] = (start + np.arange(n)) / 1e4
    proba[:, 1] = 1 - proba[:, 0]
    return np.zeros((n, 28, 28), np.uint8), proba


def test_log_rotates_at_its_bound_keeps_order_and_survives_a_restart(tmp_path: Path) -> None:
    opts = predlog.LogOptions(tmp_path / "logs" / "p.jsonl", max_bytes=10_000, backups=2)
    plog = predlog.PredictionLog(opts)
    for i in range(30):
        plog.append(*batch(4, 4 * i), np.ones((4, 8), np.float32), ABOUT)
    plog.close()
    files = predlog.log_files(opts.path)
    assert [f.name for f in files] == ["p.jsonl.2", "p.jsonl.1", "p.jsonl"]
    assert all(f.stat().st_size <= opts.max_bytes for f in files)
    kept = [r["confidence"] for r in predlog.records(opts.path)]
    assert kept == sorted(kept, reverse=True) and kept[-1] == pytest.approx(1 - 119 / 1e4)
    first = json.loads(files[-1].read_text().splitlines()[0])
    assert first["model"] == ABOUT and set(first["features"]) == set(FEATURES)
    assert predlog.embedding(first).tolist() == [1.0] * 8
    assert first["digit"] == 1 and first["v"] == 1

    before = len(kept)
    again = predlog.PredictionLog(opts)          # a restarted server: appends, never truncates
    again.append(*batch(2, 120), None, ABOUT)
    again.close()
    after = [r["confidence"] for r in predlog.records(opts.path)]
    assert after[-2:] == pytest.approx([1 - 120 / 1e4, 1 - 121 / 1e4])
    assert len(after) >= min(before, 20)


def test_a_cut_line_is_skipped_and_embedding_off_is_honoured(tmp_path: Path) -> None:
    opts = predlog.LogOptions(tmp_path / "p.jsonl", embedding=False)
    plog = predlog.PredictionLog(opts)
    plog.append(*batch(3), np.ones((3, 4), np.float32), ABOUT)
    plog.close()
    with open(opts.path, "ab") as f:
        f.write(b'{"v":1,"time":"2026-')            # a crash mid-line
    recs = list(predlog.records(opts.path))
    assert len(recs) == 3 and "embedding" not in recs[0]


def test_a_log_that_cannot_be_written_warns_once_and_never_raises(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "file").write_text("not a folder")
    plog = predlog.PredictionLog(predlog.LogOptions(tmp_path / "file" / "p.jsonl"))
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            plog.append(*batch(2), None, ABOUT)
        plog.close()
    warnings = [r for r in caplog.records if "cannot write the prediction log" in r.message]
    assert len(warnings) == 1 and plog.written == 0


WRITER = """
import sys, numpy as np
from mnist_mlops.monitoring import predlog
opts = predlog.LogOptions(sys.argv[1], max_bytes=20_000, backups=50)
k = int(sys.argv[2])
for i in range(20):
    proba = np.full((2, 10), 0.1)
    predlog.write(opts, predlog.lines(np.zeros((2, 28, 28), np.uint8), proba, None,
                                      {"version": str(k)}, 0.0))
"""


def test_several_processes_share_one_log(tmp_path: Path) -> None:
    """serve --workers N: N processes append to and rotate one log, under its lock file."""
    log = tmp_path / "p.jsonl"
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(log), str(k)])
             for k in range(4)]
    assert [p.wait(60) for p in procs] == [0] * 4
    recs = list(predlog.records(log))                      # no line lost or torn
    assert len(recs) == 160 and len(predlog.log_files(log)) > 2
    assert sorted({r["model"]["version"] for r in recs}) == ["0", "1", "2", "3"]


def fake_side(images: np.ndarray) -> drift.Described:
    """What a model would log for `images`: the description, a fixed random projection of
    the pixels as embedding, and confident answers."""
    emb = images.reshape(len(images), -1).astype(np.float32) @ np.random.default_rng(0).normal(
        size=(784, 16)).astype(np.float32) / 255
    proba = np.full((len(images), 10), 0.01)
    proba[np.arange(len(images)), np.arange(len(images)) % 10] = 0.91
    return drift.from_predictions(describe(images), proba, emb)


@pytest.fixture(scope="module")
def reference(mnist: dict) -> drift.Described:
    pick = np.random.default_rng(0).choice(60000, 1000, replace=False)
    return fake_side(mnist["x_train"][pick])


def test_mnist_test_digits_do_not_drift(mnist: dict, reference: drift.Described) -> None:
    pick = np.random.default_rng(1).choice(10000, 300, replace=False)
    _, s = drift.compare(reference, fake_side(mnist["x_test"][pick]), MonitorParams())
    assert not s["drift"] and s["reasons"] == [] and s["drift_share"] < 0.3, s
    assert s["embedding"]["auc"] < 0.6 and s["window"] == 300 and s["reference"] == 1000


@pytest.mark.parametrize("change", ["inverted", "rotated"])
def test_inverted_or_rotated_digits_drift(mnist: dict, reference: drift.Described,
                                          change: str) -> None:
    x = mnist["x_test"][np.random.default_rng(1).choice(10000, 300, replace=False)]
    x = 255 - x if change == "inverted" else np.rot90(x, 1, axes=(1, 2)).copy()
    snapshot, s = drift.compare(reference, fake_side(x), MonitorParams())
    assert s["drift"] and s["drift_share"] >= 0.3, s
    assert s["embedding"]["drifted"] or change == "rotated"   # a random projection: blind
    assert "width" in s["drifted_features"]
    assert json.loads(json.dumps(s)) == s                  # the summary is plain JSON
    assert "ValueDrift" in snapshot.json()


def test_falling_confidence_is_drift_a_new_class_mix_is_only_reported(
        mnist: dict, reference: drift.Described) -> None:
    x = mnist["x_test"][np.random.default_rng(1).choice(10000, 300, replace=False)]
    side = fake_side(x)
    unsure = drift.Described(side.features, side.confidence - 0.2, side.digit, side.embedding)
    _, s = drift.compare(reference, unsure, MonitorParams())
    assert s["drift"] and s["confidence"]["drop"] == pytest.approx(0.2, abs=1e-6)
    sevens = drift.Described(side.features, side.confidence, np.full(300, 7), side.embedding)
    _, s = drift.compare(reference, sevens, MonitorParams())
    assert not s["drift"] and s["class_mix"]["drifted"] and s["class_mix"]["current"][7] == 1


def record(version: str | None, arch: str) -> dict:
    return {"model": {"version": version, "architecture": arch}, "time": "t"}


def test_the_log_says_which_answers_were_unsure_and_monitor_counts_them(tmp_path: Path
                                                                        ) -> None:
    """`unsure` per answer: true/false from a calibrated model, null from one without a
    calibration (it cannot tell); the unsure rate counts only the answers that say."""
    from mnist_mlops.monitoring.monitor import unsure_rate

    opts = predlog.LogOptions(tmp_path / "p.jsonl", embedding=False)
    plog = predlog.PredictionLog(opts)
    plog.append(*batch(4), None, ABOUT, np.array([True, False, False, True]))
    plog.append(*batch(2, 4), None, ABOUT)                   # an uncalibrated model
    plog.close()
    recs = list(predlog.records(opts.path))
    assert [r["unsure"] for r in recs] == [True, False, False, True, None, None]
    assert unsure_rate(recs) == 0.5
    assert unsure_rate(recs[4:]) is None and unsure_rate([{"digit": 1}]) is None


def test_the_window_is_the_latest_answers_of_the_model(tmp_path: Path) -> None:
    recs = [record("2", "a")] * 40 + [record("3", "b")] * 50
    got = window(recs, {"version": "3", "architecture": "b"}, 30, tmp_path)
    assert len(got) == 30 and all(r["model"]["version"] == "3" for r in got)
    with pytest.raises(UserError, match=r"holds 0 answers of model v4 \(b\).*2/a, 3/b"):
        window(recs, {"version": "4", "architecture": "b"}, 30, tmp_path)


@pytest.mark.parametrize(("key", "value", "needle"), [
    ("monitor.windoww", 10, "monitor.windoww"),
    ("monitor.window", 5, "monitor.window"),
    ("monitor.retrain", [], "monitor.retrain"),
    ("monitor.stattest", "t-test", "monitor.stattest"),
    ("monitor.embedding_auc", 0.4, "monitor.embedding_auc"),
    ("monitor.log", "yes", "monitor.log"),
])
def test_bad_monitor_params_name_the_key(key: str, value: object, needle: str) -> None:
    p = parse_params(with_change(key, value))    # the pipeline's schema leaves monitor: be
    with pytest.raises(ConfigError, match=needle):
        monitor_params(p)


def test_repo_monitor_params() -> None:
    p = parse_params(with_change("monitor.retrain", ["python", "x.py"]))
    mp = monitor_params(p)
    assert mp.retrain == ("python", "x.py") and mp.log
    assert p.paths.prediction_log == Path("logs/predictions.jsonl")


def test_one_call_gives_the_answer_and_the_penultimate_layer() -> None:
    import keras

    from mnist_mlops.inference.keras_model import call_two_outputs, two_outputs
    from mnist_mlops.training.models import ensemble

    def small(seed: int) -> keras.Model:
        keras.utils.set_random_seed(seed)
        return keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(),
                                 keras.layers.Dense(6, activation="relu", name="hidden"),
                                 keras.layers.Dense(10, activation="softmax")])
    x = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    xf = x[..., None].astype("float32")
    model = small(0)
    proba, emb = call_two_outputs(two_outputs(model), x)
    hidden = keras.Model(model.inputs, model.get_layer("hidden").output)
    assert np.allclose(proba, model.predict(xf, verbose=0), atol=1e-6)
    assert np.allclose(emb, hidden.predict(xf, verbose=0), atol=1e-5) and emb.shape == (5, 6)
    both = ensemble([small(1), small(2)], "e")          # an ensemble: its members' answers
    proba, emb = call_two_outputs(two_outputs(both), x)
    assert emb.shape == (5, 20) and np.allclose(proba, (emb[:, :10] + emb[:, 10:]) / 2,
                                                atol=1e-6)


def test_predict_logs_its_answers_only_when_params_ask(tmp_path: Path) -> None:
    from PIL import Image

    from mnist_mlops.inference.predictor import Predictor
    from mnist_mlops.serving.predict import predict_files

    from .conftest import wait_for
    from .test_predict import save_untrained_model

    predictor = Predictor(str(save_untrained_model(tmp_path / "mlp.h5")))
    Image.fromarray(np.eye(28, dtype=np.uint8) * 255).save(tmp_path / "d.png")
    raw = with_change("paths.prediction_log", str(tmp_path / "p.jsonl"))
    assert predlog.logged_call(parse_params(raw), predictor) is None     # off by default
    raw["monitor"]["log_predict"] = True
    call = predlog.logged_call(parse_params(raw), predictor)
    result = predict_files(predictor, [tmp_path / "d.png"], None, call)[0]
    wait_for(lambda: len(list(predlog.records(tmp_path / "p.jsonl"))) == 1, 10, "a line")
    rec = next(predlog.records(tmp_path / "p.jsonl"))
    assert rec["digit"] == result.digit and rec["confidence"] == round(result.probability, 5)
    assert len(predlog.embedding(rec)) == 512 and rec["model"]["architecture"] == "mlp_512x2"
