"""The test suite. Imported before any test module or conftest, so before anything imports Ray."""

import os

# Ray reads this when it is imported: without it, local clusters (ray.init, cluster_utils.Cluster) listen on the
# host's interface; with it they bind 127.0.0.1 only.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
