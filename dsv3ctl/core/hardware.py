"""Known GPUs: memory and compute capability (SM version).

Memory is ``memory.total`` as ``nvidia-smi`` reports it for the SXM/OAM parts (MiB), which is what
the CUDA runtime can address, not the marketing figure (an "80 GB" H100 reports 81,559 MiB).
Sources: NVIDIA data sheets for the SM versions (H100/H200/H20: sm_90, B200: sm_100, A100: sm_80,
L40S: sm_89); nvidia-smi ``memory.total`` readings as published for each part. Only the H200 row was
read here (143,771 MiB, on the lent H200: benchmarks/RESULTS.md); the others are not measured by us.
"""

from __future__ import annotations

from dataclasses import dataclass

MIB = 1024**2
GIB = 1024**3


@dataclass(frozen=True)
class Gpu:
    """One GPU model. ``memory_bytes`` in bytes; ``sm`` as an integer (90 for Hopper)."""

    name: str
    memory_mib: int
    sm: int
    product_label: str  # the value of the node label nvidia.com/gpu.product set by GPU feature discovery

    @property
    def memory_bytes(self) -> int:
        return self.memory_mib * MIB

    @property
    def memory_gib(self) -> float:
        return self.memory_bytes / GIB


GPUS: dict[str, Gpu] = {
    g.name: g
    for g in (
        Gpu("H100-80GB", 81_559, 90, "NVIDIA-H100-80GB-HBM3"),
        Gpu("H200", 143_771, 90, "NVIDIA-H200"),
        Gpu("H20", 97_871, 90, "NVIDIA-H20"),
        Gpu("B200", 183_359, 100, "NVIDIA-B200"),
        Gpu("A100-80GB", 81_920, 80, "NVIDIA-A100-SXM4-80GB"),
        Gpu("L40S", 46_068, 89, "NVIDIA-L40S"),
    )
}
