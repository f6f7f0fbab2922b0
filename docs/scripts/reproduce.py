"""Test the PITI paper's claims on the toy world with the `tiny` preset (docs/reproduce.md).

    python docs/scripts/reproduce.py --out DIR [--smoke] [--only a,b,c,d] [--resume] [--plan] [--device cpu]

Blocks: (a) finetuning from the shipped prior vs the same model from scratch, same step budget, for
mask and sketch; (b) few-shot, 16 / 64 / 256 pairs, prior vs scratch; (c) plain vs normalized
guidance at several scales; (d) samplers: DDPM-250 vs DDIM vs DPM-Solver++ at 10 / 25 / 50 steps.

Everything goes through the real CLI (`piti train`, `piti eval --json`), one subprocess per run and
per evaluation, with fixed seeds. DIR receives runs/<run>/ (the training runs; (c) and (d) reuse the
guidance task's prior run of (a)), evals/<experiment>/ (metrics.json, report.html, samples),
logs/*.log (each command's stderr), results/<experiment>.json (written as soon as the experiment is
done: `--resume` skips those and resumes unfinished runs) and, at the end, reproduce.md with the
tables (also printed). `--smoke` runs the same plumbing with a handful of steps and n = 4: its numbers
mean nothing. `--plan` lists the experiments and an estimated time, and runs nothing.

The budget knobs are the constants below. The upsampler stage is skipped (train.upsampler_steps=0):
`piti eval` then scores the base model's 32 px samples, which is what every claim here is about.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reproduce_tables import render  # noqa: E402

# ------------------------------------------------------------------------------------------ budget knobs
@dataclass(frozen=True)
class Budget:
    seeds: tuple = (0,)  # train.seed of every run; more seeds: the tables show mean ± std
    # data.toyworld_seed of every run and evaluation: a world whose images the shipped prior never saw
    # (it was pretrained on world 0, samples 0..5999, which hold world 0's default train and val images)
    toyworld_seed: int = 1
    eval_n: int = 48  # first N images of the toy world's val split (about 100 with the defaults)
    eval_batch: int = 16
    eval_seed: int = 0  # sample.seed of every evaluation
    eval_sampler: tuple = ("ddpm", "50")  # (a), (b), (c): the tiny default when reproduce.md was measured (now 30)
    eval_guidance: tuple = ("plain", 1.3)  # (a), (b), (d): the official guidance (tiny default)
    # (a): steps of stage1, stage1-cont, stage2 from the prior; scratch trains encoder + decoder for their sum
    full_steps: tuple = (150, 50, 200)
    tasks_a: tuple = ("mask", "sketch")
    # (b): train.* stage steps before the few-shot multipliers (x2, x2, x0.25: docs/fewshot.md)
    fewshot_task: str = "mask"
    shots: tuple = (16, 64, 256)
    fewshot_steps: tuple = (75, 25, 100)
    fewshot_eval_every: int = 25
    # (c), (d): on the prior run of (a) for this task
    guidance_task: str = "mask"
    guidance_scales: tuple = (1.0, 1.5, 3.0, 5.0)  # 1 = conditional only (the same for both kinds)
    samplers: tuple = (("ddpm", "250"), ("ddim", "10"), ("ddim", "25"), ("ddim", "50"),
                       ("dpmpp", "10"), ("dpmpp", "25"), ("dpmpp", "50"))
    extra_train: tuple = field(default_factory=tuple)  # more `--set k=v` for every run


FULL = Budget()
SMOKE = replace(FULL, eval_n=4, eval_batch=4, eval_sampler=("ddpm", "10"), full_steps=(2, 1, 2),
                fewshot_steps=(2, 1, 4), fewshot_eval_every=2, guidance_scales=(1.0, 3.0),
                samplers=(("ddpm", "20"), ("ddim", "5"), ("dpmpp", "5")),
                extra_train=("fewshot.eval_timesteps=2", "fewshot.holdout=2"))

# seconds per unit on the shared 2-core machine at load ~4-5, one thread per process (docs/reproduce.md,
# "Cost"); a joint step measured 0.78 s and 1.64 s at different times. Only for --plan's estimate.
COST = {"encoder_step": 0.67, "joint_step": 1.2, "image_step_guided": 0.048, "image_step": 0.015,
        "image_score": 0.6, "process": 12.0}


# ------------------------------------------------------------------------------------------ the plan
@dataclass(frozen=True)
class Run:
    id: str
    task: str
    args: tuple  # `piti train` arguments after --task
    encoder_steps: int  # planned, for the estimate
    joint_steps: int


@dataclass(frozen=True)
class Exp:
    id: str
    block: str
    run: Run
    eval_args: tuple  # `piti eval` settings
    labels: dict


def _sets(*kv) -> tuple:
    return tuple(a for item in kv for a in ("--set", item))


def _base_args(b: Budget, seed: int) -> tuple:
    return ("--preset", "tiny", "--no-preview", *_sets(f"train.seed={seed}", f"data.toyworld_seed={b.toyworld_seed}",
                                                        "train.upsampler_steps=0", "train.keep_checkpoints=1",
                                                        *b.extra_train))


def full_run(b: Budget, task: str, init: str, seed: int) -> Run:
    s1, s1c, s2 = b.full_steps
    if init == "prior":
        args = _sets(f"train.stage1_steps={s1}", f"train.stage1_cont_steps={s1c}", f"train.stage2_steps={s2}")
        return Run(f"{task}-prior-s{seed}", task, _base_args(b, seed) + args, s1 + s1c, s2)
    # from scratch: the same number of steps, all of them training encoder + random decoder together
    # (encoder-only stages against a frozen random decoder would waste the budget)
    args = ("--prior", "none", *_sets("train.stage1_steps=0", "train.stage1_cont_steps=0",
                                      f"train.stage2_steps={s1 + s1c + s2}"))
    return Run(f"{task}-scratch-s{seed}", task, _base_args(b, seed) + args, 0, s1 + s1c + s2)


def fewshot_run(b: Budget, shots: int, init: str, seed: int) -> Run:
    from piti_core.config import FewShotConfig

    f = FewShotConfig()  # its multipliers, as piti_core.train.fewshot.fewshot_stages applies them
    s1, s1c, s2 = b.fewshot_steps
    scaled = lambda steps, mult: 0 if steps <= 0 or mult <= 0 else max(1, round(steps * mult))  # noqa: E731
    enc, joint = scaled(s1, f.stage1_mult) + scaled(s1c, f.stage1_mult), scaled(s2, f.stage2_mult)
    common = _base_args(b, seed) + _sets(f"fewshot.shots={shots}", f"fewshot.eval_every={b.fewshot_eval_every}")
    rid = f"{b.fewshot_task}-{shots}shot-{init}-s{seed}"
    if init == "prior":  # the few-shot recipe as docs/fewshot.md describes it
        args = _sets(f"train.stage1_steps={s1}", f"train.stage1_cont_steps={s1c}", f"train.stage2_steps={s2}")
        return Run(rid, b.fewshot_task, common + args, enc, joint)
    # same pairs, augmentation, early stopping and step count; every step trains encoder + decoder at full LR
    args = ("--prior", "none", *_sets("train.stage1_steps=0", "train.stage1_cont_steps=0",
                                      f"train.stage2_steps={enc + joint}", "fewshot.stage2_mult=1",
                                      "fewshot.decoder_lr_mult=1"))
    return Run(rid, b.fewshot_task, common + args, 0, enc + joint)


def _eval(b: Budget, sampler, steps, guidance, scale) -> tuple:
    return ("--n", str(b.eval_n), "--batch-size", str(b.eval_batch), "--seed", str(b.eval_seed), "--sampler",
            sampler, "--steps", str(steps), "--guidance", guidance, "--guidance-scale", f"{scale:g}")


def plan(b: Budget, blocks: str) -> list[Exp]:
    out = []
    default = _eval(b, *b.eval_sampler, *b.eval_guidance)
    for seed in b.seeds:
        if "a" in blocks:
            for task in b.tasks_a:
                for init in ("prior", "scratch"):
                    out.append(Exp(f"a-{task}-{init}-s{seed}", "a", full_run(b, task, init, seed), default,
                                   dict(task=task, init=init, seed=seed)))
        if "b" in blocks:
            for shots in b.shots:
                for init in ("prior", "scratch"):
                    out.append(Exp(f"b-{shots}shot-{init}-s{seed}", "b", fewshot_run(b, shots, init, seed), default,
                                   dict(task=b.fewshot_task, shots=shots, init=init, seed=seed)))
        run = full_run(b, b.guidance_task, "prior", seed)
        if "c" in blocks:
            for kind in ("plain", "normalized"):
                for scale in b.guidance_scales:
                    if scale == 1.0 and kind == "normalized":
                        continue  # s = 1 is the conditional model alone for both kinds: evaluated once
                    out.append(Exp(f"c-{kind}-{scale:g}-s{seed}", "c", run, _eval(b, *b.eval_sampler, kind, scale),
                                   dict(task=b.guidance_task, guidance="both" if scale == 1.0 else kind, scale=scale,
                                        seed=seed)))
        if "d" in blocks:
            for sampler, steps in b.samplers:
                out.append(Exp(f"d-{sampler}{steps}-s{seed}", "d", run, _eval(b, sampler, steps, *b.eval_guidance),
                               dict(task=b.guidance_task, sampler=sampler, steps=int(steps), seed=seed)))
    return out


def estimate(exps: list[Exp], b: Budget) -> float:
    """Seconds, from COST (measured unit costs): each run once, plus every evaluation."""
    runs = {e.run.id: e.run for e in exps}
    t = sum(COST["process"] + r.encoder_steps * COST["encoder_step"] + r.joint_steps * COST["joint_step"]
            for r in runs.values())
    for e in exps:
        a = dict(zip(e.eval_args[::2], e.eval_args[1::2]))
        per_step = COST["image_step"] if float(a["--guidance-scale"]) == 1.0 else COST["image_step_guided"]
        t += COST["process"] + b.eval_n * (int(a["--steps"]) * per_step + COST["image_score"])
    return t


# ------------------------------------------------------------------------------------------ running
def _piti(args, log: Path, device: str | None) -> str:
    """Run `piti ARGS` (stdout returned, stderr appended to LOG); one line and exit 1 on failure."""
    cmd = [sys.executable, "-m", "piti_cli.main", *args] + (["--device", device] if device else [])
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
           "MKL_NUM_THREADS": os.environ.get("MKL_NUM_THREADS", "1")}
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", encoding="utf-8") as err:
        err.write(f"$ piti {' '.join(map(str, args))}\n")
        err.flush()
        res = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
    if res.returncode != 0:
        sys.exit(f"error: `piti {args[0]}` failed (exit {res.returncode}); see {log}")
    return res.stdout


def _steps_trained(run_dir: Path) -> dict:
    """Last step of each stage in metrics.jsonl (early stopping may end a few-shot stage before its plan)."""
    steps: dict[str, int] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            if "stage" in row:
                steps[row["stage"]] = max(steps.get(row["stage"], 0), int(row["step"]))
    return steps


def ensure_run(out: Path, run: Run, device: str | None, resume: bool) -> dict:
    """Train ``run`` into out/runs/<id> unless it is finished; its record (command, seconds, steps)."""
    from piti_core.io import atomic_write_text

    run_dir, record_path = out / "runs" / run.id, out / "runs" / f"{run.id}.json"
    args = ["train", "--task", run.task, *run.args, "--out", str(run_dir)]
    record = json.loads(record_path.read_text()) if record_path.is_file() else None
    if record is not None and record["command"] != args[:-2]:
        sys.exit(f"error: {run_dir} was trained with other settings ({record_path}); use another --out")
    if record is not None and record.get("finished"):
        return record
    again = resume and (run_dir / "config.json").is_file()
    record = {"command": args[:-2], "seconds": (record or {}).get("seconds", 0.0), "finished": False}
    atomic_write_text(record_path, json.dumps(record, indent=2) + "\n")
    t0 = time.perf_counter()
    try:
        _piti(args + (["--resume"] if again else ["--overwrite"]), out / "logs" / f"train-{run.id}.log", device)
        record.update(finished=True, steps=_steps_trained(run_dir))
    finally:  # an interrupted attempt's time counts too
        record["seconds"] = round(record["seconds"] + time.perf_counter() - t0, 1)
        atomic_write_text(record_path, json.dumps(record, indent=2) + "\n")
    return record


def _eval_command(out: Path, e: Exp) -> list[str]:
    return ["eval", "--run", str(out / "runs" / e.run.id), *e.eval_args]


def _finished(out: Path, e: Exp) -> dict | None:
    """The saved result of ``e``, None when it has not run; exits when it ran with other settings."""
    path = out / "results" / f"{e.id}.json"
    if not path.is_file():
        return None
    result = json.loads(path.read_text())
    if result["eval_args"] != list(e.eval_args) or result["train_command"] != ["train", "--task", e.run.task,
                                                                               *e.run.args]:
        sys.exit(f"error: {path} was made with other settings than the knobs now ask for; use another --out")
    return result


def run_experiment(out: Path, e: Exp, device: str | None, resume: bool) -> dict:
    from piti_core.io import atomic_write_text

    run = ensure_run(out, e.run, device, resume)
    eval_dir = out / "evals" / e.id
    args = [*_eval_command(out, e), "--json", "--out", str(eval_dir), "--overwrite"]
    t0 = time.perf_counter()
    record = json.loads(_piti(args, out / "logs" / f"eval-{e.id}.log", device))
    result = {"format": "piti-reproduce/1", "id": e.id, "block": e.block, "labels": e.labels, "run": e.run.id,
              "train_command": run["command"], "train_seconds": run["seconds"], "steps": run["steps"],
              "eval_command": args[:-4], "eval_args": list(e.eval_args),
              "eval_seconds": round(time.perf_counter() - t0, 1),
              "sampling_seconds": record["seconds"], "n": record["data"]["n"], "metrics": record["metrics"],
              "better": {k: v.get("better", "") for k, v in record["metric_info"].items()},
              "real": {k: v["real"] for k, v in record["metric_info"].items() if v.get("real") is not None},
              "notes": record["notes"]}
    atomic_write_text(out / "results" / f"{e.id}.json", json.dumps(result, indent=2) + "\n")
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path, help="output folder")
    ap.add_argument("--smoke", action="store_true", help="tiny budgets: checks the plumbing, numbers mean nothing")
    ap.add_argument("--only", default="a,b,c,d", help="comma-separated blocks to run (default: a,b,c,d)")
    ap.add_argument("--resume", action="store_true", help="continue in --out: skip finished experiments")
    ap.add_argument("--plan", action="store_true", help="list the experiments and an estimated time; run nothing")
    ap.add_argument("--device", default=None, help="passed to piti train/eval (default: theirs)")
    args = ap.parse_args()
    blocks = {x.strip() for x in args.only.split(",") if x.strip()}
    if not blocks or blocks - set("abcd"):
        ap.error(f"--only takes blocks among a,b,c,d, got {args.only!r}")
    budget = SMOKE if args.smoke else FULL
    exps = plan(budget, "".join(sorted(blocks)))
    if args.plan:
        for e in exps:
            print(f"{e.id:28s} run {e.run.id:28s} eval {' '.join(e.eval_args)}")
        print(f"{len(exps)} evaluations, {len({e.run.id for e in exps})} runs; estimated "
              f"{estimate(exps, budget) / 3600:.1f} h at the unit costs in COST")
        return
    out = args.out
    if not args.resume and any((out / d).is_dir() and any((out / d).iterdir()) for d in ("runs", "results")):
        sys.exit(f"error: {out} already holds runs or results; pass --resume to continue there, or choose another --out")
    mode = "smoke" if args.smoke else "full"
    marker = out / "mode.txt"
    if marker.is_file() and marker.read_text().strip() != mode:
        sys.exit(f"error: {out} holds a {marker.read_text().strip()} run; use another --out for a {mode} run")
    from piti_core.io import atomic_write_text

    atomic_write_text(marker, mode + "\n")
    t_start = time.perf_counter()
    for i, e in enumerate(exps, 1):
        if _finished(out, e) is not None:
            print(f"[{i}/{len(exps)}] {e.id}: done earlier", file=sys.stderr)
            continue
        t0 = time.perf_counter()
        print(f"[{i}/{len(exps)}] {e.id} ...", file=sys.stderr, flush=True)
        m = run_experiment(out, e, args.device, args.resume)["metrics"]
        print(f"[{i}/{len(exps)}] {e.id}: {time.perf_counter() - t0:.0f} s; FID {m.get('fid')}, oracle FID "
              f"{m.get('oracle_fid')}  (total {(time.perf_counter() - t_start) / 60:.1f} min)", file=sys.stderr)
    # the tables hold every finished experiment of the plan, also those of earlier --only runs
    results = [r for r in (_finished(out, e) for e in plan(budget, "abcd")) if r is not None]
    text = render(results, budget, mode, " ".join(["python docs/scripts/reproduce.py", *sys.argv[1:]]))
    atomic_write_text(out / "reproduce.md", text)
    print(text)
    print(f"wrote {out / 'reproduce.md'} ({(time.perf_counter() - t_start) / 60:.1f} min)", file=sys.stderr)


if __name__ == "__main__":
    main()
