"""Push notifications of callback state changes through FCM HTTP v1.

A state change only puts a notification on an in-process queue; a background task sends
it, retrying with exponential backoff, so a slow or failing FCM never holds up a callback.
Access tokens come from the service account (a signed JWT exchanged at its token_uri, the
OAuth 2.0 JWT bearer grant) and are reused until shortly before they expire.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import httpx
import jwt

from cxmesh.callbacks.v1 import callback_pb2
from cxmesh_server.callbacks.settings import CallbackSettings
from cxmesh_server.runtime.logging import repeating

log = logging.getLogger(__name__)
SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
QUEUE_LIMIT = 100_000
# Answers worth another try; any other failure (an unregistered token) is final.
RETRYABLE = {408, 429, 500, 502, 503, 504}


@dataclass(frozen=True, slots=True)
class Notification:
    tenant: str
    target: str
    data: dict[str, str]


class PushNotifier:
    def __init__(self, settings: CallbackSettings, client: httpx.AsyncClient) -> None:
        self._settings = settings
        self._client = client
        self._account: dict[str, Any] | None = None
        if settings.fcm_service_account_file is not None:
            self._account = json.loads(settings.fcm_service_account_file.read_text())
        self._queue: asyncio.Queue[Notification] = asyncio.Queue(QUEUE_LIMIT)
        self._token: tuple[str, float] | None = None
        self.sent = 0

    @property
    def enabled(self) -> bool:
        return self._account is not None

    def notify(self, tenant: str, callback: callback_pb2.Callback, states: set[int]) -> None:
        """Queues a notification to each FCM target of `callback` if its state is one of
        `states`; never waits."""
        if not self.enabled or callback.state not in states:
            return
        data = {
            "id": callback.name.removeprefix("callbacks/"),
            "callbackState": callback_pb2.CallbackState.Name(callback.state).removeprefix(
                "CALLBACK_STATE_"
            ),
        }
        if callback.state == callback_pb2.CALLBACK_STATE_COMPLETED:
            data["callbackReason"] = callback_pb2.CallbackReason.Name(callback.reason).removeprefix(
                "CALLBACK_REASON_"
            )
        for target in callback.push_targets:
            if target.channel.upper() != "FCM":
                continue
            try:
                self._queue.put_nowait(Notification(tenant, target.target, data))
            except asyncio.QueueFull:
                log.warning("push queue full; notification dropped", extra=repeating(tenant=tenant))

    async def run(self) -> None:
        """Sends queued notifications for the life of the process."""
        while True:
            notification = await self._queue.get()
            try:
                await self._deliver(notification)
            except Exception:
                log.warning("push notification failed", exc_info=True, extra=repeating())

    async def _deliver(self, notification: Notification) -> None:
        settings = self._settings
        for attempt in range(settings.push_max_attempts):
            if attempt:
                await asyncio.sleep(settings.push_backoff_seconds * 2 ** (attempt - 1))
            try:
                status = await self._send(notification)
            except httpx.HTTPError:
                status = 503
            if 200 <= status < 300:
                self.sent += 1
                return
            if status == 401:
                self._token = None  # expired or revoked: a new one on the next try
            elif status not in RETRYABLE:
                break
        log.warning(
            "push notification given up",
            extra=repeating(tenant=notification.tenant, callback=notification.data["id"]),
        )

    async def _send(self, notification: Notification) -> int:
        assert self._account is not None
        url = f"{self._settings.fcm_url}/v1/projects/{self._account['project_id']}/messages:send"
        response = await self._client.post(
            url,
            headers={"authorization": f"Bearer {await self._access_token()}"},
            json={"message": {"token": notification.target, "data": notification.data}},
        )
        return response.status_code

    async def _access_token(self) -> str:
        if self._token is not None and self._token[1] > time.time() + 60:
            return self._token[0]
        assert self._account is not None
        now = int(time.time())
        assertion = jwt.encode(
            {
                "iss": self._account["client_email"],
                "scope": SCOPE,
                "aud": self._account["token_uri"],
                "iat": now,
                "exp": now + 3600,
            },
            self._account["private_key"],
            algorithm="RS256",
            headers={"kid": self._account.get("private_key_id", "")},
        )
        response = await self._client.post(
            self._account["token_uri"],
            data={
                "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
                "assertion": assertion,
            },
        )
        response.raise_for_status()
        grant = response.json()
        self._token = (grant["access_token"], now + float(grant.get("expires_in", 3600)))
        return self._token[0]
