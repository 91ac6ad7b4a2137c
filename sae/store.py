"""Activation store: token activations of one site, in safetensors shards on disk.

Writing keeps at most one shard plus one captured batch in memory. Reading streams a seeded
shuffle: each epoch permutes the shard order, loads `window` shards at a time and permutes
their rows, so memory stays at `window` shards whatever the store size. A batch is addressed
by its token position in that endless stream, which makes a training run resumable from a
single integer. A manifest records site, model and prompt-set fingerprints so stores of
different origins are never mixed silently.

Under torchrun (several ranks, see `interp.distributed`), ranks that name the same folder
build one store together: every rank writes its own shard set for its contiguous share of the
prompts, plus a small part file; rank 0 merges the parts into the one manifest. (Ranks that
name different folders, e.g. private scratch folders, each build a whole store of their own.) Reading is independent of how the rows were split into files: the shuffle
works on fixed-size chunks of the global row order (`shard_tokens` rows each), so a store
written by 2 ranks yields exactly the batches of the same store written by 1. A rank that
crashed leaves no part file and redoes its share on restart, while finished ranks reuse theirs;
parts left by a run with other fingerprints or another world size are refused, not mixed.

Denoiser sites (`unet.`/`transformer.`) are captured during generation over prompts × seeds
(`sae.denoiser`: steps, CFG branch, head, residual update, positions); each shard then also holds
`index` [n, 5] = (prompt, seed, step, branch, position) per row (`ActivationStore.index`). Those
stores resume within a rank's share: after every shard a progress file records the shards and the
next generation, so a killed build restarts from the last written shard with no row duplicated or
missing (shards end on generation boundaries, so a restart regenerates only unwritten rows)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from jaxtyping import Bool, Float, Int
from safetensors import safe_open
from torch import Tensor
from tqdm.auto import tqdm

from interp.result_io import atomic_save_file, atomic_write_text
from interp.model.sites import DENOISER_PREFIXES
from sae import denoiser
from sae.denoiser import INDEX_COLUMNS, DenoiserCapture
from sae.errors import SAEError

MANIFEST = "manifest.json"
PART = "part-{rank:03d}-of-{world:03d}.json"
PROGRESS = "progress-{rank:03d}-of-{world:03d}.json"
Drop = Literal["special", "padding", "none"]


def _atomic_write_text(path: Path, text: str) -> None:
    atomic_write_text(path, text)


def _sha(data: bytes | str) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()[:16]


def prompts_fingerprint(prompts: Sequence[str]) -> str:
    """Order-sensitive hash of a prompt list."""
    return _sha(json.dumps(list(prompts), ensure_ascii=False))


def module_fingerprint(module: torch.nn.Module) -> str:
    """Hash of a module's config (if any), parameter names/shapes and a slice of a few weights.

    Cheap on big models (reads ≤ 256 values of ≤ 8 tensors) yet changes with any retrained or
    swapped checkpoint in practice."""
    h = hashlib.sha256()
    cfg = getattr(module, "config", None)
    if cfg is not None and hasattr(cfg, "to_dict"):
        # `_name_or_path` is where the folder was loaded from: the same weights moved to another
        # folder (a fresh clone elsewhere, a copy) are the same origin, so the path is left out.
        d = {k: v for k, v in cfg.to_dict().items() if k != "_name_or_path"}
        h.update(json.dumps(d, sort_keys=True, default=str).encode())
    params = list(module.state_dict().items())
    for name, p in params:
        h.update(f"{name}:{tuple(p.shape)}:{p.dtype};".encode())
    step = max(1, len(params) // 8)
    for _, p in params[::step]:
        h.update(p.detach().flatten()[:256].to(torch.float64).cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def token_keep_mask(input_ids: Tensor, attention_mask: Tensor, special_ids: Iterable[int],
                    drop: Drop) -> Bool[Tensor, "b s"]:
    """Which token positions to keep: all, non-padding, or non-padding non-special."""
    if drop == "none":
        return torch.ones_like(input_ids, dtype=torch.bool)
    keep = attention_mask.bool()
    if drop == "special":
        keep &= ~torch.isin(input_ids, torch.tensor(sorted(set(special_ids)), dtype=input_ids.dtype))
    elif drop != "padding":
        raise SAEError(f"drop={drop!r}: expected 'special', 'padding' or 'none'")
    return keep


class _OneProcess:
    """The collectives of a store that this rank builds alone."""

    @staticmethod
    def gather(obj: Any) -> list[Any]:
        return [obj]

    @staticmethod
    def barrier() -> None:
        pass


@dataclass
class _Shard:
    file: str
    n: int


def shared(path: str | Path) -> bool:
    """Collective under torchrun: do all ranks name this same folder (so they build and train
    from it together)? False in one process. Needs a file system that all ranks see."""
    from interp import distributed

    return distributed.agree(str(Path(path).resolve()), "activation-store folder")


def _part_name(rank: int, world: int) -> str:
    return PART.format(rank=rank, world=world)


def _check_parts(path: Path, run: dict[str, Any], world: int) -> None:
    """Refuse part files of another run (other fingerprints, settings or world size), naming each."""
    names = {_part_name(r, world) for r in range(world)} | {PROGRESS.format(rank=r, world=world) for r in range(world)}
    for f in sorted([*path.glob("part-*-of-*.json"), *path.glob("progress-*-of-*.json")]):
        try:
            have = json.loads(f.read_text())["run"]
        except (ValueError, KeyError):
            raise SAEError(f"{f}: unreadable part file of an interrupted store; delete {path} to rebuild") from None
        if have != run or f.name not in names:
            diff = sorted(k for k in set(have) | set(run) if have.get(k) != run.get(k))
            raise SAEError(f"{f}: part of an interrupted store built with other settings ({', '.join(diff) or 'file name'} "
                           f"differ: {', '.join(f'{k}={have.get(k)!r} here {run.get(k)!r}' for k in diff)}); "
                           f"refusing to mix runs: delete {path} or use another folder")


def _part_valid(path: Path, part: dict[str, Any]) -> bool:
    """All shard files of a finished part are present with their row counts."""
    for sh in part["shards"]:
        f = path / sh["file"]
        if not f.exists():
            return False
        with safe_open(str(f), framework="pt") as h:
            if h.get_slice("acts").get_shape()[0] != sh["n"]:
                return False
    return True


class ActivationStore:
    """A finished store on disk; open with `ActivationStore(path)`, build with `build` /
    `from_batches`. `fingerprints` is the dict checked against any `expect=` given."""

    def __init__(self, path: str | Path, expect: dict[str, str] | None = None):
        self.path = Path(path)
        mf = self.path / MANIFEST
        if not mf.exists():
            raise SAEError(f"{mf}: no manifest; not a finished activation store")
        m = json.loads(mf.read_text())
        self.manifest: dict[str, Any] = m
        self.d: int = m["d"]
        self.fingerprints: dict[str, str] = m["fingerprints"]
        self.shards = [_Shard(**s) for s in m["shards"]]
        self.n_tokens = sum(s.n for s in self.shards)
        if self.n_tokens == 0:
            raise SAEError(f"{mf}: store holds no tokens")
        check_fingerprints(self.fingerprints, expect or {}, where=str(mf))
        # Stores written before chunks were recorded: their files are the chunks.
        self.chunk: int = m.get("chunk") or max(s.n for s in self.shards)
        self._starts = [0]
        for sh in self.shards:
            self._starts.append(self._starts[-1] + sh.n)

    # ---- building -------------------------------------------------------------------
    @classmethod
    def from_batches(cls, path: str | Path, batches: Iterable[Float[Tensor, "n d"]],
                     fingerprints: dict[str, str], shard_tokens: int = 65_536,
                     dtype: torch.dtype = torch.float32, meta: dict | None = None,
                     progress: bool = True) -> ActivationStore:
        """Write token rows [n, d] from any iterable into shards; reuse a finished store
        with equal fingerprints, refuse one with different fingerprints.

        Under torchrun, when every rank names this folder (`shared(path)`), each passes its own
        share of the rows (rank order is row order) and the same `fingerprints`; ranks that
        disagree on them get an `SAEError`. Otherwise `batches` are all the rows."""
        def write(run: dict[str, Any], rank: int, world: int, show: bool) -> dict[str, Any]:
            return cls._write_part(Path(path), batches, run, rank, world, dtype, show)

        return cls._assemble(path, write, fingerprints, shard_tokens, dtype, meta, progress)

    @classmethod
    def _assemble(cls, path: str | Path, write: Any, fingerprints: dict[str, str], shard_tokens: int,
                  dtype: torch.dtype, meta: dict | None, progress: bool) -> ActivationStore:
        """The store protocol around a rank's writer `write(run, rank, world, progress) -> part`:
        reuse or refuse a finished store, agree on the run across ranks, merge the parts."""
        from interp import distributed

        path = Path(path)
        together = shared(path)  # collective: before any rank may return early
        if (path / MANIFEST).exists():
            return cls(path, expect=fingerprints)
        rank, world = distributed.world() if together else (0, 1)
        ranks = distributed if together else _OneProcess
        run = {"fingerprints": fingerprints, "world_size": world, "shard_tokens": shard_tokens,
               "dtype": str(dtype).removeprefix("torch.")}
        runs = ranks.gather(run)
        if any(r != run for r in runs):
            bad = [i for i, r in enumerate(runs) if r != runs[0]]
            raise SAEError(f"{path}: ranks {bad} build the store with other settings than rank 0 "
                           f"(rank 0: {runs[0]}; rank {bad[0]}: {runs[bad[0]]}); every rank must capture "
                           "the same site, model and prompt list")
        path.mkdir(parents=True, exist_ok=True)
        _check_parts(path, run, world)
        ranks.barrier()  # nobody writes a part before every rank has checked the old ones
        part_file = path / _part_name(rank, world)
        part = json.loads(part_file.read_text()) if part_file.exists() else None
        if part is None or not _part_valid(path, part):
            part = write(run, rank, world, progress and rank == 0)
            _atomic_write_text(part_file, json.dumps(part, indent=1))
        parts = ranks.gather(part)  # every rank checks them, so every rank raises alike
        ds = {p["d"] for p in parts} - {None}
        if not ds:
            raise SAEError(f"{path}: no activations were produced")
        if len(ds) > 1:
            raise SAEError(f"{path}: ranks wrote rows of different widths {[p['d'] for p in parts]}")
        if rank == 0:
            manifest = {"d": ds.pop(), "dtype": run["dtype"], "shards": [s for p in parts for s in p["shards"]],
                        "fingerprints": fingerprints, "meta": meta or {}, "chunk": shard_tokens,
                        "world_size": world, "max_buffered_tokens": max(p["peak"] for p in parts)}
            _atomic_write_text(path / MANIFEST, json.dumps(manifest, indent=1))
            for r in range(world):
                (path / _part_name(r, world)).unlink()
                (path / PROGRESS.format(rank=r, world=world)).unlink(missing_ok=True)
        ranks.barrier()
        return cls(path)

    @staticmethod
    def _write_part(path: Path, batches: Iterable[Tensor], run: dict[str, Any], rank: int, world: int,
                    dtype: torch.dtype, progress: bool) -> dict[str, Any]:
        """This rank's rows into shards of `shard_tokens` rows; returns its part record."""
        shard_tokens = run["shard_tokens"]
        prefix = "" if world == 1 else f"rank{rank:03d}-"
        buf: list[Tensor] = []
        n_buf, shards, d, peak = 0, [], None, 0

        def flush(rows: Tensor) -> None:
            name = f"{prefix}shard_{len(shards):05d}.safetensors"
            atomic_save_file(path / name, {"acts": rows.contiguous()})
            shards.append({"file": name, "n": rows.shape[0]})

        bar = tqdm(desc=f"store {path.name}", unit="tok", disable=not progress)
        for i, rows in enumerate(batches):
            if rows.ndim != 2 or (d is not None and rows.shape[1] != d):
                raise SAEError(f"{path}: batch {i} has shape {tuple(rows.shape)}, expected [n, {d or 'd'}]")
            d = rows.shape[1]
            buf.append(rows.detach().to("cpu", dtype))
            n_buf += rows.shape[0]
            peak = max(peak, n_buf)
            bar.update(rows.shape[0])
            while n_buf >= shard_tokens:
                allrows = torch.cat(buf)
                flush(allrows[:shard_tokens])
                # clone: a view of the remainder would keep the whole block alive
                buf, n_buf = [allrows[shard_tokens:].clone()], n_buf - shard_tokens
                del allrows
        bar.close()
        if n_buf:
            flush(torch.cat(buf))
        return {"run": run, "rank": rank, "d": d, "shards": shards, "peak": peak}

    @classmethod
    def build(cls, model: Any, prompts: Sequence[str], site: str, path: str | Path,
              batch_size: int = 16, drop: Drop = "special", special_ids: Iterable[int] | None = None,
              shard_tokens: int = 65_536, dtype: torch.dtype = torch.float32,
              progress: bool = True, *, seeds: Sequence[int] = (0,), capture: DenoiserCapture | None = None,
              interventions: Sequence[Any] = ()) -> ActivationStore:
        """Capture `site` over `prompts` with `interp.capture`, `batch_size` prompts at a time.

        Denoiser sites: one generation per `batch_size` prompts and seed (prompt p with seed s is
        `interp.generate(model, [p], seed=s)`), rows chosen by `capture` (default: every step,
        conditional branch, every position) with `interventions` active; see `_build_denoiser`.

        Text sites [B, S, d]: positions are filtered by `drop` using the pipeline's own
        tokenization (`model.tokenize`) and the tokenizer's special ids (override with
        `special_ids`). Note SD's UNet does read the padding positions; use drop="none" to
        keep what the UNet sees. Under torchrun, ranks that name the same folder each capture
        a contiguous share of the prompts (more ranks than prompts is an error).

        Model first, then prompts, then the site, as `interp.capture(model, prompts, sites)`;
        the store folder `path` comes last (a path first is the old order and is refused)."""
        import interp
        from interp import distributed

        if isinstance(model, (str, os.PathLike)):
            raise SAEError(f"ActivationStore.build(model, prompts, site, path, ...): the first argument is the "
                           f"model, got the path {str(model)!r}; the folder comes fourth (or path=...)")
        if not prompts:
            raise SAEError(f"ActivationStore.build({site}): empty prompt list")
        if site.split(".", 1)[0] in DENOISER_PREFIXES:
            return cls._build_denoiser(path, model, prompts, site, seeds, capture or DenoiserCapture(),
                                       interventions, batch_size, shard_tokens, dtype, progress)
        encoder = site.split(".", 1)[0]
        enc = model.encoders.get(encoder) if hasattr(model, "encoders") else None
        if enc is None:
            raise SAEError(f"site {site}: the store captures text-encoder sites; no encoder {encoder!r}")
        specials = list(special_ids) if special_ids is not None else list(enc.tokenizer.all_special_ids)
        fps = {"site": site, "model": module_fingerprint(enc.module),
               "prompts": prompts_fingerprint(prompts), "drop": f"{drop}:{sorted(specials)}"}

        mine = distributed.shard_range(len(prompts), "prompts") if shared(path) else range(len(prompts))

        def rows() -> Iterator[Tensor]:
            for start in range(mine.start, mine.stop, batch_size):
                chunk = list(prompts[start:min(start + batch_size, mine.stop)])
                act = interp.capture(model, chunk, sites=[site])[site]
                if act.ndim != 3:
                    raise SAEError(f"site {site}: activation shape {tuple(act.shape)}, expected [B, S, d]")
                tok = model.tokenize(chunk, encoder=encoder)
                keep = token_keep_mask(tok["input_ids"], tok["attention_mask"], specials, drop)
                if keep.shape != act.shape[:2]:
                    raise SAEError(f"site {site}: tokens {tuple(keep.shape)} vs activations "
                                   f"{tuple(act.shape[:2])} at prompts {start}..{start + len(chunk) - 1}")
                yield act[keep.to(act.device)]

        meta = {"n_prompts": len(prompts), "encoder": encoder}
        return cls.from_batches(path, rows(), fps, shard_tokens, dtype, meta, progress)

    @classmethod
    def _build_denoiser(cls, path: str | Path, model: Any, prompts: Sequence[str], site: str,
                        seeds: Sequence[int], cap: DenoiserCapture, interventions: Sequence[Any],
                        batch_size: int, shard_tokens: int, dtype: torch.dtype, progress: bool) -> ActivationStore:
        """A denoiser store: generations of `batch_size` prompts × each seed, in prompt-batch
        then seed order, rows kept as `cap` says. Under torchrun each rank takes a contiguous
        share of the prompts. Resumable (module docstring)."""
        from interp import distributed

        s = denoiser.check_site(model, site, cap)
        seeds = [int(x) for x in seeds]
        if not seeds or len(set(seeds)) != len(seeds):
            raise SAEError(f"ActivationStore.build({site}): seeds {seeds} must be a non-empty list of distinct seeds")
        model_fp = "+".join([module_fingerprint(model.denoiser)]
                            + [module_fingerprint(e.module) for _, e in sorted(model.encoders.items())])
        # interventions by type and site, not repr: a repr may hold a memory address, which would
        # refuse every resume
        ivs = [f"{type(iv).__name__}@{getattr(iv, 'site', '?')}" for iv in interventions]
        fps = {"site": s.name, "model": model_fp, "prompts": prompts_fingerprint(prompts),
               "capture": _sha(json.dumps([cap.to_dict(), seeds, ivs], sort_keys=True))}
        mine = distributed.shard_range(len(prompts), "prompts") if shared(path) else range(len(prompts))
        units = [(start, seed) for start in range(mine.start, mine.stop, batch_size) for seed in seeds]

        def unit(i: int) -> tuple[Tensor, Tensor]:
            start, seed = units[i]
            ids = list(range(start, min(start + batch_size, mine.stop)))
            rows, index, _ = denoiser.capture_rows(model, s.name, [prompts[j] for j in ids], ids, seed, cap,
                                                   interventions)
            return rows, index

        def write(run: dict[str, Any], rank: int, world: int, show: bool) -> dict[str, Any]:
            return cls._write_units(Path(path), len(units), unit, run, rank, world, dtype, show)

        meta = {"n_prompts": len(prompts), "encoder": s.encoder, "site": s.name, "seeds": seeds,
                "capture": cap.to_dict(), "index_columns": list(INDEX_COLUMNS), "interventions": ivs,
                "num_steps": int(cap.num_steps or model.defaults["steps"]),
                "guidance": float(cap.guidance if cap.guidance is not None else model.defaults["guidance"])}
        return cls._assemble(path, write, fps, shard_tokens, dtype, meta, progress)

    @staticmethod
    def _write_units(path: Path, n_units: int, unit: Any, run: dict[str, Any], rank: int, world: int,
                     dtype: torch.dtype, progress: bool) -> dict[str, Any]:
        """This rank's units (`unit(i) -> (rows, index)`, i < n_units) into shards of at least
        `shard_tokens` rows that end on unit boundaries, recording progress after each shard, and
        continuing from a progress file of the same run when one is there."""
        shard_tokens = run["shard_tokens"]
        prefix = "" if world == 1 else f"rank{rank:03d}-"
        prog_file = path / PROGRESS.format(rank=rank, world=world)
        state = {"run": run, "next": 0, "shards": [], "d": None, "peak": 0}
        if prog_file.exists():
            try:
                old = json.loads(prog_file.read_text())
            except ValueError:
                old = None
            if old is not None and old.get("run") != run:
                raise SAEError(f"{prog_file}: progress of a store built with other settings; refusing to mix "
                               f"runs: delete {path} or use another folder")
            if old is not None and _part_valid(path, old):
                state = old
        bufs: list[tuple[Tensor, Tensor]] = []
        n_buf = 0

        def flush() -> None:
            nonlocal bufs, n_buf
            name = f"{prefix}shard_{len(state['shards']):05d}.safetensors"
            atomic_save_file(path / name, {"acts": torch.cat([r for r, _ in bufs]).contiguous(),
                                           "index": torch.cat([i for _, i in bufs]).contiguous()})
            state["shards"].append({"file": name, "n": n_buf})
            bufs, n_buf = [], 0

        bar = tqdm(total=n_units, initial=state["next"], desc=f"store {path.name}", unit="gen", disable=not progress)
        for i in range(state["next"], n_units):
            rows, index = unit(i)
            d = state["d"]
            if rows.ndim != 2 or (d is not None and rows.shape[1] != d):
                raise SAEError(f"{path}: generation {i} gave rows {tuple(rows.shape)}, expected [n, {d or 'd'}]")
            state["d"] = rows.shape[1]
            bufs.append((rows.to("cpu", dtype), index))
            n_buf += rows.shape[0]
            state["peak"] = max(state["peak"], n_buf)
            bar.update(1)
            if n_buf >= shard_tokens or i == n_units - 1:
                flush()
                state["next"] = i + 1
                _atomic_write_text(prog_file, json.dumps(state, indent=1))
        bar.close()
        return {"run": run, "rank": rank, "d": state["d"], "shards": state["shards"], "peak": state["peak"]}

    # ---- reading --------------------------------------------------------------------
    def _load(self, shard: _Shard, lo: int = 0, hi: int | None = None) -> Tensor:
        """Rows [lo, hi) of one shard file."""
        with safe_open(str(self.path / shard.file), framework="pt") as f:
            sl = f.get_slice("acts")
            if sl.get_shape()[0] != shard.n:
                raise SAEError(f"{self.path / shard.file}: {sl.get_shape()[0]} rows, manifest says {shard.n}")
            return sl[lo:shard.n if hi is None else hi]

    @property
    def n_chunks(self) -> int:
        """Number of `chunk`-row pieces of the global row order (the unit of the shuffle)."""
        return -(-self.n_tokens // self.chunk)

    def _chunk_size(self, i: int) -> int:
        return min(self.chunk, self.n_tokens - i * self.chunk)

    def _load_chunk(self, i: int) -> Tensor:
        """Global rows [i·chunk, (i+1)·chunk), from however many files hold them."""
        lo, hi = i * self.chunk, i * self.chunk + self._chunk_size(i)
        parts = [self._load(sh, max(lo, a) - a, min(hi, a + sh.n) - a)
                 for sh, a in zip(self.shards, self._starts) if a < hi and a + sh.n > lo]
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def all(self) -> Float[Tensor, "n d"]:
        """Every row in write order (for small stores; `shard_rows` streams)."""
        return torch.cat([self._load(s) for s in self.shards])

    def shard_rows(self) -> Iterator[Float[Tensor, "m d"]]:
        """Every row in write order, one shard at a time (memory: one shard)."""
        for s in self.shards:
            yield self._load(s)

    def _index(self, shard: _Shard) -> Tensor:
        with safe_open(str(self.path / shard.file), framework="pt") as f:
            if "index" not in f.keys():
                raise SAEError(f"{self.path / shard.file}: no row index (only denoiser stores record "
                               f"{', '.join(INDEX_COLUMNS)} per row)")
            return f.get_tensor("index")

    def index(self) -> Int[Tensor, "n 5"]:
        """Denoiser stores: (prompt, seed, step, branch, position) of every row, in write order
        (`manifest["meta"]["index_columns"]`)."""
        return torch.cat([self._index(s) for s in self.shards])

    def select(self, prompts: Sequence[int]) -> tuple[Float[Tensor, "m d"], Int[Tensor, "m 5"]]:
        """Denoiser stores: the rows (and index) of the given prompt indices, read shard by shard
        (e.g. held-out prompts for FVU: `sae.evaluate(sae, store.select(held_out)[0])`)."""
        want = torch.tensor(sorted({int(p) for p in prompts}), dtype=torch.long)
        rows, index = [], []
        for sh in self.shards:
            idx = self._index(sh)
            keep = torch.isin(idx[:, 0], want)
            if bool(keep.any()):
                rows.append(self._load(sh)[keep])
                index.append(idx[keep])
        if not rows:
            raise SAEError(f"{self.path}: no rows of prompts {want.tolist()[:8]}")
        return torch.cat(rows), torch.cat(index)

    def sample(self, n: int, seed: int = 0) -> Float[Tensor, "m d"]:
        """First n rows of the seeded shuffle (e.g. to initialise b_dec)."""
        return next(self.batches(min(n, self.n_tokens), seed=seed))

    def _epoch_groups(self, epoch: int, seed: int, window: int) -> list[list[int]]:
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        order = torch.randperm(self.n_chunks, generator=g).tolist()
        return [order[i:i + window] for i in range(0, len(order), window)]

    def _group_rows(self, epoch: int, gi: int, group: list[int], seed: int) -> Tensor:
        rows = torch.cat([self._load_chunk(i) for i in group])
        g = torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 10_007 + gi)
        return rows[torch.randperm(rows.shape[0], generator=g)]

    def batches(self, batch_size: int, seed: int = 0, start: int = 0, window: int = 2
                ) -> Iterator[Float[Tensor, "b d"]]:
        """Endless seeded shuffled batches, starting at token position `start` of the stream.

        Batch j of a run that began at 0 equals batch 0 of a run begun at j·batch_size."""
        if batch_size <= 0:
            raise SAEError(f"batch_size={batch_size} must be positive")
        epoch, offset = divmod(start, self.n_tokens)
        carry: Tensor | None = None
        while True:
            for gi, group in enumerate(self._epoch_groups(epoch, seed, window)):
                size = sum(self._chunk_size(i) for i in group)
                if offset >= size:
                    offset -= size
                    continue
                rows = self._group_rows(epoch, gi, group, seed)[offset:]
                offset, pos = 0, 0
                if carry is not None:
                    need = batch_size - carry.shape[0]
                    if rows.shape[0] < need:
                        carry = torch.cat([carry, rows])
                        continue
                    yield torch.cat([carry, rows[:need]])
                    carry, pos = None, need
                while pos + batch_size <= rows.shape[0]:
                    yield rows[pos:pos + batch_size]
                    pos += batch_size
                # clone so the leftover does not pin the whole window in memory
                carry = rows[pos:].clone() if pos < rows.shape[0] else None
            epoch += 1


def check_fingerprints(have: dict[str, str], expect: dict[str, str], where: str) -> None:
    """Raise naming every fingerprint that differs (missing keys count as different)."""
    bad = [f"{k}: store has {have.get(k)!r}, expected {v!r}" for k, v in expect.items()
           if have.get(k) != v]
    if bad:
        raise SAEError(f"{where}: activation store of a different origin — " + "; ".join(bad))
