"""Mount option validation, masking and translation to mount(2) flags."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mount_utils import syscalls as sc
from mount_utils.options import (
    flag_options,
    flags_to_options,
    mask_options,
    split_mount_options,
    validate_mount_options,
)


def test_mask_options_replaces_and_appends():
    assert mask_options(["ro", "vers=4"], ["password=x"]) == ["ro", "vers=4", "<masked>"]
    assert mask_options(["ro", "password=x"], ["password=x"]) == ["ro", "<masked>"]
    assert mask_options([], ["a", "b"]) == ["<masked>", "<masked>"]
    assert mask_options(iter(["ro"]), iter(["s"])) == ["ro", "<masked>"]


@pytest.mark.parametrize(
    "bad, fragment",
    [
        ("ro,uid=0", "comma"),
        ("a\nb", "control"),
        ("a\x00b", "control"),
        ("a\tb", "control"),
        ("a\x7fb", "control"),
        ("", "empty"),
        ("-o", "starts with '-'"),
        ("--bind", "starts with '-'"),
    ],
)
def test_validate_refuses_smuggling(bad, fragment):
    with pytest.raises(ValueError) as exc:
        validate_mount_options(["ok", bad])
    assert fragment in str(exc.value)
    with pytest.raises(ValueError) as exc:
        validate_mount_options([bad], sensitive=True)
    if bad:
        assert bad not in str(exc.value) and "#0" in str(exc.value)


def test_validate_names_the_option_and_accepts_normal_ones():
    with pytest.raises(ValueError, match="'ro,uid=0'"):
        validate_mount_options(["ro,uid=0"])
    assert validate_mount_options(["ro", "context=\"a:b:c\"", "uid=1000"]) == ("ro", 'context="a:b:c"', "uid=1000")
    with pytest.raises(ValueError):
        validate_mount_options("ro")  # a bare string is a caller bug


def test_split_flags_and_data():
    flags, data = split_mount_options(["ro", "nosuid", "nodev", "noexec", "noatime", "size=1m", "defaults",
                                       "nofail", "x-systemd.automount", "mode=0755"])
    assert flags == sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC | sc.MS_NOATIME
    assert data == "size=1m,mode=0755"
    assert split_mount_options(["ro", "rw"]) == (0, "")
    assert split_mount_options(["sync", "dirsync", "relatime"])[0] == sc.MS_SYNCHRONOUS | sc.MS_DIRSYNC | sc.MS_RELATIME
    with pytest.raises(ValueError):
        split_mount_options(["a,b"])


def test_flag_options_refuses_data():
    assert flag_options(["ro", "nosuid"]) == sc.MS_RDONLY | sc.MS_NOSUID
    with pytest.raises(ValueError, match="'size=1m'"):
        flag_options(["ro", "size=1m"])


def test_flags_to_options():
    assert flags_to_options(sc.MS_RDONLY | sc.MS_NODEV) == ["ro", "nodev"]
    assert flags_to_options(0) == ["rw"]


@given(st.lists(st.text(min_size=1, max_size=20), min_size=1, max_size=8))
def test_validated_options_join_back_to_the_same_list(options):
    try:
        valid = validate_mount_options(options)
    except ValueError:
        return
    assert ",".join(valid).split(",") == list(options)
