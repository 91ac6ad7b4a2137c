"""The feature browser: statistics against brute force, a static site whose every link and
image resolves, escaped values, Neuronpedia field names, determinism, the `browse` CLI on a tiny
pipeline, and every page loaded in a real headless Chromium with no console error."""

import json
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch

from sae import SAEError, TopKSAE, save_saelens
from sae.browser import (LatentActivations, build_browser, latent_stats, synthetic_activations,
                         text_activations)

SITE = "text.blocks.0.hook_resid_post"
PROMPTS = ["red old house", "a blue tall tree", "new big car", "red tree", "old blue car"]


class _Refs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs: list[str] = []

    def handle_starttag(self, tag, attrs):
        for k, v in attrs:
            if k in ("href", "src") and v is not None:
                self.refs.append(v)


def _refs(page: Path) -> list[str]:
    p = _Refs()
    p.feed(page.read_text(encoding="utf-8"))
    return p.refs


def _check_links(root: Path) -> int:
    """Every href/src of every page points to a file of the site (no http, no CDN); returns count."""
    n = 0
    for page in sorted(root.rglob("*.html")):
        for ref in _refs(page):
            if ref.startswith("data:"):
                continue
            assert not re.match(r"^[a-z]+:", ref) and not ref.startswith("//"), f"{page}: external {ref}"
            target = (page.parent / ref.split("#")[0]).resolve()
            assert target.is_file(), f"{page.relative_to(root)} links {ref}: no such file"
            n += 1
    return n


def _brute(acts: LatentActivations, j: int):
    dense = torch.stack([acts.latent_at(i, j) for i in range(acts.n_examples)]) * acts.valid
    active = dense[acts.valid] > 0
    per_ex = dense.max(1).values
    order = sorted([i for i in range(acts.n_examples) if per_ex[i] > 0], key=lambda i: (-float(per_ex[i]), i))
    return float(active.float().mean()), float(dense.max()), order, int(active.sum())


def test_stats_match_brute_force():
    acts = synthetic_activations(30, 12, 4, 40, seed=3)
    stats = latent_stats(acts, top_k=5, bins=8)
    for j in range(40):
        frac, mx, order, count = _brute(acts, j)
        st = stats[j]
        assert st.frac_nonzero == pytest.approx(frac) and st.max_value == pytest.approx(mx)
        assert [ex for ex, _ in st.top] == order[:5]
        assert sum(st.hist_heights) == count and len(st.hist_values) == len(st.hist_heights) == 8
    assert any(s.frac_nonzero == 0 for s in stats)  # some latents never fire: pages say so


def test_site_links_escaping_json_and_determinism(tmp_path):
    acts = synthetic_activations(16, 10, 3, 24, seed=0)
    acts.tokens[0][0] = "<script>alert(1)</script>"
    acts.labels[0] = 'prompt "<b>&'
    a = build_browser(acts, tmp_path / "a", site=SITE, per_page=10, top_k=4, progress=False)
    assert len(a.index_pages) == 3 and len(a.latent_pages) == 24
    assert _check_links(tmp_path / "a") > 24 * 3
    everything = "".join(p.read_text() for p in (tmp_path / "a").rglob("*.html"))
    assert "<script>alert(1)" not in everything and "&lt;script&gt;" in everything
    assert '"<b>&' not in everything
    # Neuronpedia's feature fields, histogram arrays parallel
    for j in range(24):
        rec = json.loads((tmp_path / "a" / "features" / f"{j}.json").read_text())
        assert {"index", "layer", "maxActApprox", "frac_nonzero", "freq_hist_data_bar_values",
                "freq_hist_data_bar_heights", "activations"} <= set(rec)
        assert len(rec["freq_hist_data_bar_values"]) == len(rec["freq_hist_data_bar_heights"])
        for act in rec["activations"]:
            assert len(act["tokens"]) == len(act["values"])
            assert act["values"][act["maxValueTokenIndex"]] == pytest.approx(act["maxValue"], abs=1e-4)
    summary = json.loads(a.features_json.read_text())
    assert summary["layer"] == SITE and len(summary["features"]) == 24
    b = build_browser(acts, tmp_path / "b", site=SITE, per_page=10, top_k=4, progress=False)
    for p in sorted((tmp_path / "a").rglob("*")):
        if p.is_file():
            assert p.read_bytes() == (tmp_path / "b" / p.relative_to(tmp_path / "a")).read_bytes(), p


def test_image_site_and_steering_previews(tmp_path):
    acts = synthetic_activations(8, 16, 3, 10, seed=1, grid=(4, 4))
    prev = {2: [("plain", np.zeros((24, 24, 3), np.uint8)), ("ablated", np.full((24, 24, 3), 200, np.uint8))]}
    site = build_browser(acts, tmp_path, site="unet.up.0.attn.0.hook_out", per_page=4, top_k=3,
                         steering=prev, progress=False)
    _check_links(tmp_path)
    page = (tmp_path / "latents" / "2.html").read_text()
    assert page.count("<figure>") == len(latent_stats(acts, 3)[2].top) + 2 and "ablated" in page
    rec = json.loads((tmp_path / "features" / "2.json").read_text())
    assert [s["label"] for s in rec["culturelens"]["steering"]] == ["plain", "ablated"]
    assert all((tmp_path / a["culturelens"]["image"]).is_file() for a in rec["activations"])
    assert site.index.name == "index.html"


def test_bad_inputs_name_the_problem():
    v, i = torch.rand(2, 3, 2), torch.zeros(2, 3, 2, dtype=torch.long)
    with pytest.raises(SAEError, match="grid"):
        LatentActivations(v, i, 4, grid=(2, 2))
    with pytest.raises(SAEError, match="outside 0..3"):
        LatentActivations(v, i + 7, 4)
    with pytest.raises(SAEError, match="tokens"):
        LatentActivations(v, i, 4, tokens=[["a"] * 3])
    with pytest.raises(SAEError, match="top_k"):
        build_browser(LatentActivations(v, i, 4), "/nonexistent-never-written", top_k=0)


def _tiny_sae(tiny_sd, path):
    import interp

    d = interp.capture(tiny_sd, PROMPTS[:1], sites=[SITE])[SITE].shape[-1]
    sae = TopKSAE(d, 32, 4, seed=0)
    save_saelens(sae, path, hook_name=SITE, model_name="tiny-sd")
    return sae


def test_text_activations_and_cli(tiny_sd, tmp_path, capsys):
    from circuits.cli import main

    sae = _tiny_sae(tiny_sd, tmp_path / "sae")
    acts = text_activations(tiny_sd, sae, PROMPTS, SITE, progress=False)
    tok = tiny_sd.tokenize(PROMPTS)
    assert acts.values.shape[:2] == tok["input_ids"].shape and int(acts.valid.sum()) > len(PROMPTS)
    # the highlighted tokens are the prompt's own words
    assert "red" in "".join(t for t, ok in zip(acts.tokens[0], acts.valid[0]) if ok)
    tiny_sd.save_pretrained(tmp_path / "pipe")
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    rc = main(["browse", "--sae", str(tmp_path / "sae"), "--model", str(tmp_path / "pipe"),
               "--prompts", str(tmp_path / "prompts.txt"), "--out", str(tmp_path / "site"),
               "--per-page", "10", "--steer", "1", "--lams", "4"])
    assert rc == 0 and "wrote" in capsys.readouterr().out
    assert len(list((tmp_path / "site" / "latents").glob("*.html"))) == 32
    _check_links(tmp_path / "site")
    steered = [json.loads(p.read_text()) for p in (tmp_path / "site" / "features").glob("*.json")]
    assert sum(bool(r["culturelens"]["steering"]) for r in steered) == 1


# -- a real browser ---------------------------------------------------------------------------

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(n)), None)

# Records uncaught errors, failed resources (capture phase), console.error/warn and images that
# did not decode into a <pre id="__errors"> at load, which --dump-dom then prints.
PROBE = """<script>(function(){var errs=[];function rec(m){errs.push(String(m));}
window.addEventListener('error',function(ev){var t=ev.target;
rec(t&&t!==window&&(t.src||t.href)?'resource: '+(t.src||t.href):'error: '+ev.message);},true);
['error','warn'].forEach(function(k){var f=console[k];console[k]=function(){
rec('console.'+k+': '+Array.prototype.join.call(arguments,' '));f.apply(console,arguments);};});
window.addEventListener('load',function(){document.querySelectorAll('img').forEach(function(i){
if(!i.complete||i.naturalWidth===0)rec('image did not load: '+i.src);});
var p=document.createElement('pre');p.id='__errors';p.textContent=JSON.stringify(errs);
document.body.appendChild(p);});})();</script>"""


def _load(page: Path) -> tuple[str, str]:
    done = subprocess.run([CHROMIUM, "--headless", "--disable-gpu", "--no-sandbox", "--enable-logging=stderr",
                           "--v=0", "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    return done.stdout, done.stderr


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (Debian: apt-get install chromium)")
def test_every_page_loads_in_headless_chromium(tmp_path):
    text = build_browser(synthetic_activations(10, 8, 3, 6, seed=0), tmp_path / "text", site=SITE,
                         per_page=4, top_k=3, progress=False)
    img = build_browser(synthetic_activations(6, 16, 3, 4, seed=1, grid=(4, 4)), tmp_path / "img",
                        site="unet.up.0.attn.0.hook_out", per_page=2, top_k=3, progress=False,
                        steering={1: [("plain", np.zeros((16, 16, 3), np.uint8))]})
    pages = [p for s in (text, img) for p in s.index_pages + s.latent_pages]
    for p in pages:  # the probe goes first in <head>, so it sees everything the page does
        p.write_text(p.read_text().replace("<head>", "<head>" + PROBE, 1))
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(_load, pages))
    for page, (dom, log) in zip(pages, results):
        m = re.search(r'<pre id="__errors">(.*?)</pre>', dom, re.S)
        assert m, f"{page}: did not finish loading (no probe output); stderr: {log[-800:]}"
        assert json.loads(m.group(1).replace("&quot;", '"')) == [], f"{page}: {m.group(1)}"
        console = [ln for ln in log.splitlines() if ":CONSOLE" in ln]
        assert not console, f"{page}: console output {console}"
    # a latent page shows its examples; the index links to every latent page of its range
    doms = dict(zip(pages, (d for d, _ in results)))
    top = latent_stats(text_acts := synthetic_activations(10, 8, 3, 6, seed=0), 3)
    for j, page in enumerate(text.latent_pages):
        assert doms[page].count('class="ex"') == len(top[j].top) > 0 or not top[j].top
    assert doms[img.latent_pages[1]].count("<figure>") == len(latent_stats(
        synthetic_activations(6, 16, 3, 4, seed=1, grid=(4, 4)), 3)[1].top) + 1
    assert all(f'href="latents/{j}.html"' in doms[text.index_pages[j // 4]] for j in range(text_acts.d_sae))
    assert 'class="tok"' in doms[text.latent_pages[0]]


def test_denoiser_activations_from_feature_maps(tiny_sd, tmp_path):
    """The denoiser case wired through `sae.feature_maps`: one generation per prompt, codes on
    the site's grid, the generated image under each map."""
    from sae.browser import denoiser_activations

    site = "unet.down.0.attn.0.attn2.hook_out"  # [B, 64 pixels (8 × 8), 16 channels]
    sae = TopKSAE(16, 24, 3, seed=0)
    acts = denoiser_activations(tiny_sd, sae, site, PROMPTS[:3], seed=0, num_steps=2, progress=False)
    assert acts.grid == (8, 8) and acts.values.shape == (3, 64, 3) and acts.images.shape[0] == 3
    built = build_browser(acts, tmp_path, site=site, per_page=10, top_k=2, progress=False)
    _check_links(tmp_path)
    fired = [s for s in latent_stats(acts, 2) if s.top]
    assert fired and all((tmp_path / "latents" / f"{s.index}.html").read_text().count("<figure>") == len(s.top)
                         for s in fired)
    assert len(built.latent_pages) == 24


def test_cli_names_a_missing_sae_folder(tmp_path, capsys):
    from circuits.cli import main

    rc = main(["browse", "--sae", str(tmp_path / "nope"), "--model", "m", "--prompts", "p",
               "--out", str(tmp_path / "o")])
    assert rc == 1 and "nope/cfg.json: missing" in capsys.readouterr().err
