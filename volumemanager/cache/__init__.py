"""The two caches: the desired state of the world (what the manifests ask for) and the actual
state of the world (what is mounted, as far as our operations and reconstruction know)."""
