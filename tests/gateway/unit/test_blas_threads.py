"""`moe serve`'s workers route with numpy's BLAS on one thread (routers.one_blas_thread): routing multiplies one
query's features by small matrices, where more threads only wait for cores the server needs."""

from __future__ import annotations

import subprocess
import sys

BLAS_THREADS = (
    "from threadpoolctl import threadpool_info; "
    "print(max(pool['num_threads'] for pool in threadpool_info() if pool['user_api'] == 'blas'))"
)


def blas_threads_after(code: str) -> int:
    # Three threads to begin with, whatever the machine's cores (numpy's default is one per core): what the worker
    # must bring down.
    start = "import numpy; from threadpoolctl import threadpool_limits; threadpool_limits(3)"
    done = subprocess.run([sys.executable, "-c", f"{start}; {code}; {BLAS_THREADS}"], capture_output=True, text=True,
                          timeout=120, check=True)
    return int(done.stdout.strip().splitlines()[-1])


def test_a_served_worker_routes_with_one_blas_thread() -> None:
    assert blas_threads_after("pass") == 3
    assert blas_threads_after("from gateway.cli import serve_app; serve_app()") == 1
