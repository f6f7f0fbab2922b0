"""A third-party-style plugin for the condition-input tests.

``buggy`` reads sketches like the built-in task, then breaks what ``preprocess`` returns in the way
``BuggyTask.bug`` names (a test sets it), so ``piti sample`` must blame the plugin, not the user's
file. ``keypoints`` reads its conditions from ``.json`` files of points (``{"points": [[x, y], ...]}``,
coordinates in [0, 1]) drawn as a sketch, and asks the demo for an upload widget.
"""

from __future__ import annotations

import json

from piti_core.contract import DataError, hookimpl
from piti_plugins.sketch.task import SketchTask


class BuggyTask(SketchTask):
    name = "buggy"
    description = "sketch -> image, with a preprocess() that a test breaks"
    bug: str | None = None

    def preprocess(self, source, cfg):
        import torch

        cond = super().preprocess(source, cfg)
        s = cfg.encoder.cond_size
        broken = {
            "shape": lambda: torch.zeros(1, 3, s // 2, s // 2),
            "unbatched": lambda: cond[0],
            "range": lambda: cond * 3,
            "nan": lambda: torch.where(torch.rand_like(cond) < 0.5, cond, torch.full_like(cond, float("nan"))),
            "dtype": lambda: cond.round().long(),
            "numpy": lambda: cond.numpy(),
        }
        return broken[type(self).bug]() if type(self).bug else cond


class KeypointsTask(SketchTask):
    name = "keypoints"
    description = "keypoints (.json) -> image"

    def input_suffixes(self, cfg):
        return (".json",)

    def input_kind(self, cfg):
        return "upload"

    def preprocess(self, source, cfg):
        import torch

        s = cfg.encoder.cond_size
        try:
            points = json.loads(open(source, encoding="utf-8").read())["points"]
            edges = torch.zeros(1, s, s)
            for x, y in points:
                edges[0, min(int(y * s), s - 1), min(int(x * s), s - 1)] = 1.0
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DataError(f"{source}: not a keypoints file ({exc}); write {{\"points\": [[x, y], ...]}}") from None
        return self.encode({"edges": edges}, cfg).unsqueeze(0)


@hookimpl
def register_tasks(register):
    register(BuggyTask())
    register(KeypointsTask())
