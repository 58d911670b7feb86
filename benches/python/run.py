"""The Python half of `make bench`: makes benches/python/.venv-peers with the pinned peers, builds
holysheep's wheel and the pyo3 floor (release profile) into it, then runs measure.py with that venv's
Python. A venv of its own, so the peers never leak into the development venv.

    python3 benches/python/run.py          # any Python >= 3.10 can start it
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
VENV = HERE / ".venv-peers"
WHEELS = VENV / "wheels"
PYTHON = VENV / "bin" / "python"


def run(*command: str | Path) -> None:
    print("+", " ".join(map(str, command)), flush=True)
    subprocess.run([str(part) for part in command], check=True)


def make_venv() -> None:
    if not PYTHON.exists():
        venv.create(VENV, with_pip=True)
    run(PYTHON, "-m", "pip", "install", "-q", "-r", HERE / "requirements.txt")


def install_wheel(project: Path, name: str) -> None:
    """Builds `project` as the wheel users would get and installs it over any older build.

    A real wheel rather than `maturin develop`, which would drop the built library into the source
    tree that the development venv uses too.
    """
    out = WHEELS / name
    shutil.rmtree(out, ignore_errors=True)
    run(VENV / "bin" / "maturin", "build", "--release", "-q", "-i", PYTHON, "-o", out, "-m", project / "Cargo.toml")
    (wheel,) = out.glob("*.whl")
    run(PYTHON, "-m", "pip", "install", "-q", "--force-reinstall", "--no-deps", wheel)


def main() -> None:
    make_venv()
    install_wheel(ROOT, "holysheep")
    install_wheel(HERE / "floor", "floor")
    os.execv(PYTHON, [str(PYTHON), str(HERE / "measure.py"), *sys.argv[1:]])


if __name__ == "__main__":
    main()
