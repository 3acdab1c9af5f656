"""`opencodegen eval loss`: windowed model loss and the unigram / uniform baselines, against direct computations."""

import json
import math
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch

from opencodegen.cli import main
from opencodegen.config import CodeGenConfig
from opencodegen.errors import DataError
from opencodegen.evaluation import loss
from opencodegen.model import CodeGenForCausalLM
from opencodegen.tokenizer import train_tokenizer

STDLIB = Path(sysconfig.get_paths()["stdlib"])
FILES = [STDLIB / "bisect.py", STDLIB / "colorsys.py"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny random model with a context of 64 tokens, its tokenizer, and training counts."""
    out = tmp_path_factory.mktemp("model")
    tokenizer = train_tokenizer(FILES, vocab_size=400)
    config = CodeGenConfig.from_preset("tiny")
    config.n_positions = config.n_ctx = 64
    config.eos_token_id = config.bos_token_id = tokenizer.eos_token_id
    torch.manual_seed(0)
    CodeGenForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    np.save(out / "train-token-counts.npy", np.arange(len(tokenizer), dtype=np.int64))
    return out


def test_loss_matches_a_direct_forward_over_the_windows(model_dir):
    import opencodegen

    model, tokenizer = opencodegen.load(str(model_dir))
    texts = [f.read_text() for f in FILES]
    stream = loss.token_stream(texts, tokenizer)
    assert stream[len(tokenizer.encode(texts[0]))] == tokenizer.eos_token_id and stream[-1] == tokenizer.eos_token_id
    nats, predicted = loss.model_loss(model, stream, batch_size=3, progress=False)
    assert predicted == len(stream) - 1  # every token after the first, once
    expected = 0.0
    with torch.no_grad():
        for start in range(0, len(stream) - 1, 64):  # one window at a time, no padding
            ids = torch.from_numpy(stream[start : start + 65])[None]
            logits = model(ids[:, :-1]).logits
            expected += torch.nn.functional.cross_entropy(logits[0], ids[0, 1:], reduction="sum").item()
    assert nats == pytest.approx(expected, rel=1e-5)


def test_unigram_baseline_is_add_one_smoothed_counts():
    counts = np.array([3, 0, 1])
    log_p = loss.unigram_log_probs(counts, vocab=4)
    assert np.allclose(np.exp(log_p), [4 / 8, 1 / 8, 2 / 8, 1 / 8]) and math.isclose(np.exp(log_p).sum(), 1.0)
    with pytest.raises(DataError, match="non-negative"):
        loss.unigram_log_probs(np.array([1, -1]), vocab=4)
    with pytest.raises(DataError, match="at most 4"):
        loss.unigram_log_probs(np.ones(5), vocab=4)


def test_cli_reports_model_unigram_and_uniform(model_dir, tmp_path, capsys):
    out = tmp_path / "loss.json"
    assert main(["eval", "loss", "--model", str(model_dir), "--input", *map(str, FILES), "--json-out", str(out),
                 "--quiet"]) == 0
    summary = json.loads(out.read_text())
    texts = [f.read_text() for f in FILES]
    assert summary["documents"] == 2 and summary["bytes"] == sum(len(t.encode()) for t in texts)
    assert summary["uniform_loss"] == pytest.approx(math.log(1024))
    # the unigram baseline of the counts saved beside the model, on the predicted tokens
    import opencodegen

    _, tokenizer = opencodegen.load(str(model_dir))
    stream = loss.token_stream(texts, tokenizer)
    log_p = np.log(np.concatenate([np.arange(len(tokenizer)), np.zeros(1024 - len(tokenizer))]) + 1)
    log_p -= np.log(np.arange(len(tokenizer)).sum() + 1024)
    assert summary["unigram_loss"] == pytest.approx(-log_p[stream[1:]].mean(), rel=1e-9)
    assert summary["bits_per_byte"] == pytest.approx(summary["loss"] * (len(stream) - 1) / math.log(2) / summary["bytes"])
    printed = capsys.readouterr().out
    assert "unigram  loss" in printed and "uniform  loss" in printed


def test_json_prints_the_summary_and_the_old_json_file_spelling_still_writes_it(model_dir, tmp_path, capsys):
    argv = ["eval", "loss", "--model", str(model_dir), "--input", *map(str, FILES), "--quiet"]
    assert main([*argv, "--json-out", str(tmp_path / "new.json")]) == 0
    capsys.readouterr()
    assert main([*argv, "--json"]) == 0  # --json: the summary on stdout, as every command's --json
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((tmp_path / "new.json").read_text())
    assert main([*argv, "--json", str(tmp_path / "old.json")]) == 0  # the spelling before --json-out
    captured = capsys.readouterr()
    assert "--json-out" in captured.err and "unigram  loss" in captured.out
    assert json.loads((tmp_path / "old.json").read_text()) == printed


def test_bad_inputs_are_one_clear_error(model_dir, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["eval", "loss", "--model", str(model_dir), "--input", str(tmp_path / "empty"), "--quiet"]) == 2
    assert "no readable text" in capsys.readouterr().err
    (tmp_path / "counts.npy").write_bytes(b"not numpy")
    assert main(["eval", "loss", "--model", str(model_dir), "--input", str(FILES[0]), "--unigram",
                 str(tmp_path / "counts.npy"), "--quiet"]) == 2
    assert "not a token-count file" in capsys.readouterr().err
