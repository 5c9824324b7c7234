"""The one question delivery asks ConsentService: is this purpose granted for this person now?"""

from __future__ import annotations

import grpc

from mosaic.consent.v1 import consent_service_pb2
from mosaic.platform.errors import Unavailable


async def granted(consent, profile_id: str, purpose: str) -> bool:
    """CheckConsent; Unavailable when the consent service does not answer (retried upstream)."""
    try:
        answer = await consent.CheckConsent(
            consent_service_pb2.CheckConsentRequest(profile_id=profile_id, purpose=purpose), timeout=5
        )
    except grpc.aio.AioRpcError as error:
        raise Unavailable("consent", f"{error.code().name}: {error.details()}") from error
    return answer.granted
