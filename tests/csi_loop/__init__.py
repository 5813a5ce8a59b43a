"""csi-loop: the reference CSI node plugin used by the tests (run: ``python -m tests.csi_loop``).

``driver.LoopDriver`` is the plugin; ``harness.CSILoopPlugin`` starts and stops it as a separate
process for tests and cleans up its loops and mounts.
"""
