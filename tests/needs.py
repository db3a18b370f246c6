"""Programs from Debian packages that some tests drive: PostgreSQL's server, Chromium and
strace. Without one, a test that needs it skips and names the package to install. With CI
set (`.ci/run` sets it), the test fails instead and names the fix. Otherwise a CI machine
without these packages would pass by skipping the tests that use them.

Mark a test or module with `requires("chromium")`. The mark is checked before the test's
fixtures are set up. Inside a fixture, call `need("postgresql")` instead: it returns where
the program is. Both work the same way. Programs are looked up on PATH (and, for
PostgreSQL, in Debian's versioned folder too), so a test can hide one by narrowing PATH
(tests/test_needs.py does). tests/conftest.py registers this module as a plugin; a bare run
can load it with `-p tests.needs`."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest


def pg_bindir() -> Path | None:
    """The folder of PostgreSQL's server programs (initdb, pg_ctl), found the way
    scripts/team-server.sh finds it: pg_config's bindir, else Debian's newest
    /usr/lib/postgresql/<version>/bin. None when neither has them."""
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True,
                             timeout=30)
        d = Path(out.stdout.strip())
        if out.returncode == 0 and out.stdout.strip() and all(
                (d / p).exists() for p in ("initdb", "pg_ctl")):
            return d
    found = [Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")]
    return max(found, key=lambda d: [int(x) for x in d.parent.name.split(".")
                                     if x.isdigit()], default=None)


def _postgresql() -> str | None:
    d = pg_bindir()
    return None if d is None else str(d)


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@dataclass(frozen=True)
class Tool:
    """A program some tests drive and the Debian package that provides it."""

    what: str                              # for the messages
    package: str                           # apt-get install <package>
    find: Callable[[], str | None]         # where it is (the program or its folder), or None


TOOLS: dict[str, Tool] = {
    "postgresql": Tool("PostgreSQL's server programs (initdb, pg_ctl)", "postgresql",
                       _postgresql),
    "chromium": Tool("Chromium", "chromium", _chromium),
    "strace": Tool("strace", "strace", lambda: shutil.which("strace")),
}


def _tool(name: str) -> Tool:
    try:
        return TOOLS[name]
    except KeyError:
        raise ValueError(f"unknown tool {name!r}: one of {sorted(TOOLS)}") from None


def in_ci() -> bool:
    """True when the CI environment variable is set and not empty (`.ci/run` sets it)."""
    return bool(os.environ.get("CI"))


def need(name: str) -> str:
    """Where the tool is (for postgresql, the folder of its programs). When it is missing,
    the test is skipped, or it fails when CI is set, so CI cannot pass without the tool."""
    tool = _tool(name)
    found = tool.find()
    if found:
        return found
    if in_ci():
        pytest.fail(f"{tool.what} not installed. CI is set, so this test fails instead of "
                    f"skipping. Install it as root: `apt-get install {tool.package}` "
                    f"(.ci/run does this when it runs as root with apt-get).", pytrace=False)
    pytest.skip(f"{tool.what} not installed (Debian: `apt-get install {tool.package}`; "
                f".ci/run installs it). Under CI this test fails instead")


def requires(*names: str) -> pytest.MarkDecorator:
    """A mark: the test needs these tools (see `need`). A misspelled name is an error
    when the module is imported, not a test that is always skipped."""
    for name in names:
        _tool(name)
    return pytest.mark.requires(*names)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "requires(*tools): needs these Debian programs (tests/needs.py): skips "
        "without them, fails when CI is set")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Check `requires` marks before fixtures are set up, so a test that skips or fails
    does not first build a trained project or start a server."""
    for mark in item.iter_markers("requires"):
        for name in mark.args:
            need(name)
