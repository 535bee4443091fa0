"""Where dsv3ctl finds the files it ships besides its Python code: the Helm chart (``helm/dsv3``) and the
Triton Python models (``model_repo/``).

Looked up in this order:

1. an environment variable (``DSV3CTL_CHART`` for the chart directory, ``DSV3CTL_MODEL_REPO_SRC`` for
   ``model_repo/``);
2. the copy inside an installed wheel: ``dsv3ctl/_bundle/helm/dsv3`` and ``dsv3ctl/_bundle/model_repo``,
   written by ``setup.py``'s ``build_py`` when the wheel is built (never present in a source checkout);
3. the source checkout this package runs from (``helm/dsv3`` and ``model_repo/`` next to ``dsv3ctl/``:
   an editable install or ``python -m dsv3ctl`` from a clone).

Only paths are computed here; callers check existence and say what is missing.
"""

from __future__ import annotations

import os
from pathlib import Path

CHART_NAME = "dsv3"
_PACKAGE = Path(__file__).resolve().parent
_BUNDLE = _PACKAGE / "_bundle"  # filled by setup.py's build_py (BuildPyWithBundle) in a wheel
_CHECKOUT = _PACKAGE.parent


def _pick(env: str, bundled: Path, checkout: Path) -> Path:
    value = os.environ.get(env)
    if value:
        return Path(value)
    return bundled if bundled.is_dir() else checkout


def chart_dir() -> Path:
    """The Helm chart directory (holds ``Chart.yaml``)."""
    return _pick("DSV3CTL_CHART", _BUNDLE / "helm" / CHART_NAME, _CHECKOUT / "helm" / CHART_NAME)


def model_repo_dir() -> Path:
    """The project's ``model_repo/`` (the Python models and ``lib/dsv3_text.py``)."""
    return _pick("DSV3CTL_MODEL_REPO_SRC", _BUNDLE / "model_repo", _CHECKOUT / "model_repo")
