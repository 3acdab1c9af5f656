"""The engine against transformers' generate (test-only reference) on the same random weights."""

import pytest
import torch

from generation_helpers import one_thread  # noqa: F401 (fixture)
from opencodegen.checkpoint import load_model
from opencodegen.generation import Generator, SamplingParams

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB, CTX, EOS = 512, 128, 511
NEW = 24


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    config = transformers.CodeGenConfig(
        vocab_size=VOCAB, n_positions=CTX, n_ctx=CTX, n_embd=64, n_layer=2, n_head=4, rotary_dim=8,
        bos_token_id=1, eos_token_id=EOS, tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    ref = transformers.CodeGenForCausalLM(config).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # distinct values everywhere (biases and norms too), peaky enough logits
        for name, p in ref.named_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3 + float("ln_" in name and name.endswith("weight")))
    path = tmp_path_factory.mktemp("ref")
    ref.save_pretrained(path)
    return ref, load_model(path)[1]


def prompts(seed, lengths):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, EOS, (n,), generator=gen).tolist() for n in lengths]


def hf_greedy(ref, batch):
    """transformers' greedy generate on a left-padded batch; rows cut at the first EOS."""
    width = max(map(len, batch))
    ids = torch.full((len(batch), width), EOS)
    mask = torch.zeros(len(batch), width, dtype=torch.long)
    for row, p in enumerate(batch):
        ids[row, width - len(p):] = torch.tensor(p)
        mask[row, width - len(p):] = 1
    config = transformers.GenerationConfig(
        do_sample=False, num_beams=1, max_new_tokens=NEW, eos_token_id=EOS, pad_token_id=EOS,
        top_k=None, top_p=None, temperature=None, repetition_penalty=None,
    )
    with torch.no_grad():
        out = ref.generate(input_ids=ids, attention_mask=mask, generation_config=config)[:, width:].tolist()
    return [row[: row.index(EOS)] if EOS in row else row for row in out]


def test_greedy_matches_transformers_single_prompts(models):
    ref, ours = models
    gen = Generator(ours)
    params = SamplingParams(temperature=0, max_new_tokens=NEW)
    for prompt in prompts(2, [1, 5, 17, 40]):
        [[completion]] = gen.generate_ids([prompt], params)
        assert completion.token_ids == hf_greedy(ref, [prompt])[0]


def test_greedy_matches_transformers_left_padded_batch(models):
    ref, ours = models
    batch = prompts(3, [9, 3, 30, 14, 30])
    expected = hf_greedy(ref, batch)
    results = Generator(ours).generate_ids(batch, SamplingParams(temperature=0, max_new_tokens=NEW))
    got = [c.token_ids for [c] in results]
    assert got == expected
    # and the batch gives what each prompt gives alone
    assert got == [hf_greedy(ref, [p])[0] for p in batch]
    for [c] in results:
        assert c.finish_reason == ("length" if len(c.token_ids) == NEW else "stop")


def test_eos_ends_a_sequence_like_transformers(models):
    """Make EOS the greedy choice after a few steps: the sequence stops there, as in transformers."""
    ref, ours = models
    prompt = prompts(4, [6])[0]
    free = Generator(ours).generate_ids([prompt], SamplingParams(temperature=0, max_new_tokens=NEW))[0][0]
    eos = free.token_ids[3]  # declare the 4th generated token to be EOS
    ours.config.eos_token_id = eos
    try:
        [[c]] = Generator(ours).generate_ids([prompt], SamplingParams(temperature=0, max_new_tokens=NEW))
    finally:
        ours.config.eos_token_id = EOS
    assert c.token_ids == free.token_ids[: free.token_ids.index(eos)] and c.finish_reason == "stop"
