"""Logit equivalence with transformers' CodeGenForCausalLM / GPTJForCausalLM (test-only reference)."""

import pytest
import torch

from opencodegen.checkpoint import load_model
from opencodegen.checkpoint.gptj import export_gptj
from opencodegen.checkpoint.hf import qkv_from_released, qkv_to_released
from opencodegen.config import CodeGenConfig
from opencodegen.model import CodeGenForCausalLM

transformers = pytest.importorskip("transformers")

# (n_embd, n_head, rotary_dim): 350M-like head_dim 64 / rotary 32, 2B-like 80 / 64, 6B-like 256 / 64.
SHAPES = {"350M-like": (256, 4, 32), "2B-like": (320, 4, 64), "6B-like": (512, 2, 64)}
VOCAB, LAYERS, CTX = 1000, 2, 128
TOL = 1e-4


def hf_config(n_embd, n_head, rotary_dim):
    return transformers.CodeGenConfig(
        vocab_size=VOCAB, n_positions=CTX, n_ctx=CTX, n_embd=n_embd, n_layer=LAYERS, n_head=n_head,
        rotary_dim=rotary_dim, bos_token_id=1, eos_token_id=999, tie_word_embeddings=False,
    )


def randomize(module, seed):
    """Give every parameter (biases and LayerNorms too) a distinct random value."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            is_norm_scale = "ln_" in name and name.endswith("weight")
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05 + float(is_norm_scale))
    return module


def left_padded_batch(seed):
    gen = torch.Generator().manual_seed(seed)
    lengths = [12, 7, 3]
    T = max(lengths)
    ids = torch.full((len(lengths), T), 999)
    mask = torch.zeros(len(lengths), T, dtype=torch.long)
    for row, n in enumerate(lengths):
        ids[row, T - n :] = torch.randint(0, VOCAB - 1, (n,), generator=gen)
        mask[row, T - n :] = 1
    return ids, mask


def hf_positions(mask):
    return (mask.cumsum(-1) - 1).clamp(min=0)


def assert_close_on_real_tokens(ours, ref, mask):
    diff = (ours - ref).abs().amax(-1)[mask.bool()]
    assert diff.max().item() <= TOL, diff.max().item()


@pytest.fixture(scope="module", params=list(SHAPES))
def hf_checkpoint(request, tmp_path_factory):
    torch.manual_seed(0)
    ref = randomize(transformers.CodeGenForCausalLM(hf_config(*SHAPES[request.param])), seed=1).eval()
    path = tmp_path_factory.mktemp(request.param)
    ref.save_pretrained(path)
    return ref, path


def test_transformers_saved_loaded_by_us(hf_checkpoint):
    ref, path = hf_checkpoint
    _, ours = load_model(path)
    ids, mask = left_padded_batch(2)
    with torch.no_grad():
        expected = ref(input_ids=ids, attention_mask=mask, position_ids=hf_positions(mask)).logits
        got = ours(ids, attention_mask=mask).logits
        assert_close_on_real_tokens(got, expected, mask)
        full = torch.randint(0, VOCAB, (2, 20))
        assert (ours(full).logits - ref(input_ids=full).logits).abs().max().item() <= TOL


def test_kv_cache_matches_full_forward(hf_checkpoint):
    _, path = hf_checkpoint
    _, model = load_model(path)
    ids, mask = left_padded_batch(3)
    extra = torch.randint(0, VOCAB - 1, (ids.shape[0], 5), generator=torch.Generator().manual_seed(4))
    full_ids = torch.cat([ids, extra], 1)
    full_mask = torch.cat([mask, torch.ones_like(extra)], 1)
    with torch.no_grad():
        full = model(full_ids, attention_mask=full_mask).logits
        cache = model.new_cache(ids.shape[0], full_ids.shape[1])
        steps = [model(ids, attention_mask=mask, past_key_values=cache).logits]
        for t in range(extra.shape[1]):
            seen = full_mask[:, : ids.shape[1] + t + 1]
            steps.append(model(extra[:, t : t + 1], attention_mask=seen, past_key_values=cache).logits)
    assert cache.length == full_ids.shape[1]
    assert_close_on_real_tokens(torch.cat(steps, 1), full, full_mask)


@pytest.mark.parametrize("shape", list(SHAPES))
def test_saved_by_us_loaded_by_transformers(shape, tmp_path):
    n_embd, n_head, rotary = SHAPES[shape]
    config = CodeGenConfig(vocab_size=VOCAB, n_positions=CTX, n_ctx=CTX, n_embd=n_embd, n_layer=LAYERS,
                           n_head=n_head, rotary_dim=rotary, eos_token_id=999)
    ours = randomize(CodeGenForCausalLM(config), seed=5).eval()
    ours.save_pretrained(tmp_path)
    ref = transformers.CodeGenForCausalLM.from_pretrained(tmp_path).eval()
    ids, mask = left_padded_batch(6)
    with torch.no_grad():
        expected = ref(input_ids=ids, attention_mask=mask, position_ids=hf_positions(mask)).logits
        assert_close_on_real_tokens(ours(ids, attention_mask=mask).logits, expected, mask)
        # and back again: our own round trip is exact
        _, again = load_model(tmp_path)
        assert torch.equal(again(ids, attention_mask=mask).logits, ours(ids, attention_mask=mask).logits)


def test_gptj_export_matches(tmp_path):
    n_embd, n_head, rotary = SHAPES["2B-like"]
    config = CodeGenConfig(vocab_size=VOCAB, n_positions=CTX, n_ctx=CTX, n_embd=n_embd, n_layer=LAYERS,
                           n_head=n_head, rotary_dim=rotary, eos_token_id=999)
    ours = randomize(CodeGenForCausalLM(config), seed=7).eval()
    export_gptj(ours, tmp_path)
    ref = transformers.GPTJForCausalLM.from_pretrained(tmp_path).eval()
    ids, mask = left_padded_batch(8)
    with torch.no_grad():
        expected = ref(input_ids=ids, attention_mask=mask, position_ids=hf_positions(mask)).logits
        assert_close_on_real_tokens(ours(ids, attention_mask=mask).logits, expected, mask)


def test_qkv_layout_is_the_released_one():
    d = 8
    plain = torch.arange(3 * d * d, dtype=torch.float32).reshape(3 * d, d)
    released = qkv_to_released(plain)
    chunks = released.split(d // 4)  # 12 chunks of d/4 rows
    q, k, v = plain.split(d)
    assert torch.equal(torch.cat([chunks[i] for i in (0, 3, 6, 9)]), q)
    assert torch.equal(torch.cat([chunks[i] for i in (1, 4, 7, 10)]), v)
    assert torch.equal(torch.cat([chunks[i] for i in (2, 5, 8, 11)]), k)
    assert torch.equal(qkv_from_released(released), plain)
