"""Wait for DATABASE_URL to answer, then bring its schema to Alembic's head (what `moe db upgrade` does).

Run by the chart's migrations hook Job (or, with SQLite, the gateway pod's init container) as
`python -c <this file> --wait-seconds N`. Every outcome is one line naming the database (password
hidden); a failure exits non-zero, so the Job, and with it the install or upgrade, fails with that reason.
"""

import os
import sys
import time

from sqlalchemy import text
from sqlalchemy.engine import make_url

from gateway.decisions.log import make_engine
from gateway.migrate import upgrade


def reason(exc: BaseException) -> str:
    """The driver's own message when there is one (SQLAlchemy's adds the SQL and a link), first line only."""
    cause = getattr(exc, "orig", None) or exc
    lines = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {lines[0] if lines else ''}"


def main(argv: list[str]) -> int:
    wait_s = float(argv[argv.index("--wait-seconds") + 1]) if "--wait-seconds" in argv else 300.0
    url = os.environ.get("DATABASE_URL", "")
    if not url:
        print("migrations: DATABASE_URL is not set (see secrets.databaseUrlKey)", file=sys.stderr)
        return 2
    shown = make_url(url).render_as_string(hide_password=True)
    deadline = time.monotonic() + wait_s
    engine = make_engine(url)
    while True:
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            break
        except Exception as exc:  # noqa: BLE001 - any failure to connect means: not up yet
            if time.monotonic() >= deadline:
                print(f"migrations: the database at {shown} did not answer within {wait_s:.0f} s: {reason(exc)}",
                      file=sys.stderr)
                return 1
            print(f"migrations: waiting for the database at {shown}: {reason(exc)}", file=sys.stderr, flush=True)
            time.sleep(2)
    engine.dispose()
    try:
        upgrade(url)
    except Exception as exc:  # noqa: BLE001 - reported in one line, the Job fails
        print(f"migrations: upgrading {shown} to head failed: {reason(exc)}", file=sys.stderr)
        return 1
    print(f"migrations: database at head: {shown}", flush=True)
    return 0


sys.exit(main(sys.argv))
