"""The import architecture (``[tool.importlinter]`` in pyproject.toml), checked by import-linter.

The core never imports a plugin or a benchmark; each layer of ``robustproto`` imports only the layers below it
(the contracts at the bottom: head, regularizer, errors, utils, which import nothing of the package). The
second test shows that the contracts bite: the same linter on a copy of the package with one bad import each.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "pyproject.toml"


def lint_imports(cwd: Path, pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    script = Path(sys.executable).with_name("lint-imports")
    command = [str(script)] if script.exists() else [shutil.which("lint-imports") or "lint-imports"]
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(pythonpath), env.get("PYTHONPATH")]))
    try:
        return subprocess.run([*command, "--no-cache", "--no-logo", str(CONFIG)], cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=300)
    except FileNotFoundError:
        raise AssertionError("lint-imports is not installed: pip install -e '.[test]'") from None


def test_the_package_keeps_its_import_contracts():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert re.search(r"Contracts: (\d+) kept, 0 broken", result.stdout)


def test_each_contract_catches_an_import_that_breaks_it(tmp_path):
    shutil.copytree(ROOT / "robustproto", tmp_path / "robustproto", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "plugins", tmp_path / "robustproto_plugins", ignore=shutil.ignore_patterns("__pycache__"))
    bad = {
        "utils.py": "import robustproto_plugins\n",  # the core imports a plugin
        "registry.py": "from . import model\n",  # a layer imports the one above it
        "head.py": "from . import errors\n",  # one contract imports another
    }
    for name, line in bad.items():
        path = tmp_path / "robustproto" / name
        path.write_text(path.read_text() + "\n" + line)
    result = lint_imports(tmp_path, pythonpath=tmp_path)  # the copy comes first on the path
    assert result.returncode == 1, result.stdout[-6000:] + result.stderr[-2000:]
    assert "Contracts: 0 kept, 3 broken" in result.stdout, result.stdout[-6000:]
    assert re.search(r"robustproto\.utils -> robustproto_plugins \(l\.\d+\)", result.stdout)
    assert re.search(r"robustproto\.registry -> robustproto\.model \(l\.\d+\)", result.stdout)
    assert re.search(r"robustproto\.head -> robustproto\.errors \(l\.\d+\)", result.stdout)
