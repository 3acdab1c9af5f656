"""`opencodegen env`: what a bug report needs — versions, devices, isolation, CPU kernels, caches."""

from __future__ import annotations

import argparse
import json
import os
import platform
from typing import Any

from opencodegen.cli_options import add_json_argument

#: packages reported beside opencodegen's own pins when installed (transformers: only its version)
OPTIONAL_PACKAGES = ("transformers", "huggingface_hub", "safetensors", "numpy")
#: environment variables that change what the commands do
VARIABLES = ("HF_HOME", "HF_HUB_CACHE", "HF_HUB_OFFLINE", "XDG_CACHE_HOME", "OPENCODEGEN_ISOLATION",
             "OPENCODEGEN_CPU_KERNEL", "OPENCODEGEN_API_KEY", "CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("env", help="print versions, devices, isolation, CPU kernels and caches (for bug reports)")
    add_json_argument(p, "the report")
    p.set_defaults(func=run)


def _versions() -> dict[str, str]:
    import importlib.metadata

    from opencodegen.evaluation.run_record import package_versions

    versions = package_versions()
    for name in OPTIONAL_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def _devices() -> dict[str, Any]:
    import torch

    from opencodegen import devices

    gpus = [{"name": torch.cuda.get_device_name(i),
             "memory_gib": round(torch.cuda.get_device_properties(i).total_memory / 2**30, 1)}
            for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    return {"auto": devices.auto_device(), "cuda_available": torch.cuda.is_available(), "cuda_build": torch.version.cuda,
            "gpus": gpus, "mps_available": torch.backends.mps.is_available(), "cpu": platform.processor() or
            platform.machine(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}


def _kernels() -> dict[str, str]:
    from opencodegen.kernels import decode_attention, int4_linear, small_batch_linear

    return {module.__name__.rsplit(".", 1)[1]: module.LIBRARY.status()
            for module in (decode_attention, small_batch_linear, int4_linear)}


def report() -> dict[str, Any]:
    """The whole report as one JSON-able dict (the keys `--json` prints)."""
    from opencodegen import hub
    from opencodegen.execution.sandbox import isolation_report
    from opencodegen.kernels.native import cache_dir
    from opencodegen.user_cache import user_cache_dir

    return {
        "versions": _versions(),
        "platform": platform.platform(),
        "devices": _devices(),
        "isolation": isolation_report(),
        "cpu_kernels": _kernels(),
        "caches": {"huggingface_hub": str(hub.hub_cache_dir()), "opencodegen": str(user_cache_dir()),
                   "kernels": str(cache_dir())},
        "hub_offline": hub.hub_offline(),
        "environment": {name: os.environ[name] if name != "OPENCODEGEN_API_KEY" else "(set)"
                        for name in VARIABLES if name in os.environ},
    }


def run(args: argparse.Namespace) -> int:
    info = report()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    for section, value in info.items():
        if isinstance(value, dict):
            print(f"{section}:")
            for key, item in value.items():
                print(f"  {key:<18} {json.dumps(item) if isinstance(item, (list, dict)) else item}")
        else:
            print(f"{section + ':':<20} {value}")
    return 0
