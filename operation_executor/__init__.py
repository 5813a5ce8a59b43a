"""Operations on volumes: keys, exclusivity, backoff, typed outcomes and the volume-plugin interface."""
