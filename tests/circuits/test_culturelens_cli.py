"""Every circuits sub-command runs end to end on a tiny pipeline and writes its folder."""

import json

import numpy as np
import pytest
import torch


from circuits.cli import run as cli_run  # noqa: E402  (raises; `main` turns errors into exit codes)

NAMES = {"ja": "Japanese", "de": "German"}
NOUNS = [("box", "probe"), ("bowl", "test"), ("hat", "train"), ("lamp", "probe"), ("vase", "test")]

JUDGE = '''
import numpy as np, torch
class Judge:
    @classmethod
    def load(cls, arg):
        assert arg == "some/path"
        return make()
def make():
    proj = torch.randn(3, 16, generator=torch.Generator().manual_seed(0))
    def judge(images):
        x = torch.stack([torch.from_numpy(np.asarray(im, dtype=np.float32).mean((0, 1)) / 255.0) for im in images])
        return torch.softmax((x - 0.5) @ proj * 50, -1)
    return judge
'''


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("bench")
    (root / "img").mkdir()
    g = np.random.default_rng(0)
    rows = []
    for c, name in NAMES.items():
        for noun, split in NOUNS:
            img = f"img/{c}_{noun}.png"
            Image.fromarray(g.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / img)
            rows.append(dict(id=f"{c}-{noun}", culture=c, language=c, noun_only=f"a {noun}",
                             modifier_noun=f"a {name}-style {noun}", noun_only_en=f"a {noun}",
                             modifier_noun_en=f"a {name}-style {noun}", modifier=f"{name}-style", noun=noun,
                             image=img, split=split))
    (root / "samples.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (root / "judge.py").write_text(JUDGE)
    return root


def run(*argv):
    assert cli_run([str(a) for a in argv]) == 0


def test_every_command(bench, tmp_path):
    base = ["--model", "tiny:sd:3", "--pairs", bench, "--n-boot", "100"]
    judge = ["--judge", f"py:{bench / 'judge.py'}:make"]
    run("layer-scan", *base, "--out", tmp_path / "scan", "--seeds", "0")
    scan = json.loads((tmp_path / "scan" / "layer_scan.json").read_text())
    assert len(scan["encoders"]["text"]["delta"]) == 3
    run("find-units", *base, "--split", "probe", "--layer", "1", "--rho", "100", "--k", "3", "--out", tmp_path / "units")
    units = json.loads((tmp_path / "units" / "units.json").read_text())
    assert set(units["cultures"]) == {"ja", "de"} and (tmp_path / "units" / "units.safetensors").exists()
    judge_arg = ["--judge", f"py:{bench / 'judge.py'}:Judge.load:some/path"]
    run("validate-units", *base, *judge_arg, "--split", "test", "--units", tmp_path / "units", "--n-random", "2",
        "--out", tmp_path / "val")
    assert json.loads((tmp_path / "val" / "validation.json").read_text())["n_random"] == 2
    run("amplify-sweep", *base, *judge, "--split", "test", "--units", tmp_path / "units", "--lams", "0", "3",
        "--n-random", "1", "--out", tmp_path / "amp")
    assert json.loads((tmp_path / "amp" / "lambda_sweep.json").read_text())["lams"] == [0.0, 3.0]
    run("train-enhancer", *base, *judge, "--layer", "1", "--control", "--train-steps", "2", "--lr", "1e-3",
        "--out", tmp_path / "enh")
    enh = json.loads((tmp_path / "enh" / "enhancer.json").read_text())
    assert set(enh["culturevqa"]) == {"none (baseline)", "culture layer", "random other layer"}
    assert (tmp_path / "enh" / "enhancer_layer1" / "enhancer.safetensors").exists()
    run("causal-sweep", *base, *judge, "--split", "test", "--probe-split", "probe", "--n-units", "2", "--chosen", "1",
        "--rho", "100", "--out", tmp_path / "sweep")
    assert json.loads((tmp_path / "sweep" / "causal_sweep.json").read_text())["layers"] == [0, 1, 2]
    for d in ("scan", "units", "val", "amp", "enh", "sweep"):
        assert (tmp_path / d / "summary.md").read_text().startswith("# ")
    assert (tmp_path / "scan" / "layer_scan.png").exists() and (tmp_path / "val" / "validation.png").exists()


def test_circuits_all_quick(bench, tmp_path):
    run("circuits", "--model", "tiny:sd:3", "--pairs", bench, "--quick", "--out", tmp_path / "all",
        "--judge", f"py:{bench / 'judge.py'}:make")
    s = (tmp_path / "all" / "summary.md").read_text()
    for section in ("Splits", "Culture-layer scan", "Culture units", "Masking culture units", "Amplifier",
                    "Layer enhancer", "causal sweep"):
        assert section in s, section
    assert "Probe and evaluation sets share no prompt text." in s and "| evaluation | test | 4 |" in s
    assert json.loads((tmp_path / "all" / "splits.json").read_text())["counts"] == {"probe": 4, "test": 4, "train": 2}


def test_splits_are_never_silently_widened(bench, tmp_path):
    """A missing split is an error naming it and the counts; probe and evaluation sets that share
    prompts are refused unless --allow-overlap, and then the summary says so."""
    from circuits.pairs import SplitError

    base = ["--model", "tiny:sd:2", "--pairs", bench, "--n-boot", "50", "--judge", f"py:{bench / 'judge.py'}:make"]
    with pytest.raises(SplitError, match=r"split 'nope' .*0 of 10 records; splits present: probe 4, test 4, train 2"):
        run("find-units", "--model", "tiny:sd:2", "--pairs", bench, "--split", "nope", "--layer", "0",
            "--out", tmp_path / "u")
    with pytest.raises(SplitError, match=r"split 'dev' \(evaluation\) is empty"):
        run("circuits", *base, "--quick", "--eval-split", "dev", "--out", tmp_path / "c")
    # causal-sweep defaults: units on the probe split, evaluation on the test split
    run("causal-sweep", *base, "--n-units", "1", "--rho", "100", "--out", tmp_path / "s")
    sweep = json.loads((tmp_path / "s" / "causal_sweep.json").read_text())
    assert sweep["shared_prompts"] == 0 and sweep["layers"] == [0, 1]
    with pytest.raises(SplitError, match="share 6 prompt texts"):
        run("causal-sweep", *base, "--probe-split", "test", "--n-units", "1", "--out", tmp_path / "s2")
    run("causal-sweep", *base, "--probe-split", "test", "--allow-overlap", "--n-units", "1", "--rho", "100",
        "--out", tmp_path / "s3")
    assert "share 6 prompts (allowed explicitly)" in (tmp_path / "s3" / "summary.md").read_text()


def test_find_units_specific_and_sweep_with_layer_saes(bench, tmp_path):
    import sae

    base = ["--model", "tiny:sd:2", "--pairs", bench, "--n-boot", "50"]
    run("find-units", *base, "--split", "probe", "--layer", "1", "--select", "specific", "--out", tmp_path / "u")
    units = json.loads((tmp_path / "u" / "units.json").read_text())
    assert units["params"]["select"] == "specific"
    assert all(u["k_source"] in ("elbow", "cap", "flat", "floor", "none") for u in units["cultures"].values())
    paths = []
    for layer in (0, 1):
        s = sae.TopKSAE(32, d_sae=16, k=2, seed=layer)
        sae.save_saelens(s, tmp_path / f"sae{layer}", hook_name=f"text.blocks.{layer}.hook_resid_post")
        paths += ["--sae", f"{layer}={tmp_path / f'sae{layer}'}"]
    run("causal-sweep", *base, "--judge", f"py:{bench / 'judge.py'}:make", *paths, "--n-units", "1", "--rho", "100",
        "--out", tmp_path / "s")
    sweep = json.loads((tmp_path / "s" / "causal_sweep.json").read_text())
    assert sweep["basis_kind"] == "sae" and sweep["sites"] == ["text.blocks.0.hook_resid_post", "text.blocks.1.hook_resid_post"]
    from interp.errors import CultureLensError

    with pytest.raises(CultureLensError, match="expected LAYER=PATH"):
        run("causal-sweep", *base, "--judge", f"py:{bench / 'judge.py'}:make", "--sae", str(tmp_path / "sae0"),
            "--out", tmp_path / "s4")


def test_bad_judge_spec(bench, tmp_path):
    from interp.errors import CultureLensError

    with pytest.raises(CultureLensError, match="no file"):
        run("validate-units", "--model", "tiny:sd:3", "--pairs", bench, "--units", tmp_path, "--judge", "py:/nope.py:make",
            "--out", tmp_path / "x")
    with pytest.raises(CultureLensError, match="units.json: missing"):
        run("amplify-sweep", "--model", "tiny:sd:3", "--pairs", bench, "--units", tmp_path,
            "--judge", f"py:{bench / 'judge.py'}:make", "--out", tmp_path / "x")
