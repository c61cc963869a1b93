"""Long-running obsdb services (installed as ``obsdb.services``): watcher, worker, daemon."""
