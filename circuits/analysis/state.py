"""The resumable state of an `analyze` report folder: which run it belongs to, and whether it is complete.

`analyze` resumes what it finds in its folder (SAE stores and checkpoints, enhancer checkpoints),
so the folder records the settings and input fingerprints of the run that made it
(`analysis_run.json`); a later run with other settings is refused, naming the fields, unless
it asks to start over (`restart`), which removes exactly that state. A folder holding such
state without the record (written by something else, or planted) is refused the same way,
before anything in it is read.

While a run is in progress or after it was interrupted the folder carries `INCOMPLETE`
(and the report itself a banner, see `Report.finish`); a finished run removes it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from interp.checkpoint import ResumeMismatchError, file_fingerprint, settings_diff
from interp.result_io import atomic_write_bytes

RUN_FILE = "analysis_run.json"
INCOMPLETE = "INCOMPLETE"
# What analyze resumes from (relative to the report folder); `restart` removes exactly these.
RESUMABLE = ("sae_checkpoints", "sae_stores", "enhancer_layer*")


def run_settings(cfg: dict[str, Any], pipeline: Path, judge: Path) -> dict[str, Any]:
    """The settings and input fingerprints that determine an analysis' results."""
    return {"config": cfg, "pipeline": file_fingerprint(pipeline), "judge": file_fingerprint(judge)}


def _resumable(out: Path) -> list[Path]:
    return sorted(p for pattern in RESUMABLE for p in out.glob(pattern))


def prepare(out: Path, settings: dict[str, Any], restart: bool) -> None:
    """Check `out`'s recorded run against `settings` (refuse a different one unless `restart`),
    then record `settings` and mark the folder incomplete. Call with the folder locked."""
    record = out / RUN_FILE
    state = _resumable(out)
    if restart:
        for p in state:
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    elif record.exists():
        try:
            saved = json.loads(record.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ResumeMismatchError(f"{record}: unreadable ({e}); pass --restart (restart=True) to start over") from e
        diff = settings_diff(saved, settings)
        if diff:
            raise ResumeMismatchError(f"{record}: this folder holds an analysis made with other settings: "
                                      f"{'; '.join(diff)}. Use another --out, the same settings, or --restart "
                                      f"(restart=True) to start over")
    elif state:
        files = sorted(f for p in state for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file())
        raise ResumeMismatchError(f"{out}: holds resumable state of an unknown run ({files[0] if files else state[0]}"
                                  f"{f' and {len(files) - 1} more files' if len(files) > 1 else ''}) but no {RUN_FILE}; "
                                  f"nothing in it is read. Use another --out, or --restart (restart=True) to remove it")
    atomic_write_bytes(record, (json.dumps(settings, indent=1) + "\n").encode())
    atomic_write_bytes(out / INCOMPLETE, b"this analysis has not finished (running, or interrupted); "
                                         b"rerun the same command to resume\n")


def finish(out: Path) -> None:
    """Remove the incomplete marker (the report has been written in full)."""
    (out / INCOMPLETE).unlink(missing_ok=True)
