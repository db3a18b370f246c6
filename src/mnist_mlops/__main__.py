"""`python -m mnist_mlops ...` is `mnist-mlops ...` (scripts that name their Python)."""

from mnist_mlops.commands import console

console()
