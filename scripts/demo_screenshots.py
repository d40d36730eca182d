"""Screenshots of the dashboard over the demo's data, for docs/ui/ (run by hand).

Runs ``underlay demo --serve``, waits for its dashboard line, signs in with the admin token
it prints (a global admin sees every page) in headless Chromium (/usr/bin/chromium, driven by
playwright) and saves one PNG per page; then stops the demo (which removes its home).

    python scripts/demo_screenshots.py [--out docs/ui]
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

PAGES = {
    "overview": "/",
    "nodes": "/nodes",
    "jobs": "/jobs",
    "project": "/projects/vision",
    "alerts": "/alerts",
    "audit": "/audit",
    "runs": "/runs?project=vision",
    "models": "/models?project=vision",
    "model": "/models/vision/churn",
    "datasets": "/datasets?project=vision",
    "table": "/datasets/vision/tables/customers",
    "deployments": "/deployments?project=vision",
    "simulate": "/simulate?trace=philly&jobs=300&policies=fifo&policies=default&policies=las",
}
LINE = re.compile(r"dashboard: (http://\S+?)/ — .*admin token (\S+)\)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/ui"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "COLUMNS": "400"}  # one dashboard line, however long
    demo = subprocess.Popen(
        [sys.executable, "-m", "underlay.cli.main", "demo", "--serve"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        assert demo.stdout is not None
        for line in demo.stdout:
            print(line, end="")
            found = LINE.search(line)
            if found:
                shoot(found.group(1), found.group(2), args.out)
                break
        else:
            raise SystemExit("the demo ended without a dashboard line")
    finally:
        os.killpg(demo.pid, signal.SIGINT)
        demo.wait(60)


def shoot(url: str, token: str, out: Path) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path="/usr/bin/chromium", args=["--no-sandbox"]
        )
        page = browser.new_page(viewport={"width": 1366, "height": 900})
        page.goto(f"{url}/login")
        page.get_by_label("Token").fill(token)
        page.get_by_role("button", name="Sign in with token").click()
        page.wait_for_url(f"{url}/")
        for name, path in PAGES.items():
            page.goto(f"{url}{path}")
            page.screenshot(path=str(out / f"{name}.png"), full_page=True)
            print(f"saved {out / name}.png")
        browser.close()


if __name__ == "__main__":
    main()
