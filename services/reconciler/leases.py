"""Leases and liveness: a job that is gone, or alive but hung, is stopped and its run requeued to
resume from its last checkpoint (attempt + 1), up to max_attempts, then failed with a message
that says what happened. Used by the reconciler and, for the fast path, by the dispatcher."""
from __future__ import annotations

from db import repository
from services.common import metrics
from services.dispatcher.launchers import JobState, Launcher, LaunchRecord


def launch_record(row) -> LaunchRecord | None:
    """The current attempt's launch record from a runs_needing_attention row (None: none)."""
    if row["launcher"] is None:
        return None
    return LaunchRecord(row["id"], row["attempt"], row["lease_epoch"], row["launcher"],
                        row["external_job_id"], row["identity"] or {})


def job_state(record: LaunchRecord | None, launchers: dict[str, Launcher]) -> JobState:
    """Whether the job of a stored launch still runs. No record, or a record that never got an
    identity, means no job was let go (the launch gate closed)."""
    if record is None or not record.identity:
        return JobState.GONE
    launcher = launchers.get(record.launcher)
    return launcher.state(record) if launcher is not None else JobState.UNKNOWN


async def settle_gone_jobs(conn, launcher: Launcher, max_attempts: int, log) -> int:
    """Close the launch records of `launcher` whose job is gone; a run still held by that
    attempt (its trainer died without finishing it) is requeued or failed. Returns how many."""
    settled = 0
    for row in await repository.live_launches(conn, launcher.name):
        record = LaunchRecord.from_row(row)
        if launcher.state(record) is not JobState.GONE:
            continue
        settled += 1
        if row["status"] in ("claimed", "running") and row["run_attempt"] == row["attempt"]:
            outcome = await repository.recover_attempt(
                conn, record.run_id, record.lease_epoch, "worker_crashed",
                f"the trainer of attempt {record.attempt} exited before finishing the run; its "
                f"log ends with: {launcher.exit_summary(record)[-300:]}", max_attempts)
            log.warning("run.worker_crashed", run_id=record.run_id, attempt=record.attempt,
                        outcome=outcome)
        await repository.end_launch(conn, record.run_id, record.attempt, "exited")
    return settled


async def recover_lease(conn, row, launchers: dict[str, Launcher], stall_timeout: float,
                        max_attempts: int, log) -> str | None:
    """An expired or stalled run: stop its job if it still runs, then requeue or fail it."""
    record = launch_record(row)
    state = job_state(record, launchers)
    attempt = row["attempt"]
    if state is JobState.ALIVE and row["status"] == "claimed" and not row["start_overdue"]:
        return None  # still starting (imports, model load): it gets stall_timeout to start_run
    if row["expired"]:
        metrics.LEASE_EXPIRATIONS.inc()
        if state is JobState.ALIVE:
            code, message = "stalled", (
                f"attempt {attempt} stopped heartbeating while its process was alive (hung); "
                "it was killed")
        elif state is JobState.GONE:
            code, message = "lease_lost", f"attempt {attempt}'s job is gone and its lease expired"
        else:
            code, message = "lease_lost", (
                f"attempt {attempt}'s lease expired and launcher {row['launcher']!r} cannot tell "
                "whether its job runs; it is fenced out")
    elif state is JobState.GONE:
        code, message = "worker_crashed", f"attempt {attempt}'s job is gone"
    else:
        code, message = "stalled", (
            f"attempt {attempt}'s training step did not advance for {stall_timeout:g} s; "
            "its job was stopped")
    # Recorded before the job is stopped: a dispatcher that sees the killed job gone first would
    # otherwise record it as worker_crashed. The recorded attempt is fenced out, so nothing it
    # writes between the commit and the kill lands.
    outcome = await repository.recover_attempt(conn, row["id"], row["lease_epoch"], code, message,
                                               max_attempts)
    if state is JobState.ALIVE and outcome is not None:
        launchers[record.launcher].stop(record, force=True)
    log.warning("run.recovered", run_id=row["id"], attempt=attempt, error_code=code,
                outcome=outcome)
    return outcome
