"""The demo's application side: a run, its settings checks, the uploads' temp folder and the queue.

:class:`DemoApp` knows nothing of HTTP beyond :class:`~piti_core.demo.uploads.BadRequest` (a status and a
one-line message); piti_core/demo/server.py serves it.
"""

from __future__ import annotations

import math
import os
import re
import shlex
import shutil
import tempfile
import threading
from http import HTTPStatus
from importlib import resources
from pathlib import Path

from piti_core.demo.guard import new_token
from piti_core.demo.jobs import Job, JobQueue
from piti_core.demo.uploads import (MAX_PIXELS, MAX_UPLOAD, BadRequest, check_upload, claimed_suffix,
                                    listed_suffix)
from piti_core.errors import ConfigError

GUIDANCES = ("plain", "normalized", "none")
SETTINGS = ("sampler", "steps", "upsampler_steps", "guidance", "guidance_scale", "seed")
MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed takes 64-bit seeds
_STEPS = re.compile(r"^(ddim|fast)?\d{1,4}(,\d{1,4})*$")
_FILES = ("input", "condition", "base", "image")
_TOKEN_SLOT = b"__PITI_TOKEN__"


def _sampler_names() -> list[str]:
    """The registered samplers (built-in and plugins'), as the demo page offers them."""
    from piti_core.plugins import get_plugin_manager

    return sorted(get_plugin_manager().samplers)


def _bad(message: str) -> BadRequest:
    return BadRequest(HTTPStatus.BAD_REQUEST, message)


class _Closing(Exception):
    """Raised in a running job's progress callback once the app is closing."""


class DemoApp:
    """A run, its task's description, a temp folder for user files, a token, and the generation queue."""

    def __init__(self, run_dir, *, device: str | None = None, max_upload: int = MAX_UPLOAD,
                 max_pixels: int = MAX_PIXELS):
        import torch

        from piti_core.config import load_config
        from piti_core.generate import input_suffixes, installed_run_task
        from piti_core.plugins import get_plugin_manager
        from piti_core.runs import read_run_meta

        self.run_dir = Path(run_dir)
        meta = read_run_meta(self.run_dir)
        host = get_plugin_manager()
        self.task = installed_run_task(host, self.run_dir, meta)
        self.config = load_config(self.run_dir / "config.json", host.task_sections())
        self.spec = self.task.condition_spec(self.config)
        self.kind = input_kind(self.task, self.config, self.spec)
        self.suffixes = list(input_suffixes(self.task, self.config))
        self.models = [n for n in ("base", "upsampler") if n in meta["models"]]
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.max_upload, self.max_pixels = max_upload, max_pixels
        self.token = new_token()
        self.tmp = Path(tempfile.mkdtemp(prefix="piti-demo-"))
        self._closing = threading.Event()
        self.queue = JobQueue(self._run_job, on_drop=lambda job: shutil.rmtree(self._job_dir(job), True))

    # ------------------------------------------------------------------ API bodies
    def page(self) -> bytes:
        """The page, with this process's token in its ``piti-token`` meta tag."""
        page = resources.files("piti_core.demo").joinpath("static/index.html").read_bytes()
        return page.replace(_TOKEN_SLOT, self.token.encode())

    def info(self) -> dict:
        s = self.config.sample
        return {"run": str(self.run_dir), "task": self.task.name, "description": self.task.description,
                "kind": self.kind, "suffixes": self.suffixes,
                "palette": [list(c) for c in self.spec.palette or ()],
                "class_names": list(self.spec.class_names or ()), "models": self.models,
                "samplers": _sampler_names(), "guidances": list(GUIDANCES), "max_upload": self.max_upload,
                "max_pixels": self.max_pixels,
                "defaults": {"sampler": s.sampler, "steps": s.steps, "upsampler_steps": s.upsampler_steps,
                             "guidance": s.guidance, "guidance_scale": s.guidance_scale, "seed": s.seed}}

    def parse_settings(self, query: dict[str, list[str]]) -> dict:
        """Query parameters -> sample settings (the run's defaults for those not given); BadRequest(400)."""
        unknown = sorted(set(query) - set(SETTINGS))
        if unknown:
            raise _bad(f"unknown setting {unknown[0][:40]!r}: the settings are {', '.join(SETTINGS)}")
        d = dict(self.info()["defaults"])
        get = {k: v[-1].strip() for k, v in query.items() if v and v[-1].strip()}
        samplers = _sampler_names()
        if get.get("sampler", d["sampler"]) not in samplers:
            raise _bad(f"sampler must be one of {', '.join(samplers)}")
        if get.get("guidance", d["guidance"]) not in GUIDANCES:
            raise _bad(f"guidance must be one of {', '.join(GUIDANCES)}")
        for key in ("steps", "upsampler_steps"):
            if key in get:
                self._check_steps(key, get[key])
        return {"sampler": get.get("sampler", d["sampler"]), "steps": get.get("steps", d["steps"]),
                "upsampler_steps": get.get("upsampler_steps", d["upsampler_steps"]),
                "guidance": get.get("guidance", d["guidance"]),
                "guidance_scale": _guidance_scale(get.get("guidance_scale", d["guidance_scale"])),
                "seed": _seed(get.get("seed", d["seed"]))}

    def _check_steps(self, key: str, value: str) -> None:
        from piti_core.diffusion.respace import space_timesteps

        if not _STEPS.match(value):
            raise _bad(f"{key} must look like 250, 100, ddim25 or fast27")
        try:
            space_timesteps(self.config.diffusion.steps, value)
        except ConfigError as exc:
            raise _bad(f"{key}: {exc}") from None

    def parse_suffix(self, query: dict[str, list[str]]) -> str | None:
        """The upload's suffix from the query's ``suffix`` (removed from ``query``; None when not given), once it is
        one the task reads; BadRequest(400) for a malformed one, 415 for one the task does not read."""
        values = query.pop("suffix", None)
        if not values:
            return None
        suffix = claimed_suffix(values[-1])
        listed_suffix(suffix, tuple(self.suffixes), self.task.name)
        return suffix

    def submit(self, data: bytes, settings: dict, suffix: str | None = None) -> Job:
        """Queue a job for the upload ``data``, stored under the task's suffix for it (``suffix``: the one the client
        named, from :meth:`parse_suffix`; read from the bytes when None); BadRequest when it is not acceptable."""
        suffix = check_upload(data, self.max_pixels, suffix=suffix, accepted=tuple(self.suffixes), task=self.task.name)
        job = self.queue.submit({"settings": settings, "suffix": suffix})
        folder = self._job_dir(job)
        folder.mkdir(parents=True)
        (folder / f"input{suffix}").write_bytes(data)  # inside the server's temp folder only
        return job

    def status(self, job: Job) -> dict:
        out = {"job": job.id, "state": job.state, "position": self.queue.position(job), "progress": job.progress,
               "error": job.error, "settings": job.payload["settings"], "command": self.command(job)}
        if job.state == "done":
            out["images"] = {name: f"/api/jobs/{job.id}/{name}.png" for name in _FILES[1:]}
            out["images"]["input"] = f"/api/jobs/{job.id}/input{job.payload['suffix']}"
        return out

    def command(self, job: Job) -> str:
        s = job.payload["settings"]
        args = ["piti", "sample", "--run", str(self.run_dir), "--input", f"input{job.payload['suffix']}",
                "--sampler", s["sampler"], "--steps", s["steps"], "--upsampler-steps", s["upsampler_steps"],
                "--guidance", s["guidance"], "--guidance-scale", repr(s["guidance_scale"]), "--seed", str(s["seed"])]
        return shlex.join(args)

    def job_file(self, job: Job, name: str) -> Path | None:
        folder = self._job_dir(job)
        if name.startswith("input"):
            path = folder / name
            return path if name == f"input{job.payload['suffix']}" and path.is_file() else None
        stem = name.rsplit(".", 1)[0]
        path = folder / "out" / ("input.png" if stem == "image" else f"input_{stem}.png")
        return path if job.state == "done" and stem in _FILES[1:] and path.is_file() else None

    def close(self, wait: float = 10.0) -> None:
        """Stop the queue (a running job stops at its next step, waited for up to ``wait`` s), remove the files."""
        self._closing.set()
        self.queue.close(wait)
        shutil.rmtree(self.tmp, ignore_errors=True)

    # ------------------------------------------------------------------ the worker
    def _job_dir(self, job: Job) -> Path:
        return self.tmp / f"job-{int(job.id)}"

    def _run_job(self, job: Job, progress) -> dict:
        def step(event):
            if self._closing.is_set():
                raise _Closing("the demo is shutting down")
            progress(event)

        try:
            return self._generate(job, step)
        except Exception as exc:  # noqa: BLE001 - shown on the page, without the server's paths
            if self._closing.is_set():  # its files may be gone: that, not what it tripped on, is the reason
                raise RuntimeError("the demo is shutting down") from None
            raise RuntimeError(self._public_error(exc, job)) from None
        finally:
            if self._closing.is_set():  # the job outlived close(): remove what it wrote since
                shutil.rmtree(self.tmp, ignore_errors=True)

    def _public_error(self, exc: Exception, job: Job) -> str:
        """The error's first line, with the upload's server path as "the uploaded file" and no temp paths."""
        lines = str(exc).strip().splitlines()
        text = lines[0] if lines else type(exc).__name__
        upload = self._job_dir(job) / f"input{job.payload['suffix']}"
        for path in {str(upload), os.path.realpath(upload)}:
            text = text.replace(path, "the uploaded file")
        for root in {str(self.tmp), os.path.realpath(self.tmp)}:
            text = re.sub(re.escape(root) + r"[^\s'\":,;]*", "a temporary file", text)
        return text

    def _generate(self, job: Job, progress) -> dict:
        import attrs

        from piti_core.generate import sample_files

        s = job.payload["settings"]
        settings = attrs.evolve(self.config.sample, batch_size=1, **s)
        folder = self._job_dir(job)
        return sample_files(self.run_dir, [folder / f"input{job.payload['suffix']}"], folder / "out", settings,
                            device=self.device, callback=lambda e: progress(
                                {"stage": e["stage"], "step": e["i"] + 1, "total": e["total"]}))


def input_kind(task, cfg, spec) -> str:
    """The widget ``task`` asks for (:meth:`~piti_core.tasks.Task.input_kind`); a PluginError naming the task
    when the demo has no such widget, or when ``"labels"`` comes without a palette to paint with."""
    from piti_core.errors import PluginError
    from piti_core.tasks import INPUT_KINDS, task_origin

    kind = task.input_kind(cfg)
    if kind not in INPUT_KINDS:
        raise PluginError(f"{task_origin(task)}: input_kind() returned {kind!r}; the demo knows "
                          f"{', '.join(INPUT_KINDS)}; this is a bug in the plugin: report it to its authors")
    if kind == "labels" and not spec.palette:
        raise PluginError(f"{task_origin(task)}: input_kind() is 'labels' but its ConditionSpec has no palette to "
                          "paint with; this is a bug in the plugin: report it to its authors")
    return kind


def _guidance_scale(value) -> float:
    try:
        scale = float(value)
    except ValueError:
        raise _bad("guidance_scale must be a number between 0 and 100") from None
    if not (math.isfinite(scale) and 0 <= scale <= 100):
        raise _bad("guidance_scale must be a number between 0 and 100")
    return scale


def _seed(value) -> int:
    if not re.fullmatch(r"\d{1,20}", str(value), re.ASCII) or int(value) > MAX_SEED:
        raise _bad("seed must be an integer from 0 to 2**64 - 1")
    return int(value)
