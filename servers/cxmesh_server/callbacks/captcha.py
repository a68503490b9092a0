"""reCAPTCHA verification (the siteverify protocol) of GES create requests."""

from __future__ import annotations

import httpx

from cxmesh_server.callbacks.settings import CallbackSettings
from cxmesh_server.runtime.errors import FieldViolation, InvalidArgument, Unavailable

FIELD = "captchaToken"


class CaptchaVerifier:
    def __init__(self, settings: CallbackSettings, client: httpx.AsyncClient) -> None:
        self._settings = settings
        self._client = client

    async def verify(self, token: str) -> None:
        """Returns when the token is valid; raises a domain error saying why not."""
        if not token.strip():
            raise InvalidArgument([FieldViolation(FIELD, "is required by this service")])
        secret = self._settings.recaptcha_secret
        if secret is None:
            raise InvalidArgument([FieldViolation(FIELD, "captcha verification is not configured")])
        try:
            response = await self._client.post(
                self._settings.recaptcha_verify_url,
                data={"secret": secret.get_secret_value(), "response": token},
            )
            response.raise_for_status()
            verdict = response.json()
        except (httpx.HTTPError, ValueError) as error:
            raise Unavailable("captcha verification is unavailable") from error
        if verdict.get("success") is not True:
            codes = ", ".join(verdict.get("error-codes", [])) or "rejected"
            raise InvalidArgument([FieldViolation(FIELD, f"verification failed: {codes}")])
