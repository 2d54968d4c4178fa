"""Serve or build the documentation site (``docs/``, ``mkdocs.yml``).

    python scripts/docs.py serve     # http://127.0.0.1:8000, rebuilt as pages change
    python scripts/docs.py build     # strict build into site/, as CI builds it

Installs ``docs/requirements.txt`` into this Python first when mkdocs or
mkdocstrings is missing. The API reference is read from the package's
docstrings without importing it, so no build of the extension is needed.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REQUIREMENTS = os.path.join(ROOT, "docs", "requirements.txt")
NEEDED = ("mkdocs", "material", "mkdocstrings_handlers.python")


def _missing() -> list[str]:
    missing = []
    for name in NEEDED:
        try:
            found = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:  # a parent package is missing
            found = False
        if not found:
            missing.append(name)
    return missing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", nargs="?", default="serve", choices=["serve", "build"])
    parser.add_argument("--site-dir", default=os.path.join(ROOT, "site"), help="where build writes (default: site/)")
    parser.add_argument("--dev-addr", default="127.0.0.1:8000", help="where serve listens (default: %(default)s)")
    args = parser.parse_args(argv)
    missing = _missing()
    if missing:
        print(f"docs.py: {', '.join(missing)} missing: pip install -r {os.path.relpath(REQUIREMENTS, ROOT)}",
              flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "-r", REQUIREMENTS], check=True)
    # mkdocs-material prints a notice about its own future on every run; it is not about these docs.
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    if args.command == "build":
        cmd = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", args.site_dir]
    else:
        cmd = [sys.executable, "-m", "mkdocs", "serve", "--dev-addr", args.dev_addr]
    print("docs.py: " + " ".join(cmd[2:]), flush=True)
    return subprocess.run(cmd, cwd=ROOT, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
