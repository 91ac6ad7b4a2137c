"""culture_layer_scan on tiny pipelines: shapes per encoder, agreement with a direct
computation from transformers' attention probabilities, order invariance, errors."""

import pytest
import torch


import circuits
import interp
from circuits.locate import ca as cam
PAIRS = [
    ("a Japanese-style box", "a box", "Japanese-style", "box", "ja"),
    ("a Chinese-style bowl", "a bowl", "Chinese-style", "bowl", "zh"),
    ("a Spanish hat", "a hat", "Spanish", "hat", "es"),
    ("a Thai-style hat", "a hat", "Thai-style", "hat", "th"),
    ("a German-style lamp", "a lamp", "German-style", "lamp", "de"),
]


@pytest.fixture(scope="module")
def sd():
    return interp.tiny("sd", text_layers=3)


@pytest.fixture(scope="module")
def alt():
    return interp.tiny("altdiffusion", text_layers=3)


def test_one_value_per_layer_every_encoder():
    for fam in ("sdxl", "sd3"):
        m = interp.tiny(fam)
        s = circuits.culture_layer_scan(m, PAIRS, direction="both", n_boot=100)
        assert set(s.encoders) == set(m.encoders)
        for name, e in s.encoders.items():
            n = m.encoders[name].n_layers
            assert len(e.delta) == len(e.ci_low) == len(e.excess) == n
            assert e.n_pairs == len(PAIRS) and 0 <= e.chosen < n
            assert all(lo <= d + 1e-12 and d <= hi + 1e-12 for d, lo, hi in zip(e.delta, e.ci_low, e.ci_high))


def test_default_direction_follows_causality(sd, alt):
    assert circuits.culture_layer_scan(sd, PAIRS, n_boot=50).encoders["text"].direction == "noun->modifier"
    assert circuits.culture_layer_scan(alt, PAIRS, n_boot=50).encoders["text"].direction == "modifier->noun"


def _direct_ca(model, text, q_sub, k_sub, exclude_q=None):
    """CA from transformers' own output_attentions (eager), spans from interp.methods.spans."""
    from interp.methods.spans import token_span

    te = model.encoders["text"]
    batch = model.tokenize([text])
    kw = {"attention_mask": batch["attention_mask"]} if te.uses_attention_mask else {}
    with torch.no_grad():
        att = te.module(batch["input_ids"], output_attentions=True, **kw).attentions
    k = token_span(te.tokenizer, text, k_sub)
    if q_sub is not None:
        q = token_span(te.tokenizer, text, q_sub)
    else:  # noun-only prompt: content tokens that are not noun tokens (decision 1)
        ids = batch["input_ids"][0]
        special = set(te.tokenizer.all_special_ids)
        q = [i for i in range(len(ids)) if int(ids[i]) not in special and i not in k
             and batch["attention_mask"][0, i] == 1]
    return torch.stack([a[0].mean(0)[q][:, k].mean() for a in att]).double()


def test_matches_direct_computation(alt):
    s = circuits.culture_layer_scan(alt, PAIRS[:2], direction="modifier->noun", n_boot=50).encoders["text"]
    expect = torch.stack([
        _direct_ca(alt, c, m, n) - _direct_ca(alt, p, None, n) for c, p, m, n, _ in sorted(PAIRS[:2])
    ]).mean(0)
    torch.testing.assert_close(torch.tensor(s.delta, dtype=torch.float64), expect, rtol=1e-5, atol=1e-7)


def test_order_invariant(sd):
    a = circuits.culture_layer_scan(sd, PAIRS, n_boot=200, seeds=(0, 1)).to_json()
    b = circuits.culture_layer_scan(sd, PAIRS[::-1], n_boot=200, seeds=(0, 1)).to_json()
    assert a == b


def test_errors(sd):
    with pytest.raises(circuits.DirectionMaskedError, match="fully masked"):
        circuits.culture_layer_scan(sd, PAIRS, direction="modifier->noun")
    with pytest.raises(interp.CultureLensError, match="direction must be one of"):
        circuits.culture_layer_scan(sd, PAIRS, direction="sideways")
    with pytest.raises(interp.CultureLensError, match="unknown encoder 'text_9'"):
        circuits.culture_layer_scan(sd, PAIRS, encoders=["text_9"])
    with pytest.raises(interp.CultureLensError, match="layer 7 outside"):
        circuits.culture_layer_scan(sd, PAIRS, layers=[7])
    with pytest.raises(interp.CultureLensError, match="no prompt pairs"):
        circuits.culture_layer_scan(sd, [])
    with pytest.raises(interp.CultureLensError, match="pair 1 .*modifier 'Dutch'"):
        circuits.culture_layer_scan(sd, [PAIRS[0], ("a box", "a box", "Dutch", "box")])
    long = ("a Japanese-style box " + "with a lid " * 12, "a box", "Japanese-style", "box", "ja")
    with pytest.raises(interp.PromptTooLongError, match="the scan needs whole prompts") as err:
        circuits.culture_layer_scan(sd, [long] + PAIRS, direction="both")
    assert "truncate=True" not in str(err.value)  # the scan takes no truncate=: it must not suggest it


def test_plot(sd, tmp_path):
    s = circuits.culture_layer_scan(sd, PAIRS, direction="both", n_boot=50)
    s.plot(tmp_path / "scan.png")
    assert (tmp_path / "scan.png").stat().st_size > 1000


def test_trimmed_padding_matches_full_length(sd, alt):
    from circuits.locate.acts import can_trim

    cfg = alt.encoders["text"].module.config
    old = getattr(cfg, "use_attention_mask", None)
    cfg.use_attention_mask = True  # as a pipeline that passes the mask to XLM-R
    try:
        assert can_trim(sd, "text") and can_trim(alt, "text")  # causal CLIP; masked XLM-R
        for m in (sd, alt):
            a = circuits.culture_layer_scan(m, PAIRS, direction="both", n_boot=50, trim=True).encoders["text"]
            b = circuits.culture_layer_scan(m, PAIRS, direction="both", n_boot=50, trim=False).encoders["text"]
            torch.testing.assert_close(torch.tensor(a.delta), torch.tensor(b.delta), rtol=1e-5, atol=1e-7)
        cfg.use_attention_mask = False  # unmasked bidirectional: padding is attended, never trimmed
        assert not can_trim(alt, "text")
    finally:
        cfg.use_attention_mask = old
