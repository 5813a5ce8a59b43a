"""Only the optional C extension; everything else is in setup.cfg.

``mount_utils._ownership`` is the native fsGroup walk (see ``mount_utils/ownership.py``, which
falls back to its Python walk when the extension is missing): ``optional=True`` makes a failed
compile (no C compiler, no Python headers) a warning, not a failed install.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("mount_utils._ownership", ["mount_utils/_ownership.c"], optional=True)])
