"""Object names of a release, as the chart computes them (``dsv3.name`` / ``dsv3.fullname`` in
helm/dsv3/templates/_helpers.tpl). Every place that derives an object name or a label selector from a release
goes through :class:`Names`; tests/test_packaging.py checks the chart and this module agree.

The rules are those of ``helm create``'s starter chart (helm/helm @ 0d1f9dad pkg/chart/v2/util/create.go,
``defaultHelpers``: ``nameOverride`` replaces the chart name, ``fullnameOverride`` the whole base name; the
release name alone when it contains the name), with a 40-character limit instead of 63 so LWS pod,
StatefulSet and controller-revision names stay under 63. Truncation is sprig's ``trunc`` then
``trimSuffix "-"``, which removes one trailing dash (not all of them). Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

CHART_NAME = "dsv3"
#: longest base name: the LWS pod ``<fullname>-<group>-<index>`` and its revisions stay under 63
MAX_FULLNAME = 40


def _trunc(name: str) -> str:
    return name[:MAX_FULLNAME].removesuffix("-")


@dataclass(frozen=True)
class Names:
    """A release and the spec's ``deploy.name_override`` / ``deploy.fullname_override``."""

    release: str
    name_override: str = ""
    fullname_override: str = ""

    @classmethod
    def of(cls, deploy: Mapping[str, Any] | Any) -> Names:
        """From a spec's ``deploy`` (the model or the values dict)."""
        get = deploy.get if isinstance(deploy, Mapping) else lambda k, d="": getattr(deploy, k, d)
        return cls(str(get("release")), str(get("name_override", "") or ""), str(get("fullname_override", "") or ""))

    @property
    def name(self) -> str:
        """``app.kubernetes.io/name`` of the release's objects."""
        return _trunc(self.name_override or CHART_NAME)

    @property
    def fullname(self) -> str:
        """The base name of every object of the release."""
        if self.fullname_override:
            return _trunc(self.fullname_override)
        name = self.name_override or CHART_NAME
        return _trunc(self.release if name in self.release else f"{self.release}-{name}")

    @property
    def selector(self) -> str:
        """Label selector of the release's chart objects."""
        return f"app.kubernetes.io/instance={self.release},app.kubernetes.io/name={self.name}"

    @property
    def pod_selector(self) -> str:
        """Label selector of the release's serving pods (leaders and workers)."""
        return self.selector + ",app.kubernetes.io/component in (leader,worker)"
