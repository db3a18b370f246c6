"""Data stages on the full MNIST files: seconds and peak memory of each, one process each."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from common import header, mirror

STAGE_CODE = {
    "download": """
from mnist_mlops.core.config import load_params
from mnist_mlops.data.download import download_all
p = load_params(PARAMS)
download_all(dict(p.download.files), OUT / 'raw', [MIRROR])
""",
    "parse": """
from mnist_mlops.data.parse import parse_dataset
from mnist_mlops.data.dataset import save_dataset
save_dataset(parse_dataset(OUT / 'raw'), OUT / 'mnist.npz')
""",
    "preprocess": """
from mnist_mlops.core.config import load_params
from mnist_mlops.core.fsio import write_text_atomic
from mnist_mlops.data.dataset import load_dataset
from mnist_mlops.data.preprocess import make_folds
from mnist_mlops.data.dataset import folds_csv
p = load_params(PARAMS)
y = load_dataset(OUT / 'mnist.npz')['y_train']
idx, folds = make_folds(y, p.preprocess)
write_text_atomic(OUT / 'folds.csv', folds_csv(idx, y[idx], folds))
""",
}

WRAPPER = """
import json, time
from pathlib import Path
PARAMS, OUT, MIRROR = Path({params!r}), Path({out!r}), {mirror!r}
t0 = time.perf_counter()
{code}
seconds = time.perf_counter() - t0
# VmHWM (not ru_maxrss, which Linux carries over from the parent across fork + exec)
hwm = next(l for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(json.dumps({{"seconds": seconds, "peak_rss_mb": int(hwm.split()[1]) / 1024}}))
"""


def main() -> dict[str, dict[str, float]]:
    header("data stages (full MNIST, local mirror)")
    out = Path(tempfile.mkdtemp())
    params = Path("params.yaml").resolve()
    results = {}
    for stage, code in STAGE_CODE.items():
        src = WRAPPER.format(params=str(params), out=str(out), mirror=str(mirror()), code=code)
        proc = subprocess.run([sys.executable, "-c", src], capture_output=True, text=True,
                              check=True)
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        results[stage] = r
        print(f"{stage:<11}: {r['seconds']:6.2f} s (in-process work), "
              f"peak RSS {r['peak_rss_mb']:6.0f} MB")
    return results


if __name__ == "__main__":
    main()
