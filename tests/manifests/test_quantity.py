import pytest
from hypothesis import given, strategies as st

from volumemanager.manifests.quantity import MAX_BYTES, format_bytes, parse_quantity


@pytest.mark.parametrize(
    "text, expected",
    [
        ("1Gi", 1024**3),
        ("64Mi", 64 * 1024**2),
        ("500M", 500 * 10**6),
        ("1e3", 1000),
        ("1E3", 1000),
        ("1024", 1024),
        ("1.5Gi", 1536 * 1024**2),
        ("1k", 1000),
        ("1Ki", 1024),
        ("2Ti", 2 * 1024**4),
        ("1Ei", 1024**6),
        ("0", 0),
        ("+5", 5),
        (".5Ki", 512),
        ("1500m", 2),  # 1.5 bytes rounds up, as Kubernetes' Value() does
        ("0.1", 1),
        (1024, 1024),
        (" 64Mi ", 64 * 1024**2),
    ],
)
def test_parses(text, expected):
    assert parse_quantity(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "Gi", "1GB", "1gi", "1 Gi", "-1Gi", "1e999999999", "9Ei", "abc", "1..5", "0x10", True, None, [1], "1e-", "1" * 100],
)
def test_refuses(text):
    with pytest.raises(ValueError):
        parse_quantity(text)


def test_error_says_what_is_wrong():
    with pytest.raises(ValueError, match="not a quantity"):
        parse_quantity("12Q")
    with pytest.raises(ValueError, match="negative"):
        parse_quantity("-1")
    with pytest.raises(ValueError, match="too large"):
        parse_quantity("8Ei")


@given(st.text(max_size=80))
def test_never_crashes_on_text(text):
    try:
        value = parse_quantity(text)
    except ValueError:
        return
    assert 0 <= value <= MAX_BYTES


@given(st.integers(min_value=0, max_value=MAX_BYTES))
def test_format_roundtrip(n):
    assert parse_quantity(format_bytes(n)) == n
