"""Run the fake API server as its own process: ``python -m tests.fake_apiserver KUBECONFIG [OBJECTS.json]``.

Why: a daemon under test (a subprocess) and a benchmark want a server outside their own
process. It writes a kubeconfig for itself, loads optional objects (a JSON list), prints its
URL on stdout, and serves until SIGTERM/SIGINT. Test controls are in-process only.
"""

from __future__ import annotations

import json
import signal
import sys
import threading

from tests.fake_apiserver.server import FakeApiServer


def main(argv: list[str]) -> int:
    if not 1 <= len(argv) <= 2:
        print(__doc__, file=sys.stderr)
        return 2
    server = FakeApiServer().start()
    server.write_kubeconfig(argv[0])
    if len(argv) == 2:
        with open(argv[1]) as f:
            for obj in json.load(f):
                server.upsert(obj)
    print(server.url, flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    done.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
