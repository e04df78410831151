import pytest

from tests.support.runpod_server import RunPodServer, start_worker, stop_worker


@pytest.fixture
def runpod_server():
    with RunPodServer() as server:
        yield server


@pytest.fixture
def echo_worker(runpod_server, tmp_path):
    process = start_worker(runpod_server, "tests.support.echo_worker", {},
                           log_path=tmp_path / "worker.log")
    yield process
    stop_worker(process)
