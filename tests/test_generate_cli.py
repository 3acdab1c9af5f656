"""`opencodegen generate` on a tiny random model directory."""

import json

import pytest

from generation_helpers import make_model_dir, one_thread  # noqa: F401 (fixture)
from opencodegen import load
from opencodegen.cli import main
from opencodegen.generation import Generator, SamplingParams

pytestmark = pytest.mark.usefixtures("one_thread")
PROMPT = "def add(a, b):\n    "


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return str(make_model_dir(tmp_path_factory.mktemp("tiny")))


def run_json(capsys, *argv):
    assert main(["generate", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_json_output_matches_the_library(model_dir, capsys):
    record = run_json(capsys, "--model", model_dir, "--prompt", PROMPT, "--n", "3", "--seed", "5",
                      "--temperature", "0.8", "--max-new-tokens", "12", "--logprobs", "2")
    params = SamplingParams(n=3, seed=5, temperature=0.8, max_new_tokens=12, logprobs=2)
    expected = Generator(*load(model_dir)).generate([PROMPT], params)[0]
    assert [c["text"] for c in record["completions"]] == [c.text for c in expected]
    assert [c["token_ids"] for c in record["completions"]] == [c.token_ids for c in expected]
    assert record["params"]["seed"] == 5 and record["params"]["temperature"] == 0.8
    first = record["completions"][0]
    assert len(first["logprobs"]) == len(first["token_ids"]) and len(first["logprobs"][0]["top"]) == 2


def test_prompt_file_stop_and_truncate(model_dir, tmp_path, capsys):
    prompt_file = tmp_path / "prompt.py"
    prompt_file.write_text(PROMPT)
    base = ["--model", model_dir, "--prompt-file", str(prompt_file), "--seed", "1", "--temperature", "1.0",
            "--max-new-tokens", "40"]
    free = run_json(capsys, *base)["completions"][0]["text"]
    stop = free[len(free) // 2]
    stopped = run_json(capsys, *base, "--stop", stop.encode("unicode_escape").decode())["completions"][0]
    assert stopped["text"] == free[: free.index(stop)] and stopped["finish_reason"] == "stop"
    record = run_json(capsys, *base, "--truncate", "humaneval")
    assert record["params"]["truncate"] == "humaneval"


def test_int8_quantized_generation(model_dir, capsys):
    record = run_json(capsys, "--model", model_dir, "--prompt", PROMPT, "--quantize", "int8", "--n", "2",
                      "--max-new-tokens", "6", "--temperature", "0")
    completions = record["completions"]
    assert len(completions) == 2 and completions[0]["token_ids"] == completions[1]["token_ids"]  # greedy
    assert main(["generate", "--model", model_dir, "--prompt", "x", "--quantize", "int8", "--dtype", "bfloat16"]) == 2
    assert "quantize a float32 model" in capsys.readouterr().err


def test_plain_and_stream_output(model_dir, capsys):
    common = ["generate", "--model", model_dir, "--prompt", PROMPT, "--seed", "2", "--max-new-tokens", "10"]
    assert main(common) == 0
    plain = capsys.readouterr().out
    assert main([*common, "--stream"]) == 0
    assert capsys.readouterr().out == plain
    assert main([*common, "--n", "2"]) == 0
    assert capsys.readouterr().out.startswith("=== sample 1/2")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--prompt", ""], "prompt 0 is empty"),
        (["--prompt", "x", "--top-p", "0"], "top_p"),
        (["--prompt", "x", "--temperature", "-1"], "temperature"),
        (["--prompt", "x" * 3000], "more than the model's context of 512"),
        (["--prompt", "x", "--n", "2", "--stream"], "--stream prints a single completion"),
        (["--prompt-file", "/nonexistent/prompt.py"], "cannot read the prompt"),
    ],
)
def test_bad_input_is_one_line_error(model_dir, capsys, argv, message):
    assert main(["generate", "--model", model_dir, *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_unknown_truncate_preset_is_rejected_by_the_parser(model_dir, capsys):
    with pytest.raises(SystemExit):
        main(["generate", "--model", model_dir, "--prompt", "x", "--truncate", "mbpp"])
    assert "invalid choice: 'mbpp'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["generate", "--model", model_dir, "--prompt", "x", "--n", "0"])
    assert "argument --n: must be an integer >= 1, not '0'" in capsys.readouterr().err
