"""Peer environments under ``bench/.venvs/`` (created on first use, pip with exact pins).

- ``otel``: the project's interpreter environment (openai 3.x, anthropic 2.x)
  seen through a ``.pth`` file, plus the official
  ``opentelemetry-instrumentation-openai-v2`` with ``opentelemetry-util-genai``
  pinned to 1.1b0 (2.4b0 does not import with 1.3b0). Installed with
  ``--no-deps`` so pip never touches the shared environment.
- ``old``: a standalone environment on the older SDK generation
  (``openai`` 2.x on ``httpx``, ``anthropic`` 0.x) with ``openlit``, which
  requires ``openai<3`` and ``anthropic<1``; costwatch is put on its path from
  the work tree (``.pth``), with its client-side dependencies pinned.

Each peer is compared to the uninstrumented baseline of its own environment,
measured in the same run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENVS = Path(__file__).resolve().parent / ".venvs"

OTEL_PINS = [
    "opentelemetry-instrumentation-openai-v2==2.4b0",
    "opentelemetry-util-genai==1.1b0",
    "opentelemetry-instrumentation==0.66b2",  # matches opentelemetry-semantic-conventions 0.66b2 here
    "wrapt==1.17.3",
]
OLD_PINS = [
    "openai==2.54.0",
    "anthropic==0.125.0",
    "openlit==1.45.0",
    # openlit's OpenTelemetry stack, pinned (pip cannot resolve these pre-releases by itself)
    "opentelemetry-api==1.45.1",
    "opentelemetry-sdk==1.45.1",
    "opentelemetry-exporter-otlp==1.45.1",
    "opentelemetry-semantic-conventions==0.66b1",
    "opentelemetry-instrumentation==0.66b1",
    *(
        f"opentelemetry-instrumentation-{name}==0.66b1"
        for name in (
            "aiohttp-client",
            "asgi",
            "django",
            "falcon",
            "fastapi",
            "flask",
            "httpx",
            "pyramid",
            "requests",
            "starlette",
            "tornado",
            "urllib",
            "urllib3",
        )
    ),
    # costwatch's client-side dependencies (costwatch itself comes from the work tree)
    "msgspec==0.22.0",
    "pydantic==2.14.4",
    "pydantic-settings==2.16.3",
    "platformdirs==4.14.8",
    "pyyaml",
]


def python(env: str) -> str:
    """The interpreter of an environment: ``main`` is the one running the bench."""
    if env == "main":
        return sys.executable
    return str(VENVS / env / "bin" / "python")


def _site(py: str) -> str:
    return subprocess.check_output(
        [py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
    ).strip()


def _pip(py: str, *args: str) -> None:
    done = subprocess.run(
        [py, "-m", "pip", "install", "-q", "--disable-pip-version-check", *args],
        env={**os.environ, "PIP_NO_INPUT": "1"},
        capture_output=True,
        text=True,
    )
    if done.returncode:
        noise = "WARNING: Location"
        sys.stderr.write("".join(ln for ln in done.stderr.splitlines(True) if not ln.startswith(noise)))
        raise SystemExit(f"pip install {' '.join(args)} failed")


def _marker(env: str) -> Path:
    return VENVS / env / ".costwatch-bench-ready"


def ensure(env: str) -> str:
    """Create ``env`` if missing; return its interpreter."""
    if env == "main":
        return sys.executable
    py = python(env)
    if _marker(env).exists():
        return py
    VENVS.mkdir(parents=True, exist_ok=True)
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--clear", str(VENVS / env)], check=True)
    site = Path(_site(py))
    if env == "otel":
        # the main environment, read-only, behind this venv's own site-packages
        (site / "zz_costwatch_main_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
        _pip(py, "--no-deps", "--pre", *OTEL_PINS)
    elif env == "old":
        _pip(py, "--pre", *OLD_PINS)
    else:
        raise ValueError(env)
    (site / "zz_costwatch_worktree.pth").write_text(str(ROOT) + "\n")
    check = (
        "import openai, costwatch.instrumentation;"
        + ("import opentelemetry.instrumentation.openai_v2;" if env == "otel" else "")
        + ("import openlit;" if env == "old" else "")
        + "print(openai.__version__)"
    )
    subprocess.run([py, "-c", check], check=True, cwd="/")
    _marker(env).write_text("ok\n")
    return py


if __name__ == "__main__":
    for name in sys.argv[1:] or ["otel", "old"]:
        print(name, ensure(name), flush=True)
