"""`python -m mnist_mlops ...` is `mnist-mlops ...` (scripts that name their Python)."""

import sys

from mnist_mlops.commands import main

sys.exit(main())
