"""The embedded Postgres: started on first use under the data dir, reused, stopped by the CLI."""
import os
import subprocess
import sys

import pytest


def _cli(data_dir, *args, user=None):
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env["SKUTRAIN_DATA_DIR"] = str(data_dir)
    command = [sys.executable, "-m", "services.cli", *args]
    if user is not None:
        command = ["runuser", "-u", user, "--", *command]
    done = subprocess.run(command, capture_output=True, text=True, env=env,
                          cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__)))))
    assert done.returncode == 0, (args, done.returncode, done.stdout[-2000:], done.stderr[-2000:])
    return done


def test_embedded_server_is_reused_and_stopped(tmp_path):
    data = tmp_path / "data"
    assert "upgraded to head" in _cli(data, "db", "upgrade").stdout
    pid_file = data / "pg" / "postmaster.pid"
    first_pid = pid_file.read_text().split()[0]
    run_id = _cli(data, "runs", "create", "x").stdout.strip()
    assert pid_file.read_text().split()[0] == first_pid  # the same server, reused
    assert f"{run_id} queued" in " ".join(_cli(data, "runs", "list").stdout.split())
    assert "stopped" in _cli(data, "db", "stop").stdout
    assert not pid_file.exists()
    assert "was not running" in _cli(data, "db", "stop").stdout


def _can_run_python_as(user: str) -> bool:
    if os.geteuid() != 0:
        return False
    probe = subprocess.run(["runuser", "-u", user, "--", sys.executable, "-c", "pass"],
                           capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _can_run_python_as("nobody"),
                    reason="needs root, and an interpreter a normal user may execute "
                           "(here it may live under a 0700 home)")
def test_embedded_server_as_a_normal_user(tmp_path):
    import pwd

    user = "nobody"
    pw = pwd.getpwnam(user)
    data = tmp_path / "as-user"
    data.mkdir()
    os.chown(data, pw.pw_uid, pw.pw_gid)
    for parent in [tmp_path, *tmp_path.parents]:
        os.chmod(parent, os.stat(parent).st_mode | 0o011)
    _cli(data, "db", "upgrade", user=user)
    assert _cli(data, "runs", "create", "y", user=user).stdout.strip() == "1"
    assert "stopped" in _cli(data, "db", "stop", user=user).stdout
