"""5b. What each install weighs: ``pip install costwatch`` (an app's), ``[daemon]``, ``[fleet]``.

Each install goes into a fresh ``python -m venv`` from this tree (``pip install DIR[extra]``, real
dependency resolution, pip's cache); the figure is the bytes of the files under its
site-packages minus an empty venv's (pip itself), plus the largest distributions. No SDK is
installed: an app brings its own ``openai``/``anthropic`` (with pydantic and httpx).
"""

from __future__ import annotations

import json
import subprocess
import sys
import venv
from pathlib import Path
from typing import Any

from bench.common import ROOT, tempdir

INSTALLS = {"costwatch": "", "costwatch[daemon]": "[daemon]", "costwatch[fleet]": "[fleet]"}

SIZES = """
import json, os, sysconfig
from importlib import metadata
site = sysconfig.get_paths()["purelib"]
total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(site) for f in fs)
dists = {}
for dist in metadata.distributions():
    size = 0
    for f in dist.files or ():
        p = dist.locate_file(f)
        if os.path.isfile(p):
            size += os.path.getsize(p)
    dists[dist.metadata["Name"]] = size
print(json.dumps({"site_bytes": total, "dists": dists}))
"""


def _sizes(python: Path) -> dict[str, Any]:
    done = subprocess.run([str(python), "-c", SIZES], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def run(quick: bool, log: Any = print) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with tempdir("installs") as tmp:
        empty = tmp / "empty"
        venv.create(empty, with_pip=True)
        base = _sizes(empty / "bin" / "python")
        for label, extra in INSTALLS.items():
            env_dir = tmp / label.replace("[", "-").replace("]", "")
            venv.create(env_dir, with_pip=True)
            python = env_dir / "bin" / "python"
            subprocess.run(
                [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", f"{ROOT}{extra}"],
                check=True, capture_output=True, text=True, timeout=1800,
            )  # fmt: skip
            sizes = _sizes(python)
            dists = {k: v for k, v in sizes["dists"].items() if k not in base["dists"]}
            out[label] = {
                "added_bytes": sizes["site_bytes"] - base["site_bytes"],
                "distributions": len(dists),
                "largest": sorted(dists.items(), key=lambda kv: -kv[1])[:8],
                "names": sorted(dists),
            }
            log(f"{label}: {out[label]['added_bytes'] / 1e6:.1f} MB in {len(dists)} distributions")
    return {"quick": quick, "python": sys.version.split()[0], "installs": out}
