"""The product's text speaks of the product, not of how it was made.

Fails when the package, the chart, the docs, the tests, the benchmarks, the image and tool scripts, the
README, the CHANGELOG or the Makefile speak of the project's own history: "the seed" (name the source of a
fact instead: TensorRT-LLM's DeepSeek-V3 README on the ``deepseek`` branch, a file at a commit), "issue N"
/ "(issue ..." (an upstream report is cited as ``owner/repo#N``), "this session", or notes about what was
or was not tried. This file itself is not scanned (it names the phrases). A random seed (``seed=``, ``sampling_param_seed``) is not history and passes.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCOPE = ["dsv3ctl", "helm", "docs", "tests", "benchmarks", "docker", "tools", "model_repo",
         "README.md", "CHANGELOG.md", "Makefile", "pyproject.toml"]
SUFFIXES = {".py", ".md", ".yaml", ".yml", ".json", ".tpl", ".txt", ".sh", ".toml", ".cfg", ".j2", ".pbtxt", ""}
SKIP_PARTS = {"__pycache__", ".venv", "node_modules"}

_W = r"(?<![\w/#-])"
PATTERNS = {
    "the project's seed": re.compile(_W + r"(the\s+" + "seed" + r"\b(?!\s*(value|=|for|of the (rng|random)))|"
                                     + "seed" + r"'s)", re.I),
    "an issue number": re.compile(_W + r"issues?\s+#?\d+|\(" + "issue" + r"\b", re.I),
    "this session": re.compile(r"\bthis\s+" + "session" + r"\b", re.I),
    "what was tried": re.compile(r"\b(was|were|been)\s+(not\s+)?(" + "tried" + r"|attempted)\b|\bnot\s+"
                                 + "tried" + r"\b", re.I),
    "the helpers who built it": re.compile(r"\bhelper\s+(engineer|session|agent)s?\b", re.I),
}


def _files() -> list[Path]:
    out = []
    for entry in SCOPE:
        p = ROOT / entry
        cands = [p] if p.is_file() else sorted(x for x in p.rglob("*") if x.is_file()) if p.is_dir() else []
        for f in cands:
            if SKIP_PARTS & set(f.relative_to(ROOT).parts) or f.suffix not in SUFFIXES:
                continue
            if f.name in ("go.sum", "go.mod") or f == Path(__file__).resolve():
                continue  # module checksums; this file, which has to name the phrases
            out.append(f)
    return out


def find(text: str) -> list[tuple[str, str]]:
    """(rule, matched text) for every forbidden phrase in ``text``."""
    return [(rule, m.group(0)) for rule, rx in PATTERNS.items() for m in rx.finditer(text)]


def test_no_project_history_in_the_product_text():
    files = _files()
    assert len(files) > 50  # the scope is really scanned
    bad = []
    for f in files:
        try:
            text = f.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for n, line in enumerate(text.splitlines(), 1):
            for rule, hit in find(line):
                bad.append(f"{f.relative_to(ROOT)}:{n}: {rule}: {hit!r}: {line.strip()[:120]}")
    assert not bad, "project-internal words in the product text:\n" + "\n".join(bad)


@pytest.mark.parametrize(("text", "rule"), [
    ("the " + "seed's FP8 example", "the project's seed"),
    ("as the " + "seed notes", "the project's seed"),
    ("pinned in (" + "issue 4)", "an issue number"),
    ("see " + "issue 12", "an issue number"),
    ("installed in this " + "session", "this session"),
    ("the cross-check was not " + "tried", "what was tried"),
])
def test_the_rules_catch_each_kind(text, rule):
    assert rule in {r for r, _ in find(text)}


@pytest.mark.parametrize("text", ["sampling_param_" + "seed UINT64", "--" + "seed 7 for the random prompts",
                                  "NVIDIA/TensorRT-LLM#2831 says", "seed=0", "Helpers for the chart tests",
                                  "the leader's ssh session is gone"])
def test_ordinary_words_pass(text):
    assert find(text) == []
