"""The options every command shares: walked from the real parser, each with the same default, type
and error; "did you mean"; --version; `env --json`; help without torch; the device policy."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import opencodegen
from cli_walk import leaf_parsers
from generation_helpers import make_model_dir
from opencodegen import devices
from opencodegen.cli import main
from opencodegen.errors import ConfigError
from opencodegen.execution.sandbox import isolation_report

ROOT = Path(__file__).parent.parent
#: the commands that load a model: each takes every model option
MODEL_COMMANDS = {"generate", "chat", "serve", "eval humaneval", "eval mtpb", "eval mtpb-perplexity", "eval loss"}
MODEL_OPTIONS = ("--model", "--device", "--dtype", "--quantize", "--threads")
#: the other commands that take one of them (--dtype with the same type, other defaults)
ALSO = {"--model": {"info"}, "--dtype": {"init", "convert jaxformer", "convert gptj", "convert checkpoint", "convert merge-lora"}}
#: --seed: 0 where a run records results, a fresh seed where a user samples interactively (and retries)
FRESH_SEED = {"generate", "chat"}
#: (option, a bad value, the error argparse prints) for each shared option with a checked value
BAD_VALUES = [
    ("--device", "cuda0", "must be auto, cpu, cuda, cuda:N, mps, ..., not 'cuda0'"),
    ("--dtype", "f16", "must be auto, float32, bfloat16, float16, not 'f16'"),
    ("--threads", "0", "must be an integer >= 1, not '0'"),
    ("--seed", "-1", "must be an integer >= 0, not '-1'"),
    ("--quantize", "int3", "invalid choice: 'int3'"),
]


LEAVES = leaf_parsers()


def option(parser: argparse.ArgumentParser, flag: str) -> argparse.Action | None:
    return parser._option_string_actions.get(flag)


def test_the_walk_finds_every_command():
    assert MODEL_COMMANDS <= set(LEAVES) and {"env", "info", "init", "data build", "convert gptj"} <= set(LEAVES)


@pytest.mark.parametrize("flag", MODEL_OPTIONS)
def test_every_model_command_has_the_model_options_with_one_default_type_and_help(flag):
    actions = {name: option(LEAVES[name], flag) for name in sorted(MODEL_COMMANDS)}
    assert all(actions.values()), [name for name, action in actions.items() if action is None]
    shapes = {(a.default, a.type, tuple(a.choices or ()), a.help, a.nargs) for a in actions.values()}
    assert len(shapes) == 1, shapes
    holders = {name for name, parser in LEAVES.items() if option(parser, flag)}
    assert holders == MODEL_COMMANDS | ALSO.get(flag, set())


def test_the_shared_defaults_are_the_documented_ones():
    parser = LEAVES["generate"]
    assert [parser.get_default(d) for d in ("model", "device", "dtype", "quantize", "threads")] == [
        None, "auto", None, None, None]
    for name, parser in LEAVES.items():
        if option(parser, "--seed"):
            assert parser.get_default("seed") == (None if name in FRESH_SEED else 0), name
            assert option(parser, "--seed").type is option(LEAVES["generate"], "--seed").type
        if option(parser, "--dtype"):
            assert option(parser, "--dtype").type is option(LEAVES["generate"], "--dtype").type, name


@pytest.mark.parametrize("command, flag, value, message", [
    (command, *bad) for command, parser in sorted(LEAVES.items()) for bad in BAD_VALUES if option(parser, bad[0])])
def test_a_bad_shared_value_is_the_same_one_line_error_in_every_command(command, flag, value, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*command.split(), flag, value])
    assert exit_info.value.code == 2
    assert f"error: argument {flag}: {message}" in capsys.readouterr().err


@pytest.mark.parametrize("command", sorted(name for name, p in LEAVES.items() if option(p, "--json")))
def test_json_is_a_switch_everywhere(command):
    action = option(LEAVES[command], "--json")  # `--json` alone stores True (eval loss: also the old --json FILE)
    assert action.const is True and action.default is False and action.nargs in (0, "?")


def test_the_positive_and_probability_types_reject_with_the_cause(capsys):
    cases = [(["generate", "--n", "0"], "argument --n: must be an integer >= 1, not '0'"),
             (["generate", "--top-k", "x"], "argument --top-k: must be an integer >= 0, not 'x'"),
             (["eval", "humaneval", "--top-p", "1.5"], "argument --top-p: must be a number from 0 to 1, not '1.5'"),
             (["eval", "humaneval", "--timeout", "nan"], "argument --timeout: must be a number > 0, not 'nan'"),
             (["eval", "mtpb", "--num-samples", "0"], "argument --num-samples/--n: must be an integer >= 1, not '0'"),
             (["serve", "--max-batch", "-2"], "argument --max-batch: must be an integer >= 1, not '-2'")]
    for argv, message in cases:
        with pytest.raises(SystemExit):
            main(argv)
        assert message in capsys.readouterr().err, argv


def test_did_you_mean_for_a_command_a_nested_command_and_a_flag(capsys):
    cases = [(["generat"], "did you mean 'generate'?"), (["eval", "humanevl"], "did you mean 'humaneval'?"),
             (["eval", "humaneval", "--out", "x", "--temprature", "0.5"], "did you mean --temperature?"),
             (["generate", "--prompt", "x", "--max-new-tokns=4"], "did you mean --max-new-tokens?")]
    for argv, suggestion in cases:
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and suggestion in err, (argv, err)
    with pytest.raises(SystemExit):
        main(["generate", "--prompt", "x", "--zzzzzz"])  # nothing close: no guess
    err = capsys.readouterr().err
    assert "unrecognized arguments: --zzzzzz" in err and "did you mean" not in err
    assert err.splitlines()[0].startswith("usage: opencodegen generate")  # the sub-command's usage


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out == f"opencodegen {opencodegen.__version__}\n"


def test_env_json_reports_what_a_bug_report_needs(capsys):
    assert main(["env", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report) == {"versions", "platform", "devices", "isolation", "cpu_kernels", "caches", "hub_offline",
                           "environment"}
    assert report["versions"]["opencodegen"] == opencodegen.__version__
    assert report["versions"]["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert {"python", "tokenizers", "transformers"} <= set(report["versions"])
    assert report["devices"]["auto"] == devices.auto_device()
    assert report["devices"]["cuda_available"] == torch.cuda.is_available()
    assert report["isolation"]["mode"] == isolation_report()["mode"]
    assert set(report["cpu_kernels"]) == {"decode_attention", "small_batch_linear", "int4_linear"}
    assert all(v == "on" or v.startswith("off: ") for v in report["cpu_kernels"].values())
    assert set(report["caches"]) == {"huggingface_hub", "opencodegen", "kernels"}
    assert main(["env"]) == 0
    assert "isolation:" in capsys.readouterr().out


def test_env_never_prints_the_api_key(capsys, monkeypatch):
    monkeypatch.setenv("OPENCODEGEN_API_KEY", "secret-key-123")
    assert main(["env", "--json"]) == 0
    out = capsys.readouterr().out
    assert "secret-key-123" not in out and json.loads(out)["environment"]["OPENCODEGEN_API_KEY"] == "(set)"


def test_help_imports_no_torch():
    code = (
        "import sys\n"
        "from opencodegen.cli import build_parser, main\n"
        "for argv in (['--help'], ['eval', 'humaneval', '--help']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit as exc:\n"
        "        assert exc.code == 0, argv\n"
        "heavy = [m for m in ('torch', 'numpy', 'tokenizers', 'transformers', 'huggingface_hub') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "usage: opencodegen [-h] [--version] COMMAND" in proc.stdout and "--num-samples" in proc.stdout


def test_every_commands_help_imports_no_torch():
    code = (
        "import sys\n"
        f"sys.path.insert(0, {str(ROOT / 'tests')!r})\n"
        "from cli_walk import leaf_parsers\n"
        "for parser in leaf_parsers().values():\n"
        "    parser.format_help()\n"
        "assert 'torch' not in sys.modules\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_info_takes_model_as_an_option_or_positionally(tmp_path, capsys):
    model = str(make_model_dir(tmp_path / "model"))
    assert main(["info", "--model", model, "--json"]) == 0
    by_option = json.loads(capsys.readouterr().out)
    assert main(["info", model, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == by_option and by_option["directory"] == model
    assert main(["info", str(tmp_path), "--model", model]) == 2
    assert "two models given" in capsys.readouterr().err


def test_threads_reaches_torch(tmp_path, capsys):
    model = str(make_model_dir(tmp_path / "model"))
    before = torch.get_num_threads()
    try:
        assert main(["generate", "--model", model, "--prompt", "x", "--max-new-tokens", "2", "--threads", "1"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_the_device_policy(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert devices.auto_device() == "cpu" and devices.parse_device("auto") == torch.device("cpu")
    assert devices.parse_device(None) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert devices.auto_device() == "cuda"
    monkeypatch.setenv("LOCAL_RANK", "1")  # under torchrun: the local rank's GPU
    assert devices.auto_device() == "cuda:1"
    monkeypatch.setenv("LOCAL_RANK", "5")  # more ranks than visible GPUs: the default one
    assert devices.auto_device() == "cuda"


def test_dtype_spellings():
    assert [devices.parse_dtype(n) for n in ("fp16", "half", "bf16", "torch.float32", torch.float16)] == [
        torch.float16, torch.float16, torch.bfloat16, torch.float32, torch.float16]
    with pytest.raises(ConfigError, match="unknown dtype 'int8'; use float32, bfloat16, float16"):
        devices.parse_dtype("int8")
    parse = option(LEAVES["generate"], "--dtype").type
    assert parse("bf16") == "bfloat16" and parse("auto") is None
