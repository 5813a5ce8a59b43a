"""Mount primitives for Linux: mountinfo, mount(2)/umount2(2), safe cleanup. Knows nothing of pods or CSI."""
