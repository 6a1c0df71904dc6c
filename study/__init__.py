"""study: distributed hyperparameter studies of top-down attention in LeNet-style networks."""

import os

# Ray's token authentication stays on. Ray enables it for a local instance it starts, but for an
# explicit --address only when asked, and it reads the setting once, when it is first imported
# (by ``study.tune`` or by ``study.preflight``'s address check): so ask before anything imports it.
# The token itself comes from ~/.ray/auth_token or RAY_AUTH_TOKEN.
os.environ.setdefault("RAY_AUTH_MODE", "token")

__version__ = "0.1.0"
