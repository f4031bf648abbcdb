"""Fixtures of the API tests that several files share: a server with Twilio configured, and Twilio's REST API."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.conftest import VOICE_BLUEPRINT, Server, ServerFactory
from tests.fakes.twilio_server import ACCOUNT_SID, AUTH_TOKEN, FakeTwilioAPI


@pytest.fixture
async def twilio_api() -> AsyncIterator[FakeTwilioAPI]:
    fake = await FakeTwilioAPI().start()
    yield fake
    await fake.close()


@pytest.fixture
async def phone_server(server_factory: ServerFactory, twilio_api: FakeTwilioAPI) -> Server:
    """A server with Twilio configured (its REST API is ``twilio_api``) and a published voice blueprint
    (``extra["blueprint_id"]``)."""
    server = await server_factory(
        twilio_account_sid=ACCOUNT_SID, twilio_auth_token=AUTH_TOKEN, twilio_api_url=twilio_api.url
    )
    server.extra["blueprint_id"] = await server.create_blueprint(VOICE_BLUEPRINT)
    return server
