"""Third-party plugins installed for real with pip: the example is listed and works, a broken one is skipped.

.ci/run installs the example (docs/examples/piti-task-example) before the test suite; run on its own,
this script installs it and uninstalls it again at the end. The broken plugin is always uninstalled.
"""

import json
import subprocess
import sys
from importlib import metadata

EXAMPLE = "piti-task-example"


def sh(*args, check=True):
    print("+", " ".join(args), flush=True)
    return subprocess.run(args, check=check, capture_output=True, text=True)


def plugins():
    out = sh("piti", "plugins", "--json", "--all")
    return {row["name"]: row for row in json.loads(out.stdout)}


def installed(dist):
    try:
        metadata.version(dist)
        return True
    except metadata.PackageNotFoundError:
        return False


pip = [sys.executable, "-m", "pip", "install", "-q"]
ours = [] if installed(EXAMPLE) else [EXAMPLE]
try:
    if ours:
        sh(*pip, "./docs/examples/piti-task-example")
    rows = plugins()
    for name in ("mask", "sketch", "geometry"):
        assert rows[name]["distribution"] == "piti" and rows[name]["status"] == "ok", rows[name]
    ex = rows["example"]
    assert ex["distribution"] == EXAMPLE and ex["status"] == "ok", ex
    assert ex["provides"] == {"tasks": ["colorize"], "metrics": ["chroma-error"]}, ex
    tasks = json.loads(sh("piti", "tasks", "--json", "--preset", "tiny").stdout)
    assert "colorize" in {t["task"] for t in tasks}
    assert sh("piti", "plugins", "--check", check=False).returncode == 0

    sh(*pip, "./tests/data/piti-task-broken")
    assert sh("piti", "--help").returncode == 0
    listing = sh("piti", "plugins")
    assert "broken" in listing.stdout, listing.stdout
    assert "failed and was skipped" in listing.stderr and len(listing.stderr.strip().splitlines()) == 1, listing.stderr
    rows = plugins()
    assert rows["broken"]["status"] == "error" and "import failed" in rows["broken"]["message"], rows["broken"]
    assert rows["example"]["status"] == "ok"
    assert sh("piti", "plugins", "--check", check=False).returncode == 1
    print("third-party plugin checks passed")
finally:
    sh(sys.executable, "-m", "pip", "uninstall", "-q", "-y", "piti-task-broken", *ours, check=False)
