"""`progress=False` silences every bar a long call draws, however deep; a layer scan on too few
pairs calls no layer sensitive and says why."""

import warnings

import pytest

import circuits
import interp
from circuits.runner import scan_markdown
from interp.progress import bar, shown, switch


def test_switch_silences_nested_bars(capsys):
    @switch
    def outer(progress: bool = True):
        return [x for x in bar(range(3), desc="inner-bar")]

    assert outer(progress=False) == [0, 1, 2]
    assert "inner-bar" not in capsys.readouterr().err
    outer()
    assert "inner-bar" in capsys.readouterr().err
    with shown(False):
        outer(progress=True)  # an enclosing switch wins
    assert "inner-bar" not in capsys.readouterr().err
    with pytest.raises(TypeError, match="needs a `progress` parameter"):
        switch(lambda x: x)


def test_scan_progress_and_min_pairs(tiny_sd, capsys):
    pairs = [(f"a {c}-style {n}", f"a {n}", f"{c}-style", n, c[:2].lower())
             for c in ("Japanese", "Chinese", "Thai", "German") for n in ("box", "hat")]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scan = circuits.culture_layer_scan(tiny_sd, pairs, n_boot=50, progress=False, margin=-1e9)
    assert capsys.readouterr().err == ""
    e = scan.encoders["text"]
    # margin -1e9: every layer's CI clears it, yet 8 pairs are too few to call any layer sensitive
    assert e.sensitive == [] and not e.chosen_is_sensitive and e.min_pairs == 20
    assert any("fewer than min_pairs=20" in str(w.message) for w in caught)
    assert "too few usable pairs to call a layer sensitive: 8 < min_pairs 20" in scan_markdown(scan)
    loose = circuits.culture_layer_scan(tiny_sd, pairs, n_boot=50, progress=False, margin=-1e9, min_pairs=1)
    assert loose.encoders["text"].sensitive == loose.encoders["text"].layers
