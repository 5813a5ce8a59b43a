"""Talking to a Kubernetes API server (fleet mode): the client, the API-server source's
informers, and what the daemon reports back (Events, volumesInUse, CSINode).

Imported only when the daemon is given a kubeconfig (or runs in a pod with a service-account
token): a node fed only from its manifest dir never loads the client library.
"""
