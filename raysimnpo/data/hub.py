"""The Hugging Face hub, reachable or not: decided once per process, before the first hub request.

Without a network, huggingface_hub retries every request five times with back-off (a dozen
`Retrying in ...` lines and 35-57 s) before transformers or datasets give up. So before the first
request the hub's host is asked for a connection for a few seconds; when it does not answer, the
hub's offline mode is switched on (as `HF_HUB_OFFLINE=1` would): a model or dataset already in the
local Hugging Face cache still loads, and a missing one fails at once, with one line.
"""

from __future__ import annotations

import os
import socket
import sys
import urllib.parse

PROBE_TIMEOUT_S = 3.0
_PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")
_probed = False


def is_offline() -> bool:
    """Whether the hub's offline mode is on (HF_HUB_OFFLINE, TRANSFORMERS_OFFLINE, or switched on here)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def prefer_offline_when_unreachable() -> None:
    """Switch the hub's offline mode on when its host does not accept a connection within
    PROBE_TIMEOUT_S (checked once per process; behind a proxy the hub library decides)."""
    global _probed
    if _probed or is_offline() or any(os.environ.get(v) for v in _PROXY_VARIABLES):
        return
    _probed = True
    endpoint = urllib.parse.urlsplit(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection(
            (endpoint.hostname or "huggingface.co", port), timeout=PROBE_TIMEOUT_S
        ).close()
    except OSError:
        go_offline()


def go_offline() -> None:
    """Offline mode for this process and the processes it starts: huggingface_hub reads its flag at
    import, datasets keeps a copy; both are set where already imported."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    from huggingface_hub import constants

    constants.HF_HUB_OFFLINE = True
    datasets_config = sys.modules.get("datasets.config")
    if datasets_config is not None:
        datasets_config.HF_HUB_OFFLINE = True  # type: ignore[attr-defined]
        datasets_config.HF_DATASETS_OFFLINE = True  # type: ignore[attr-defined]
