//! Workspace-level end-to-end tests of cache-worker live in `tests/`.
