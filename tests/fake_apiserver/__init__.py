"""A fake Kubernetes API server for tests of the API-server source (issue 15).

``FakeApiServer().start()`` listens on 127.0.0.1 with an ephemeral port and speaks list/watch
with resourceVersions, bookmarks and 410 Gone, the few writes a node agent makes (nodes/status
patches, Events, CSINodes, TokenRequests), and bearer-token auth. Its methods are the test
controls; see ``server.py``. The ``fake_apiserver`` fixture in ``conftest.py`` stops it.
"""

from tests.fake_apiserver.server import DEFAULT_TOKEN, FakeApiServer, RequestRecord

__all__ = ["DEFAULT_TOKEN", "FakeApiServer", "RequestRecord"]
