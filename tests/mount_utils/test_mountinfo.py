"""mountinfo parsing, the indexed MountTable, and the change watcher."""

from __future__ import annotations

import os
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mount_utils import syscalls as sc
from mount_utils.mountinfo import (
    MountInfo,
    MountInfoParseError,
    MountInfoWatcher,
    MountPoints,
    MountTable,
    escape_field,
    parse_mountinfo,
    read_mountinfo,
    unescape_field,
)

# Real lines (from this machine and from proc(5)), plus crafted ones.
REAL = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard,resv_strict
28 27 0:25 / /mnt/sandboxing/x ro,nosuid,nodev,relatime - tmpfs model_tools_unavailable ro,size=4k,mode=755
36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
43 42 0:39 /src/sub\\040dir /tmp/x/demo/bind1 rw,relatime shared:1 - tmpfs vmrdemo rw,size=16384k
44 42 0:39 /src/sub\\040dir /tmp/x/demo/bind2 rw,relatime shared:2 master:1 propagate_from:3 - tmpfs vmrdemo rw
45 42 0:4 net:[4026532177] /run/netns/x rw shared:2 - nsfs nsfs rw
"""


def test_parse_real_lines():
    mounts = parse_mountinfo(REAL)
    assert len(mounts) == 7
    assert mounts[6].root == "net:[4026532177]"
    proc = mounts[0]
    assert (proc.mount_id, proc.parent_id, proc.major, proc.minor) == (22, 27, 0, 21)
    assert proc.root == "/" and proc.mount_point == "/proc" and proc.fs_type == "proc"
    assert proc.optional_fields == () and proc.propagation.kind == "private"
    ro = mounts[2]
    assert ro.read_only and ro.mount_options == ("ro", "nosuid", "nodev", "relatime")
    assert ro.super_options == ("ro", "size=4k", "mode=755")
    assert not mounts[1].read_only
    slave = mounts[3]
    assert slave.optional_fields == ("master:1",)
    assert slave.propagation.master == 1 and slave.propagation.kind == "slave"
    bind1, bind2 = mounts[4], mounts[5]
    assert bind1.root == "/src/sub dir" and bind1.propagation.shared == 1
    p = bind2.propagation
    assert (p.shared, p.master, p.propagate_from) == (2, 1, 3)
    assert p.kind == "shared,slave"
    assert str(p) == "shared:2 master:1 propagate_from:3"


def test_escapes_decoded_in_root_mount_point_and_source():
    line = "50 27 7:3 /a\\011b /mnt/with\\040space\\012nl\\134bs rw - ext4 /dev/my\\040disk rw"
    (m,) = parse_mountinfo(line)
    assert m.root == "/a\tb"
    assert m.mount_point == "/mnt/with space\nnl\\bs"
    assert m.source == "/dev/my disk"
    assert m.to_line() == line


def test_non_ascii_and_octal_escaped_high_bytes():
    line = "50 27 7:3 / /mnt/caf\\303\\251/\u00e9 rw - ext4 /dev/x rw"
    (m,) = parse_mountinfo(line)
    assert m.mount_point == "/mnt/café/é"


def test_quoted_commas_in_options_kept_together():
    line = '50 27 7:3 / /m rw,context="system_u:object_r:t:s0:c1,c2" - ext4 /dev/x rw,seclabel'
    (m,) = parse_mountinfo(line)
    assert m.mount_options == ("rw", 'context="system_u:object_r:t:s0:c1,c2"')


def test_unknown_optional_fields_tolerated():
    (m,) = parse_mountinfo("50 27 7:3 / /m rw shared:4 newtag:x unbindable - ext4 /dev/x rw")
    assert m.optional_fields == ("shared:4", "newtag:x", "unbindable")
    assert m.propagation.shared == 4 and m.propagation.unbindable
    assert m.propagation.kind == "unbindable"


@pytest.mark.parametrize(
    "line",
    [
        "garbage password=hunter2",
        "1 2 3:4 / /m rw shared:1 ext4 /dev/x rw,password=hunter2",  # no separator
        "x 2 3:4 / /m rw - cifs //srv/share rw,password=hunter2",  # non-numeric id
        "1 2 34 / /m rw - cifs //srv/share rw,password=hunter2",  # no colon in maj:min
        "1 2 3:4 / /m rw - cifs //srv/share rw,password=hunter2 extra",  # 4 fields after '-'
        "1 2 3:4 / m rw - cifs //srv/share password=hunter2",  # relative mount point
    ],
)
def test_malformed_line_raises_without_echoing_it(line):
    text = REAL + line + "\n"
    with pytest.raises(MountInfoParseError) as exc:
        parse_mountinfo(text)
    assert exc.value.line_number == 8
    assert "hunter2" not in str(exc.value)
    assert "line 8" in str(exc.value)


path_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=40
)


@given(path_text, path_text, path_text)
def test_escape_round_trip(root, mount_point, source):
    assert unescape_field(escape_field(root)) == root
    m = MountInfo(
        mount_id=7, parent_id=1, major=8, minor=3, root="/" + root, mount_point="/" + mount_point,
        mount_options=("rw", "nosuid"), optional_fields=("shared:3",), fs_type="ext4", source=source,
        super_options=("rw",),
    )
    line = m.to_line()
    assert "\n" not in line
    (parsed,) = parse_mountinfo(line)
    assert parsed == m


def test_read_real_mountinfo_has_root():
    mounts = read_mountinfo()
    assert any(m.mount_point == "/" for m in mounts)
    assert MountTable.read().is_mount_point("/proc")


TABLE = """\
1 0 8:1 / / rw - ext4 /dev/sda1 rw
10 1 8:2 / /a/b rw - ext4 /dev/sda2 rw
11 1 8:3 / /a/bc rw - ext4 /dev/sda3 rw
12 10 0:40 / /a/b/c rw - tmpfs tmpfs rw
13 12 0:41 / /a/b/c rw - tmpfs tmpfs rw
14 1 8:2 /vol /pods/p1/vol rw - ext4 /dev/sda2 rw
15 1 8:2 /vol /pods/p2/vol ro - ext4 /dev/sda2 rw
16 1 8:2 /other /pods/p3/vol rw - ext4 /dev/sda2 rw
17 1 8:2 /vol /pods/p1/vol rw - ext4 /dev/sda2 rw
"""


def test_table_at_orders_stacked_mounts_bottom_first():
    t = MountTable.parse(TABLE)
    assert [m.mount_id for m in t.at("/a/b/c")] == [12, 13]
    assert t.top("/a/b/c").mount_id == 13
    assert t.at("/a/b/c/") == t.at("/a/b//c")
    assert t.at("/nothing") == [] and t.top("/nothing") is None


def test_table_stack_order_follows_parents_not_file_order():
    t = MountTable.parse("1 0 8:1 / / rw - ext4 /dev/sda1 rw\n"
                         "21 20 0:41 / /m rw - tmpfs t rw\n"
                         "20 1 0:40 / /m rw - tmpfs t rw\n")
    assert [m.mount_id for m in t.at("/m")] == [20, 21]


def test_table_is_mount_point():
    t = MountTable.parse(TABLE)
    assert t.is_mount_point("/a/b") and t.is_mount_point("/a/b/")
    assert not t.is_mount_point("/a")


def test_table_under_is_component_wise():
    t = MountTable.parse(TABLE)
    assert [m.mount_id for m in t.under("/a/b")] == [10, 12, 13]
    assert [m.mount_id for m in t.under("/a/bc")] == [11]
    assert [m.mount_id for m in t.under("/a")] == [10, 11, 12, 13]
    assert len(t.under("/")) == len(t)
    assert t.under("/a/b/c/d") == []
    assert [m.mount_id for m in t.under("/pods")] == [14, 15, 16, 17]


def test_table_refs_same_device_and_root():
    t = MountTable.parse(TABLE)
    assert t.refs("/pods/p1/vol") == ["/pods/p2/vol"]
    assert t.refs("/pods/p2/vol") == ["/pods/p1/vol"]
    assert t.refs("/pods/p3/vol") == []
    assert t.refs("/not/mounted") == []
    assert t.by_source("/dev/sda3")[0].mount_point == "/a/bc"
    assert [m.mount_id for m in t.by_device(0, 40)] == [12]


def test_table_is_immutable_snapshot():
    t = MountTable.parse(TABLE)
    t.mounts.clear()
    assert len(t.mounts) == 9


@pytest.mark.timeout(20)
def settle(w: MountInfoWatcher) -> None:
    for _ in range(100):
        if not w.wait(0.05):
            return
    # The mount namespace is the machine's: another process mounting all the time (a
    # benchmark, a CSI driver test) leaves no quiet 50 ms to observe re-arming in.
    pytest.skip("the machine's mount table never went quiet for 50 ms (other processes mounting)")


def test_watcher_fires_after_mount_and_unmount(mount_cleanup):
    target = mount_cleanup / "m"
    target.mkdir()
    with MountInfoWatcher() as w:
        assert w.fileno() >= 0
        # The mount namespace is shared with every other process on the machine, so other
        # mounts may come and go: settle first, then expect our own change to be seen.
        settle(w)
        sc.sys_mount("tmpfs", str(target), "tmpfs", 0, "size=1m")
        assert w.wait(5.0)
        settle(w)  # re-armed after reading: it goes quiet again
        sc.sys_umount(str(target))
        assert w.wait(5.0)
    with pytest.raises(ValueError):
        w.fileno()


@pytest.mark.timeout(20)
def test_watcher_wakes_a_waiting_thread(mount_cleanup):
    target = mount_cleanup / "m"
    target.mkdir()
    result = []
    with MountInfoWatcher() as w:
        t = threading.Thread(target=lambda: result.append(w.wait(10.0)))
        t.start()
        sc.sys_mount("tmpfs", str(target), "tmpfs", 0, None)
        t.join(10)
    sc.sys_umount(str(target))
    assert result == [True]


def test_real_bind_mount_seen_with_root(mount_cleanup):
    src = mount_cleanup / "src dir"
    (src / "sub").mkdir(parents=True)
    base = mount_cleanup / "base"
    base.mkdir()
    sc.sys_mount("tmpfs", str(base), "tmpfs", 0, None)
    (base / "sub").mkdir()
    t1, t2 = mount_cleanup / "t 1", mount_cleanup / "t2"
    t1.mkdir()
    t2.mkdir()
    sc.sys_mount(str(base / "sub"), str(t1), None, sc.MS_BIND, None)
    sc.sys_mount(str(base / "sub"), str(t2), None, sc.MS_BIND, None)
    table = MountTable.read()
    m1 = table.top(str(t1))
    assert m1 is not None and m1.root == "/sub" and m1.fs_type == "tmpfs"
    assert table.refs(str(t1)) == [str(t2)]
    assert {m.mount_point for m in table.under(str(mount_cleanup))} == {str(base), str(t1), str(t2)}
    assert os.path.basename(m1.mount_point) == "t 1"


segment = st.sampled_from(["a", "b", "ab", "a b", "a.", "a-", "a0", "\u00e9"])
abs_path = st.lists(segment, max_size=4).map(lambda parts: "/" + "/".join(parts))


@given(st.lists(abs_path, min_size=1, max_size=12), abs_path)
def test_under_matches_brute_force(points, prefix):
    mounts = [
        MountInfo(i + 1, 0, 0, i, "/", p, ("rw",), (), "tmpfs", "t", ("rw",)) for i, p in enumerate(points)
    ]
    table = MountTable(mounts)

    def below(p: str) -> bool:
        return prefix == "/" or p == prefix or p.startswith(prefix + "/")

    assert table.under(prefix) == [m for m in mounts if below(m.mount_point)]
    for p in points:
        assert table.is_mount_point(p)
        assert table.at(p) == [m for m in mounts if m.mount_point == p]


def test_watcher_table_under_a_prefix_parses_only_that_part(mount_cleanup):
    """The daemon's mount check reads only its own root's mounts; a path with a space
    (escaped as \\040 in mountinfo) and a sibling sharing the prefix as a string are handled."""
    inside = mount_cleanup / "root dir" / "pods" / "m"
    sibling = mount_cleanup / "root dir2"
    inside.mkdir(parents=True)
    sibling.mkdir()
    sc.sys_mount("tmpfs", str(inside), "tmpfs", 0, "size=1m")
    sc.sys_mount("tmpfs", str(sibling), "tmpfs", 0, "size=1m")
    try:
        with MountInfoWatcher() as w:
            part = w.table(under=str(mount_cleanup / "root dir"))
            whole = w.table()
        assert [m.mount_point for m in part] == [str(inside)]
        assert part.is_mount_point(str(inside)) and not part.is_mount_point(str(sibling))
        assert whole.is_mount_point(str(sibling)) and len(whole) > len(part)
    finally:
        sc.sys_umount(str(sibling))
        sc.sys_umount(str(inside))


@given(st.lists(st.text(alphabet=st.sampled_from("ab \t\n\\/é"), min_size=1, max_size=6), min_size=1, max_size=5),
       st.text(alphabet=st.sampled_from("ab \t\\/é"), min_size=1, max_size=6))
def test_mount_points_answers_as_the_table_does(names, probe):
    """MountPoints (the watcher's cheap check: mount points only) agrees with MountTable on
    every path, escapes included."""
    lines = [f"{40 + i} 1 0:{50 + i} / {escape_field('/r/' + n)} rw - tmpfs t rw".encode()
             for i, n in enumerate(names)]
    table = parse_mountinfo("\n".join(x.decode() for x in lines) + "\n")
    points = MountPoints(lines)
    whole = MountTable(table)
    for path in [f"/r/{n}" for n in names] + [f"/r/{probe}", "/r", "/r/"]:
        assert points.is_mount_point(path) == whole.is_mount_point(path), path


def test_table_of_majors_parses_only_those_devices_mounts(mount_cleanup):
    """The "who mounts this device?" table (issue 16): a tmpfs (major 0) is in the table of
    major 0 and in no other; the whole table agrees on what it holds."""
    from mount_utils.mountinfo import read_table_of_majors

    target = mount_cleanup / "m"
    target.mkdir()
    sc.sys_mount("tmpfs", str(target), "tmpfs", 0, "size=1m")
    whole = MountTable.read()
    (mine,) = whole.at(str(target))
    zero = read_table_of_majors({0, 12345})
    assert [m.mount_point for m in zero.by_device(mine.major, mine.minor)] == [str(target)]
    assert all(m.major in (0, 12345) for m in zero.mounts)
    assert not read_table_of_majors({12345}).mounts
