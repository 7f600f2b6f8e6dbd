"""The CLI: every stage is a sub-command, bad params fail with exit code 2 before any work starts."""

from pathlib import Path

import yaml

from desta.cli import build_parser, main
from desta.stages import STAGES, stage_function


def test_every_stage_is_a_subcommand():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(STAGES) <= set(sub.choices)


def test_stage_functions_resolve():
    for name in STAGES:
        assert callable(stage_function(name)), name


def test_bad_params_fail_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump({"paths": {"manifests": str(tmp_path / "m")}, "prepare": {"workers": 0}}))
    assert main(["prepare", "-p", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "prepare.workers" in err and str(bad) in err
    assert not Path(tmp_path / "m").exists(), "nothing may be produced when params are invalid"
