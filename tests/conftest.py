"""Session-wide: report the versions under test and refuse to test the wrong ones.

``.ci/run`` reruns part of the suite against the lowest supported releases by putting a folder
first on ``PYTHONPATH``; ``CROP_EXPECT_VERSIONS`` (``name==version,...``) makes that run fail at
once if the interpreter imports anything else, so CI can never report a range it did not test.
"""

from __future__ import annotations

import importlib
import os

import pytest

# distribution name -> import name, for the libraries whose internals the code touches
TRACKED = {"transformers": "transformers", "apache-beam": "apache_beam", "accelerate": "accelerate", "torch": "torch"}


def _imported_version(dist: str) -> str:
    return importlib.import_module(TRACKED[dist]).__version__


def pytest_report_header(config):
    return "crop under test with " + ", ".join(f"{d} {_imported_version(d)}" for d in TRACKED)


def pytest_sessionstart(session):
    want = os.environ.get("CROP_EXPECT_VERSIONS", "").strip()
    for pin in filter(None, (p.strip() for p in want.split(","))):
        dist, _, version = pin.partition("==")
        got = _imported_version(dist)
        if got.split("+")[0] != version:
            raise pytest.UsageError(f"CROP_EXPECT_VERSIONS wants {dist}=={version}, the interpreter imports {got}")
