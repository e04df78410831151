"""`skutrain runpod health` against the RunPod-compatible server: says what is wrong."""
import argparse

import pytest

from services.cli import cmd_runpod
from services.common.settings import Settings
from services.dispatcher.runpod_launcher import health_problems


def run_health(capsys, server, **overrides):
    settings = Settings(**({"RUNPOD_API_KEY": server.api_key,
                            "RUNPOD_ENDPOINT_ID": server.endpoint_id,
                            "RUNPOD_ENDPOINT_BASE_URL": server.base_url} | overrides))
    code = cmd_runpod(argparse.Namespace(action="health"), settings)
    return code, capsys.readouterr().out


def test_health_reports_workers_and_what_is_wrong(capsys, runpod_server):
    code, out = run_health(capsys, runpod_server)
    assert code == 0 and "workers: idle 0" in out and out.rstrip().endswith("ok")
    runpod_server.payloads.clear()
    code, out = run_health(capsys, runpod_server, RUNPOD_API_KEY="wrong")
    assert code == 1 and "refused the API key" in out and "RUNPOD_API_KEY" in out
    code, out = run_health(capsys, runpod_server, RUNPOD_ENDPOINT_ID="nope")
    assert code == 1 and "no endpoint 'nope'" in out
    code, out = run_health(capsys, runpod_server, RUNPOD_ENDPOINT_ID="")
    assert code == 1 and "RUNPOD_ENDPOINT_ID not set" in out


@pytest.mark.parametrize("doc, expected", [
    ({"workers": {"idle": 1}, "jobs": {"inQueue": 3}}, []),
    ({"workers": {"idle": 0}, "jobs": {"inQueue": 2}}, ["no worker is running"]),
    ({"workers": {"unhealthy": 2, "running": 1}, "jobs": {}}, ["unhealthy"]),
    ({"workers": {"throttled": 1}, "jobs": {}}, ["throttled"]),
])
def test_health_problems(doc, expected):
    problems = health_problems(doc)
    assert len(problems) == len(expected)
    assert all(word in problem for word, problem in zip(expected, problems))
