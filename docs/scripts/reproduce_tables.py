"""The markdown tables of docs/scripts/reproduce.py: one per block, seeds averaged, plus a mechanical
check of each claim (which arm is better on which metric). Used by reproduce.py; no I/O here."""

from __future__ import annotations

import dataclasses
import statistics
import time

DISTANCES = ("fid", "kid", "oracle_fid")  # shown in this order, then the task's alignment metrics
HIDDEN = ("kid_std", "oracle_kid", "oracle_kid_std")


def _columns(results: list[dict]) -> list[str]:
    keys = [k for k in DISTANCES if any(k in r["metrics"] for r in results)]
    for r in results:
        keys += [k for k in r["metrics"] if k not in keys and k not in HIDDEN and k not in DISTANCES]
    return keys


def _head(results: list[dict], key: str) -> str:
    return {"fid": "FID", "kid": "KID", "oracle_fid": "oracle FID"}.get(key, key) + _arrow(results, key)


def _arrow(results: list[dict], key: str) -> str:
    better = next((r["better"].get(key, "") for r in results if key in r["better"]), "")
    return {"lower": " ↓", "higher": " ↑"}.get(better, "")


def _group(results: list[dict], *keys: str) -> dict[tuple, list[dict]]:
    """Results with equal labels ``keys`` (the seeds of one setting), in first-seen order."""
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault(tuple(r["labels"].get(k) for k in keys), []).append(r)
    return groups


def _mean(rs: list[dict], key: str) -> float | None:
    vals = [r["metrics"].get(key) for r in rs if r["metrics"].get(key) is not None]
    return statistics.fmean(vals) if vals else None


def _cell(rs: list[dict], key: str) -> str:
    vals = [r["metrics"].get(key) for r in rs if r["metrics"].get(key) is not None]
    if not vals:
        return "n/a"
    if len(vals) == 1:
        return f"{vals[0]:.4g}"
    return f"{statistics.fmean(vals):.4g} ± {statistics.stdev(vals):.2g}"


def _steps(rs: list[dict]) -> str:
    enc = statistics.fmean(sum(v for k, v in r["steps"].items() if k != "stage2") for r in rs)
    joint = statistics.fmean(r["steps"].get("stage2", 0) for r in rs)
    return f"{enc:.0f} + {joint:.0f}"


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]


def _better(a: list[dict], b: list[dict], key: str) -> bool | None:
    """Is setting ``a`` better than ``b`` on ``key`` (seed means)? None when either is missing."""
    ma, mb = _mean(a, key), _mean(b, key)
    direction = next((r["better"].get(key) for r in a if r["better"].get(key)), "")
    if ma is None or mb is None or not direction:
        return None
    return ma < mb if direction == "lower" else ma > mb


def _verdict(a: list[dict], b: list[dict], keys: list[str], name_a: str, name_b: str) -> str:
    wins = {k: _better(a, b, k) for k in keys}
    known = [k for k, v in wins.items() if v is not None]
    lost = [k for k in known if not wins[k]]
    text = f"{name_a} better than {name_b} on {len(known) - len(lost)} of {len(known)} metrics"
    return text + (f" (not on: {', '.join(lost)})" if lost else "")


def _real_row(rs: list[dict], cols: list[str], lead: int) -> list[str]:
    real = next((r["real"] for r in rs if r.get("real")), {})
    return ["real images"] + [""] * (lead - 1) + [f"{real[k]:.4g}" if k in real else "" for k in cols]


def block_a(results: list[dict]) -> list[str]:
    out = ["## (a) Finetuning from the prior vs training from scratch (same step budget)", ""]
    for (task,), rs in _group(results, "task").items():
        cols = _columns(rs)
        arms = _group(rs, "init")
        rows = [[init, _steps(g)] + [_cell(g, k) for k in cols] for (init,), g in arms.items()]
        out += [f"**{task}**", ""] + _table(["init", "steps (encoder-only + joint)"] +
                                            [_head(rs, k) for k in cols], rows + [_real_row(rs, cols, 2)])
        if ("prior",) in arms and ("scratch",) in arms:
            out += ["", "Check: " + _verdict(arms[("prior",)], arms[("scratch",)], cols, "prior", "scratch") + "."]
        out.append("")
    return out


def block_b(results: list[dict]) -> list[str]:
    task = results[0]["labels"]["task"]
    cols = _columns(results)
    out = [f"## (b) Few-shot ({task}): prior vs scratch", ""]
    groups = _group(results, "shots", "init")
    rows = [[str(shots), init, _steps(g)] + [_cell(g, k) for k in cols] for (shots, init), g in groups.items()]
    out += _table(["shots", "init", "steps (encoder-only + joint)"] + [_head(results, k) for k in cols],
                  rows + [_real_row(results, cols, 3)])
    out.append("")
    for shots in sorted({s for s, _ in groups}):
        p, s = groups.get((shots, "prior")), groups.get((shots, "scratch"))
        if p and s:
            gaps = ", ".join(f"{k} {_mean(s, k) - _mean(p, k):+.4g}" for k in cols
                             if _mean(s, k) is not None and _mean(p, k) is not None)
            out.append(f"- Check, {shots} shots: {_verdict(p, s, cols, 'prior', 'scratch')}; "
                       f"scratch − prior: {gaps}.")
    return out + [""]


def block_c(results: list[dict]) -> list[str]:
    cols = _columns(results)
    out = [f"## (c) Plain vs normalized guidance ({results[0]['labels']['task']}, prior run of (a))", ""]
    groups = _group(results, "guidance", "scale")
    rows = [[kind, f"{scale:g}"] + [_cell(g, k) for k in cols] for (kind, scale), g in groups.items()]
    out += _table(["guidance", "scale s"] + [_head(results, k) for k in cols], rows)
    out.append("")
    for scale in sorted({s for _, s in groups if s != 1.0}):
        p, n = groups.get(("plain", scale)), groups.get(("normalized", scale))
        if p and n:
            out.append(f"- Check, s = {scale:g}: {_verdict(n, p, cols, 'normalized', 'plain')}.")
    for kind in ("plain", "normalized"):
        mine = {s: g for (k, s), g in groups.items() if k in (kind, "both")}
        best = {key: min(mine, key=lambda s: _mean(mine[s], key) * (1 if _arrow(results, key) == " ↓" else -1))
                for key in cols if all(_mean(g, key) is not None for g in mine.values()) and _arrow(results, key)}
        if best:
            out.append(f"- Best scale, {kind}: " + ", ".join(f"{k} at s = {s:g}" for k, s in best.items()) + ".")
    return out + [""]


def block_d(results: list[dict]) -> list[str]:
    cols = _columns(results)
    out = [f"## (d) Samplers ({results[0]['labels']['task']}, prior run of (a))", ""]
    groups = _group(results, "sampler", "steps")
    rows = [[sampler, str(steps)] + [_cell(g, k) for k in cols] +
            [f"{statistics.fmean(r['sampling_seconds'] / r['n'] for r in g):.2f}"]
            for (sampler, steps), g in groups.items()]
    out += _table(["sampler", "steps"] + [_head(results, k) for k in cols] + ["s / image (sample + score)"], rows)
    out.append("")
    ref_key = next((key for key in groups if key[0] == "ddpm"), None)
    if ref_key:
        for key, g in groups.items():
            if key != ref_key:
                out.append(f"- Check, {key[0]}-{key[1]} vs ddpm-{ref_key[1]}: "
                           f"{_verdict(g, groups[ref_key], cols, f'{key[0]}-{key[1]}', 'ddpm')}.")
    return out + [""]


def render(results: list[dict], budget, mode: str, command: str) -> str:
    runs = {r["run"]: r["train_seconds"] for r in results}
    hours = (sum(runs.values()) + sum(r["eval_seconds"] for r in results)) / 3600
    n = sorted({r["n"] for r in results})
    lines = [f"# Reproduction on the toy world ({mode} budget)", ""]
    if mode == "smoke":
        lines += ["**SMOKE RUN: a few training steps and n = 4 images. It checks the plumbing; the numbers below "
                  "mean nothing.**", ""]
    lines += [f"`{command}` — {time.strftime('%Y-%m-%d %H:%M')}, {len(results)} evaluations of {len(runs)} runs, "
              f"{hours:.2f} h of training and evaluation. Every FID/KID is on n = {', '.join(map(str, n))} val "
              "images (biased upward at this n: compare only within a table); oracle FID is in the toy-world "
              "oracle's feature space (not comparable with Inception FID); \"real images\" rows give the "
              "alignment of the ground truth itself. Steps: encoder-only (stage1 + stage1-cont) + joint "
              "(stage2) steps actually trained.", "",
              "Budget: " + ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(budget).items()), ""]
    for name, fn in (("a", block_a), ("b", block_b), ("c", block_c), ("d", block_d)):
        mine = [r for r in results if r["block"] == name]
        if mine:
            lines += fn(mine)
    return "\n".join(lines).rstrip() + "\n"
