"""GPU numerics check for `dsv3ctl weights cast-bf16` (run on a CUDA machine with torch + transformers).

1. Build a tiny random DeepSeek-V3 with transformers' own implementation (DeepseekV3Config /
   DeepseekV3ForCausalLM), dimensions from dsv3ctl's synthetic config (partial 128x128 edge blocks).
2. Save it, then block-quantize every linear weight the release stores in FP8 to float8_e4m3fn with
   float32 ``weight_scale_inv`` [ceil(M/128), ceil(N/128)] (scale = block amax / 448), in 3 shards with
   some scales in another shard than their weight, config.json with quantization_config.
3. Reference: dequantize independently in torch (float32(W) * S repeated, cropped, -> bf16) into a
   checkpoint. Candidate: `dsv3ctl` cast (GPU path; CPU path too when ml_dtypes is importable).
4. Both load in transformers; tensors must be bit-identical and logits equal (torch.equal).

Usage: PYTHONPATH=. python benchmarks/gpu_numerics.py [--work DIR]   (exit 0 = pass)
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

FP8_SUFFIXES = ("q_a_proj.weight", "q_b_proj.weight", "kv_a_proj_with_mqa.weight", "kv_b_proj.weight",
                "o_proj.weight", "gate_proj.weight", "up_proj.weight", "down_proj.weight")


def main() -> int:
    import torch
    import transformers
    from safetensors.torch import load_file, save_file

    from dsv3ctl.adapters.cast import cast_checkpoint
    from dsv3ctl.adapters.synth import synth_config
    from dsv3ctl.core.checkpoint import verify_checkpoint

    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default=None)
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="dsv3-numerics-"))
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, cuda {torch.cuda.is_available()}")
    raw = synth_config({"num_nextn_predict_layers": 0})
    keep = {k: v for k, v in raw.items() if not k.startswith("_") and k not in ("auto_map", "quantization_config")}
    keep["rope_scaling"] = None
    conf = transformers.DeepseekV3Config(**{k: v for k, v in keep.items() if k != "architectures"})
    torch.manual_seed(0)
    model = transformers.DeepseekV3ForCausalLM(conf).to(torch.bfloat16)
    model.eval()
    orig = work / "orig"
    model.save_pretrained(orig, safe_serialization=True)
    sd: dict[str, torch.Tensor] = {}
    for f in sorted(orig.glob("*.safetensors")):
        sd.update(load_file(str(f)))
    print(f"saved {len(sd)} tensors; sample names: {sorted(sd)[:3]} ... 3-D tensors: "
          f"{[n for n, t in sd.items() if t.dim() == 3][:3]}")

    fp8: dict[str, torch.Tensor] = {}
    deq: dict[str, torch.Tensor] = {}
    for name, w in sd.items():
        if name.endswith("e_score_correction_bias"):
            w = w.float()  # the release stores it FP32; .to(bfloat16) above made the buffer BF16
        if w.dim() == 2 and name.endswith(FP8_SUFFIXES):
            m, n = w.shape
            mb, nb = -(-m // 128), -(-n // 128)
            wp = torch.zeros(mb * 128, nb * 128, dtype=torch.float32)
            wp[:m, :n] = w.float()
            blocks = wp.view(mb, 128, nb, 128)
            amax = blocks.abs().amax(dim=(1, 3)).clamp(min=1e-12)
            scale = (amax / 448.0).float()
            q = (blocks / scale[:, None, :, None]).view(mb * 128, nb * 128)[:m, :n].to(torch.float8_e4m3fn)
            fp8[name] = q.contiguous()
            fp8[name + "_scale_inv"] = scale.contiguous()
            ex = scale.repeat_interleave(128, 0)[:m].repeat_interleave(128, 1)[:, :n]
            deq[name] = (q.float() * ex).to(torch.bfloat16)
        else:
            fp8[name] = w.contiguous()
            deq[name] = w.contiguous()
    # write FP8 checkpoint: 3 shards, every 4th scale moved to the next shard
    src = work / "fp8"
    src.mkdir(parents=True, exist_ok=True)
    names = sorted(n for n in fp8 if not n.endswith("_scale_inv"))
    shard_of: dict[str, int] = {}
    for i, n in enumerate(names):
        shard_of[n] = i * 3 // len(names)
        if n + "_scale_inv" in fp8:
            shard_of[n + "_scale_inv"] = (shard_of[n] + (1 if i % 4 == 0 else 0)) % 3
    files = [f"model-{i + 1:05d}-of-{3:06d}.safetensors" for i in range(3)]
    for i, fn in enumerate(files):
        save_file({n: t for n, t in fp8.items() if shard_of[n] == i}, str(src / fn), metadata={"format": "pt"})
    total = sum(t.numel() * t.element_size() for t in fp8.values())
    (src / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": {n: files[shard_of[n]] for n in sorted(fp8)}}))
    cfgd = json.loads((orig / "config.json").read_text())
    cfgd["quantization_config"] = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                                   "weight_block_size": [128, 128]}
    (src / "config.json").write_text(json.dumps(cfgd, indent=2))
    ref = work / "ref"
    ref.mkdir(exist_ok=True)
    save_file(deq, str(ref / "model.safetensors"), metadata={"format": "pt"})
    shutil.copy(orig / "config.json", ref / "config.json")

    ok = True
    devices = ["cuda"]
    try:
        import ml_dtypes  # noqa: F401
        devices.append("cpu")
    except ImportError:
        print("ml_dtypes not installed here: CPU path not checked on this machine")
    ids = torch.randint(0, conf.vocab_size, (2, 24), generator=torch.Generator().manual_seed(1)).cuda()
    ref_model = transformers.DeepseekV3ForCausalLM.from_pretrained(ref, torch_dtype=torch.bfloat16).cuda().eval()
    with torch.no_grad():
        ref_logits = ref_model(ids).logits
    for dev in devices:
        dst = work / f"bf16-{dev}"
        res = cast_checkpoint(src, dst, device=dev, workers=2)
        rep = verify_checkpoint(dst, checksums=True)
        out: dict[str, torch.Tensor] = {}
        for f in sorted(dst.glob("*.safetensors")):
            out.update(load_file(str(f)))
        diff = [n for n in deq if n not in out or not torch.equal(out[n].view(torch.int16) if out[n].dtype == torch.bfloat16 else out[n],
                                                                  deq[n].view(torch.int16) if deq[n].dtype == torch.bfloat16 else deq[n])]
        extra = sorted(set(out) - set(deq))
        cfg_out = json.loads((dst / "config.json").read_text())
        cand = transformers.DeepseekV3ForCausalLM.from_pretrained(dst, torch_dtype=torch.bfloat16).cuda().eval()
        with torch.no_grad():
            logits = cand(ids).logits
        same = torch.equal(logits, ref_logits)
        maxdiff = (logits.float() - ref_logits.float()).abs().max().item()
        print(f"[{dev}] cast {res.shards_done} shards in {res.seconds:.2f}s; verify ok={rep.ok} "
              f"({rep.found_tensors}/{rep.expected_tensors} tensors, problems={rep.malformed[:2] + rep.missing[:2] + rep.extra[:2]}); "
              f"tensors differing from the reference: {len(diff)} {diff[:3]}; extra {extra[:3]}; "
              f"quantization_config removed: {'quantization_config' not in cfg_out}; "
              f"logits equal: {same} (max |diff| {maxdiff}); logits shape {tuple(logits.shape)}")
        ok &= not diff and not extra and same and "quantization_config" not in cfg_out
    print("NUMERICS", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
