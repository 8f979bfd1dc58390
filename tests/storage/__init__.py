"""The storage suite: one set of tests, a fixture per fsspec backend."""
