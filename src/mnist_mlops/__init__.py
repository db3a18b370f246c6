"""mnist-mlops: DVC pipeline + MLflow tracking for the documented Keras MNIST models."""

__version__ = "0.1.0"
