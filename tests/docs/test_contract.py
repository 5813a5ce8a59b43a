"""docs/contract.md is the external contract: it must match the code, in both directions.

* every subcommand of ``volumemanager.cli.build_parser()`` has its section, every option of it
  is documented there, and every flag documented there exists;
* every config-file key (``DaemonConfig``) is documented, and nothing more;
* every key of ``status --json`` (top level and per entry) from a real daemon and from the
  disk is documented, and every key documented as present is there (``daemon`` keys only
  from the daemon, ``disk`` keys only from the disk; ``when ...`` keys may be missing).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import subprocess

import pytest

from tests.daemon_harness import wait_until
from tests.docs import docparse
from tests.fixtures_mounts import require_root
from volumemanager.cli import build_parser
from volumemanager.config import DaemonConfig

ALWAYS, DAEMON, DISK = "always", "daemon", "disk"
HELP_OPTIONS = {"-h", "--help"}


@pytest.fixture(scope="module")
def doc() -> dict[str, list[str]]:
    return docparse.sections(docparse.CONTRACT.read_text())


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    for action in parser._actions:  # argparse offers no public way to list subparsers
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("volumemanager has no subcommands")


SUBCOMMANDS = sorted(_subcommands())


def test_every_command_has_a_section_and_every_section_a_command(doc):
    documented = {h.removeprefix("volumemanager ").strip() for h in doc if h.startswith("volumemanager ")}
    assert documented == set(SUBCOMMANDS), (
        f"undocumented commands: {sorted(set(SUBCOMMANDS) - documented)}; "
        f"documented but not in the CLI: {sorted(documented - set(SUBCOMMANDS))}"
    )


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_flags_of_each_command_match_its_section(doc, command):
    parser = _subcommands()[command]
    real: set[str] = set()
    positionals: list[str] = []
    for action in parser._actions:
        if action.option_strings:
            real.update(action.option_strings)
        else:
            positionals.append(action.metavar or action.dest.upper())
    real -= HELP_OPTIONS
    lines = doc[f"volumemanager {command}"]
    documented = docparse.documented_options(lines) - HELP_OPTIONS
    assert real - documented == set(), f"volumemanager {command}: flags missing from docs/contract.md"
    assert documented - real == set(), f"volumemanager {command}: documented flags the CLI does not have"
    codes = {c for t in docparse.tables(lines) for r in t.rows for c in docparse.first_cell_code(r)}
    for name in positionals:
        assert name in codes, f"volumemanager {command}: argument {name} not documented"
    exit_tables = [t for t in docparse.tables(lines) if t.header and t.header[0] == "exit code"]
    assert exit_tables, f"volumemanager {command}: no exit code table"


def test_config_keys_match(doc):
    lines = []
    # The config table lives under "## Config file", which has no ### heading: read it whole.
    text = docparse.CONTRACT.read_text()
    start = text.index("## Config file")
    lines = text[start:].split("\n## ", 1)[0].splitlines()
    keys = {docparse.first_cell_code(r)[0] for t in docparse.tables(lines) if t.header[0] == "key"
            for r in t.rows}
    real = {f.name for f in dataclasses.fields(DaemonConfig)} - {"config"}
    assert keys == real, f"missing: {sorted(real - keys)}; not real: {sorted(keys - real)}"


# --- JSON ------------------------------------------------------------------------------


def _json_sections(doc) -> dict[str, dict[str, str]]:
    out = {}
    for heading, lines in doc.items():
        if heading.startswith("JSON: "):
            keys = docparse.documented_keys(lines)
            assert keys, f"### {heading} has no table with a 'present' column"
            out[heading.removeprefix("JSON: ")] = keys
    return out


def _objects_at(data, path: str) -> list[dict]:
    """``status.volumes[]`` -> every entry of data["volumes"]; ``status.reconciler`` -> [that
    object] (none when it is null); the first component names the document itself."""
    parts = path.split(".")
    objs = [data]
    if parts[0].endswith("[]"):
        objs = list(data)
    for part in parts[1:]:
        nxt = []
        for o in objs:
            value = o.get(part.removesuffix("[]")) if isinstance(o, dict) else None
            if part.endswith("[]"):
                nxt.extend(v for v in (value or []) if isinstance(v, dict))
            elif isinstance(value, dict):
                nxt.append(value)
        objs = nxt
    return objs


def _check(doc_keys: dict[str, str], objs: list[dict], origin: str, path: str) -> None:
    for obj in objs:
        undocumented = set(obj) - set(doc_keys)
        assert not undocumented, f"{origin} {path}: keys not in docs/contract.md: {sorted(undocumented)}"
        for key, present in doc_keys.items():
            if present == ALWAYS or present == origin:
                assert key in obj, f"{origin} {path}: documented key {key!r} ({present}) missing"
            elif present in (DAEMON, DISK):
                assert key not in obj, f"{origin} {path}: {key!r} is documented as {present}-only"
            else:
                assert present.startswith("when"), f"{path} {key}: present must be always/daemon/disk/when ..."


BROKEN_MANIFEST = "apiVersion: v1\nkind: Pod\nmetadata: {name: broken}\nspec: {volumes: [{name: x}]}\n"
POD = """\
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: demo}
spec:
  volumes:
  - {name: cache, emptyDir: {medium: Memory}}
  - {name: scratch, emptyDir: {}}
  - name: data
    persistentVolumeClaim: {claimName: missing}
"""


def test_status_json_keys_match_the_doc(doc, daemon_factory, csi_loop):
    """A real daemon's ``status --json`` (and ``explain --json``), then the disk's, with
    volumes, an orphan, a manifest error and (daemon only) a CSI driver, against the tables."""
    require_root()
    sections = _json_sections(doc)
    d = daemon_factory(start=False)
    d.write_manifest("pod.yaml", POD)
    d.write_manifest("broken.yaml", BROKEN_MANIFEST)
    d.start()
    csi_loop()
    orphan = d.root / "orphan-for-the-contract-test"
    orphan.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(orphan)], check=True)
    try:
        wait_until(lambda: d.states("demo/web").get("cache") == "mounted", 30, 0.1, "demo/web's cache to mount")
        wait_until(lambda: d.status()["drivers"], 30, 0.1, "the CSI driver to register")
        data = d.status()
        assert data["source"] == DAEMON and data["orphans"] and data["manifest_errors"] and data["sources"]
        for path, keys in sections.items():
            if path.startswith("status"):
                objs = _objects_at(data, path)
                _check(keys, objs, DAEMON, path)
        assert _objects_at(data, "status.volumes[]") and _objects_at(data, "status.reconciler")

        r = d.cli("explain", "demo/web", "--json", check=False)
        _check(sections["explain"], [json.loads(r.stdout)], DAEMON, "explain")
        r = d.cli("plan", "--json")
        _check(sections["plan[]"], json.loads(r.stdout), DAEMON, "plan[]")

        # Drained: the `drained` object (our tmpfs orphan keeps the drain from completing).
        d.cli("drain", "--timeout", "1", "--json", check=False)
        drained = d.status()
        assert drained["drained"], "status shows no drained object after drain"
        for path, keys in sections.items():
            if path.startswith("status.drained"):
                _check(keys, _objects_at(drained, path), DAEMON, path)
        d.cli("uncordon")

        d.stop()
        r = d.cli("status", "--json", "--manifest-dir", str(d.manifests), check=False)
        assert r.returncode == 0, r.stderr
        disk = json.loads(r.stdout)
        assert disk["source"] == DISK and disk["volumes"] and disk["orphans"] and disk["manifest_errors"]
        for path, keys in sections.items():
            if path.startswith("status"):
                _check(keys, _objects_at(disk, path), DISK, path)
    finally:
        subprocess.run(["umount", str(orphan)], check=False)
        os.rmdir(orphan)


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_help_points_inside_the_repository(command):
    text = _subcommands()[command].format_help()
    assert "INTERFACE.md" not in text and "../shared" not in text


def test_metrics_match(doc):
    """Every metric the daemon exports is documented with its labels, and nothing more."""
    from volumemanager.metrics import Metrics

    text = docparse.CONTRACT.read_text()
    lines = text[text.index("## Metrics"):].split("\n## ", 1)[0].splitlines()
    documented = {}
    for t in docparse.tables(lines):
        if t.header[0] == "metric":
            col = t.column("labels")
            for r in t.rows:
                labels = {c for c in re.findall(r"`([a-z_]+)`", r[col])}
                documented[docparse.first_cell_code(r)[0]] = labels
    real = {}
    for family in Metrics().registry.collect():
        name = family.name + ("_total" if family.type == "counter" else "")
        collector_labels = set()
        for sample in family.samples:
            collector_labels |= set(sample.labels) - {"le"}
        real[name] = collector_labels
    assert set(documented) == set(real), f"missing: {sorted(set(real) - set(documented))}; " \
                                         f"not exported: {sorted(set(documented) - set(real))}"
    for name, labels in real.items():
        assert labels <= documented[name], f"{name}: labels {sorted(labels - documented[name])} not documented"
