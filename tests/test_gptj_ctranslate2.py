"""The GPT-J export loads in CTranslate2: its vocabulary is padded to the embedding rows, and
CTranslate2 scores a prompt as our engine does."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from opencodegen import default_model
from opencodegen.checkpoint.gptj import UNUSED_ROW_BIAS
from opencodegen.cli import main
from opencodegen.config import CodeGenConfig
from opencodegen.generation.engine import Generator
from opencodegen.model import CodeGenForCausalLM
from opencodegen.tokenizer import CodeGenTokenizer
from opencodegen.training.checkpointing import copy_tokenizer_files
from test_model_reference import randomize

ctranslate2 = pytest.importorskip("ctranslate2")
transformers = pytest.importorskip("transformers")

PROMPT = "def fibonacci(n):\n    # return the n-th number\n    if n < 2:\n        return n\n"
EXTRA_ROWS = 40  # embedding rows that no token names, as CodeGen's 51200 rows for 50295 tokens


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A small random CodeGen with more embedding rows than tokenizer ids, and its tokenizer."""
    tokenizer = CodeGenTokenizer.from_pretrained(default_model.DIRECTORY)
    config = CodeGenConfig(
        vocab_size=len(tokenizer) + EXTRA_ROWS, n_positions=128, n_ctx=128, n_embd=64, n_layer=2, n_head=4,
        rotary_dim=8, bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    model = randomize(CodeGenForCausalLM(config), seed=11).eval()
    directory = tmp_path_factory.mktemp("codegen")
    model.save_pretrained(directory)
    copy_tokenizer_files(default_model.DIRECTORY, directory)
    return directory, model, tokenizer


def convert(gptj_dir, out_dir):
    ctranslate2.converters.TransformersConverter(str(gptj_dir)).convert(str(out_dir), force=True)
    return ctranslate2.Generator(str(out_dir), device="cpu", compute_type="float32")


def test_unpadded_vocabulary_is_what_ctranslate2_refuses(source, tmp_path):
    """The failure the padding fixes: a tokenizer smaller than the embedding is refused."""
    directory, model, _ = source
    from opencodegen.checkpoint.gptj import export_gptj

    export_gptj(model, tmp_path / "gptj")
    copy_tokenizer_files(directory, tmp_path / "gptj")
    with pytest.raises(ValueError, match="[Vv]ocabulary has size .* expected a vocabulary of size"):
        convert(tmp_path / "gptj", tmp_path / "ct2")


def test_ctranslate2_scores_the_export_as_our_engine(source, tmp_path):
    directory, model, tokenizer = source
    assert main(["convert", "gptj", str(directory), "--out", str(tmp_path / "gptj")]) == 0
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "gptj")
    assert len(hf_tokenizer) == model.config.vocab_size
    generator = convert(tmp_path / "gptj", tmp_path / "ct2")

    ids = tokenizer.encode(PROMPT)
    assert hf_tokenizer.encode(PROMPT) == ids  # the placeholders change no tokenization
    tokens = hf_tokenizer.convert_ids_to_tokens(ids)
    scored = generator.score_batch([tokens])[0]
    assert scored.tokens == tokens[1:]

    vocab_limit = Generator(model, tokenizer).vocab_limit
    assert vocab_limit == len(tokenizer) < model.config.vocab_size
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double()
    ours = torch.log_softmax(logits[:, :vocab_limit], -1)[:-1].gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
    np.testing.assert_allclose(np.array(scored.log_probs), ours.numpy(), rtol=0, atol=1e-4)

    # the placeholder rows are never produced: their log-probability is UNUSED_ROW_BIAS-small
    log_probs = np.array(generator.forward_batch([tokens], return_log_probs=True))[0]
    assert (log_probs[:, len(tokenizer) :] < UNUSED_ROW_BIAS / 2).all()
    np.testing.assert_allclose(log_probs[:-1, :vocab_limit], torch.log_softmax(logits[:-1, :vocab_limit], -1).numpy(),
                               rtol=0, atol=1e-4)
