"""The train stage's ONNX export handed to evaluate (inference/onnx_draft.py): taken only
for the same .h5 and export code, answered on without TensorFlow; without one, evaluate
exports with Keras as before (evaluation/evaluate.answer_test)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mnist_mlops.core.calibration import Calibration, read_h5, write_h5
from mnist_mlops.core.config import Params, load_params
from mnist_mlops.inference import onnx_draft

from .conftest import ROOT
from .test_onnx import IMAGES, small_model

NAME = "m"
CAL = Calibration(1.3, 0.6)

# evaluate's answers in a process of their own: which runtime, which heavy modules loaded
ANSWER = r'''
import json, sys
import numpy as np
from mnist_mlops.core.config import load_params
from mnist_mlops.evaluation.evaluate import answer_test
a = answer_test(load_params(), "m", np.load(sys.argv[1]))
np.save(sys.argv[2], a.proba)
heavy = sorted(m for m in ("tensorflow", "keras", "tf2onnx") if m in sys.modules)
print("RESULT", json.dumps({"runtime": a.predictor.about["runtime"], "heavy": heavy,
                            "timings": sorted(a.timings), "exported": a.onnx["exported"],
                            "calibration": a.predictor.calibration.to_json()}))
'''


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained cnn_32_64_64 with a calibration, saved as the train stage saves one."""
    path = tmp_path_factory.mktemp("saved") / f"{NAME}.h5"
    small_model("cnn_32_64_64", members=1).save(path)
    write_h5(path, CAL)
    return path


@pytest.fixture
def project(saved: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Params:
    """A folder laid out as params.yaml says, holding the model; the working directory."""
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    params = load_params(tmp_path / "params.yaml")
    params.paths.models.mkdir(parents=True)
    shutil.copy(saved, params.paths.model_file(NAME))
    return params


def make_draft(params: Params) -> onnx_draft.Draft:
    """What the train stage does once it has saved the .h5."""
    from mnist_mlops.inference.keras_model import load_keras_model

    h5 = params.paths.model_file(NAME)
    return onnx_draft.make(load_keras_model(h5), NAME, h5, params.paths.checkpoints, IMAGES)


def test_evaluate_answers_on_the_trains_export_without_tensorflow(project: Params,
                                                                   tmp_path: Path) -> None:
    from mnist_mlops.inference.predictor import Predictor

    draft = make_draft(project)
    assert draft.members == 0 and draft.keras_speed["images_per_s"] > 0
    np.save(tmp_path / "x.npy", IMAGES)
    proc = subprocess.run([sys.executable, "-c", ANSWER, "x.npy", "proba.npy"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert line is not None, proc.stdout[-2000:] + proc.stderr[-3000:]
    result = json.loads(line.removeprefix("RESULT "))
    assert result["runtime"] == "onnx" and result["heavy"] == [] and result["exported"]
    assert Calibration.from_json(result["calibration"]) == CAL     # carried into the ONNX file
    assert {"infer_images_per_s", "infer_onnx_images_per_s", "onnx_export_s",
            "onnx_parity_s"} <= set(result["timings"])             # Keras' speed from train
    keras = Predictor(str(project.paths.model_file(NAME)), runtime="keras").predict_proba(IMAGES)
    onnx = np.load(tmp_path / "proba.npy")
    assert (onnx.argmax(axis=1) == keras.argmax(axis=1)).all()
    assert np.abs(onnx - keras).max() < 1e-4
    out = project.paths.onnx_dir(NAME)
    assert json.loads((out / "parity.json").read_text())["ok"]
    assert (out / "model.onnx").read_bytes() == (draft.folder / "model.onnx").read_bytes()
    onnx_draft.discard(draft)            # what evaluate does once its outputs are written
    assert not draft.folder.exists()


def test_a_draft_of_another_h5_or_other_export_code_is_not_taken(
        project: Params, caplog: pytest.LogCaptureFixture) -> None:
    h5, checkpoints = project.paths.model_file(NAME), project.paths.checkpoints
    draft = make_draft(project)
    assert onnx_draft.take(checkpoints, h5) == draft
    original = h5.read_bytes()
    write_h5(h5, Calibration(2.0, 0.5))          # retrained since: another .h5
    with caplog.at_level(logging.INFO):
        assert onnx_draft.take(checkpoints, h5) is None
    assert "no ONNX export from the train stage" in caplog.text    # its own folder: none
    h5.write_bytes(original)
    record = json.loads((draft.folder / onnx_draft.DRAFT_FILE).read_text())
    for key, value, why in (("export_code", "0" * 64, "the export code has changed since"),
                            ("h5_sha256", "0" * 64, "it was made from another .h5")):
        (draft.folder / onnx_draft.DRAFT_FILE).write_text(json.dumps({**record, key: value}))
        caplog.clear()
        with caplog.at_level(logging.INFO):
            assert onnx_draft.take(checkpoints, h5) is None
        assert why in caplog.text
    (draft.folder / onnx_draft.DRAFT_FILE).write_text(json.dumps(record))
    onnx_file = draft.folder / "model.onnx"
    whole = onnx_file.read_bytes()
    onnx_file.write_bytes(whole[:len(whole) // 2])           # cut short: not what it checked
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert onnx_draft.take(checkpoints, h5) is None
    assert "its ONNX file is not the one it checked" in caplog.text
    onnx_file.unlink()
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert onnx_draft.take(checkpoints, h5) is None
    assert "its ONNX file is missing" in caplog.text
    onnx_file.write_bytes(whole)
    parity = json.loads((draft.folder / "parity.json").read_text())
    (draft.folder / "parity.json").write_text(json.dumps({**parity, "ok": False}))
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert onnx_draft.take(checkpoints, h5) is None
    assert "its parity check failed" in caplog.text
    (draft.folder / "parity.json").write_text(json.dumps(parity))
    assert onnx_draft.take(checkpoints, h5) == draft
    for broken in ("{not json", json.dumps({"h5_sha256": record["h5_sha256"]}), "[1, 2]"):
        (draft.folder / onnx_draft.DRAFT_FILE).write_text(broken)
        caplog.clear()
        assert onnx_draft.take(checkpoints, h5) is None
        assert "cannot be read" in caplog.text, broken
    h5.unlink()                  # evaluate's Keras path then says the .h5 is not found
    assert onnx_draft.take(checkpoints, h5) is None


def test_without_a_draft_evaluate_exports_with_keras(project: Params) -> None:
    from mnist_mlops.evaluation.evaluate import answer_test

    answers = answer_test(project, NAME, IMAGES)
    assert answers.predictor.about["runtime"] == "keras" and answers.onnx["exported"]
    assert answers.onnx["ok"] and answers.members == 0
    assert {"infer_images_per_s", "infer_onnx_images_per_s"} <= set(answers.timings)
    onnx_file = project.paths.onnx_dir(NAME) / "model.onnx"
    from mnist_mlops.inference.predictor import Predictor

    assert Predictor(str(onnx_file)).calibration == CAL == read_h5(project.paths.model_file(NAME))


def test_an_ensembles_members_are_scored_on_the_onnx_graph(project: Params) -> None:
    """An ensemble's fold models each get their test accuracy from the ONNX graph's second
    output (their probabilities side by side), as Keras gives it, with no Keras at hand."""
    from mnist_mlops.evaluation.evaluate import answer_test, member_metrics
    from mnist_mlops.inference.keras_model import load_keras_model, members
    from mnist_mlops.inference.predictor import Predictor

    h5 = project.paths.model_file(NAME)
    small_model("cnn_32_64_64", members=2).save(h5)    # any two networks will do
    draft = make_draft(project)
    assert draft.members == 2
    answers = answer_test(project, NAME, IMAGES)
    assert answers.predictor.about["runtime"] == "onnx" and answers.members == 2
    first, second = (Predictor.of_keras(m, m.name).predict_proba(IMAGES).argmax(axis=1)
                     for m in members(load_keras_model(h5)))
    y = first                                   # the first member is right on every image
    assert answers.embedding is not None     # kept by the train stage's check: not run again
    assert np.allclose(answers.embedding, answers.predictor.answer(IMAGES)[1], atol=1e-6)
    found = member_metrics(answers.embedding, y, answers.members)
    other = float((second == y).mean())
    assert other < 1.0
    assert found == pytest.approx({"test_accuracy_member_max": 1.0,
                                   "test_accuracy_member_min": other,
                                   "test_accuracy_member_mean": (1.0 + other) / 2})
    assert member_metrics(answers.predictor.answer(IMAGES)[1], y, 0) == {}


def test_evaluate_scores_the_checks_answers_only_where_they_answer_its_digits(
        project: Params, caplog: pytest.LogCaptureFixture) -> None:
    """The train stage's check answers the test digits on ONNX Runtime; evaluate scores
    those answers (and their timing) instead of answering again, but only for the very
    digits they answer and from the file the check wrote."""
    from mnist_mlops.evaluation.evaluate import answer_test
    from mnist_mlops.inference.predictor import Predictor

    draft = make_draft(project)
    fresh = Predictor(str(draft.folder / "model.onnx")).predict_proba(IMAGES)
    kept = onnx_draft.answers(draft, IMAGES)
    assert kept is not None and kept.embedding is None
    assert np.allclose(kept.proba, fresh, atol=1e-7)
    with caplog.at_level(logging.INFO):
        answers = answer_test(project, NAME, IMAGES)
    assert "answering the test digits with ONNX Runtime here" not in caplog.text
    assert np.array_equal(answers.proba, kept.proba)
    assert answers.timings["infer_onnx_images_per_s"] == draft.onnx_speed["images_per_s"]

    other = IMAGES[::-1].copy()                  # the same pixels in another order
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert onnx_draft.answers(draft, other) is None
        answers = answer_test(project, NAME, other)
    assert "they answer other test digits" in caplog.text
    assert np.allclose(answers.proba, fresh[::-1], atol=1e-7)     # answered here instead

    with np.load(draft.folder / onnx_draft.ANSWERS_FILE) as z:
        wrong = {k: z[k] for k in z.files}
    wrong["proba"] = wrong["proba"][:, ::-1].copy()
    with open(draft.folder / onnx_draft.ANSWERS_FILE, "wb") as f:
        np.savez(f, **wrong)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert onnx_draft.answers(draft, IMAGES) is None
    assert "its answers file is not the one it wrote" in caplog.text
    (draft.folder / onnx_draft.ANSWERS_FILE).unlink()
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert onnx_draft.answers(draft, IMAGES) is None
    assert "its answers cannot be read" in caplog.text


def test_drafts_nobody_took_are_removed_after_a_day(tmp_path: Path) -> None:
    old, new = tmp_path / "a", tmp_path / "b"
    for folder in (old, new):
        folder.mkdir()
        (folder / "model.onnx").write_bytes(b"x")
    day_ago = time.time() - onnx_draft.STALE_S - 60
    os.utime(old, (day_ago, day_ago))
    onnx_draft.prune(tmp_path)
    assert not old.exists() and new.exists()


def test_a_model_the_train_stage_cannot_export_is_one_warning_and_no_draft(
        project: Params, caplog: pytest.LogCaptureFixture) -> None:
    """The train stage's export is best effort: a failure warns and leaves no draft, so
    evaluate exports the model itself and reports what is wrong there."""
    from mnist_mlops.training.train import _export_for_evaluate

    h5 = project.paths.model_file(NAME)
    h5.write_bytes(b"not a Keras file")
    with caplog.at_level(logging.WARNING):
        _export_for_evaluate(project, NAME)
    assert "no ONNX export for evaluate" in caplog.text and "evaluate exports it" in caplog.text
    assert onnx_draft.take(project.paths.checkpoints, h5) is None
