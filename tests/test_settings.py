from pathlib import Path

import pytest
import yaml

from pipeline.errors import ConfigError
from pipeline.settings import Settings, load_settings

REPO = Path(__file__).resolve().parent.parent


def test_default_yaml_matches_code_defaults(story_defaults):
    documented = yaml.safe_load((REPO / "configs" / "default.yaml").read_text())
    code = Settings().model_dump(mode="json")
    code.pop("data_dir")  # user-dependent, documented as a comment
    assert documented == code


def test_precedence_override_env_file(tmp_path, monkeypatch):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("encode:\n  crf: 30\n  preset: slow\nengine:\n  name: tiny\n")
    monkeypatch.setenv("ALIVE_ENCODE__CRF", "25")
    s = load_settings(cfg, engine={"name": "svd"})
    assert s.encode.crf == 25  # env beats file
    assert s.encode.preset == "slow"  # file beats default
    assert s.engine.name == "svd"  # override beats file
    assert s.intake.max_bytes == 20_000_000  # untouched defaults stay


def test_alive_config_env_points_at_file(tmp_path, monkeypatch):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("frame:\n  strategy: pad\n")
    monkeypatch.setenv("ALIVE_CONFIG", str(cfg))
    assert load_settings().frame.strategy == "pad"


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("encode:\n  crf: 99\n", "encode.crf"),
        ("engine:\n  name: sora\n", "engine.name"),
        ("nonsense_key: 1\n", "nonsense_key"),
        ("moderation:\n  nsfw_review_threshold: 0.9\n  nsfw_block_threshold: 0.5\n", "must not exceed"),
    ],
)
def test_bad_config_is_a_config_error_naming_the_key(tmp_path, text, fragment):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_settings(cfg)
    assert fragment in str(info.value)
    assert info.value.exit_code == 2


def test_missing_and_malformed_config(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("encode: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(bad)


def test_object_storage_with_the_file_job_store_is_refused_naming_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("ALIVE_STORAGE__BACKEND", "s3")
    monkeypatch.setenv("ALIVE_STORAGE__S3__BUCKET", "b")
    with pytest.raises(ConfigError, match="ALIVE_JOBS__STORE=database"):
        load_settings(data_dir=tmp_path)
    monkeypatch.setenv("ALIVE_JOBS__STORE", "database")
    assert load_settings(data_dir=tmp_path).storage.backend == "s3"
    monkeypatch.delenv("ALIVE_STORAGE__S3__BUCKET")
    with pytest.raises(ConfigError, match="ALIVE_STORAGE__S3__BUCKET"):
        load_settings(data_dir=tmp_path)


def test_heartbeat_timeout_must_leave_room_for_missed_beats(tmp_path):
    with pytest.raises(ConfigError, match="heartbeat_timeout_s"):
        load_settings(data_dir=tmp_path, worker={"heartbeat_interval_s": 30, "heartbeat_timeout_s": 50})
