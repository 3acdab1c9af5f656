import json

import torch

from opencodegen import load
from opencodegen.cli import main
from opencodegen.commands.init import default_corpus
from opencodegen.tokenizer import train_tokenizer


def test_init_then_info_then_load(tmp_path, capsys):
    corpus = tmp_path / "corpus.py"
    corpus.write_text("def add(a, b):\n    return a + b\n\n\nprint(add(1, 2))\n" * 50)
    out = tmp_path / "model"
    assert main(["init", "--preset", "tiny", "--out", str(out), "--seed", "3", "--train-tokenizer-on", str(corpus)]) == 0
    assert main(["info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert info["dtype"] == "float32" and info["whitespace_tokens"] == 38
    model, tok = load(str(out))
    assert info["parameters"] == sum(p.numel() for p in model.parameters())
    assert model.config.eos_token_id == tok.eos_token_id and len(tok) <= model.config.vocab_size
    ids = torch.tensor([tok.encode("def add(a, b):\n    return a + b\n")])
    assert model(ids).logits.shape == (1, ids.shape[1], model.config.vocab_size)
    # same seed, same weights
    again = tmp_path / "again"
    main(["init", "--preset", "tiny", "--out", str(again), "--seed", "3", "--tokenizer", str(out)])
    assert torch.equal(load(str(again))[0](ids).logits, model(ids).logits)


def test_init_rejects_oversized_tokenizer(tmp_path, capsys):
    files = default_corpus()[:20]
    big = train_tokenizer(files, vocab_size=1500)
    assert len(big) > 1024
    big.save_pretrained(tmp_path / "big")
    assert main(["init", "--preset", "tiny", "--out", str(tmp_path / "m"), "--tokenizer", str(tmp_path / "big")]) == 2
    assert "tokenizer has" in capsys.readouterr().err
    assert not (tmp_path / "m" / "model.safetensors").exists()
