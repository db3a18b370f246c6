"""The ONNX path: export with its parity check (inference/onnx_export.py), ONNX Runtime
(inference/onnx_model.py), and the Predictor over ONNX files, MLflow model folders and
registry versions with and without an ONNX file (inference/predictor.py)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mnist_mlops.core.runtime import UserError
from mnist_mlops.inference.onnx_export import TOLERANCE, Parity, parity
from mnist_mlops.inference.onnx_model import CPU, CUDA, providers

from .conftest import ROOT, free_port

CLI = str(Path(sys.executable).parent / "mnist-mlops")
IMAGES = np.random.default_rng(0).integers(0, 256, (300, 28, 28), dtype=np.uint8)


def small_model(name: str = "cnn_bn_aug", members: int = 2):
    """An untrained model of params.yaml (the answers' values do not matter, their
    agreement does); an ensemble of `members` fold models when members > 1."""
    import keras

    from mnist_mlops.core.config import load_params
    from mnist_mlops.training.models import build_model, ensemble

    keras.utils.set_random_seed(0)
    p = load_params(ROOT / "params.yaml").models[name]
    if members == 1:
        return build_model(p)
    return ensemble([build_model(p) for _ in range(members)], name)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, Path, dict]:
    """The augmenting, batch-normalised ensemble (the hardest export) as ONNX."""
    from mnist_mlops.inference.keras_model import call_two_outputs, two_outputs
    from mnist_mlops.inference.onnx_export import answers_of, export_checked

    model = small_model()
    folder = tmp_path_factory.mktemp("onnx")
    keras_proba, keras_emb = call_two_outputs(two_outputs(model), IMAGES)
    model.save(folder / "m.h5")
    report = export_checked(model, folder, answers_of(IMAGES), keras_proba,
                            {"architecture": model.name, "model": "cnn_bn_aug"}, folder / "m.h5")
    return model, folder, {"report": report, "embedding": keras_emb, "proba": keras_proba}


def test_an_ensemble_exports_as_one_graph_that_answers_like_keras(exported: tuple) -> None:
    import onnx

    from mnist_mlops.inference.onnx_model import OnnxModel

    model, folder, keras = exported
    report = keras["report"]
    assert report["ok"] and report["images"] == len(IMAGES) and report["disagree"] == 0
    assert json.loads((folder / "parity.json").read_text()) == report
    graph = onnx.load(str(folder / "model.onnx"))
    assert [i.name for i in graph.graph.input] == ["pixels"]
    assert sorted(o.name for o in graph.graph.output) == ["embedding", "probabilities"]
    ops = {n.op_type for n in graph.graph.node}
    assert not any("Random" in op for op in ops)         # augmentation left out
    ort = OnnxModel(folder / "model.onnx", "advice")
    assert ort.metadata == {"architecture": model.name, "model": "cnn_bn_aug"}
    proba, emb = ort.run(IMAGES, embedding=True)
    assert np.abs(proba - keras["proba"]).max() <= TOLERANCE
    # the prediction log's embedding, from the same graph: both members' answers
    assert emb.shape == (len(IMAGES), 20)
    assert np.abs(emb - keras["embedding"]).max() <= TOLERANCE
    assert ort.run(IMAGES[:3])[1] is None                # asked for answers only


def test_a_model_that_cannot_be_exported_says_how_to_go_on_without_onnx(tmp_path: Path
                                                                      ) -> None:
    import keras
    import tensorflow as tf

    from mnist_mlops.inference.onnx_export import answers_of, export_checked

    def in_python(t):      # a Python function inside the graph: no ONNX op can hold it
        return tf.py_function(lambda v: v * 2, [t], tf.float32)

    model = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(),
                              keras.layers.Lambda(in_python, output_shape=(784,)),
                              keras.layers.Dense(10, activation="softmax")], name="odd")
    proba = np.asarray(model(IMAGES[:4, ..., None].astype("float32")))
    (tmp_path / "parity.json").write_text('{"exported": true, "ok": true}')   # a stale one
    with pytest.raises(UserError) as err:
        export_checked(model, tmp_path, answers_of(IMAGES[:4]), proba, {"model": "odd"},
                       tmp_path / "x.h5")
    assert str(err.value).startswith("odd: cannot export as ONNX (")
    assert "register.onnx: false" in str(err.value)
    assert not (tmp_path / "model.onnx").exists() and not (tmp_path / "parity.json").exists()


def test_the_conversion_goes_on_unpatched_where_keras_has_moved_its_tf2onnx_fixes(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from mnist_mlops.inference import onnx_export

    monkeypatch.setitem(sys.modules, "keras.src.export.tf2onnx_lib", None)   # moved
    with caplog.at_level(logging.DEBUG, logger=onnx_export.__name__):
        onnx_export._patch_tf2onnx()
    assert "tf2onnx runs unpatched" in caplog.text


def test_parity_names_the_worst_digit_and_the_difference() -> None:
    a = np.full((50, 10), 0.05)
    a[:, 3] = 0.55
    b = a.copy()
    b[17, 3] += 3e-4
    check = parity(a, b)
    assert not check.ok and check.worst_index == 17 and check.disagree == 0
    assert "0.0003 (test digit 17)" in check.problem()
    b[40, 3], b[40, 5] = 0.0, 0.9                         # another digit: refused too
    check = parity(a, b)
    assert check.disagree == 1 and check.first_disagree == 40 and not check.ok
    assert "different digits for 1 of 50" in check.problem()
    assert parity(a, a + 1e-6).ok
    assert Parity(**{k: check.to_dict()[k] for k in Parity.__dataclass_fields__}) == check


def test_cuda_only_where_its_provider_is_installed_and_a_gpu_is_listed() -> None:
    assert providers([CPU], gpu=True) == [CPU]
    assert providers([CUDA, CPU], gpu=False) == [CPU]
    assert providers(["TensorrtExecutionProvider", CUDA, CPU], gpu=True) == [CUDA, CPU]


def mlflow_folder(folder: Path, onnx_file: Path | None, h5: Path | None) -> Path:
    """An MLflow model folder as register leaves it (onnx flavour, .h5 in the metadata) or
    as a version from before the ONNX export has it (python-function model, .h5 only)."""
    import shutil

    import yaml

    folder.mkdir(parents=True)
    flavors: dict = {}
    meta: dict = {}
    if h5 is not None:
        (folder / "artifacts").mkdir()
        shutil.copy(h5, folder / "artifacts" / "m.h5")
        meta = {"keras_h5": "artifacts/m.h5"}
        flavors["python_function"] = {"artifacts": {"keras_model": {"path": "artifacts/m.h5"}}}
    if onnx_file is not None:
        shutil.copy(onnx_file, folder / "model.onnx")
        flavors = {"onnx": {"data": "model.onnx"},
                   "python_function": {"loader_module": "mlflow.onnx", "data": "model.onnx"}}
    (folder / "MLmodel").write_text(yaml.safe_dump({"flavors": flavors,
                                                    **({"metadata": meta} if meta else {})}))
    return folder


def test_folders_with_and_without_onnx_and_the_keras_runtime(
        exported: tuple, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from mnist_mlops.inference.predictor import Predictor

    model, folder, keras = exported
    model.save(tmp_path / "m.h5")
    both = mlflow_folder(tmp_path / "both", folder / "model.onnx", tmp_path / "m.h5")
    p = Predictor(str(both))
    assert p.about["runtime"] == "onnx" and p.keras_model is None
    assert np.abs(p.predict_proba(IMAGES) - keras["proba"]).max() <= TOLERANCE
    k = Predictor(str(both), runtime="keras")
    assert k.about["runtime"] == "keras" and k.about["architecture"] == model.name
    proba, emb = k.answer(IMAGES[:5])
    assert np.abs(proba - keras["proba"][:5]).max() <= 1e-5 and emb.shape == (5, 20)

    old = mlflow_folder(tmp_path / "old", None, tmp_path / "m.h5")
    with caplog.at_level(logging.WARNING, "mnist_mlops"):
        p = Predictor(str(old))
    assert p.about["runtime"] == "keras"
    assert any("has no ONNX file" in r.getMessage() and "answering with its Keras .h5"
               in r.getMessage() for r in caplog.records)
    with pytest.raises(UserError, match="--runtime keras needs the model's .h5"):
        Predictor(str(folder / "model.onnx"), runtime="keras")


def test_a_corrupt_onnx_file_is_one_line_naming_it_and_the_keras_runtime(
        tmp_path: Path) -> None:
    from PIL import Image

    bad = tmp_path / "folder"
    bad.mkdir()
    (bad / "MLmodel").write_text("flavors:\n  onnx: {data: model.onnx}\n")
    (bad / "model.onnx").write_bytes(b"\x08\x07not a protobuf of a graph" * 20)
    Image.fromarray(np.eye(28, dtype=np.uint8) * 255).save(tmp_path / "d.png")
    for model, advice in ((bad, "--runtime keras"), (bad / "model.onnx", "export it again")):
        proc = subprocess.run([CLI, "predict", str(tmp_path / "d.png"), "--model", str(model)],
                              capture_output=True, text=True, cwd=tmp_path, timeout=120)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        (line,) = proc.stderr.strip().splitlines()
        assert f"{bad / 'model.onnx'} cannot be loaded by ONNX Runtime" in line
        assert advice in line


# Runs as its own process: predict, then serve (/invocations and the drawing page's
# /predict) on an ONNX file; prints what was answered and which heavy modules were loaded.
NO_TRAINING_STACK = r'''
import json, sys, threading, time, urllib.request, base64, io
from mnist_mlops.commands import main
onnx, png, port = sys.argv[1], sys.argv[2], sys.argv[3]
rc = main(["predict", png, "--model", onnx, "--json"])
threading.Thread(target=main, args=(["serve", "--model", onnx, "--port", port],),
                 daemon=True).start()
url = f"http://127.0.0.1:{port}/"
for _ in range(600):
    try:
        if urllib.request.urlopen(url + "ready", timeout=2).status == 200:
            break
    except OSError:
        time.sleep(0.1)
def post(path, body):
    req = urllib.request.Request(url + path, json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    return json.loads(urllib.request.urlopen(req, timeout=30).read())
inv = post("invocations", {"inputs": [[[0] * 28] * 28]})
drawn = post("predict", {"image": "data:image/png;base64,"
                         + base64.b64encode(open(png, "rb").read()).decode()})
heavy = sorted({m.split(".")[0] for m in sys.modules} & {
    "tensorflow", "keras", "mlflow", "sklearn", "pandas", "dvc", "optuna", "jax", "torch"})
print("RESULT", json.dumps({"rc": rc, "heavy": heavy, "invocations": inv, "predict": drawn}))
'''


def test_predict_and_serve_on_onnx_load_neither_tensorflow_nor_keras(exported: tuple,
                                                                      tmp_path: Path) -> None:
    from .drawing import draw_digit

    _, folder, _ = exported
    draw_digit(3, size=280).save(tmp_path / "d.png")
    proc = subprocess.run([sys.executable, "-c", NO_TRAINING_STACK, str(folder / "model.onnx"),
                           str(tmp_path / "d.png"), str(free_port())],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert line is not None, proc.stdout[-2000:] + proc.stderr[-3000:]
    result = json.loads(line.removeprefix("RESULT "))
    assert result["rc"] == 0 and result["heavy"] == []
    (answer,), _ = json.JSONDecoder().raw_decode(proc.stdout)    # predict's, printed first
    assert answer["model"]["runtime"] == "onnx" and 0 <= answer["digit"] <= 9
    assert len(result["invocations"]["predictions"][0]) == 10
    assert result["predict"]["model"]["runtime"] == "onnx"


def test_register_refuses_an_export_that_does_not_answer_like_keras(tmp_path: Path) -> None:
    import yaml

    from mnist_mlops.core.config import parse_params
    from mnist_mlops.registry.register import with_onnx

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["paths"]["onnx"] = str(tmp_path)
    params = parse_params(raw)
    with pytest.raises(UserError, match=r"no ONNX export in .*dvc repro evaluate@mlp_512x2"):
        with_onnx(params, "mlp_512x2", "models:/m-1")
    (tmp_path / "mlp_512x2").mkdir()
    bad = Parity(10000, 0.02, 4321, 0, None)
    (tmp_path / "mlp_512x2" / "parity.json").write_text(
        json.dumps({"exported": True, **bad.to_dict()}))
    with pytest.raises(UserError) as err:
        with_onnx(params, "mlp_512x2", "models:/m-1")
    assert "test digit 4321" in str(err.value) and "0.02" in str(err.value)
    assert "register.onnx: false" in str(err.value)


def test_a_serving_install_is_told_which_install_trains() -> None:
    from mnist_mlops.core.runtime import missing_install

    err = missing_install(ModuleNotFoundError("No module named 'tensorflow'", name="tensorflow"))
    assert err is not None and "pip install '.[train]'" in str(err)
    err = missing_install(ModuleNotFoundError("x", name="mlflow.tracking"))
    assert err is not None and "pip install '.[serve]'" in str(err)
    assert missing_install(ModuleNotFoundError("x", name="no_such_thing")) is None


def test_an_onnx_file_carries_its_calibration_and_a_broken_one_is_said_once(
        exported: tuple, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The calibration is read from the file's metadata; a file without one, or with one
    that cannot be read, answers with the model's own probabilities, never unsure, and says
    why once."""
    import onnx

    from mnist_mlops.core.calibration import KEY, Calibration
    from mnist_mlops.inference.predictor import Predictor

    _, folder, _ = exported
    plain = Predictor(str(folder / "model.onnx"))
    assert plain.calibration is None and plain.unsure_flags(IMAGES[:3]) is None
    assert "carries no calibration" in caplog.text
    for value, expected in ((Calibration(1.5, 0.7).to_json(), Calibration(1.5, 0.7)),
                            ("not json", None)):
        proto = onnx.load(folder / "model.onnx")
        proto.metadata_props.add(key=KEY, value=value)
        onnx.save(proto, tmp_path / "m.onnx")
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            predictor = Predictor(str(tmp_path / "m.onnx"))
        assert predictor.calibration == expected
        assert ("its calibration cannot be read" in caplog.text) is (expected is None)
        assert len(caplog.records) == (expected is None)
    proba = predictor.predict_proba(IMAGES[:5])           # the broken one: as it is
    same, unsure = predictor.calibrated(proba)
    assert (same == proba).all() and not unsure.any()
