#!/usr/bin/env python3
"""Runs the end-to-end test binaries of keel-tests, JOBS at a time (each boots its own QEMU).

`cargo test` runs test binaries one after another; most of an end-to-end test is waiting on
an emulated boot, so running two side by side on two cores roughly halves the wall time.
Each binary's output is printed whole when it finishes; the exit status is non-zero when any
binary failed. Extra arguments go to every test binary (e.g. a test name filter).
"""

import json
import os
import subprocess
import sys
import threading
import time

# Longest first, so the short ones fill in beside them (seconds measured on 2 cores).
EXPECTED_SECONDS = {
    "media": 360,
    "agent": 170,
    "register": 110,
    "vmm": 300,
    "hardening": 70,
    "console": 40,
    "boot": 35,
    "net": 30,
    "harness": 25,
}


def test_binaries():
    """Builds the test binaries of keel-tests and returns (name, path) for each."""
    cargo = os.environ.get("CARGO", "cargo")
    out = subprocess.run(
        [cargo, "test", "-p", "keel-tests", "--no-run", "--message-format=json"],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    ).stdout
    found = []
    for line in out.splitlines():
        try:
            msg = json.loads(line)
        except json.JSONDecodeError:
            continue
        if msg.get("reason") != "compiler-artifact" or not msg.get("executable"):
            continue
        if not msg.get("profile", {}).get("test"):
            continue
        target = msg["target"]
        name = target["name"] if "test" in target["kind"] else "lib"
        found.append((name, msg["executable"]))
    return sorted(found, key=lambda b: -EXPECTED_SECONDS.get(b[0], 60))


def main():
    jobs = int(os.environ.get("E2E_JOBS", "2"))
    binaries = test_binaries()
    pending = list(binaries)
    failed = []
    lock = threading.Lock()

    def worker():
        while True:
            with lock:
                if not pending:
                    return
                name, path = pending.pop(0)
                print(f"==> {name}: started", flush=True)
            started = time.monotonic()
            run = subprocess.run(
                [path, "--test-threads=1", *sys.argv[1:]],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                errors="replace",
            )
            took = time.monotonic() - started
            with lock:
                verdict = "ok" if run.returncode == 0 else f"FAILED ({run.returncode})"
                print(f"==> {name}: {verdict} in {took:.0f} s\n{run.stdout}", flush=True)
                if run.returncode != 0:
                    failed.append(name)

    threads = [threading.Thread(target=worker) for _ in range(max(1, jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failed:
        print(f"==> end-to-end failures: {', '.join(failed)}", flush=True)
        return 1
    print(f"==> all {len(binaries)} end-to-end test binaries passed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
