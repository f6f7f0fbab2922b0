"""Screenshot of `piti demo` for docs/demo.md: serve RUN, draw three strokes, Generate, save the page.

    python docs/scripts/demo_screenshot.py runs/sketch-tiny --out docs/demo.png
    python docs/scripts/demo_screenshot.py --url http://127.0.0.1:8765/ --out docs/demo.png   # a running `piti demo`

Needs selenium, /usr/bin/chromium and chromedriver (Debian: chromium, chromium-driver).
"""

import argparse
import threading
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from piti_core.demo.server import DemoApp, make_server


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", nargs="?", help="run directory to serve (or --url of a running piti demo)")
    ap.add_argument("--url", default=None, help="screenshot an already running `piti demo` instead")
    ap.add_argument("--out", default="docs/demo.png")
    ap.add_argument("--chromedriver", default="/usr/bin/chromedriver")
    args = ap.parse_args()
    app = server = None
    if args.url is None:
        if not args.run:
            ap.error("give a run directory or --url")
        app = DemoApp(args.run, device="cpu")
        server = make_server(app, "127.0.0.1", 0)
        threading.Thread(target=server.serve_forever, daemon=True).start()
    url = args.url or f"http://127.0.0.1:{server.server_address[1]}/"
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,1000"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(options=opts, service=Service(executable_path=args.chromedriver))
    try:
        driver.get(url)
        wait = WebDriverWait(driver, 600)
        wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
        canvas = driver.find_element(By.ID, "draw")
        for x, y, dx, dy in ((-90, 60, 180, 0), (-60, 60, 0, -120), (60, 60, 0, -120), (-60, -60, 120, 0)):
            ActionChains(driver).move_to_element_with_offset(canvas, x, y).click_and_hold() \
                .move_by_offset(dx, dy).release().perform()
        start = time.perf_counter()
        driver.find_element(By.ID, "generate").click()
        wait.until(lambda d: d.find_element(By.ID, "status").text in ("done", "failed"))
        print(f"generation: {time.perf_counter() - start:.1f} s ({driver.find_element(By.ID, 'status').text})")
        driver.save_screenshot(args.out)
        print(args.out)
    finally:
        driver.quit()
        if server is not None:
            server.shutdown()
            app.close()


if __name__ == "__main__":
    main()
