"""The command line's channels to the mesh, with the credentials of `mosaic run`'s local PKI
(`.local/pki/`), or those named by `MOSAIC_TLS_CA` and `MOSAIC_AUTH_TOKEN_FILE` (set empty:
plaintext, no token)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

from mosaic.platform import clients
from mosaic.platform.config import SecuritySettings

LOCAL_PKI = Path(".local/pki")


def _first(variable: str, local: Path) -> str:
    """The variable when it is set (empty: none), else the local PKI's file when there is one."""
    if variable in os.environ:
        return os.environ[variable]
    return str(local) if local.is_file() else ""


def security() -> SecuritySettings:
    return SecuritySettings(
        ca=_first("MOSAIC_TLS_CA", LOCAL_PKI / "ca.pem"),
        token_file=_first("MOSAIC_AUTH_TOKEN_FILE", LOCAL_PKI / "tokens/admin.token"),
    )


def channel(address: str, options: Sequence[tuple[str, Any]] = ()) -> grpc.aio.Channel:
    """A channel to a service of the mesh as this user."""
    return clients.channel(address, security(), options=options)
