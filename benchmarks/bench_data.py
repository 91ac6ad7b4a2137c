"""Loader speed: a 10,000-row CultureBench file must load (validated) in under a second.

Prints the load time, the time of a bare `json.loads` over the same lines (the reference,
same run) and their ratio; also times token spans over the bundled pairs.
Run: python benchmarks/bench_data.py [--rows 10000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from circuits.data import culturebench as cb
from circuits.data.culturebench.loader import load


def write_rows(path: Path, n: int) -> None:
    base = cb.bundled()
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            r = base[i % len(base)].to_json()
            r.pop("split", None)
            r["id"] = f"{r['id']}-{i}"
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "samples.jsonl"
        write_rows(path, args.rows)
        ds = load(path)
        assert len(ds) == args.rows and not ds.dropped
        t_load = best_of(lambda: load(path, strict=True), args.repeat)
        t_json = best_of(lambda: [json.loads(l) for l in open(path, encoding="utf-8")], args.repeat)
    print(f"load {args.rows} rows: {t_load * 1000:.1f} ms (best of {args.repeat}); "
          f"bare json.loads: {t_json * 1000:.1f} ms; ratio {t_load / t_json:.1f}x; "
          f"{'PASS' if t_load < 1.0 else 'FAIL'} (< 1 s)")

    from circuits.data.spans import record_spans
    from interp.model.tokenizer_training import train_bpe

    records = cb.bundled()
    tok = train_bpe([t for r in records for t in (r.modifier_noun, r.noun_only)], 1000, model_max_length=40)
    t_span = best_of(lambda: [record_spans(tok, r) for r in records], 3)
    print(f"spans of {len(records)} bundled pairs (modifier+noun, noun): {t_span * 1000:.1f} ms "
          f"({t_span / len(records) * 1e6:.0f} µs per pair)")


if __name__ == "__main__":
    main()
