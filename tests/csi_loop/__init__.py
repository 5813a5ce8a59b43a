"""csi-loop: the reference CSI plugin used by the tests (run: ``python -m tests.csi_loop``).

``driver.LoopDriver`` is the plugin's Identity and Node side; ``controller.LoopController`` its
Controller service (``--controller``: volumes from a capacity pool, attach as loop set-up,
expansion, snapshots); ``harness.CSILoopPlugin`` starts and stops it as a separate process for
tests and cleans up its loops and mounts.
"""
