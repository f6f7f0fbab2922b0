"""Install the example third-party plugin (and a broken one) with pip and check piti sees them."""

import json
import subprocess
import sys


def sh(*args, check=True):
    print("+", " ".join(args), flush=True)
    return subprocess.run(args, check=check, capture_output=True, text=True)


def plugins():
    out = sh("piti", "plugins", "--json", "--all")
    return {row["name"]: row for row in json.loads(out.stdout)}


pip = [sys.executable, "-m", "pip", "install", "-q"]
try:
    sh(*pip, "./docs/examples/piti-task-colorize")
    rows = plugins()
    for name in ("mask", "sketch", "geometry"):
        assert rows[name]["distribution"] == "piti" and rows[name]["status"] == "ok", rows[name]
    col = rows["colorize"]
    assert col["distribution"] == "piti-task-colorize" and col["status"] == "ok", col
    assert col["provides"] == {"tasks": ["colorize"]}, col
    tasks = json.loads(sh("piti", "tasks", "--json", "--preset", "tiny").stdout)
    assert "colorize" in {t["task"] for t in tasks}

    sh(*pip, "./tests/data/piti-task-broken")
    assert sh("piti", "--help").returncode == 0
    listing = sh("piti", "plugins")
    assert "broken" in listing.stdout, listing.stdout
    assert "failed and was skipped" in listing.stderr and len(listing.stderr.strip().splitlines()) == 1, listing.stderr
    rows = plugins()
    assert rows["broken"]["status"] == "error" and "import failed" in rows["broken"]["message"], rows["broken"]
    assert rows["colorize"]["status"] == "ok"
    assert sh("piti", "plugins", "--check", check=False).returncode == 1
    print("third-party plugin checks passed")
finally:
    sh(sys.executable, "-m", "pip", "uninstall", "-q", "-y", "piti-task-colorize", "piti-task-broken", check=False)
