"""Helpers of the web view's tests and benchmark: ``zmq-emitter web`` as a real process, and a real
headless browser (Debian's chromium through chromium-driver, driven by Selenium).

``browser_unavailable()`` says why no browser can be had (the tests skip with that reason);
``Browser`` opens a page and waits for what it shows; ``WebProcess`` starts, kills and restarts
the server on the same port.  The benchmark of the web view (benchmarks/web.py) uses them too, so this
module imports nothing of the test suite's.
"""
from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository: benchmarks/ is shared
from benchmarks.common import stop_process  # noqa: E402

BIN = Path(sys.executable).parent

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def browser_unavailable() -> str | None:
    """Why no headless browser can be driven here (None: it can)."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install the test extra)"
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not Path(path).exists() and not shutil.which(Path(path).name):
            return (f"{path} not found: install Debian's {package} (python3 dev.py test does, as root with apt-get)")
    return None


class WebProcess:
    """``zmq-emitter web`` as a real process; ``url`` is where it serves (port 0 becomes the port it chose,
    kept by ``start`` after a ``kill``, so that pages reconnect to the same address)."""

    def __init__(self, backend: str, history: str | None, *args: str, listen: str = "127.0.0.1:0"):
        self.backend, self.history, self.args, self.listen = backend, history, args, listen
        self.proc: subprocess.Popen | None = None
        self.log: list[str] = []
        self.start()

    def start(self) -> None:
        argv = [str(BIN / "zmq-emitter"), "web", "--connect", self.backend, "--history", self.history or "none",
                "--listen", self.listen, *self.args]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        line = self.proc.stderr.readline()
        assert "zmq-emitter web: serving" in line, f"web did not start: {line}{self.proc.stderr.read()}"
        self.log.append(line)
        self.url = re.search(r"(http://\S+/)", line)[1]
        self.listen = self.url.removeprefix("http://").rstrip("/")
        threading.Thread(target=lambda proc=self.proc: self.log.extend(proc.stderr), daemon=True).start()

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc:
            stop_process(self.proc, 10)


class Browser:
    """A headless chromium (one per test module: starting it takes a second or two)."""

    def __init__(self, download_dir: Path):
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,900",
                         "--enable-precise-memory-info", "--disable-gpu", f"--user-data-dir={download_dir}"):
            options.add_argument(argument)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self.driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)

    def open(self, url: str) -> None:
        self.driver.get("about:blank")  # a new document: the previous page's streams end
        self.driver.get(url)

    def js(self, script: str, *args):
        return self.driver.execute_script(script, *args)

    def wait(self, script: str, timeout: float = 60.0, message: str = "the page", *args):
        """Until ``script`` returns something true; that value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.js(script, *args)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"{message}: not within {timeout}s (last: {value!r})")
            time.sleep(0.1)

    def screenshot(self, path: Path) -> None:
        self.driver.save_screenshot(str(path))

    def console(self) -> list[dict]:
        return self.driver.get_log("browser")

    def close(self) -> None:
        self.driver.quit()
