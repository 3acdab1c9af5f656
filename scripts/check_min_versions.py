#!/usr/bin/env python
"""Check pyproject's lower bounds: install each checked minimum in a plain, throwaway venv (no
system site-packages) and run the code path that needs it, from this checkout's src/.

    python scripts/check_min_versions.py              # every check (needs a package index)
    python scripts/check_min_versions.py datasketch   # one check

A check may also name a release just below the bound that must FAIL the same code path, which
shows that the bound is the first release that works. Bounds not checked here are listed in
UNCHECKED with the evidence for them.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import textwrap
import venv
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Check:
    pins: tuple[str, ...]  # the minimum versions, installed together
    code: str  # run in the venv with PYTHONPATH=src, from the repository root
    below: tuple[str, ...] = ()  # releases just below the bound, on which `code` must fail


_DEDUP = """
import importlib.util
spec = importlib.util.spec_from_file_location("dedup", "src/opencodegen/data/dedup.py")
dedup = importlib.util.module_from_spec(spec)
spec.loader.exec_module(dedup)
base = " ".join(f"word{i}" for i in range(200))
docs = [base, base + " one more word", " ".join(f"other{i}" for i in range(200)), base]
near = dedup.NearDedup(threshold=0.85)
flags = [near.is_duplicate(dedup.minhash_signature(doc)) for doc in docs]
assert flags == [False, True, False, True], flags
"""

_HUB = """
import os, pathlib, shutil, socket, subprocess, sys, tempfile
home = pathlib.Path(tempfile.mkdtemp())
os.environ.update(HF_HOME=str(home), HF_HUB_OFFLINE="1")
def refuse(*args, **kwargs):
    raise AssertionError("network attempt")
socket.getaddrinfo = refuse
socket.socket.connect = refuse
from opencodegen import hub
from opencodegen.errors import CheckpointError
repo = home / "hub" / "models--org--tiny"
snap = repo / "snapshots" / ("a" * 40)
snap.mkdir(parents=True)
(repo / "refs").mkdir()
(repo / "refs" / "main").write_text("a" * 40)
(snap / "config.json").write_text("{}")
has_config = lambda d: (d / "config.json").is_file()
assert hub.snapshot("org/tiny", has_config, lambda files: ["*"]) == snap
assert hub.config_file("org/tiny") == snap / "config.json"
try:
    hub.snapshot("org/absent", has_config, lambda files: ["*"])
    raise SystemExit("an uncached repository resolved")
except CheckpointError as exc:
    assert "HF_HUB_OFFLINE" in str(exc) and str(home / "hub") in str(exc), exc
hf = shutil.which("hf", path=os.path.dirname(sys.executable))
assert hf and subprocess.run([hf, "download", "--help"], capture_output=True).returncode == 0, "no `hf download`"
"""

_TOKENIZER = """
from opencodegen.tokenizer import CodeGenTokenizer
tok = CodeGenTokenizer.from_pretrained("src/opencodegen/assets/default-model")
text = "def f(x):\\n        return x  # twice\\n"
ids = tok.encode(text)
assert tok.decode(ids) == text
padded = tok.padded_to(len(tok) + 5)
assert len(padded) == len(tok) + 5 and padded.encode(text) == ids
"""

_PROTOCOL = """
from opencodegen.serving.protocol import APIError, CompletionRequest, parse_body
request = parse_body(b'{"prompt": "def f():", "max_tokens": 8, "n": 2, "stop": ["\\\\n"]}', CompletionRequest)
assert request.n == 2 and request.max_tokens == 8
for body, code in ((b'{"prompt": "x", "bogus": 1}', "unknown_parameter"), (b'{"prompt": "x", "n": 0}', "invalid_value")):
    try:
        parse_body(body, CompletionRequest)
        raise SystemExit(f"accepted {body!r}")
    except APIError as exc:
        assert exc.code == code, (body, exc.code)
"""

_METRICS = """
import importlib.util
spec = importlib.util.spec_from_file_location("metrics", "src/opencodegen/serving/metrics.py")
metrics = importlib.util.module_from_spec(spec)
spec.loader.exec_module(metrics)
m = metrics.Metrics()
m.count_request("ok")
m.observe(latency=0.1)
text = m.render()
assert "# TYPE opencodegen_requests_total counter" in text and 'opencodegen_requests_total{outcome="ok"} 1.0' in text
assert 'opencodegen_request_latency_seconds_bucket{le="0.1"} 1.0' in text and "_created" not in text, text
"""

CHECKS = {
    # MinHash(...).scheme and LeanMinHash(scheme=...) first appear in datasketch 2.0.0.
    "datasketch": Check(("datasketch==2.0.0", "numpy==1.24.4"), _DEDUP, below=("datasketch==1.10.0", "numpy==1.24.4")),
    # the `hf` CLI the docs use (hf download) first ships in huggingface_hub 0.34.0.
    "huggingface_hub": Check(("huggingface_hub==0.34.0",), _HUB, below=("huggingface_hub==0.33.5",)),
    "tokenizers": Check(("tokenizers==0.20.0",), _TOKENIZER),
    # ConfigDict(strict=True), model_validate and errors()[i]["type"] names are pydantic 2 API.
    "pydantic": Check(("pydantic==2.0",), _PROTOCOL),
    # custom collectors and generate_latest are far older; 0.20.0 is the oldest release run here
    "prometheus-client": Check(("prometheus-client==0.20.0",), _METRICS),
}

UNCHECKED = {
    "torch>=2.6": "`from torch.distributed.fsdp import fully_shard, CPUOffloadPolicy` (training/distributed.py) "
    "is public from 2.6 (pytorch/pytorch#141868 moved FSDP2 there, targeting 2.6; 2.5 only has "
    "torch.distributed._composable.fsdp); a torch wheel is too large to install per check",
    "starlette>=0.36.3": "fastapi 0.110.0's METADATA requires starlette>=0.36.3,<0.37.0; the code uses "
    "starlette.requests.Request, starlette.exceptions.HTTPException and starlette.background.BackgroundTask, "
    "all far older",
    "ctranslate2>=4.8 (test extra)": "tests/test_gptj_ctranslate2.py passed with 4.8.0 (pip install --no-deps "
    "--target DIR ctranslate2==4.8.0, DIR first on PYTHONPATH) and 4.8.5",
    "others": "safetensors, tqdm, rich, matplotlib, pyyaml, fastapi, uvicorn, pandas, scikit-learn, pyarrow: "
    "bounds as declared before, tested only at the versions installed in the development environment "
    "(numpy's 1.24 runs in the datasketch check)",
}


def run_check(name: str, pins: tuple[str, ...], code: str, workdir: Path) -> tuple[bool, str]:
    """Install `pins` into a fresh venv under `workdir` and run `code`; (passed, output tail)."""
    env_dir = workdir / name
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    python = env_dir / "bin" / "python"
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", *pins], capture_output=True, text=True)
    if install.returncode:
        return False, f"pip install {' '.join(pins)} failed:\n{install.stderr[-2000:]}"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    result = subprocess.run([str(python), "-c", textwrap.dedent(code)], cwd=ROOT, env=env, capture_output=True, text=True)
    return result.returncode == 0, (result.stdout + result.stderr)[-2000:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help=f"checks to run: {', '.join(CHECKS)} (default: all)")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(CHECKS))
    if unknown:
        parser.error(f"unknown checks {unknown}; choose from {', '.join(CHECKS)}")
    failures = 0
    with tempfile.TemporaryDirectory(prefix="min-versions-") as tmp:
        for name in args.names or list(CHECKS):
            check = CHECKS[name]
            passed, output = run_check(name, check.pins, check.code, Path(tmp))
            print(f"{'ok  ' if passed else 'FAIL'} {name}: {' '.join(check.pins)}")
            if not passed:
                failures += 1
                print(textwrap.indent(output, "    "))
            if check.below:
                below_passed, _ = run_check(name + "-below", check.below, check.code, Path(tmp))
                print(f"{'ok  ' if not below_passed else 'FAIL'} {name}: {' '.join(check.below)} fails, as it should")
                failures += below_passed
    for bound, evidence in UNCHECKED.items():
        print(f"not installed here: {bound}: {evidence}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
