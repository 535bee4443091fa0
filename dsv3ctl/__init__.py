"""dsv3ctl: deploy DeepSeek-V3 on Triton + TensorRT-LLM across GPU nodes, from one spec file.

Layout (see docs/architecture.md):
- ``dsv3ctl.core``: the spec, DeepSeek-V3 model facts and the planner (pure, no I/O beyond reading files).
- ``dsv3ctl.render``: pure renderers (spec + plan -> argv, files, chart values).
- ``dsv3ctl.adapters``: the edges (subprocess, Kubernetes API, Hugging Face hub, Triton clients).
- ``dsv3ctl.cli``: the thin typer CLI.
"""

__version__ = "0.1.0"
