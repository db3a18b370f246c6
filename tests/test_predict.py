"""Behaviour of a trained model on pictures: re-rendered MNIST digits and drawn digits."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mnist_mlops.data.digits import to_mnist
from mnist_mlops.inference.predictor import Predictor
from mnist_mlops.serving.predict import predict_files

from .conftest import ROOT, run, tool_env
from .drawing import draw_digit, drawn_set

pytestmark = pytest.mark.slow   # real training, processes or servers
CLI = str(Path(sys.executable).parent / "mnist-mlops")


def save_untrained_model(path: Path) -> Path:
    """The pipeline's mlp_512x2 architecture, untrained, as .h5: for the paths where what
    it answers does not matter."""
    from mnist_mlops.core.config import load_params
    from mnist_mlops.training.models import build_model

    build_model(load_params(ROOT / "params.yaml").models["mlp_512x2"]).save(path)
    return path


@pytest.fixture(scope="module")
def untrained_h5(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_untrained_model(tmp_path_factory.mktemp("untrained") / "mlp.h5")


def test_preprocessing_an_mnist_digit_is_close_to_identity(mnist: dict, model_file: Path
                                                           ) -> None:
    x, y = mnist["x_test"][:300], mnist["y_test"][:300]
    processed = np.stack([to_mnist(Image.fromarray(d)) for d in x])
    corr = [np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in zip(x, processed, strict=True)]
    assert np.median(corr) > 0.9
    predictor = Predictor(str(model_file))
    before = predictor.predict_proba(x).argmax(axis=1)
    after = predictor.predict_proba(processed).argmax(axis=1)
    assert (before == after).mean() >= 0.97
    assert (after == y).mean() >= 0.95


def test_large_rerendered_mnist_digits(mnist: dict, model_file: Path, tmp_path: Path) -> None:
    x, y = mnist["x_test"][1000:1100], mnist["y_test"][1000:1100]
    files = []
    for i, d in enumerate(x):
        big = Image.fromarray(255 - d).resize((336, 336), Image.BICUBIC)  # dark on light
        files.append(tmp_path / f"{i}.png")
        big.save(files[-1])
    results = predict_files(Predictor(str(model_file)), files)
    acc = np.mean([r.digit == t for r, t in zip(results, y, strict=True)])
    assert acc >= 0.95, acc


def test_photographed_digits_on_grey_textured_unevenly_lit_paper(
        mnist: dict, model_file: Path, tmp_path: Path) -> None:
    from mnist_mlops.core.config import RealworldParams
    from mnist_mlops.data.realworld import generate

    files = generate(mnist["x_test"], mnist["y_test"],
                     RealworldParams(count=200, seed=11, kinds=("photo",)), tmp_path)
    results = predict_files(Predictor(str(model_file)), [f.path for f in files])
    assert sum(r.digit is None for r in results) <= 2          # "no digit found": rare
    acc = np.mean([r.digit == f.digit for r, f in zip(results, files, strict=True)])
    assert acc >= 0.9, acc


def test_drawn_digits(model_file: Path, tmp_path: Path) -> None:
    files, truth = drawn_set(tmp_path)
    results = predict_files(Predictor(str(model_file)), files)
    hits = [r.digit == t for r, t in zip(results, truth, strict=True)]
    misses = [f"{r.file.rsplit('/', 1)[-1]}->{r.digit}" for r, h in zip(results, hits,
                                                                      strict=True) if not h]
    assert np.mean(hits) >= 0.85, misses


def test_cli_predict_mixed_folder(model_file: Path, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    draw_digit(7).save(folder / "a_seven.png")
    draw_digit(4, dark_on_light=False).convert("RGB").save(folder / "b_four.jpg")
    Image.new("L", (50, 50), 255).save(folder / "c_blank.png")
    (folder / "d_broken.png").write_text("not a picture")
    (folder / "notes.txt").write_text("ignored: not an image suffix")
    cli = str(Path(sys.executable).parent / "mnist-mlops")
    proc = run([cli, "--params", str(ROOT / "params.yaml"), "predict", str(folder), "--model",
                str(model_file), "--json"], tmp_path, tool_env(), check=False)
    assert proc.returncode == 1, proc.stderr
    out = {Path(r["file"]).name: r for r in json.loads(proc.stdout)}
    assert set(out) == {"a_seven.png", "b_four.jpg", "c_blank.png", "d_broken.png"}
    assert out["a_seven.png"]["digit"] == 7 and len(out["a_seven.png"]["top3"]) == 3
    assert out["b_four.jpg"]["digit"] == 4
    assert out["c_blank.png"]["digit"] is None and out["c_blank.png"]["error"] is None
    assert "not an image file" in out["d_broken.png"]["error"]
    text = run([cli, "--params", str(ROOT / "params.yaml"), "predict", str(folder / "a_seven.png"),
                "--model", str(model_file)], tmp_path, tool_env()).stdout
    assert text.startswith(f"{folder / 'a_seven.png'}: 7 (p=")


def test_unknown_mlflow_model_is_a_clear_error(mlflow_db: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from mnist_mlops.core.runtime import UserError

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_db)
    with pytest.raises(UserError, match="cannot load model 'models:/nope@champion'"):
        Predictor("models:/nope@champion")


def test_untrusted_python_function_model_is_not_loaded(tmp_path: Path) -> None:
    """`--model` runs no foreign model code unless the user says it is trusted."""
    import mlflow

    marker = tmp_path / "code-ran"

    def make_model() -> object:
        class Foreign(mlflow.pyfunc.PythonModel):
            def load_context(self, context: object) -> None:
                Path(str(marker)).write_text("loaded")

            def predict(self, context: object, model_input: object) -> object:
                return np.full((len(model_input), 10), 0.1)

        return Foreign()

    model_dir = tmp_path / "foreign"
    mlflow.pyfunc.save_model(str(model_dir), python_model=make_model(),
                             pip_requirements=["mlflow"])
    picture = tmp_path / "d.png"
    draw_digit(4, size=120).save(picture)
    cli = str(Path(sys.executable).parent / "mnist-mlops")
    refused = run([cli, "predict", str(picture), "--model", str(model_dir)], ROOT,
                  tool_env(), check=False)
    assert refused.returncode != 0 and "--trust-model" in refused.stderr
    assert not marker.exists()
    trusted = run([cli, "predict", str(picture), "--model", str(model_dir), "--trust-model"],
                  ROOT, tool_env())
    assert marker.exists() and trusted.returncode == 0


def test_version_and_help_of_every_subcommand() -> None:
    cli = str(Path(sys.executable).parent / "mnist-mlops")
    assert run([cli, "--version"], ROOT).stdout.startswith("mnist-mlops ")
    for cmd, says in (("promote", "champion"), ("rollback", "previous champion"),
                      ("champion", "champion and challenger"), ("retrain", "pull, reproduce")):
        out = run([cli, cmd, "--help"], ROOT).stdout
        assert says in out.split("options:")[0], (cmd, out)


def test_predict_from_a_model_file_needs_no_params_and_says_no_digit_found(
        untrained_h5: Path, tmp_path: Path) -> None:
    """Run where there is no params.yaml: a .h5 is all it needs. A blank picture is not an
    error, and the JSON says why it has no digit."""
    Image.new("L", (50, 50), 255).save(tmp_path / "blank.png")
    draw_digit(3, size=120).save(tmp_path / "three.png")
    proc = run([CLI, "predict", "blank.png", "three.png", "--model", str(untrained_h5),
                "--json"], tmp_path, tool_env(), check=False)
    assert proc.returncode == 0, proc.stderr
    out = {Path(r["file"]).name: r for r in json.loads(proc.stdout)}
    assert out["blank.png"]["digit"] is None and out["blank.png"]["error"] is None
    assert out["blank.png"]["message"] == "no digit found"
    assert out["three.png"]["digit"] in range(10) and out["three.png"]["message"] is None


def test_a_missing_model_file_advises_training_only_for_the_projects_own(
        tmp_path: Path) -> None:
    picture = tmp_path / "d.png"
    draw_digit(4, size=120).save(picture)
    typo = run([CLI, "predict", str(picture), "--model", str(tmp_path / "typo.h5")],
               tmp_path, tool_env(), check=False)             # no params.yaml here
    assert typo.returncode == 2 and "Traceback" not in typo.stderr
    assert f"{tmp_path / 'typo.h5'} not found" in typo.stderr
    assert "params.yaml" not in typo.stderr and "dvc repro" not in typo.stderr
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")   # a project folder
    typo = run([CLI, "predict", str(picture), "--model", str(tmp_path / "typo.h5")],
               tmp_path, tool_env(), check=False)
    assert typo.returncode == 2 and "dvc repro" not in typo.stderr
    own = run([CLI, "predict", str(picture), "--model", "models/cnn_32_64_64.h5"],
              tmp_path, tool_env(), check=False)
    assert own.returncode == 2 and "models/cnn_32_64_64.h5 not found" in own.stderr
    assert "`dvc repro train@cnn_32_64_64`" in own.stderr
    assert "`dvc pull train@cnn_32_64_64`" in own.stderr


def test_every_option_of_predict_serve_and_promote_says_what_it_does() -> None:
    def options(cmd: str) -> str:
        out = run([CLI, cmd, "--help"], ROOT).stdout.split("options:")[1]
        return " ".join(out.split())

    serve, predict = options("serve"), options("predict")
    assert "--host HOST address to listen on" in serve and "--port PORT TCP port" in serve
    assert "--version VERSION the registry version to promote" in options("promote")
    for text in (serve, predict):
        # what --trust-model guards: the pipeline's own models load without it
        assert "--trust-model also load an MLflow model that is neither one this pipeline " \
               "logged (a python-function model carrying its .h5" in text
        assert "TensorFlow flavour" not in text


def test_pictures_of_no_single_digit_are_unsure_and_clean_digits_rarely(
        mnist: dict, model_file: Path, calibrated_h5: Path, tmp_path: Path) -> None:
    from .drawing import not_one_digit

    pairs = [Image.fromarray(d) for d in mnist["x_test"][2000:2020]]
    files = not_one_digit(tmp_path, pairs)
    predictor = Predictor(str(calibrated_h5))
    assert predictor.calibration is not None
    results = predict_files(predictor, files)
    answered = [r for r in results if r.digit is not None]
    unsure = [Path(r.file).stem for r in answered if r.unsure]
    # "no digit found" is as good an answer as "unsure" for these
    flagged = len(unsure) + len(results) - len(answered)
    assert flagged > len(files) / 2, (flagged, [r.line() for r in results])   # most
    assert all(r.line().endswith("draw or photograph it again, alone and larger")
               for r in answered if r.unsure)
    # the model without a calibration says every one of them is a digit, never unsure
    plain = predict_files(Predictor(str(model_file)), files)
    assert not any(r.unsure for r in plain)

    clean = predictor.calibrated(predictor.predict_proba(mnist["x_test"][:2000]))[1]
    assert clean.mean() <= 0.10, clean.mean()
