"""The RunPod serverless worker: `runpod.serverless.start({"handler": handler})`.

A job's input is `JobInput`: run id, attempt, the claim's lease token and a few non-secret
settings, nothing else (unknown keys are refused, so a payload can never smuggle a secret in).
The lease token is no account secret: it is drawn per claim and opens only that attempt of that
run, and only until the run is claimed again. The worker reads its database URL, storage keys and
hub token from its own environment, like the local trainer.

Before it trains, the worker waits (polling, up to SKUTRAIN_LAUNCH_RECORD_TIMEOUT) until the
dispatcher has recorded the job's launch, the gate the local launcher holds on the child's stdin:
run.launched then precedes the trainer's first event, and a job whose dispatcher died before
recording it never trains unrecorded (it fails; the run's lease expires and the reconciler
requeues it). A job whose lease moved on is stale: it ends as lease_lost without training.

The training runs as `python -m services.trainer` (the same `run_attempt` the local launcher
runs) in a child process, so the SDK's event loop stays free to heartbeat and to receive stop
signals; a stopped job (cancelled or timed out on RunPod) terminates the child: SIGTERM, then
SIGKILL after a grace period. The trainer writes its events straight to Postgres; the job's result
is small: `{"run_id", "attempt", "outcome"}`, or an error with the end of the trainer's log.

Local check: `python -m services.trainer.handler --test_input '{"input": {"run_id": 1, ...}}'`.
"""
from __future__ import annotations

import asyncio
import collections
import os
import signal
import sys
from pathlib import Path
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from db import repository
from db.connection import resolve_database_url
from services.common.errors import InvalidConfig, LaunchFailed, TrainingFailed
from services.common.logging import redact_text
from services.common.settings import Settings, get_settings

ROOT = Path(__file__).resolve().parents[2]
# Settings a job may carry to its worker: none of them is a secret.
JobSetting = Literal["progress_interval", "log_level", "torch_threads"]
LEASE_LOST_EXIT = 3  # services.trainer's exit code when another attempt owns the run
STOP_GRACE_SECONDS = 10.0
LAUNCH_RECORD_POLL_SECONDS = 0.25


class JobInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    run_id: int = Field(ge=1)
    attempt: int = Field(ge=1)
    lease_token: UUID
    settings: dict[JobSetting, str | int | float] = Field(default_factory=dict)


def job_settings(settings: Settings) -> dict[str, Any]:
    """The non-secret settings a job carries to its worker (those set here)."""
    carried = {name: getattr(settings, name) for name in JobSetting.__args__}
    return {name: value for name, value in carried.items() if value is not None}


def job_input(run_id: int, attempt: int, lease_token: str,
              settings: dict[str, Any]) -> dict[str, Any]:
    """The payload of one attempt's job (what the launcher sends), validated like the worker
    will read it."""
    return JobInput(run_id=run_id, attempt=attempt, lease_token=lease_token,
                    settings=settings).model_dump(mode="json")


def parse_job_input(raw: Any) -> JobInput:
    """The job's input, or InvalidConfig naming the bad fields (never their values: a value
    in the wrong place may be a secret)."""
    try:
        return JobInput.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'input'}: {e['msg']}"
                             for e in exc.errors())
        raise InvalidConfig(f"the job input is not a skutrain job ({problems}); it takes "
                            "run_id, attempt, lease_token and settings only") from None


def trainer_environment(job: JobInput) -> dict[str, str]:
    """The worker's environment plus the job's settings, under their settings names."""
    overrides = {Settings.model_fields[name].validation_alias: str(value)
                 for name, value in job.settings.items()}
    return {**os.environ, **overrides}


async def _read_tail(stream: asyncio.StreamReader, tail: collections.deque) -> None:
    async for line in stream:
        sys.stderr.buffer.write(line)  # the worker's own log (RunPod shows it)
        tail.append(line.decode("utf-8", "replace"))


async def _terminate(process: asyncio.subprocess.Process) -> None:
    """SIGTERM the trainer's process group, SIGKILL it after the grace period."""
    for sig, wait in ((signal.SIGTERM, STOP_GRACE_SECONDS), (signal.SIGKILL, None)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            await asyncio.wait_for(process.wait(), wait)
            return
        except asyncio.TimeoutError:
            continue


async def wait_for_launch_record(job: JobInput, database_url: str, timeout: float) -> bool:
    """True once the dispatcher has recorded this attempt's launch; False when the job is stale
    (its lease no longer holds the run in flight). LaunchFailed when no record comes in time."""
    conn = await repository.connect(database_url)
    lease = repository.Lease(job.run_id, str(job.lease_token))
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        while not (recorded := await repository.trainer_launch_recorded(conn, lease, job.attempt)):
            if recorded is None:
                return False
            if asyncio.get_running_loop().time() >= deadline:
                raise LaunchFailed(
                    f"the launch of run {job.run_id} attempt {job.attempt} was not recorded "
                    f"within {timeout:g}s (SKUTRAIN_LAUNCH_RECORD_TIMEOUT), so this job did not "
                    "train: the dispatcher that started it stopped before recording it. The "
                    "run's lease expires and the reconciler requeues it")
            await asyncio.sleep(LAUNCH_RECORD_POLL_SECONDS)
    finally:
        await conn.close()
    return True


async def handler(job: dict[str, Any]) -> dict[str, Any]:
    request = parse_job_input(job["input"])
    result = {"run_id": request.run_id, "attempt": request.attempt}
    settings = get_settings()
    if not await wait_for_launch_record(request, resolve_database_url(settings),
                                        settings.launch_record_timeout):
        return {**result, "outcome": "lease_lost"}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.trainer", "--run-id", str(request.run_id),
        "--attempt", str(request.attempt),
        cwd=ROOT, env=trainer_environment(request), start_new_session=True,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    process.stdin.write(f"{request.lease_token}\n".encode())  # never on the command line
    await process.stdin.drain()
    process.stdin.close()
    tail: collections.deque[str] = collections.deque(maxlen=40)
    reader = asyncio.create_task(_read_tail(process.stdout, tail))
    try:
        code = await process.wait()
        await reader
    except asyncio.CancelledError:  # RunPod stopped the job: cancelled or timed out
        await _terminate(process)
        reader.cancel()
        raise
    if code == 0:
        return {**result, "outcome": "ended"}
    if code == LEASE_LOST_EXIT:
        return {**result, "outcome": "lease_lost"}
    raise TrainingFailed(redact_text(
        f"the trainer exited with code {code}; its log ends with: {''.join(tail)[-1500:]}"))


if __name__ == "__main__":
    import runpod

    runpod.serverless.start({"handler": handler})
