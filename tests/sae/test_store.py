"""Activation store: shards, shuffle, re-reading, fingerprints, bounded memory."""

import shutil

import pytest
import torch

import interp

from sae import ActivationStore, SAEError
from sae.store import module_fingerprint, token_keep_mask


def _rows(n=1000, d=3):
    return torch.arange(n * d, dtype=torch.float32).reshape(n, d)


def test_shards_shuffle_and_positions(tmp_path):
    data = _rows()
    st = ActivationStore.from_batches(tmp_path, (data[i:i + 70] for i in range(0, 1000, 70)),
                                      {"site": "s"}, shard_tokens=128, progress=False)
    assert len(st.shards) == 8 and st.n_tokens == 1000
    assert all(s.n <= 128 for s in st.shards)
    torch.testing.assert_close(st.all(), data)
    it = st.batches(64, seed=1)
    got = [next(it) for _ in range(32)]
    first_epoch = torch.cat(got)[:960, 0]
    assert len(set(first_epoch.tolist())) == 960  # no repeats inside an epoch
    assert not torch.equal(first_epoch[:64], data[:64, 0])  # shuffled
    # a read started at any token position continues the same stream
    it2 = st.batches(64, seed=1, start=64 * 20)
    assert torch.equal(next(it2), got[20]) and torch.equal(next(it2), got[21])
    # another seed, another order; the same seed, the same order
    assert not torch.equal(next(st.batches(64, seed=2)), got[0])
    assert torch.equal(next(ActivationStore(tmp_path).batches(64, seed=1)), got[0])


def test_fingerprints_never_mixed(tmp_path):
    fp = {"site": "text.blocks.1.hook_resid_post", "model": "abc", "prompts": "p1"}
    ActivationStore.from_batches(tmp_path, [_rows(10)], fp, progress=False)
    # same origin: re-used without recomputation (the generator is never consumed)
    def boom():
        raise AssertionError("recomputed")
        yield
    assert ActivationStore.from_batches(tmp_path, boom(), fp, progress=False).n_tokens == 10
    with pytest.raises(SAEError, match="prompts: store has 'p1', expected 'p2'"):
        ActivationStore.from_batches(tmp_path, boom(), {**fp, "prompts": "p2"}, progress=False)
    with pytest.raises(SAEError, match="model"):
        ActivationStore(tmp_path, expect={"model": "zzz"})


def test_bad_input_named(tmp_path):
    with pytest.raises(SAEError, match="batch 1 has shape"):
        ActivationStore.from_batches(tmp_path / "a", [_rows(4, 3), _rows(4, 5)], {}, progress=False)
    with pytest.raises(SAEError, match="no manifest"):
        ActivationStore(tmp_path / "nothing")


def test_keep_mask():
    ids = torch.tensor([[49406, 320, 1929, 49407, 49407, 49407]])
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]])
    special = [49406, 49407]
    assert token_keep_mask(ids, mask, special, "special").tolist() == [[False, True, True, False, False, False]]
    assert token_keep_mask(ids, mask, special, "padding").tolist() == [[True, True, True, True, False, False]]
    assert token_keep_mask(ids, mask, special, "none").all()
    with pytest.raises(SAEError, match="drop="):
        token_keep_mask(ids, mask, special, "bogus")


def test_writer_memory_bounded(tmp_path):
    """The writer buffers at most one shard + one incoming batch, whatever the total."""
    d, shard, batch = 16, 2048, 500

    def gen(n_batches):
        g = torch.Generator().manual_seed(0)
        for _ in range(n_batches):
            yield torch.randn(batch, d, generator=g)

    for n in (9, 90):
        st = ActivationStore.from_batches(tmp_path / str(n), gen(n), {}, shard_tokens=shard,
                                          progress=False)
        assert st.n_tokens == n * batch and max(s.n for s in st.shards) == shard
        assert st.manifest["max_buffered_tokens"] < shard + batch


def test_reading_does_not_depend_on_file_layout(tmp_path):
    """The shuffle works on chunks of the global row order: a store whose rows sit in other
    files (as several ranks write them) yields the same batches as the one-process store."""
    import json

    from safetensors.torch import save_file

    data = _rows(1000)
    ref = ActivationStore.from_batches(tmp_path / "ref", [data], {"site": "s"}, shard_tokens=128, progress=False)
    odd = tmp_path / "odd"
    odd.mkdir()
    cuts = [0, 100, 128, 500, 501, 1000]  # files straddle the 128-row chunks
    shards = []
    for i, (a, b) in enumerate(zip(cuts, cuts[1:])):
        save_file({"acts": data[a:b].contiguous()}, str(odd / f"f{i}.safetensors"))
        shards.append({"file": f"f{i}.safetensors", "n": b - a})
    (odd / "manifest.json").write_text(json.dumps({"d": 3, "dtype": "float32", "shards": shards, "chunk": 128,
                                                   "fingerprints": {"site": "s"}, "meta": {}}))
    st = ActivationStore(odd)
    assert st.n_chunks == ref.n_chunks == 8
    torch.testing.assert_close(st.all(), ref.all())
    for start in (0, 64 * 13, 5000):
        a, b = ref.batches(64, seed=3, start=start), st.batches(64, seed=3, start=start)
        for _ in range(20):
            assert torch.equal(next(a), next(b))


def test_parts_of_another_run_are_refused(tmp_path):
    """A part file left by an interrupted run with other fingerprints is never mixed in."""
    import json

    (tmp_path / "part-000-of-001.json").write_text(json.dumps(
        {"run": {"fingerprints": {"prompts": "old"}, "world_size": 1, "shard_tokens": 128, "dtype": "float32"},
         "rank": 0, "d": 3, "shards": [], "peak": 0}))
    with pytest.raises(SAEError, match=r"part-000-of-001.json: part of an interrupted store built with other "
                                       r"settings \(fingerprints differ"):
        ActivationStore.from_batches(tmp_path, [_rows(10)], {"prompts": "new"}, shard_tokens=128, progress=False)
    # the same run's part is reused when its files are intact
    (tmp_path / "part-000-of-001.json").unlink()
    st = ActivationStore.from_batches(tmp_path / "b", [_rows(10)], {"prompts": "p"}, progress=False)
    assert st.manifest["world_size"] == 1 and not list((tmp_path / "b").glob("part-*"))


def test_evaluate_on_a_store_equals_evaluate_on_its_rows(tmp_path):
    """`sae.evaluate(s, store)` streams the store shard by shard and gives the numbers of
    `evaluate(s, store.all())`; a wrong width is a clear error."""
    import sae
    from sae.errors import SAEError

    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(70, 12, generator=g) for _ in range(3)]
    store = sae.ActivationStore.from_batches(tmp_path / "s", batches, {"data": "randn"}, shard_tokens=64,
                                             progress=False)
    assert len(store.shards) > 1
    s = sae.TopKSAE(12, d_sae=32, k=4, seed=0)
    a, b = sae.evaluate(s, store), sae.evaluate(s, store.all())
    assert a["n_tokens"] == b["n_tokens"] == 210 and a["l0"] == b["l0"] and a["dead_fraction"] == b["dead_fraction"]
    assert abs(a["fvu"] - b["fvu"]) < 1e-5
    with pytest.raises(SAEError, match="d = 12, the SAE d_in = 8"):
        sae.evaluate(sae.TopKSAE(8, d_sae=16, k=2), store)
    with pytest.raises(SAEError, match="not list"):
        sae.evaluate(s, [1, 2])


def test_model_fingerprint_ignores_where_the_folder_is(tmp_path, tiny_sd):
    """The same weights saved to two folders are one origin (a fresh clone elsewhere resumes its
    stores); another weight is another origin."""
    tiny_sd.save_pretrained(tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    a, b = interp.load(tmp_path / "a"), interp.load(tmp_path / "b")
    assert module_fingerprint(a.encoders["text"].module) == module_fingerprint(b.encoders["text"].module)
    with torch.no_grad():
        next(b.encoders["text"].module.parameters()).view(-1)[0] += 1.0
    assert module_fingerprint(a.encoders["text"].module) != module_fingerprint(b.encoders["text"].module)
