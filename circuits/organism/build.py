"""Build the shipped CultureWorld organism: train (resumable), train the judge, export, evaluate.

    culturelens organism-build --out circuits/organism/assets/cultureworld --train-steps 2600
    python -m circuits.organism.build --out circuits/organism/assets/cultureworld --train-steps 2600

Writes `<out>/pipeline/` (diffusers folder, EMA weights), `<out>/judge/`, and
`<out>/logs/` (train.log, judge.json, eval.json, eval.md, renders.png). Training scratch
(checkpoints) lives in `run_dir` (default runs/organism, git-ignored); a killed build
resumes from there.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch

from interp.checkpoint import ResumeMismatchError, check_settings
from interp.checks import renamed
from interp.folder_lock import lock_folder

from circuits.organism.args import add_arguments
from circuits.organism.evaluate import evaluate_organism
from circuits.organism.export import pipeline_from_run, save_pipeline
from circuits.organism.judge import CultureWorldJudge, clean_accuracy, junk_rejection, train_judge
from circuits.organism.render import grid_figure
from circuits.organism.train import TrainConfig, train
from circuits.results import write_json

__all__ = ["build", "build_judge", "main"]


JUDGE_RUN = "judge_run.json"  # the settings a reusable judge was trained with


def build_judge(folder: str | Path, resume: bool = True, seed: int = 0) -> tuple[CultureWorldJudge, dict]:
    """Train (or reuse) the judge in `folder`; returns it with its clean/junk metrics. A judge is
    reused only when `folder/judge_run.json` records the same seed (refused otherwise, naming it)."""
    folder = Path(folder)
    settings = {"seed": seed}
    if resume and (folder / "judge.safetensors").exists():
        record = folder / JUDGE_RUN
        if not record.exists():
            raise ResumeMismatchError(f"{folder}: a judge without {JUDGE_RUN} (settings unknown); delete {folder} "
                                      f"to train it again, or pass --no-resume")
        check_settings(json.loads(record.read_text(encoding="utf-8")), settings, record,
                       f"delete {folder} or pass --no-resume")
        judge = CultureWorldJudge.load(folder)
    else:
        judge = train_judge(seed=seed)
        judge.save(folder)
        write_json(folder / JUDGE_RUN, settings)
    metrics = {"clean": clean_accuracy(judge), "junk": junk_rejection(judge)}
    return judge, metrics


@renamed(steps="train_steps")
def build(
    out_dir: str | Path,
    train_steps: int = 2600,
    resume: bool = True,
    run_dir: str | Path = "runs/organism",
    deadline: str | None = None,
    seed: int = 0,
    eval_seeds: tuple[int, ...] = (0, 1),
) -> dict:
    """Train the organism (`train_steps` steps) and its judge, export both to `out_dir`, evaluate;
    returns the metrics.

    `out_dir` has no default: the shipped organism (circuits.organism.shipped.ORGANISM) is
    rewritten only when named. `out_dir` is locked while building (so is `run_dir`, by `train`)."""
    out_dir, run_dir = Path(out_dir), Path(run_dir)
    with lock_folder(out_dir, "organism output folder"):
        return _build(out_dir, train_steps, resume, run_dir, deadline, seed, eval_seeds)


def _build(out_dir: Path, train_steps: int, resume: bool, run_dir: Path, deadline: str | None, seed: int,
           eval_seeds: tuple[int, ...]) -> dict:
    (out_dir / "logs").mkdir(parents=True, exist_ok=True)
    train(run_dir, TrainConfig(train_steps=train_steps, deadline=deadline, seed=seed), resume=resume)
    judge, judge_metrics = build_judge(run_dir.parent / (run_dir.name + "_judge"), resume=resume, seed=seed)
    judge.save(out_dir / "judge")
    pipe = pipeline_from_run(run_dir, ema=True)
    save_pipeline(pipe, out_dir / "pipeline")
    shutil.copyfile(run_dir / "train.log", out_dir / "logs" / "train.log")
    (out_dir / "logs" / "judge.json").write_text(json.dumps(judge_metrics, indent=2) + "\n")
    grid_figure(str(out_dir / "logs" / "renders.png"))
    # Evaluate the folder as shipped (not the in-memory copy), so the numbers are the folder's.
    result = evaluate_organism(out_dir / "pipeline", judge, seeds=eval_seeds)
    (out_dir / "logs" / "eval.json").write_text(json.dumps(result.to_json(), indent=2) + "\n")
    (out_dir / "logs" / "eval.md").write_text(result.to_markdown() + "\n")
    return {"judge": judge_metrics, "eval": result.to_json()}


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(1)
    metrics = build(args.out, args.train_steps, not args.no_resume, args.run_dir, args.deadline, args.seed)
    print(json.dumps(metrics, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(ap)
    return run(ap.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
