"""A real S3-protocol server (moto's server mode) on loopback, shared by every test that needs
S3: import the `s3_endpoint` fixture into the test module or conftest that uses it."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def s3_endpoint():
    """The URL of a moto S3 server on a free loopback port (any credentials are accepted)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()
