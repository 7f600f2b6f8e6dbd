"""The CLI: each stage command that dvc.yaml runs reaches that stage's entry function with the parsed params; bad
params fail with exit code 2 before any work starts."""

from pathlib import Path

import pytest
import yaml

from desta import stages
from desta.cli import main

ROOT = Path(__file__).resolve().parents[2]
DVC_STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("name", list(DVC_STAGES))
def test_dvc_stage_command_dispatches_to_that_stage(name, monkeypatch, capsys):
    called = []

    def fake_stage(stage):
        return lambda params: called.append((stage, params.train.max_steps)) or {"stage": stage}

    monkeypatch.setattr(stages, "stage_function", fake_stage)
    argv = DVC_STAGES[name]["cmd"].split()
    assert argv[0] == "desta"
    rc = main([*argv[1:], "-p", str(ROOT / "params.yaml"), "-S", "train.max_steps=3"])
    assert rc == 0 and called == [(name, 3)]
    assert '"stage"' in capsys.readouterr().out


def test_bad_params_fail_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["paths"]["manifests"] = str(tmp_path / "m")
    raw["prepare"]["workers"] = 0
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump(raw))
    assert main(["prepare", "-p", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "prepare.workers" in err and str(bad) in err
    assert not Path(tmp_path / "m").exists(), "nothing may be produced when params are invalid"


def test_evaluate_refuses_a_model_setting_that_is_not_a_trained_model(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rc = main(["evaluate", "-p", str(ROOT / "params.yaml"), "-S", "evaluate.model=/etc/passwd",
               "-S", f"paths.eval={tmp_path / 'eval'}", "-S", f"tracking.tracking_uri=sqlite:///{tmp_path}/m.db"])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and "evaluate.model=/etc/passwd: not a trained model" in err
    assert not (tmp_path / "eval").exists() and not (tmp_path / "m.db").exists(), "no metrics, no MLflow run"
