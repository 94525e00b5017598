"""The command line: plugin listing, version, and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

from typer.testing import CliRunner

import robustproto
from robustproto.cli import app

runner = CliRunner()


def test_plugins_json_lists_the_built_in_heads_without_errors():
    result = runner.invoke(app, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    found = json.loads(result.output)
    assert set(found) >= {"heads", "regularizers", "backbones"}
    for name in ("linear", "glvq", "gmlvq", "gtlvq", "repulsive"):
        assert found["heads"][name]["error"] is None
        assert found["heads"][name]["source"].startswith("robustproto ")


def test_plugins_table_names_every_head():
    result = runner.invoke(app, ["plugins"])
    assert result.exit_code == 0
    for name in ("linear", "glvq", "gmlvq", "gtlvq", "repulsive"):
        assert name in result.output


def test_version_matches_the_package():
    result = runner.invoke(app, ["version"])
    assert result.output.strip() == robustproto.__version__ != "0.0.0+unknown"


def test_unknown_command_is_a_usage_error_not_a_traceback():
    result = subprocess.run([sys.executable, "-m", "robustproto", "frobnicate"], capture_output=True, text=True)
    assert result.returncode == 2
    assert "No such command" in result.stderr and "Traceback" not in result.stderr
