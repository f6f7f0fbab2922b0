"""The demo's HTTP side: a stdlib ``ThreadingHTTPServer`` serving one static page and a small JSON API.

Routes::

    GET  /                          the page (piti_core/demo/static/index.html)
    GET  /api/info                  the run: task, condition kind, palette and class names, default settings
    POST /api/generate?k=v...       body = the condition file (PNG/JPEG/WebP/BMP/TIFF/.npy); -> {"job", "position"}
    GET  /api/jobs/<id>             state (queued/running/done/error), queue position, progress, error, settings
    GET  /api/jobs/<id>/<name>.png  input | condition | base | image (the final, upsampled one)

User files live only in a temporary folder that is removed when the server closes.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import tempfile
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from piti_core.demo.jobs import Job, JobQueue
from piti_core.errors import UsageError

MAX_UPLOAD = 8 * 1024 * 1024
GUIDANCES = ("plain", "normalized", "none")
_MAGIC = ((b"\x89PNG\r\n\x1a\n", ".png"), (b"\xff\xd8\xff", ".jpg"), (b"BM", ".bmp"), (b"II*\x00", ".tif"),
          (b"MM\x00*", ".tif"), (b"\x93NUMPY", ".npy"))
_STEPS = re.compile(r"^(ddim|fast)?\d{1,4}(,\d{1,4})*$")
_FILES = ("input", "condition", "base", "image")


def _sampler_names() -> list[str]:
    """The registered samplers (built-in and plugins'), as the demo page offers them."""
    from piti_core.plugins import get_plugin_manager

    return sorted(get_plugin_manager().samplers)


class BadRequest(Exception):
    """An HTTP error with a one-line message for the page."""

    def __init__(self, status: HTTPStatus, message: str):
        super().__init__(message)
        self.status = status


def upload_suffix(data: bytes) -> str:
    """The file type of an upload from its first bytes; BadRequest(415) when it is not a supported one."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    for magic, suffix in _MAGIC:
        if data.startswith(magic):
            return suffix
    raise BadRequest(HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                     "unsupported file type: upload a PNG, JPEG, WebP, BMP or TIFF image, or a .npy array")


class DemoApp:
    """A run, its task's description, a temp folder for user files, and the generation queue."""

    def __init__(self, run_dir, *, device: str | None = None, max_upload: int = MAX_UPLOAD):
        import torch

        from piti_core.config import load_config
        from piti_core.plugins import get_plugin_manager
        from piti_core.runs import read_run_meta

        self.run_dir = Path(run_dir)
        meta = read_run_meta(self.run_dir)
        host = get_plugin_manager()
        self.task = host.task(meta.get("task") or "")
        self.config = load_config(self.run_dir / "config.json", host.task_sections())
        self.spec = self.task.condition_spec(self.config)
        self.models = [n for n in ("base", "upsampler") if n in meta["models"]]
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.max_upload = max_upload
        self.tmp = Path(tempfile.mkdtemp(prefix="piti-demo-"))
        self.queue = JobQueue(self._run_job, on_drop=lambda job: shutil.rmtree(self._job_dir(job), True))

    # ------------------------------------------------------------------ API bodies
    def info(self) -> dict:
        s = self.config.sample
        return {"run": str(self.run_dir), "task": self.task.name, "description": self.task.description,
                "kind": "labels" if self.spec.palette else "sketch" if self.spec.channels == 1 else "image",
                "palette": [list(c) for c in self.spec.palette or ()],
                "class_names": list(self.spec.class_names or ()), "models": self.models,
                "samplers": _sampler_names(), "guidances": list(GUIDANCES), "max_upload": self.max_upload,
                "defaults": {"sampler": s.sampler, "steps": s.steps, "upsampler_steps": s.upsampler_steps,
                             "guidance": s.guidance, "guidance_scale": s.guidance_scale, "seed": s.seed}}

    def parse_settings(self, query: dict[str, list[str]]) -> dict:
        """Query parameters -> sample settings (the run's defaults for those not given); BadRequest(400)."""
        d = dict(self.info()["defaults"])
        get = {k: v[-1].strip() for k, v in query.items() if v and v[-1].strip()}
        samplers = _sampler_names()
        if get.get("sampler", d["sampler"]) not in samplers:
            raise BadRequest(HTTPStatus.BAD_REQUEST, f"sampler must be one of {', '.join(samplers)}")
        if get.get("guidance", d["guidance"]) not in GUIDANCES:
            raise BadRequest(HTTPStatus.BAD_REQUEST, f"guidance must be one of {', '.join(GUIDANCES)}")
        for key in ("steps", "upsampler_steps"):
            if key in get and not _STEPS.match(get[key]):
                raise BadRequest(HTTPStatus.BAD_REQUEST, f"{key} must look like 250, 100, ddim25 or fast27")
        try:
            scale = float(get.get("guidance_scale", d["guidance_scale"]))
            seed = int(get.get("seed", d["seed"]))
        except ValueError:
            raise BadRequest(HTTPStatus.BAD_REQUEST, "guidance_scale must be a number and seed an integer") from None
        if not 0 <= scale <= 100:
            raise BadRequest(HTTPStatus.BAD_REQUEST, "guidance_scale must be between 0 and 100")
        return {"sampler": get.get("sampler", d["sampler"]), "steps": get.get("steps", d["steps"]),
                "upsampler_steps": get.get("upsampler_steps", d["upsampler_steps"]),
                "guidance": get.get("guidance", d["guidance"]), "guidance_scale": scale, "seed": seed}

    def submit(self, data: bytes, settings: dict) -> Job:
        suffix = upload_suffix(data)
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

    def close(self) -> None:
        self.queue.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # ------------------------------------------------------------------ the worker
    def _job_dir(self, job: Job) -> Path:
        return self.tmp / f"job-{int(job.id)}"

    def _run_job(self, job: Job, progress) -> dict:
        return self._generate(job, progress)

    def _generate(self, job: Job, progress) -> dict:
        import attrs

        from piti_core.generate import sample_files

        s = job.payload["settings"]
        settings = attrs.evolve(self.config.sample, batch_size=1, **s)
        folder = self._job_dir(job)
        return sample_files(self.run_dir, [folder / f"input{job.payload['suffix']}"], folder / "out", settings,
                            device=self.device, callback=lambda e: progress(
                                {"stage": e["stage"], "step": e["i"] + 1, "total": e["total"]}))


class _Handler(BaseHTTPRequestHandler):
    server_version = "piti-demo"
    app: DemoApp

    def log_message(self, fmt, *args):  # quiet: the CLI prints the address once
        pass

    def _send(self, status: int, body: bytes, ctype: str, extra: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Cache-Control", "no-store")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, obj, status: int = 200) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json")

    def _fail(self, exc: BadRequest) -> None:
        self._json({"error": str(exc)}, int(exc.status))

    def do_GET(self):  # noqa: N802 - http.server's naming
        path = urlsplit(self.path).path
        try:
            if path in ("/", "/index.html"):
                page = resources.files("piti_core.demo").joinpath("static/index.html").read_bytes()
                return self._send(200, page, "text/html; charset=utf-8",
                                  {"Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; "
                                   "script-src 'unsafe-inline'; style-src 'unsafe-inline'"})
            if path == "/api/info":
                return self._json(self.app.info())
            m = re.fullmatch(r"/api/jobs/(\d+)(?:/([a-z_]+\.[a-z]+))?", path)
            job = self.app.queue.get(m.group(1)) if m else None
            if job is None:
                raise BadRequest(HTTPStatus.NOT_FOUND, f"not found: {path}")
            if m.group(2) is None:
                return self._json(self.app.status(job))
            file = self.app.job_file(job, m.group(2))
            if file is None:
                raise BadRequest(HTTPStatus.NOT_FOUND, f"not found: {path}")
            ctype = "image/png" if file.suffix == ".png" else "application/octet-stream"
            # the condition keeps the name the shown `piti sample` command uses; results get the job's number
            name = file.name if m.group(2).startswith("input") else f"piti-{job.id}-{m.group(2)}"
            return self._send(200, file.read_bytes(), ctype,
                              {"Content-Disposition": f'inline; filename="{name}"'})
        except BadRequest as exc:
            self._fail(exc)

    def do_POST(self):  # noqa: N802
        url = urlsplit(self.path)
        try:
            if url.path != "/api/generate":
                raise BadRequest(HTTPStatus.NOT_FOUND, f"not found: {url.path}")
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if length > self.app.max_upload:
                self.close_connection = True
                if length <= 16 * self.app.max_upload:  # drain it, so the client reads the answer
                    while length > 0:
                        length -= len(self.rfile.read(min(length, 1 << 16)) or b"x" * length)
                length = int(self.headers.get("Content-Length"))
                raise BadRequest(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                                 f"file too large ({length / 1e6:.1f} MB): the limit is "
                                 f"{self.app.max_upload / 1e6:.1f} MB")
            if length <= 0:
                raise BadRequest(HTTPStatus.BAD_REQUEST, "empty upload: send a condition file as the request body")
            data = self.rfile.read(length)
            settings = self.app.parse_settings(parse_qs(url.query))
            job = self.app.submit(data, settings)
            self._json({"job": job.id, "position": self.app.queue.position(job)}, 202)
        except BadRequest as exc:
            self._fail(exc)


def make_server(app: DemoApp, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    """A server bound to (host, port) (port 0: a free one); call ``serve_forever()``, then ``app.close()``."""
    import socket

    handler = type("DemoHandler", (_Handler,), {"app": app})
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    server_class = type("DemoServer", (ThreadingHTTPServer,), {"address_family": family})
    try:
        server = server_class((host, port), handler)
    except OSError as exc:
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; choose another --port") from None
    server.daemon_threads = True
    return server
