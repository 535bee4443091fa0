"""The engine smoke test of TensorRT-LLM's DeepSeek-V3 README (pure): ``examples/run.py`` over the world.

The README (deepseek branch ``examples/deepseek_v3/README.md``, "Test the FP8 engines with run.py") runs
``python3 ../run.py --input_text "Today is a nice day." --max_output_len 30 --tokenizer_dir ./DeepSeek-V3
--engine_dir <engines> --top_p 0.95 --temperature 0.3`` on every rank of the engine's world (``srun -N 2
--ntasks-per-node 8`` on Slurm). Rank 0 prints ``Input [Text 0]: "<prompt>"`` and ``Output [Text 0 Beam 0]:
"<text>"`` (``examples/run.py`` @ 0321f71e, ``print_output``, lines 237 and 247).

The flags come from the contract data ``dsv3ctl/data/contracts/run_py.json`` (``examples/run.py``
parse_arguments + ``examples/utils.py`` add_common_args at the pin). In llmapi mode the same check is one
LLM API call under ``trtllm-llmapi-launch``: ``LLM(model, tensor_parallel_size, pipeline_parallel_size,
moe_expert_parallel_size).generate([prompt], SamplingParams(max_tokens, temperature, top_p))``.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import asdict, dataclass

from dsv3ctl.core import contracts
from dsv3ctl.errors import SpecError

#: Where the engine image installs run.py (docker/Dockerfile copies examples/run.py and utils.py there).
RUN_PY = "/opt/tensorrt_llm/examples/run.py"
#: The README's prompt and sampling values.
README_PROMPT = "Today is a nice day."
OUTPUT_RE = re.compile(r'^Output \[Text (\d+)(?: Seq \d+)? Beam (\d+)\]: "(.*)"\s*$', re.S)
LLMAPI_MARK = "DSV3CTL_SMOKE_OUTPUT "


@dataclass(frozen=True)
class SmokeConfig:
    """One smoke run: the prompt, the README's sampling values, where the engines and tokenizer are."""

    mode: str  # engine | llmapi
    engine_dir: str
    tokenizer_dir: str
    prompt: str = README_PROMPT
    max_output_len: int = 30
    top_p: float = 0.95
    temperature: float = 0.3
    python: str = "python3"
    run_py: str = RUN_PY
    tp: int = 1
    pp: int = 1
    moe_ep: int = 1
    llmapi_launch: str = "trtllm-llmapi-launch"

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def run_py_argv(cfg: SmokeConfig) -> list[str]:
    """``python3 run.py --input_text P --max_output_len N --tokenizer_dir T --engine_dir E --top_p p
    --temperature t``; SpecError when a flag is not in the run.py contract or a value is out of range."""
    if cfg.max_output_len < 1:
        raise SpecError(f"--max-output-len={cfg.max_output_len}: must be >= 1, e.g. 30 (the README's)")
    if not 0.0 <= cfg.top_p <= 1.0:
        raise SpecError(f"--top-p={cfg.top_p}: must be within [0, 1], e.g. 0.95 (the README's)")
    if cfg.temperature < 0.0:
        raise SpecError(f"--temperature={cfg.temperature}: must be >= 0, e.g. 0.3 (the README's)")
    if not cfg.prompt.strip():
        raise SpecError(f"--prompt is empty; pass a prompt, e.g. {README_PROMPT!r}")
    flags = {"--input_text": cfg.prompt, "--max_output_len": str(cfg.max_output_len),
             "--tokenizer_dir": cfg.tokenizer_dir, "--engine_dir": cfg.engine_dir,
             "--top_p": str(cfg.top_p), "--temperature": str(cfg.temperature)}
    miss = contracts.load("run_py").missing(list(flags))
    if miss:  # the contract data is the source of these flags
        raise SpecError(f"examples/run.py does not accept {', '.join(miss)} (dsv3ctl/data/contracts/run_py.json)")
    argv = [cfg.python, cfg.run_py]
    for k, v in flags.items():
        argv += [k, v]
    return argv


_LLMAPI_PROGRAM = """\
import json, sys, time
from tensorrt_llm import LLM, SamplingParams
a = json.loads(sys.argv[1])
t0 = time.time()
llm = LLM(model=a["model"], tensor_parallel_size=a["tp"], pipeline_parallel_size=a["pp"],
          moe_expert_parallel_size=a["moe_ep"])
t1 = time.time()
out = llm.generate([a["prompt"]], SamplingParams(max_tokens=a["max_tokens"], temperature=a["temperature"],
                                                 top_p=a["top_p"]))
t2 = time.time()
print("%s%s" % (a["mark"], json.dumps({"text": out[0].outputs[0].text, "load_s": t1 - t0, "generate_s": t2 - t1})),
      flush=True)
"""


def llmapi_argv(cfg: SmokeConfig) -> list[str]:
    """``trtllm-llmapi-launch python3 -c <one generate call> <json args>`` (the model is ``tokenizer_dir``,
    the Hugging Face checkpoint). Rank 0 prints one line ``DSV3CTL_SMOKE_OUTPUT {"text", "load_s", "generate_s"}``."""
    args = {"model": cfg.tokenizer_dir, "tp": cfg.tp, "pp": cfg.pp, "moe_ep": cfg.moe_ep, "prompt": cfg.prompt,
            "max_tokens": cfg.max_output_len, "temperature": cfg.temperature, "top_p": cfg.top_p,
            "mark": LLMAPI_MARK}
    return [cfg.llmapi_launch, cfg.python, "-c", _LLMAPI_PROGRAM, json.dumps(args, sort_keys=True)]


def rank_cmd(cfg: SmokeConfig) -> list[str]:
    """The command every rank runs."""
    if cfg.mode == "engine":
        return run_py_argv(cfg)
    if cfg.mode == "llmapi":
        return llmapi_argv(cfg)
    raise SpecError(f"serving.mode / --mode={cfg.mode!r}: use engine or llmapi")


def parse_outputs(text: str, mode: str) -> list[str]:
    """The generated texts in the ranks' combined stdout (run.py's ``Output [...]`` lines, or the llmapi
    mark line); [] when there is none."""
    outs: list[str] = []
    for line in text.splitlines():
        if mode == "engine":
            m = OUTPUT_RE.match(line)
            if m:
                outs.append(m.group(3))
        elif line.startswith(LLMAPI_MARK):
            try:
                outs.append(str(json.loads(line[len(LLMAPI_MARK):])["text"]))
            except (ValueError, KeyError, TypeError):
                continue
    return outs


def sbatch_script(spec, cfg: SmokeConfig, image: str | None = None) -> str:  # type: ignore[no-untyped-def]
    """The sbatch script that runs the smoke test as one ``srun`` step over the world (the README's Slurm
    example: ``srun -N <nodes> --ntasks-per-node <gpus>`` with the container image)."""
    from dsv3ctl.render.image import image_ref
    from dsv3ctl.render.slurm import check_layout

    check_layout(spec)
    p, sl = spec.parallelism, spec.slurm
    img = image or image_ref(spec, spec.serving.mode)
    lines = [
        "#!/bin/bash",
        f"# dsv3ctl smoke ({cfg.mode} mode): {p.nodes} nodes x {p.gpus_per_node} GPUs = {p.world_size} ranks.",
        f"#SBATCH --job-name={sl.job_name}-smoke",
        f"#SBATCH --nodes={p.nodes}",
        f"#SBATCH --ntasks-per-node={p.gpus_per_node}",
        f"#SBATCH --gres=gpu:{p.gpus_per_node}",
        "#SBATCH --exclusive",
        f"#SBATCH --time={sl.time_limit}",
        f"#SBATCH --output={sl.job_name}-smoke-%j.out",
        *([f"#SBATCH --partition={sl.partition}"] if sl.partition else []),
        *([f"#SBATCH --account={sl.account}"] if sl.account else []),
        "set -euo pipefail",
        f"IMAGE={shlex.quote(img)}",
        f"MOUNTS={shlex.quote(','.join(sl.container_mounts))}",
        "srun --mpi=pmix \\",
        f"  --nodes={p.nodes} --ntasks={p.world_size} --ntasks-per-node={p.gpus_per_node} \\",
        '  --container-image="${IMAGE}" \\',
        '  --container-mounts="${MOUNTS}" \\',
        "  --no-container-mount-home \\",
        "  " + shlex.join(rank_cmd(cfg)),
        "",
    ]
    return "\n".join(lines)
