"""The decode core: rows that join a running batch, or share one prompt, compute what each row
computes alone; rows leave with the padding only they used; padding never holds garbage."""

import pytest
import torch

from generation_helpers import make_model_dir, one_thread  # noqa: F401 (fixture)
from opencodegen import load
from opencodegen.generation.running_batch import RunningBatch, prefill, worth_compacting

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    return load(str(make_model_dir(tmp_path_factory.mktemp("tiny"))))


def decode_alone(model, ids: list[int], tokens: list[int]) -> torch.Tensor:
    """Logits after each of `tokens`, fed one by one after the prompt `ids` (batch of one)."""
    cache = model.new_cache(1, len(ids) + len(tokens))
    model(torch.tensor([ids]), past_key_values=cache)
    out = [model(torch.tensor([[t]]), past_key_values=cache).logits[0, -1] for t in tokens]
    return torch.stack(out)


def joining(prefilled, repeats):
    return [(prefilled.cache, prefilled.mask, repeats)]


@torch.inference_mode()
def test_joining_rows_compute_what_they_compute_alone(loaded):
    model, tok = loaded
    a, b, c = tok.encode("def add(a, b):\n    return"), tok.encode("x"), tok.encode("import numpy as np\n")
    feed = {0: [5, 9, 11, 3], 1: [7, 7, 2, 8], 2: [1, 4, 6, 10]}
    batch = RunningBatch(model)
    batch.add(joining(prefill(model, [a], tok.pad_token_id, room=10), [1]), ["a"], room=10)
    batch.step(torch.tensor([feed[0][0]]))  # row a runs one step alone first
    both = prefill(model, [b, c], tok.pad_token_id)  # then b and c join (padded)
    batch.add(joining(both, [1, 1]), ["b", "c"], room=8)
    assert batch.cache.length == len(a) + 1 and batch.cache.max_len - batch.cache.length >= 8
    got = {0: [], 1: [], 2: []}
    for step in range(3):
        logits = batch.step(torch.tensor([feed[0][step + 1], feed[1][step], feed[2][step]]))
        for row in range(3):
            got[row].append(logits[row])
    expected = {0: decode_alone(model, a, feed[0])[1:], 1: decode_alone(model, b, feed[1][:3]),
                2: decode_alone(model, c, feed[2][:3])}
    for row in range(3):
        torch.testing.assert_close(torch.stack(got[row]), expected[row], atol=1e-4, rtol=1e-4)

    # a leaves: the columns only it used are cut, and b, c go on unchanged
    batch.keep([1, 2])
    assert batch.rows == ["b", "c"]
    assert batch.cache.length == max(len(b), len(c)) + 3 and bool(batch.mask[:, 0].any())
    logits = batch.step(torch.tensor([feed[1][3], feed[2][3]]))
    torch.testing.assert_close(logits[0], decode_alone(model, b, feed[1])[-1], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(logits[1], decode_alone(model, c, feed[2])[-1], atol=1e-4, rtol=1e-4)
    batch.keep([])
    assert len(batch) == 0 and batch.cache is None


@torch.inference_mode()
def test_joining_pads_with_zeros_not_garbage(loaded):
    model, tok = loaded
    short, long = tok.encode("x"), tok.encode("a much longer prompt here")
    parts = [prefill(model, [p], tok.pad_token_id) for p in (short, long)]
    for part in parts:  # poison the unused capacity: joining must never copy it
        for t in (*part.cache.keys, *part.cache.values):
            t[:, :, part.cache.length :] = float("nan")
    batch = RunningBatch(model)
    batch.add([(p.cache, p.mask, [2]) for p in parts], ["s0", "s1", "l0", "l1"], room=2)
    pad = len(long) - len(short)
    assert batch.mask.tolist()[1] == [False] * pad + [True] * len(short)
    assert all(bool(t[:, :, : batch.cache.length].isfinite().all()) for t in (*batch.cache.keys, *batch.cache.values))


@pytest.mark.parametrize("share_prefix", [False, True])
@torch.inference_mode()
def test_rows_continuing_one_prompt_compute_what_they_compute_alone(loaded, share_prefix):
    model, tok = loaded
    prompts = [tok.encode("class Point:\n"), tok.encode("for i in range(10):")]
    feed = [[3, 8, 1], [4, 4, 9], [6, 2, 7], [5, 1, 1], [2, 9, 3]]  # rows 0-2 continue prompt 0, 3-4 prompt 1
    batch = RunningBatch(model, share_prefix=share_prefix)
    parts = [prefill(model, [ids]) for ids in prompts]
    batch.add([(p.cache, p.mask, [n]) for p, n in zip(parts, (3, 2))], list(range(5)), room=4)
    owner = [0, 0, 0, 1, 1]
    got = [batch.step(torch.tensor([f[0] for f in feed]))]
    batch.keep([1, 2, 4])  # one row of each prompt leaves (prompt 0's row 0, prompt 1's row 3)
    got.append(batch.step(torch.tensor([feed[r][1] for r in (1, 2, 4)])))
    for step, rows in ((0, range(5)), (1, (1, 2, 4))):
        for i, r in enumerate(rows):
            alone = decode_alone(model, prompts[owner[r]], feed[r][: step + 1])[-1]
            torch.testing.assert_close(got[step][i], alone, atol=1e-4, rtol=1e-4)
    late = joining(prefill(model, [prompts[0]]), [1])
    batch.add(late, ["late"], room=2)
    assert batch.rows == [1, 2, 4, "late"] and batch.mask.shape == (4, batch.cache.length)
    assert batch.shared == share_prefix


class Rows:
    """Drives a batch: each row feeds its own token sequence; every step's logits are checked against
    the row decoded alone after its prompt."""

    def __init__(self, model, batch):
        self.model, self.batch, self.fed = model, batch, []

    def join(self, prompts, repeats, room=12):
        parts = [prefill(self.model, [ids]) for ids in prompts]
        rows = [(ids, [(7 * len(self.fed) + 3 * i + 1) % 50 + 2 for i in range(12)], [])
                for ids, n in zip(prompts, repeats) for _ in range(n)]
        self.batch.add([(p.cache, p.mask, [n]) for p, n in zip(parts, repeats)], rows, room)
        self.fed += rows

    def step(self):
        tokens = torch.tensor([feed[len(done)] for _, feed, done in self.batch.rows])
        logits = self.batch.step(tokens)
        for (ids, feed, done), got in zip(self.batch.rows, logits):
            done.append(int(feed[len(done)]))
            torch.testing.assert_close(got, decode_alone(self.model, ids, done)[-1], atol=1e-4, rtol=1e-4)

    def leave(self, *positions):
        self.batch.keep([i for i in range(len(self.batch)) if i not in positions])


@torch.inference_mode()
def test_rows_join_and_leave_a_shared_prefix_batch(loaded):
    model, tok = loaded
    short, long, other = tok.encode("x"), tok.encode("import numpy as np\n\nx = np.arange(10)\n"), tok.encode("def f")
    rows = Rows(model, RunningBatch(model, share_prefix=True))
    rows.join([short], [1])  # one row per prompt: nothing to share yet
    assert not rows.batch.shared
    rows.step()
    rows.join([other], [3])  # three rows of one prompt: the running row keeps its cache as its own prompt
    assert rows.batch.shared and rows.batch.cache.offset == max(len(short) + 1, len(other))
    rows.step()
    rows.step()
    rows.join([long, short], [2, 1])  # a longer prompt: every kept prompt is padded on the left
    assert rows.batch.cache.offset == len(long) and len(rows.batch) == 7
    for _ in range(2):
        rows.step()
    rows.leave(0, 2)  # the first running row and one row of `other` leave: their own columns stay as long as used
    rows.step()
    rows.leave(0, 1)  # `other` is continued by no row any more
    length = rows.batch.cache.length - rows.batch.cache.offset
    assert length == 3 and bool(rows.batch.mask[:, rows.batch.cache.offset].any())  # unused own columns were cut
    rows.join([other], [2])
    assert sorted(set(rows.batch.cache._row_groups)) == [0, 1, 2] and rows.batch.cache.prefix_keys[0].shape[0] == 3
    for _ in range(3):
        rows.step()
    for t in (*rows.batch.cache.keys, *rows.batch.cache.values):
        assert bool(t[:, :, : rows.batch.cache.length - rows.batch.cache.offset].isfinite().all())
    rows.leave(*range(len(rows.batch)))
    assert len(rows.batch) == 0 and rows.batch.cache is None


def test_bad_joins_are_refused(loaded):
    model, tok = loaded
    with torch.inference_mode(), pytest.raises(ValueError, match="one caller object per joining row"):
        RunningBatch(model).add(joining(prefill(model, [tok.encode("x")]), [2]), ["only one"], room=2)


def test_rows_leave_when_their_remaining_steps_outweigh_moving_the_others():
    assert not worth_compacting(0, 8, 100)
    assert worth_compacting(1, 8, 7) and not worth_compacting(1, 8, 6)
    assert not worth_compacting(4, 8, 0) and worth_compacting(4, 8, 1)
