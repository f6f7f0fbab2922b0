"""The built-in metrics of ``piti eval``, registered like any metric plugin (``piti_core.metrics``):

* ``fid`` — FID and KID of the samples against the real images in the Inception-v3 pool3 space
  (values ``fid``, ``kid``, ``kid_std``);
* ``alignment`` — the run's task's own measure of how well samples follow their conditions
  (:meth:`piti_core.tasks.Task.alignment`), also on the real images as a reference; each value's
  direction comes from ``Task.alignment_directions``, else from its name;
* ``oracle-fid`` — on the toy world, FID and KID in the toy-world oracle's feature space (values
  ``oracle_fid``, ``oracle_kid``, ``oracle_kid_std``; not comparable with Inception FID).
"""

from __future__ import annotations

from piti_core.hookspecs import hookimpl
from piti_core.metrics import Metric, MetricSkipped, MetricValue, alignment_direction

__all__ = ["InceptionFID", "OracleFID", "TaskAlignment", "register_metrics"]


class InceptionFID(Metric):
    name = "fid"
    direction = "lower"
    needs = frozenset({"features"})
    label = "FID"
    outputs = ("fid", "kid", "kid_std")

    def unavailable(self, reason: str) -> dict[str, MetricValue]:
        return {"fid": MetricValue(None, label="FID", note=reason), "kid": MetricValue(None, label="KID", note=reason),
                "kid_std": MetricValue(None, better="", label="KID std", note=reason)}

    def finalize(self, state, ctx):
        from piti_core.eval.evaluate import fid_kid

        return fid_kid(ctx.features.real, ctx.features.samples, "",
                       f"Inception-v3 pool3 (TF 2015-12-05), {ctx.resolution}px samples vs real images")


class TaskAlignment(Metric):
    name = "alignment"
    direction = "higher"  # nominal: each value carries the direction the task declares (or its name tells)
    needs = frozenset({"samples", "real", "batch"})
    label = "task alignment"

    def start(self, ctx) -> dict:
        return {"samples": {}, "real": {}, "count": 0}

    def update(self, state: dict, batch, ctx) -> dict:
        n = batch.size
        for key, images in (("samples", batch.samples), ("real", batch.real)):
            for name, value in ctx.task.alignment(images, batch.batch, ctx.cfg).items():
                state[key][name] = state[key].get(name, 0.0) + float(value) * n
        state["count"] += n
        return state

    def finalize(self, state: dict, ctx) -> dict[str, MetricValue]:
        count, real = state["count"] or 1, state["real"]
        return {name: MetricValue(total / count, better=alignment_direction(ctx.task, name), label=name,
                                  note=f"alignment ({ctx.task.name} task)",
                                  info={"real": real[name] / count if name in real else None})
                for name, total in state["samples"].items()}


class OracleFID(Metric):
    name = "oracle-fid"
    direction = "lower"
    needs = frozenset({"samples", "real"})
    label = "oracle FID"
    outputs = ("oracle_fid", "oracle_kid", "oracle_kid_std")

    def start(self, ctx) -> dict:
        if not ctx.toy_world:
            raise MetricSkipped("")
        if ctx.n < 2:
            raise MetricSkipped(f"toy-world oracle FID/KID skipped: they need at least 2 images; n = {ctx.n}")
        from piti_core.eval.evaluate import load_oracle

        oracle, note = load_oracle(ctx.device)
        if oracle is None:
            raise MetricSkipped(note)
        return {"oracle": oracle, "samples": [], "real": []}

    def update(self, state: dict, batch, ctx) -> dict:
        import torch

        with torch.inference_mode():
            state["samples"].append(state["oracle"].features(batch.samples).float().cpu())
            state["real"].append(state["oracle"].features(batch.real).float().cpu())
        return state

    def finalize(self, state: dict, ctx):
        from piti_core.eval.evaluate import feature_stats, fid_kid

        return fid_kid(feature_stats(state["real"]), feature_stats(state["samples"]), "oracle_",
                       "toy-world oracle features: NOT comparable with Inception FID")


@hookimpl
def register_metrics(register):
    register(InceptionFID())
    register(TaskAlignment())
    register(OracleFID())
