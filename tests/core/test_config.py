"""Daemon configuration: defaults < config file < flags; relative paths are from the cwd."""

from __future__ import annotations

import os

import pytest

from volumemanager.config import ConfigError, build_config


def test_flags_win_over_file_and_relative_paths_become_absolute(tmp_path, monkeypatch):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("manifest_dir: /etc/m\nlog_level: debug\ncsi_driver: a=unix:///x\ncsi-timeout: 5\n")
    monkeypatch.chdir(tmp_path)
    cfg = build_config({"config": str(cfg_file), "manifest_dir": "rel/m", "log_level": None})
    assert cfg.manifest_dir == os.path.join(str(tmp_path), "rel/m")
    assert cfg.log_level == "debug" and cfg.csi_driver == ["a=unix:///x"] and cfg.csi_timeout == 5
    assert cfg.registry_dir == os.path.join(cfg.root_dir, "plugins_registry")


@pytest.mark.parametrize("text, msg", [
    ("bogus: 1\n", "unknown key 'bogus'"),
    ("- a\n", "must be a mapping"),
    ("log_format: xml\n", "log_format"),
    ("csi_timeout: 0\n", "csi_timeout"),
    ("manifest_dir: [\n", "not valid YAML"),
])
def test_bad_config_names_the_file_and_key(tmp_path, text, msg):
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as e:
        build_config({"config": str(f)})
    assert msg in str(e.value)
