"""What every model and every picture shares: MNIST's format.

A model takes raw 0-255 grey pixels shaped INPUT_SHAPE and answers NUM_CLASSES
probabilities. Training depends on this module (dvc.yaml `train@`): a change here is a
change of every model.
"""

INPUT_SHAPE = (28, 28, 1)
NUM_CLASSES = 10
