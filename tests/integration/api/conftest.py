import httpx
import pytest

from tests.integration.api.live import TOKEN, serving


@pytest.fixture
async def api(db_url):
    """An httpx client on the API served by uvicorn on loopback (reads open, writes need the
    token); `client.auth_headers` holds the bearer header."""
    async with serving(db_url) as base:
        async with httpx.AsyncClient(base_url=base + "/api/v1/training", timeout=10) as client:
            client.auth_headers = {"Authorization": f"Bearer {TOKEN}"}
            yield client
