"""Build hook: the wheel carries the Helm chart and the Triton Python models as package data.

The chart (``helm/dsv3``) and ``model_repo/`` live at the top of the source tree (helm, the image build and
the tests use them there); ``build_py`` copies them to ``dsv3ctl/_bundle/`` inside the wheel, where
``dsv3ctl.resources`` looks first. Editable installs skip the copy and use the checkout itself. A build from
a tree that lacks either directory fails instead of producing a wheel that cannot render or build a repository.
Everything else about the package is in pyproject.toml.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
BUNDLE = {"helm/dsv3": "helm/dsv3", "model_repo": "model_repo"}  # source path -> path under dsv3ctl/_bundle
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")


class BuildPyWithBundle(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        out = Path(self.build_lib) / "dsv3ctl" / "_bundle"
        for src, dst in BUNDLE.items():
            if not (ROOT / src).is_dir():
                raise SystemExit(f"setup.py: {ROOT / src} is missing; the wheel must carry it (build from a full checkout)")
            shutil.rmtree(out / dst, ignore_errors=True)
            shutil.copytree(ROOT / src, out / dst, ignore=IGNORE)


setup(cmdclass={"build_py": BuildPyWithBundle})
