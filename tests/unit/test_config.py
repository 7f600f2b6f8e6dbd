"""The settings loader: strict keys, helpful errors, overrides, and the shipped params.yaml is valid."""

from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from desta import config
from desta.config import ParamsError, deep_merge, flatten, load_params, parse_overrides

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = yaml.safe_load((ROOT / "params.yaml").read_text())
# models whose optional fields have schema defaults: list entries (each source), not sections of params.yaml
LIST_ITEMS = {config.SourceConfig}


def write(tmp_path: Path, data: dict) -> Path:
    """The shipped params.yaml with `data` merged in."""
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(deep_merge(SHIPPED, data)))
    return p


def _sections(model: type[BaseModel]) -> list[type[BaseModel]]:
    found = [model]
    for field in model.model_fields.values():
        sub = field.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            found += _sections(sub)
    return found


def test_params_yaml_is_the_only_place_defaults_are_written():
    """config.py declares types and bounds only: every setting of every section must come from the params file."""
    defaulted = [f"{m.__name__}.{name}" for m in _sections(config.Params) if m not in LIST_ITEMS
                 for name, f in m.model_fields.items() if not f.is_required()]
    assert not defaulted, f"config.py writes defaults for {defaulted}; put them in params.yaml instead"


def test_empty_or_partial_params_file_names_every_missing_key(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(ParamsError, match="train: missing") as err:
        load_params(empty)
    assert str(empty) in str(err.value)
    partial = dict(SHIPPED, train={k: v for k, v in SHIPPED["train"].items() if k != "max_steps"})
    p = tmp_path / "partial.yaml"
    p.write_text(yaml.safe_dump(partial))
    with pytest.raises(ParamsError, match=r"train\.max_steps: missing"):
        load_params(p)


def test_shipped_params_are_valid():
    params = load_params(ROOT / "params.yaml")
    assert params.model.llm and params.model.encoder
    assert params.prepare.sources, "the default run needs at least one source"


def test_unknown_key_names_file_key_and_fix(tmp_path):
    p = write(tmp_path, {"train": {"lr": 1e-4, "learning_rate": 3}})
    with pytest.raises(ParamsError) as err:
        load_params(p)
    msg = str(err.value)
    assert str(p) in msg and "train.learning_rate" in msg and "unknown key" in msg


def test_bad_value_names_key_and_value(tmp_path):
    p = write(tmp_path, {"train": {"lr": -1}})
    with pytest.raises(ParamsError, match=r"train\.lr: .*greater than 0.*-1"):
        load_params(p)


def test_unknown_section_rejected(tmp_path):
    with pytest.raises(ParamsError, match="trian: unknown key"):
        load_params(write(tmp_path, {"trian": {}}))


def test_bad_literal_and_nested_key(tmp_path):
    p = write(tmp_path, {"train": {"strategy": "horovod"}, "model": {"lora": {"rank": 4}}})
    with pytest.raises(ParamsError) as err:
        load_params(p)
    assert "train.strategy" in str(err.value) and "model.lora.rank" in str(err.value)


def test_validate_section_alias(tmp_path):
    params = load_params(write(tmp_path, {"validate": {"response_min_chars": 5}}))
    assert params.validate_.response_min_chars == 5


def test_source_without_path_fails_early(tmp_path):
    p = write(tmp_path, {"prepare": {"sources": [{"name": "v", "kind": "vctk"}]}})
    with pytest.raises(ParamsError, match="needs `path:`"):
        load_params(p)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)


def test_overrides_are_typed_and_validated(tmp_path):
    p = write(tmp_path, {})
    params = load_params(p, ["train.max_steps=7", "model.lora.enabled=true"])
    assert params.train.max_steps == 7 and params.model.lora.enabled is True
    with pytest.raises(ParamsError, match="train.max_steps"):
        load_params(p, ["train.max_steps=zero"])
    with pytest.raises(ParamsError, match="KEY=VALUE"):
        parse_overrides(["train.max_steps"])


def test_flatten():
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": {}}) == {"a.b": 1, "a.c.d": [1, 2], "e": {}}


def test_model_cache_dir_precedence(tmp_path, monkeypatch):
    p = write(tmp_path, {})
    monkeypatch.setenv("DESTA_HOME", str(tmp_path / "home"))
    assert load_params(p).model_cache_dir() == tmp_path / "home" / "models"
    params = load_params(p, [f"paths.model_cache={tmp_path / 'explicit'}"])
    assert params.model_cache_dir() == tmp_path / "explicit"


@pytest.mark.parametrize(("change", "match"), [
    ({"prepare": {"valid_fraction": 0.6, "test_fraction": 0.6}},
     r"prepare\.valid_fraction \+ prepare\.test_fraction: 0\.6 \+ 0\.6 leaves no clip for the train split"),
    ({"prepare": {"quality": {"min_duration_s": 5.0, "max_duration_s": 2.0}}},
     r"prepare\.quality\.min_duration_s \+ prepare\.quality\.max_duration_s: min_duration_s 5\.0 must be below"),
    ({"validate": {"min_duration_s": 9.0, "max_duration_s": 1.0}}, r"validate\.min_duration_s"),
    ({"validate": {"response_min_chars": 50, "response_max_chars": 10}}, r"response_min_chars 50 exceeds"),
    ({"prepare": {"sources": []}}, r"prepare\.sources: List should have at least 1 item"),
    ({"prepare": {"sources": [{"name": "a", "kind": "demo"}, {"name": "a", "kind": "demo"}]}},
     r"source names must be unique"),
])
def test_settings_that_cannot_work_together_fail_before_any_work(tmp_path, change, match):
    with pytest.raises(ParamsError, match=match):
        load_params(write(tmp_path, change))


def test_errors_name_where_the_bad_value_was_set(tmp_path):
    p = write(tmp_path, {})
    with pytest.raises(ParamsError) as err:
        load_params(p, ["train.max_steps=zero"])
    first = str(err.value).splitlines()[0]
    assert first.startswith("-S train.max_steps=zero: invalid settings") and str(p) not in str(err.value)
    with pytest.raises(ParamsError) as err:
        load_params(p, ["prepare.test_fraction=0.95"])
    assert str(err.value).startswith("-S prepare.test_fraction=0.95: invalid settings")
    bad = write(tmp_path, {"train": {"lr": -1}})
    with pytest.raises(ParamsError) as err:
        load_params(bad, ["train.max_steps=zero"])
    msg = str(err.value)
    head = msg.splitlines()[0]
    assert str(bad) in head and "-S train.max_steps=zero" in head and "invalid settings (2 problem(s))" in head
    assert "train.max_steps: Input should be a valid integer" in msg and "[set by -S train.max_steps=zero]" in msg
    assert f"train.lr: Input should be greater than 0 (got -1) [set by {bad}]" in msg
    with pytest.raises(ParamsError, match=r"^a profile: invalid settings .*\n  - train\.lr"):
        load_params(p, merge={"train": {"lr": 0}}, merge_source="a profile")


def test_profile_errors_name_the_profile(tmp_path):
    from desta.pipeline import merged_params

    (tmp_path / "infra/profiles").mkdir(parents=True)
    (tmp_path / "infra/profiles/fast.yaml").write_text("train:\n  max_steps: -3\n")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(SHIPPED))
    with pytest.raises(ParamsError, match=r"^profile .*fast\.yaml: invalid settings"):
        merged_params(tmp_path / "params.yaml", "fast", tmp_path)


def test_binary_and_empty_params_files_are_named(tmp_path):
    binary = tmp_path / "params.bin"
    binary.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ParamsError, match=rf"{binary}: not a text file"):
        load_params(binary)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(ParamsError, match=rf"^{empty}: invalid settings \(10 problem\(s\)\)"):
        load_params(empty)


@pytest.mark.parametrize("key", ["evaluate.judge.base_url", "tracking.tracking_uri", "pipeline.dvc_remote"])
def test_credentials_inside_url_settings_are_refused(tmp_path, key):
    """They would land in MLflow params and dvc.lock (DVC writes declared params there verbatim)."""
    with pytest.raises(ParamsError) as err:
        load_params(write(tmp_path, {}), [f"{key}=https://user:s3cr3t@judge.example.com/v1"])
    assert f"{key}: a URL with credentials" in str(err.value) and "s3cr3t" not in str(err.value).split("\n", 1)[1]


def test_io_settings_have_their_defaults_in_params_yaml_only():
    io = load_params(ROOT / "params.yaml").io
    assert io.retries >= 1 and io.backoff_s > 0 and io.timeout_s > 0 and io.judge_timeout_s >= io.timeout_s
