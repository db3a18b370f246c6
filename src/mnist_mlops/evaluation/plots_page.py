"""The page template of `dvc plots show` and `dvc plots diff`, with Vega inline.

DVC's own page loads Vega, Vega-Lite and Vega-Embed from a public CDN, so offline, behind a
proxy or in CI its interactive plots (learning curves, confusion matrices) stay empty. The
repository's DVC config (`plots.html_template`) points at a template that carries the three
libraries in the page itself, as vl-convert-python bundles them at the versions that
package pins (its version is in requirements.lock). The template is committed, so a clone
draws its plots with no network; `make plots-template` writes it again after an upgrade,
and a test checks that the committed file is what the pinned package writes.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from mnist_mlops.core.fsio import write_text_atomic
from mnist_mlops.core.runtime import UserError, run_main

log = logging.getLogger(__name__)

# DVC's plot specs declare Vega-Lite 5 ($schema .../vega-lite/v5.json): the bundle's too
VEGA_LITE = "5.21"
# what DVC fills in a page template (dvc_render/html.py); {scripts} (its CDN tags) is left out
DVC_PLACEHOLDERS = ("plot_divs", "refresh_tag", "scripts")

PAGE = """<!DOCTYPE html>
<!-- The page `dvc plots show` and `dvc plots diff` write (.dvc/config plots.html_template):
     DVC's own page with Vega {vega}, Vega-Lite {vega_lite} and Vega-Embed {vega_embed} inline
     instead of loaded from a CDN, so that the plots draw offline. Written by
     `make plots-template` from vl-convert-python {vl_convert}'s bundle; licences of the
     bundled libraries: .dvc/plots/THIRD_PARTY_LICENSES.md. -->
<html>
<head>
    {{refresh_tag}}
    <meta charset="utf-8">
    <title>DVC Plot</title>
    <script type="text/javascript">
{bundle}
    </script>
    <style>
        table {{
            border-spacing: 15px;
        }}
    </style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""


def page() -> str:
    """The template, from the installed vl-convert-python's bundle."""
    try:
        from importlib.metadata import version

        import vl_convert
    except ImportError:
        raise UserError("the plots template is written from vl-convert-python's bundle: "
                        "install the development tools (`make setup`)") from None
    bundle = vl_convert.javascript_bundle(vl_version=VEGA_LITE)
    # what would end the inline script early, or what DVC replaces by plain text search
    for token in ("</script", "<!--", *(f"{{{name}}}" for name in DVC_PLACEHOLDERS)):
        if token in bundle.lower():
            raise UserError(f"vl-convert's bundle holds {token!r}: it cannot be inlined")
    return PAGE.format(bundle=bundle, vega=vl_convert.get_vega_version(),
                       vega_lite=VEGA_LITE, vega_embed=vl_convert.get_vega_embed_version(),
                       vl_convert=version("vl-convert-python"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("target", type=Path, nargs="?", default=Path(".dvc/plots/offline.html"))
    args = ap.parse_args()
    write_text_atomic(args.target, page())
    log.info("wrote %s (%.0f KB)", args.target, args.target.stat().st_size / 1024)


if __name__ == "__main__":
    run_main(main)
