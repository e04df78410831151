"""`python -m services.dispatcher.local_job --run-id N --attempt A`: the local launcher's
process. It waits at the launch gate (its stdin) until the dispatcher has recorded the launch,
then becomes the trainer in the same process (same pid and start time, as recorded), which reads
the claim's lease token from the next line of the same stdin.
A gate that closes without the go line (the dispatcher died or the run was fenced before the
launch was recorded) means the launch never happened: exit without touching the run.
"""
from __future__ import annotations

import sys

from services.dispatcher.launchers import GATE_OPEN

NOT_LAUNCHED = 75  # EX_TEMPFAIL: the launch was not recorded, nothing ran


def main(argv: list[str] | None = None) -> int:
    if sys.stdin.readline().encode() != GATE_OPEN:
        return NOT_LAUNCHED
    from services.trainer.__main__ import main as trainer_main

    return trainer_main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
