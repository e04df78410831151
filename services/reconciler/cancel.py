"""Cancel of a claimed or running run: the launcher stops the job (local: SIGTERM at once,
SIGKILL after the grace period) and the run ends `cancelled` when the job is gone or the grace
period is over (fenced: a trainer that finished it first wins)."""
from __future__ import annotations

from db import repository
from services.dispatcher.launchers import JobState, Launcher
from services.reconciler.leases import job_state, launch_record


async def enforce_cancel(conn, row, launchers: dict[str, Launcher], log) -> str:
    """What was done: 'cancelled' (the job is gone), 'killed' (grace over) or 'signalled'."""
    record = launch_record(row)
    state = job_state(record, launchers)
    if state is JobState.GONE:
        reason = "cancelled: the job stopped"
        outcome = "cancelled"
    elif row["cancel_overdue"]:
        if state is JobState.ALIVE:
            launchers[record.launcher].stop(record, force=True)
        reason = "cancelled: the job did not stop within the grace period and was killed"
        outcome = "killed"
    else:
        if state is JobState.ALIVE:
            launchers[record.launcher].stop(record, force=False)
        return "signalled"
    if await repository.cancel_stopped_run(conn, row["id"], row["lease_epoch"], reason):
        log.info("run.cancelled", run_id=row["id"], attempt=row["attempt"], how=outcome)
    if record is not None:
        await repository.end_launch(conn, row["id"], row["attempt"], "cancelled")
    return outcome
