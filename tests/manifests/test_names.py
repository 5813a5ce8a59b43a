import pytest

from volumemanager.manifests import names


@pytest.mark.parametrize("value", ["web", "a", "a-b", "a1", "0", "x" * 63])
def test_labels_ok(value):
    assert names.validate_volume_name(value) == value
    assert names.validate_namespace(value) == value


@pytest.mark.parametrize("value", ["web.example", "a.b-c.d", "x" * 253, "pv-1"])
def test_subdomains_ok(value):
    assert names.validate_object_name(value) == value


@pytest.mark.parametrize(
    "value, fragment",
    [
        ("", "must not be empty"),
        ("..", "'/'|'.' or '..'|DNS-1123"),
        (".", "'.' or '..'|DNS-1123"),
        ("a/b", "must not contain '/'"),
        ("../etc", "must not contain '/'"),
        ("a\x00b", "NUL"),
        ("a\nb", "control characters"),
        ("a\x7fb", "control characters"),
        ("x" * 254, "no more than 253 bytes"),
        ("é" * 127, "no more than 253 bytes"),
        ("Web", "lower case"),
        ("-web", "start and end"),
        ("web-", "start and end"),
        ("a_b", "lower case"),
        (5, "must be a string"),
        (None, "must be a string"),
    ],
)
def test_hostile_object_names(value, fragment):
    with pytest.raises(names.InvalidName, match=fragment):
        names.validate_object_name(value)


@pytest.mark.parametrize("value", ["a.b", "x" * 64, "A", "a b"])
def test_labels_refused(value):
    with pytest.raises(names.InvalidName):
        names.validate_volume_name(value)


def test_label_length_message():
    with pytest.raises(names.InvalidName, match="no more than 63 bytes"):
        names.validate_namespace("x" * 64)


@pytest.mark.parametrize("value", ["csi.example.com", "hostpath.csi.k8s.io", "Driver.Example.COM", "a"])
def test_csi_driver_names_ok(value):
    assert names.validate_csi_driver_name(value) == value


@pytest.mark.parametrize("value", ["", "x" * 64, "a/b", "..", "-a", "a-", "a_b", "a b", "dr\x00v"])
def test_csi_driver_names_refused(value):
    with pytest.raises(names.InvalidName):
        names.validate_csi_driver_name(value)


@pytest.mark.parametrize("value", ["0b7f3c1e-1111-2222-3333-444455556666", "abc", "A.b_c-d"])
def test_uids_ok(value):
    assert names.validate_uid(value) == value


@pytest.mark.parametrize("value", ["", "..", ".hidden", "a/b", "x" * 129, "a b", "-a", "a\x00"])
def test_uids_refused(value):
    with pytest.raises(names.InvalidName):
        names.validate_uid(value)


def test_shown_is_bounded_and_escaped():
    text = names.shown("a\x00" + "b" * 500)
    assert "\x00" not in text
    assert len(text) <= names.SHOWN_MAX
