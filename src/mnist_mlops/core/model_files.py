"""What a model holds, by name: written by the stages (evaluate exports, the train run
logs, register adds the ONNX flavour), read by inference/ wherever a model is loaded."""

H5_ARTIFACT = "keras_model"   # the .h5's artifact in the MLflow model each train run logs
KERAS_H5 = "keras_h5"         # MLmodel metadata: the .h5's path once the ONNX flavour leads
ONNX_FILE = "model.onnx"      # the ONNX graph (inference/onnx_export.py), in MLflow and on disk
PARITY_FILE = "parity.json"   # how far that graph is from Keras on the test digits
RUNTIMES = ("onnx", "keras")   # what answers: ONNX Runtime on model.onnx, Keras on the .h5
