"""Measures the console's fleet page at fleet size: `croupier bench console --agents N` holds N
real agent sessions on a server with its console; this script signs in with headless Chromium
and loads the fleet page `--rounds` times, printing for each the time the page itself took to
fetch and show every agent (`data-render-ms`: ListAgents pages through the console's API,
then the first 100 rows and the counts) and the wall-clock time from navigation to "N of N
agents" as Selenium saw it (the app's boot included).

    python tests/console/bench_fleet.py --agents 10000 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

sys.path.insert(0, os.path.dirname(__file__))
from conftest import BIN, new_browser  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--agents", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    bench = subprocess.Popen([BIN, "bench", "console", "--agents", str(args.agents), "--hold", "30m"],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert bench.stdout is not None
        line = bench.stdout.readline()
        if not line:
            print("bench console ended without printing its sign-in", file=sys.stderr)
            return 1
        info = json.loads(line)
        print(f"{info['agents']} agents registered in {info['register_s']:.1f} s")
        d = new_browser()
        try:
            d.get(info["console"] + "/")
            WebDriverWait(d, 30).until(ec.visibility_of_element_located((By.ID, "login-user"))).send_keys(info["user"])
            d.find_element(By.ID, "login-password").send_keys(info["password"])
            d.find_element(By.ID, "login-submit").click()
            want = f"{args.agents} of {args.agents} agents"
            page_ms, wall_ms = [], []
            for _ in range(args.rounds):
                d.get(info["console"] + "/#/jobs")
                WebDriverWait(d, 30).until(ec.presence_of_element_located((By.CSS_SELECTOR, "[data-testid=jobs]")))
                t0 = time.perf_counter()
                d.get(info["console"] + "/#/fleet")
                WebDriverWait(d, 60, poll_frequency=0.01).until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, "[data-testid=fleet-count]"), want))
                wall_ms.append((time.perf_counter() - t0) * 1000)
                rows = d.find_elements(By.CSS_SELECTOR, "[data-testid=fleet] tbody tr")
                assert len(rows) == min(100, args.agents), len(rows)
                page_ms.append(float(d.find_element(By.CSS_SELECTOR, "[data-testid=fleet]").get_attribute("data-render-ms") or "nan"))
            print(f"fleet page, {args.agents} agents: page fetch+render median {statistics.median(page_ms):.0f} ms "
                  f"(rounds {', '.join(f'{x:.0f}' for x in page_ms)}); navigation to all agents listed median "
                  f"{statistics.median(wall_ms):.0f} ms (rounds {', '.join(f'{x:.0f}' for x in wall_ms)})")
        finally:
            d.quit()
    finally:
        bench.terminate()
        bench.wait(timeout=60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
