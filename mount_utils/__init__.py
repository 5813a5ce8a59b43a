"""Mount primitives for Linux: mountinfo, mount(2)/umount2(2), safe cleanup. Knows nothing of pods or CSI.

Modules: `mountinfo` (parse and index the mount table, watch it for changes), `syscalls`
(ctypes mount/umount2/statx), `options` (validate, mask, translate mount options), `mounter`
(the `Mounter` interface, `LinuxMounter`, `FakeMounter`), `cleanup` (safe unmount-and-remove),
`paths` (symlink-safe mkdir/create below a root), `device` (block device facts), `format`
(safe format-and-mount, resize).
"""
