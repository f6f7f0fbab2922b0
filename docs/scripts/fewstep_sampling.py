"""Few-step sampling at equal quality: `piti eval` over a list of sampling settings (docs/performance.md).

    python docs/scripts/fewstep_sampling.py RUN --out DIR [--n 48] [--seed 0] [--second-seed 1] [--resume]

Every row is one ``piti eval RUN --n N --seed S --batch-size N --json`` subprocess on the same first N
validation images with the same seed. With one batch of all N images the base's initial noise x_T is
the same in every row (common random numbers: DDIM and DPM-Solver++ draw nothing else, DDPM draws its
per-step noise after it), so rows differ by their sampling settings, not by their noise.

Rows, in three phases:

1. the baseline = the official recipe: DDPM "250" base + DDPM "fast27" upsampler, plain guidance 1.3,
   the run's ``sample.upsampler_start``; then base candidates DDPM "50", "35", "30" and "25", DPM-Solver++(2M) at
   10 / 15 / 20 / 25 steps, DDIM "ddim25" and SDE-DPM-Solver++(2M) at 6 / 8 / 10 / 15 / 20 steps, each
   with the baseline's upsampler;
2. upsampler candidates (DPM-Solver++ / DDIM at about 5 and 10 evaluations after truncation,
   SDE-DPM-Solver++ at about 5) after the base candidate with the fewest decoder rows that passed
   phase 1 (the lowest FID when none passed; ``--base`` names another);
   then the baseline at upsampler start 1.0 (official; information, never recommended), and that base
   candidate with upsamplers from pure noise (``PURE_NOISE_UPSAMPLERS``, role "pure-noise"), judged against
   the baseline at start 1.0 (the official start);
3. with ``--second-seed``: the baseline, phase 1's pick, the recommended setting (and the recommended
   pure-noise setting with the official recipe at start 1.0) again with that
   seed (their noise level).

Cost is counted in **decoder rows per image**: base steps × 2 when guidance runs (one batched pass
over [cond; null] is two rows) or × 1 at scale 1 / guidance none, plus the upsampler's steps after
truncation at ``upsampler_start`` (the task encoder runs once per image and is not counted). A
setting passes when Inception FID <= 1.05 × baseline FID AND alignment (edge F1) >= 0.95 × baseline;
a second column applies the toy-world oracle's FID (<= 1.05 × baseline) on top, for information.

Writes DIR/fewstep.json, DIR/fewstep.md, DIR/evals/<row>/ (piti eval's output) and DIR/logs/<row>.log.
``--resume`` reuses rows whose metrics.json is already there with the same settings.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

GLIDE_GFLOP = {"base": 230.4, "upsampler": 1272.0}  # per decoder row, `piti bench --preset glide` (performance.md)
TOLERANCE = 0.05
# upsampler candidates from pure noise (start 1.0), after phase 2's base: fast27 and SDE at 8, 10, 15 steps
PURE_NOISE_UPSAMPLERS = (("ddpm", "fast27"), ("dpmpp-sde", "8"), ("dpmpp-sde", "10"), ("dpmpp-sde", "15"))


def setting(sampler, steps, up_sampler="ddpm", up_steps="fast27", start=None, guidance="plain", scale=1.3,
            note="", role="candidate", interval=None):
    """One row's sampling settings; ``role`` is "baseline", "candidate" or "info" (shown, never recommended).
    ``interval`` (lo, hi): guidance only there (``--guidance-interval``); the key exists only when given,
    so rows evaluated before it existed still match with --resume."""
    s = {"sampler": sampler, "steps": str(steps), "upsampler_sampler": up_sampler, "upsampler_steps": str(up_steps),
         "upsampler_start": start, "guidance": guidance, "guidance_scale": scale, "note": note, "role": role}
    if interval is not None:
        s["guidance_interval"] = [float(v) for v in interval]
    return s


def row_name(s: dict, seed: int) -> str:
    gi = f"-gi{s['guidance_interval'][0]}-{s['guidance_interval'][1]}" if s.get("guidance_interval") else ""
    return (f"{s['sampler']}{s['steps']}-up-{s['upsampler_sampler']}{s['upsampler_steps']}"
            f"-start{s['upsampler_start']}-{s['guidance']}{s['guidance_scale']}{gi}-seed{seed}")


def decoder_rows(s: dict, cfg) -> dict:
    """Base and upsampler decoder rows per image for setting ``s`` (upsampler steps after truncation)."""
    from piti_core.diffusion import build_schedule
    from piti_core.sampling import truncate_schedule

    from piti_core.diffusion.guidance import guided_steps

    base_schedule = build_schedule(cfg.diffusion.schedule, cfg.diffusion.steps, s["steps"])
    base = base_schedule.num_timesteps
    guided = s["guidance"] != "none" and float(s["guidance_scale"]) != 1.0
    interval = tuple(s.get("guidance_interval") or (0.0, 1.0))
    n_guided = guided_steps(base_schedule, interval) if guided else 0
    up = build_schedule(cfg.diffusion.upsampler_schedule, cfg.diffusion.steps, s["upsampler_steps"])
    if s["upsampler_start"] < 1.0:
        up = truncate_schedule(up, cfg.diffusion.upsampler_schedule, s["upsampler_start"])
    rows = {"base_steps": base, "base_rows": base + n_guided, "upsampler_rows": up.num_timesteps,
            "upsampler_first_t": int(up.timestep_map[-1])}
    rows["decoder_rows"] = rows["base_rows"] + rows["upsampler_rows"]
    rows["glide_tflop"] = round((rows["base_rows"] * GLIDE_GFLOP["base"]
                                 + rows["upsampler_rows"] * GLIDE_GFLOP["upsampler"]) / 1000, 2)
    return rows


def run_eval(run: str, out: Path, s: dict, seed: int, n: int, resume: bool) -> dict:
    """One `piti eval` row (or its stored result with --resume); returns metrics.json's record."""
    name = row_name(s, seed)
    eval_dir, log = out / "evals" / name, out / "logs" / f"{name}.log"
    wanted = {k: s[k] for k in s if k not in ("note", "role")} | {"seed": seed}
    stored = eval_dir / "metrics.json"
    if resume and stored.is_file():
        record = json.loads(stored.read_text())
        have = {k: record["settings"].get(k) for k in wanted}
        if have == wanted and record["data"]["n"] == n:
            print(f"[resume] {name}", flush=True)
            return record
    cmd = [sys.executable, "-m", "piti_cli.main", "eval", "--run", run, "--n", str(n), "--seed", str(seed),
           "--batch-size", str(n), "--out", str(eval_dir), "--overwrite", "--json",
           "--sampler", s["sampler"], "--steps", s["steps"], "--upsampler-sampler", s["upsampler_sampler"],
           "--upsampler-steps", s["upsampler_steps"], "--upsampler-start", str(s["upsampler_start"]),
           "--guidance", s["guidance"], "--guidance-scale", str(s["guidance_scale"])]
    if s.get("guidance_interval"):
        cmd += ["--guidance-interval", ",".join(str(v) for v in s["guidance_interval"])]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", COLUMNS="100")
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    print(f"[run] {name} ...", flush=True)
    with open(log, "w") as err:
        err.write(" ".join(cmd) + "\n")
        err.flush()
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"piti eval failed for {name} (exit {proc.returncode}); see {log}")
    record = json.loads(proc.stdout)
    print(f"[done] {name} in {time.time() - started:.0f} s: fid {record['metrics']['fid']:.2f} "
          f"oracle_fid {record['metrics']['oracle_fid']:.4f}", flush=True)
    return record


def make_row(s: dict, seed: int, record: dict, cfg, alignment: str) -> dict:
    m = record["metrics"]
    return {"name": row_name(s, seed), "setting": s, "seed": seed, **decoder_rows(s, cfg),
            "seconds": record["seconds"], "fid": m["fid"], "kid": m["kid"], "oracle_fid": m.get("oracle_fid"),
            "alignment": m[alignment], "alignment_real": record["metric_info"][alignment].get("real")}


def judge(row: dict, base: dict) -> None:
    """Ratios to the baseline row (same seed) and the 5% criterion, in place."""
    for key in ("fid", "kid", "oracle_fid", "alignment"):
        row[f"{key}_ratio"] = row[key] / base[key] if row[key] is not None and base[key] else None
    row["passes"] = bool(row["fid"] <= (1 + TOLERANCE) * base["fid"]
                         and row["alignment"] >= (1 - TOLERANCE) * base["alignment"])
    # the same test with the toy-world oracle's FID as well (information: the brief's criterion is Inception FID)
    row["passes_oracle"] = bool(row["passes"] and row["oracle_fid"] is not None
                                and row["oracle_fid"] <= (1 + TOLERANCE) * base["oracle_fid"])


def label(s: dict) -> str:
    g = "no guidance" if s["guidance"] == "none" or float(s["guidance_scale"]) == 1 else \
        f"{s['guidance']} {s['guidance_scale']}"
    if s.get("guidance_interval") and g != "no guidance":
        g += f" in t/T [{s['guidance_interval'][0]:g}, {s['guidance_interval'][1]:g}]"
    return (f"{s['sampler']} \"{s['steps']}\" + up {s['upsampler_sampler']} \"{s['upsampler_steps']}\" "
            f"@{s['upsampler_start']}, {g}")


def table(rows: list[dict], alignment: str) -> str:
    head = ("| setting | seed | base rows | up rows | decoder rows / image | glide TFLOP / image | eval s | FID | "
            f"×base | KID | oracle FID | ×base | {alignment} | ×base | passes | passes with oracle FID too |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        s = r["setting"]
        note = f" ({s['note']})" if s["note"] else ""
        lines.append(
            f"| {label(s)}{note} | {r['seed']} | {r['base_rows']} | {r['upsampler_rows']} | {r['decoder_rows']} | "
            f"{r['glide_tflop']} | {r['seconds']:.0f} | {r['fid']:.2f} | {r['fid_ratio']:.3f} | {r['kid']:.4f} | "
            f"{r['oracle_fid']:.4f} | {r['oracle_fid_ratio']:.3f} | {r['alignment']:.4f} | "
            f"{r['alignment_ratio']:.3f} | {'yes' if r['passes'] else 'no'} | "
            f"{'yes' if r['passes_oracle'] else 'no'} |")
    return "\n".join(lines)


def judged_rows(args, out: Path, cfg, baseline: dict, candidates: list[dict], seeds: list[int], jobs: int,
                name: str, title: str) -> list[dict]:
    """The baseline and ``candidates`` for each seed, ``jobs`` rows at once (one thread each; stored rows
    are reused), each judged against its seed's baseline; writes DIR/<name>.json and DIR/<name>.md."""
    from concurrent.futures import ThreadPoolExecutor

    from piti_core.io import atomic_write_text

    work = [(s, seed) for seed in seeds for s in [baseline] + candidates]  # each seed's baseline first
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        records = list(pool.map(lambda job: run_eval(args.run, out, job[0], job[1], args.n, True), work))
    rows, base_rows = [], {}
    for (s, seed), record in zip(work, records):
        row = make_row(s, seed, record, cfg, args.alignment)
        if s is baseline:
            base_rows[seed] = row
        judge(row, base_rows[seed])
        rows.append(row)
    atomic_write_text(out / f"{name}.json", json.dumps(rows, indent=2) + "\n")
    md = (f"{title} on `{args.run}`: n = {args.n}, seeds {', '.join(map(str, seeds))}, passes = FID <= "
          f"{1 + TOLERANCE:.2f} x baseline and {args.alignment} >= {1 - TOLERANCE:.2f} x baseline (same seed)."
          f"\n\n{table(rows, args.alignment)}\n")
    atomic_write_text(out / f"{name}.md", md)
    print(md)
    return rows


def study_arguments(description: str) -> argparse.ArgumentParser:
    """The arguments every toy-world sampling study takes: RUN, --out, --n, --seed, --alignment."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("run")
    ap.add_argument("--out", required=True)
    ap.add_argument("--n", type=int, default=48)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--alignment", default="edge_f1", help="metrics.json key of the alignment metric.")
    return ap


def main(argv=None) -> None:
    ap = study_arguments(__doc__.splitlines()[0])
    ap.add_argument("--second-seed", type=int, default=None,
                    help="Repeat the baseline and the recommended setting with this seed (noise level).")
    ap.add_argument("--base", default=None, metavar="SAMPLER:STEPS",
                    help="Run phases 2 and 3 after this base setting instead of phase 1's cheapest passing one "
                         "(e.g. dpmpp-sde:10); it is evaluated in phase 1 if it is not there.")
    ap.add_argument("--resume", action="store_true", help="Reuse rows already evaluated in --out.")
    ap.add_argument("--overwrite", action="store_true", help="Replace results already in --out.")
    args = ap.parse_args(argv)

    from piti_core.config import load_config
    from piti_core.plugins import get_plugin_manager

    out = Path(args.out)
    if (out / "fewstep.json").exists() and not (args.resume or args.overwrite):
        sys.exit(f"{out} already holds results; pass --resume to reuse them or --overwrite to redo them")
    cfg = load_config(Path(args.run) / "config.json", get_plugin_manager().task_sections())
    start = cfg.sample.upsampler_start
    up = [("dpmpp", "12"), ("dpmpp", "25"), ("ddim", "12"), ("ddim", "25"), ("dpmpp-sde", "12")] if start <= 0.4 \
        else [("dpmpp", "5"), ("dpmpp", "10"), ("ddim", "5"), ("ddim", "10"), ("dpmpp-sde", "5")]  # ~5, 10 rows
    baseline = setting("ddpm", "250", start=start, note="baseline: official 250 + fast27", role="baseline")
    phase1 = [baseline] + [setting("ddpm", k, start=start) for k in ("50", "35", "30", "25")]
    phase1 += [setting("dpmpp", k, start=start) for k in (10, 15, 20, 25)] + [setting("ddim", "ddim25", start=start)]
    phase1 += [setting("dpmpp-sde", k, start=start) for k in (6, 8, 10, 15, 20)]
    results: list[dict] = []

    def evaluate(s: dict, seed: int, ref: dict | None = None) -> dict:
        """One row, judged against ``ref`` (default: the baseline row of the same seed)."""
        row = make_row(s, seed, run_eval(args.run, out, s, seed, args.n, args.resume), cfg, args.alignment)
        if ref is None:
            ref = row if s is baseline else next(r for r in results if r["setting"] is baseline and r["seed"] == seed)
        judge(row, ref)
        results.append(row)
        write(out, results, args)
        return row

    def fewest_passing(rows, role="candidate"):
        passed = [r for r in rows if r["setting"]["role"] == role and r["passes"]]
        return min(passed, key=lambda r: (r["decoder_rows"], r["fid"])) if passed else None

    forced = None
    if args.base:
        sampler, _, steps = args.base.partition(":")
        if not sampler or not steps:
            sys.exit(f"--base {args.base!r}: give SAMPLER:STEPS, e.g. dpmpp-sde:10")
        forced = setting(sampler, steps, start=start)
        phase1 = [s for s in phase1 if s != forced] + [forced]
    for s in phase1:
        evaluate(s, args.seed)
    # phase 2: short upsamplers after the cheapest passing base (the best-FID candidate when none passed)
    pick = fewest_passing(results) or min(results[1:], key=lambda r: r["fid"])
    b = forced or pick["setting"]
    for sampler, steps in up:
        evaluate(setting(b["sampler"], b["steps"], sampler, steps, start=start), args.seed)
    same_base = [r for r in results if not forced or
                 (r["setting"]["sampler"], r["setting"]["steps"]) == (forced["sampler"], forced["steps"])]
    chosen = fewest_passing(same_base)
    chosen_pure = None
    if start != 1.0:
        official1 = evaluate(setting("ddpm", "250", start=1.0, note="official start 1.0", role="info"), args.seed)
        # the upsampler from pure noise (the official start) after the same base, judged
        # against the official recipe at start 1.0
        for sampler, steps in PURE_NOISE_UPSAMPLERS:
            evaluate(setting(b["sampler"], b["steps"], sampler, steps, start=1.0, role="pure-noise",
                             note="vs official start 1.0"), args.seed, ref=official1)
        chosen_pure = fewest_passing(results, role="pure-noise")
    if args.second_seed is not None:  # the baseline, phase 1's pick and the recommendations: their noise level
        again = [baseline, b] + ([chosen["setting"]] if chosen else [])
        for s in [s for i, s in enumerate(again) if s not in again[:i]]:
            evaluate(s, args.second_seed)
        if chosen_pure:
            ref = evaluate(official1["setting"], args.second_seed)
            evaluate(chosen_pure["setting"], args.second_seed, ref=ref)
    write(out, results, args, chosen, chosen_pure)
    print(f"recommended: {label(chosen['setting']) if chosen else 'none passed'}; see {out / 'fewstep.md'}")


def write(out: Path, results: list[dict], args, chosen: dict | None = None, chosen_pure: dict | None = None) -> None:
    from piti_core.io import atomic_write_text

    record = {"run": str(args.run), "n": args.n, "seed": args.seed, "second_seed": args.second_seed,
              "alignment": args.alignment, "tolerance": TOLERANCE, "rows": results,
              "recommended": chosen["name"] if chosen else None,
              "recommended_pure_noise": chosen_pure["name"] if chosen_pure else None}
    atomic_write_text(out / "fewstep.json", json.dumps(record, indent=2) + "\n")
    text = (f"Few-step sampling on `{args.run}`: n = {args.n} val images, seed {args.seed} (common random "
            f"numbers), passes = FID <= {1 + TOLERANCE:.2f} x baseline and {args.alignment} >= "
            f"{1 - TOLERANCE:.2f} x baseline (same seed).\n\n{table(results, args.alignment)}\n")
    if chosen:
        text += f"\nRecommended (fewest decoder rows that pass): {label(chosen['setting'])}\n"
    if chosen_pure:
        text += f"\nFrom pure noise (against the official recipe at start 1.0): {label(chosen_pure['setting'])}\n"
    atomic_write_text(out / "fewstep.md", text)


if __name__ == "__main__":
    main()
