"""``zmq-emitter web`` in a real headless browser (Debian's chromium, Selenium), on real ``ansible-runner run``
processes through a real broker process: what the page shows is checked against the runs' artifacts.

Screenshots of the pages are saved under pytest's tmp directory (``web-*.png``), never committed.
Without a browser (not root, no apt), the browser tests skip, saying why.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import time

from conftest import BIN, BrokerProcess, RawPublisher, job_events, run_cli, runner_env

from zmq_emitter.demo import PROJECT
from web_helpers import Browser, WebProcess, browser_unavailable

pytest.importorskip("starlette", reason="the web extra is not installed (pip install '.[web]')")
needs_browser = pytest.mark.skipif(browser_unavailable() is not None, reason=str(browser_unavailable()))

HOSTILE = "<img src=x onerror=alert(1)>"
FAILED_RUN = "web-failed"
# Stats keys of playbook_on_stats -> the page's host table columns.
STATS = {"ok": "ok", "changed": "changed", "failures": "failed", "dark": "unreachable", "skipped": "skipped"}

# Every output line of the page: the view is windowed, so it is scrolled through, a window at a time.
ALL_ROWS = """
const done = arguments[arguments.length - 1];
const out = document.getElementById('output');
const rows = new Map();
const frame = () => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
(async () => {
  for (let top = 0; ; top += out.clientHeight) {
    out.scrollTop = top;
    out.dispatchEvent(new Event('scroll'));
    await frame();
    for (const row of out.querySelectorAll('.row')) {
      const index = Math.round((row.getBoundingClientRect().top - out.getBoundingClientRect().top + out.scrollTop) / 18);
      rows.set(index, {text: row.textContent, failed: row.classList.contains('failed'),
                       classes: [...row.querySelectorAll('span')].map((s) => s.className)});
    }
    if (top + out.clientHeight >= out.scrollHeight) break;
  }
  done([...rows.entries()].sort((a, b) => a[0] - b[0]).map((e) => e[1]));
})();
"""


def stats_of(project: Path, ident: str) -> dict[str, dict[str, int]]:
    """Each host's counts from the run's playbook_on_stats artifact, in the page's columns."""
    stats = next(e for e in job_events(project, ident) if e["event"] == "playbook_on_stats")["event_data"]
    hosts = sorted({host for key in (*STATS, "processed") for host in stats.get(key, {})})
    return {host: {column: stats.get(key, {}).get(host, 0) for key, column in STATS.items()} for host in hosts}


def host_table(browser: Browser) -> dict[str, dict[str, int]]:
    rows = browser.js("return [...document.querySelectorAll('#hosts tbody tr')].map("
                      "(tr) => [...tr.children].map((td) => td.textContent))")
    return {row[0]: dict(zip(STATS.values(), map(int, row[1:]))) for row in rows}


def page_status(browser: Browser) -> str | None:
    run = browser.js("return window.zmqEmitterWeb.run()")
    return None if run is None else run["status"]


def run_page(browser: Browser, web: WebProcess, ident: str) -> None:
    browser.open(f"{web.url}#/run/{ident}")
    browser.wait("return document.getElementById('link-state').textContent === 'live'", 30, "the page's stream")


def long_run(project: Path, ident: str, frontend: str, steps: int) -> subprocess.Popen:
    return subprocess.Popen([str(BIN / "ansible-runner"), "run", str(project), "-p", "long.yml", "--ident", ident,
                             "--cmdline", f"-e steps={steps} -e pause=0.05"],
                            env=runner_env(RUNNER_ZMQ_URL=frontend), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("screenshots")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    reason = browser_unavailable()
    if reason:
        pytest.skip(reason)
    instance = Browser(tmp_path_factory.mktemp("chromium-profile"))
    yield instance
    instance.close()


@pytest.fixture(scope="module")
def bus(tmp_path_factory):
    """A broker process and a web server on it, shared by the tests of this module that only read runs."""
    tmp = tmp_path_factory.mktemp("bus")
    broker = BrokerProcess(f"ipc://{tmp}/frontend", f"ipc://{tmp}/backend", "--startup-grace", "0")
    web = WebProcess(broker.backend, broker.history)
    yield broker, web
    web.stop()
    broker.stop()


@pytest.fixture(scope="module")
def failed_run(bus, tmp_path_factory):
    """The demo playbook (web2 fails), with a task named like HTML, run to its end: (project, ident)."""
    broker, web = bus
    project = tmp_path_factory.mktemp("failed") / "project"
    shutil.copytree(PROJECT, project)
    playbook = project / "project" / "demo.yml"
    playbook.write_text(playbook.read_text() + f"""
    - name: "{HOSTILE}"
      ansible.builtin.debug:
        msg: "<script>document.title = 'pwned'</script>"
""")
    result = run_cli(project, FAILED_RUN, runner_env(RUNNER_ZMQ_URL=broker.frontend))
    assert result.returncode == 2, result.stderr
    return project, FAILED_RUN


@pytest.fixture
def failed_page(browser, bus, failed_run):
    """The failed run's page, with everything it will show."""
    project, ident = failed_run
    run_page(browser, bus[1], ident)
    expected = len(job_events(project, ident))
    browser.wait("return window.zmqEmitterWeb.events().length === arguments[0]", 30,
                 f"the page showing the run's {expected} events", expected)
    browser.wait("const r = window.zmqEmitterWeb.run(); return r && r.status === 'failed' && r.stats_final", 30,
                 "the run's final status and Ansible's stats on the page")
    return project, ident


@needs_browser
def test_ansi_converter_makes_colour_classes_and_drops_every_other_escape(browser, bus):
    browser.open(bus[1].url)
    cases = browser.driver.execute_async_script("""
        const done = arguments[arguments.length - 1];
        import('/static/ansi.js').then(({ansiLines}) => done([
          ansiLines('\\x1b[0;32mok: [web1]\\x1b[0m\\r\\nplain'),
          ansiLines('\\x1b[1;31mbold red\\x1b[22m red\\x1b[39m none'),
          ansiLines('\\x1b[93mbright\\x1b[38;5;1m idx\\x1b[38;2;1;2;3m rgb\\x1b[0m'),
          ansiLines('a\\x1b[2Kb\\x1b]0;title\\x07c\\x1b(Bd\\x00e\\x07f'),
          ansiLines('\\x1b[36mspans\\nlines'),
          ansiLines('<b>&amp;</b>'),
        ]));
    """)
    assert cases[0] == [[{"text": "ok: [web1]", "cls": "fg-green"}], [{"text": "plain", "cls": ""}]]
    assert cases[1] == [[{"text": "bold red", "cls": "fg-red b"}, {"text": " red", "cls": "fg-red"},
                         {"text": " none", "cls": ""}]]
    assert cases[2] == [[{"text": "bright", "cls": "fg-bright-yellow"}, {"text": " idx", "cls": "fg-red"},
                         {"text": " rgb", "cls": ""}]]
    assert cases[3] == [[{"text": "abcdef", "cls": ""}]]  # erase-line, a title (OSC), charset, NUL, BEL: gone
    assert cases[4] == [[{"text": "spans", "cls": "fg-cyan"}], [{"text": "lines", "cls": "fg-cyan"}]]
    assert cases[5] == [[{"text": "<b>&amp;</b>", "cls": ""}]]  # text stays text


@needs_browser
def test_a_page_holds_a_bounded_number_of_events_and_still_tells_a_repeat(browser, bus):
    # A page open on a long run kept every event it was ever sent; the server holds only --max-events of them.
    browser.open(bus[1].url)
    held, first, last, repeat, index = browser.driver.execute_async_script("""
        const done = arguments[arguments.length - 1];
        import('/static/events.js').then(({EventLog}) => {
          const log = new EventLog(100, 10);
          for (let i = 0; i < 1000; i++) log.add({k: `p.${i}`});
          done([log.kept.length, log.get(0), log.get(999).k, log.add({k: 'p.999'}), log.indexOf('p.950')]);
        });
    """)
    assert 100 <= held <= 110 and first is None and last == "p.999"
    assert repeat == -1 and index == 950  # indexes stay what they were (the output view's lines name them)


@needs_browser
def test_a_run_appears_on_the_runs_list_while_it_runs(browser, bus, project, shots):
    broker, web = bus
    browser.open(web.url)
    browser.wait("return document.getElementById('link-state').textContent === 'live'", 30, "the runs stream")
    run = long_run(project, "web-live", broker.frontend, steps=60)
    try:
        status = browser.wait("const row = document.querySelector('tr.run[data-ident=\"web-live\"]');"
                              "return row && row.querySelector('.status').textContent", 60, "the run on the list")
        still_running = run.poll() is None
        browser.screenshot(shots / "web-runs-live.png")
        assert run.wait(120) == 0, run.stderr.read()
    finally:
        if run.poll() is None:
            run.kill()
    assert still_running and status in ("starting", "running")
    browser.wait("return document.querySelector('tr.run[data-ident=\"web-live\"] .status').textContent"
                 " === 'successful'", 30, "the run's final status on the list")


@needs_browser
def test_host_counts_and_final_status_match_the_artifacts(browser, bus, failed_page, shots):
    project, ident = failed_page
    browser.screenshot(shots / "web-run-failed.png")
    expected = stats_of(project, ident)
    assert host_table(browser) == expected
    assert page_status(browser) == (project / "artifacts" / ident / "status").read_text().strip() == "failed"
    browser.open(bus[1].url)  # the runs list: hosts by outcome, as the bar shows them
    badges = browser.wait(f"const row = document.querySelector('tr.run[data-ident=\"{ident}\"]');"
                          "return row && [...row.querySelectorAll('.badge')].map((b) => b.textContent)", 30)
    outcomes = ["failed" if c["failed"] else "unreachable" if c["unreachable"] else "changed" if c["changed"]
                else "ok" if c["ok"] else "skipped" for c in expected.values()]
    assert sorted(badges) == sorted(f"{outcomes.count(o)} {o}" for o in set(outcomes))


@needs_browser
def test_the_failed_task_is_highlighted_with_its_message(browser, failed_page):
    failures = browser.js("return [...document.querySelectorAll('#failures li')].map((li) => li.textContent)")
    assert failures == ["web2 Fail on one host: demo failure on web2"]
    failed_host = browser.js("return [...document.querySelectorAll('#hosts tr.host.failed')].map("
                             "(tr) => tr.dataset.host)")
    assert failed_host == ["web2"]
    rows = browser.driver.execute_async_script(ALL_ROWS)
    highlighted = [row["text"] for row in rows if row["failed"]]
    assert any(text.startswith("fatal: [web2]: FAILED!") and "demo failure on web2" in text for text in highlighted)
    assert all("web1" not in text and "db1" not in text for text in highlighted)


@needs_browser
def test_output_shows_colours_and_no_raw_escape_codes(browser, failed_page):
    project, ident = failed_page
    rows = browser.driver.execute_async_script(ALL_ROWS)
    expected = "\n".join(e["stdout"] for e in job_events(project, ident) if e.get("stdout"))
    plain = re.sub(r"\x1b\[[0-9;]*m", "", expected).replace("\r\n", "\n").split("\n")
    assert [row["text"] for row in rows] == plain  # every line, once, in order, without its escape codes
    assert not any("\x1b" in row["text"] or "[0;3" in row["text"] for row in rows)
    ok_line = next(row for row in rows if row["text"] == "ok: [web1] => {")
    assert ok_line["classes"] == ["fg-green"]
    assert next(row for row in rows if row["text"].startswith("skipping: [web1]"))["classes"] == ["fg-cyan"]
    assert next(row for row in rows if row["text"].startswith("fatal: [web2]"))["classes"] == ["fg-red"]


@needs_browser
def test_a_hostile_task_name_shows_as_text_and_runs_nothing(browser, failed_page):
    rows = browser.driver.execute_async_script(ALL_ROWS)
    assert any(row["text"].startswith(f"TASK [{HOSTILE}]") for row in rows)
    assert any("<script>document.title = 'pwned'</script>" in row["text"] for row in rows)
    assert browser.js("return document.querySelectorAll('img, #app script').length") == 0
    assert browser.driver.title == "zmq-emitter web"
    from selenium.common.exceptions import NoAlertPresentException
    with pytest.raises(NoAlertPresentException):
        browser.driver.switch_to.alert.text  # noqa: B018 (an alert(1) would be open)
    browser.js("document.querySelector('.row').click()")  # the event's JSON, as text too
    browser.wait("return document.getElementById('detail').textContent.startsWith('{')", 10, "an event's JSON")
    assert browser.js("return document.querySelectorAll('img').length") == 0


@needs_browser
def test_a_clicked_event_shows_its_whole_json(browser, failed_page):
    project, ident = failed_page
    browser.js("[...document.querySelectorAll('#failures li')][0].click()")
    text = browser.wait("const t = document.getElementById('detail').textContent; return t.startsWith('{') && t",
                        10, "the failed event's JSON")
    failed = next(e for e in job_events(project, ident) if e["event"] == "runner_on_failed")
    assert json.loads(text) == failed


@needs_browser
def test_the_runs_list_filters_by_status_and_searches_by_ident_and_playbook(browser, bus, failed_run):
    browser.open(bus[1].url)
    shown = "[...document.querySelectorAll('tr.run')].map((tr) => tr.dataset.ident).sort().join(' ')"
    browser.wait(f"return document.querySelector('tr.run[data-ident=\"{FAILED_RUN}\"]')", 30, "the failed run")
    browser.js("const s = document.getElementById('status-filter'); s.value = 'successful';"
               "s.dispatchEvent(new Event('change'))")
    browser.wait(f"return !({shown}).split(' ').includes('{FAILED_RUN}')", 10, "the filter leaving the failed run out")
    browser.js("const s = document.getElementById('status-filter'); s.value = 'failed';"
               "s.dispatchEvent(new Event('change'))")
    browser.wait(f"return ({shown}) === '{FAILED_RUN}'", 10, "only the failed run")
    browser.js("const s = document.getElementById('status-filter'); s.value = 'all'; s.dispatchEvent(new Event('change'));"
               "const q = document.getElementById('search'); q.value = 'long.yml'; q.dispatchEvent(new Event('input'))")
    browser.wait(f"return !({shown}).split(' ').includes('{FAILED_RUN}')", 10, "a search by playbook")
    browser.js("const q = document.getElementById('search'); q.value = 'WEB-FAIL'; q.dispatchEvent(new Event('input'))")
    browser.wait(f"return ({shown}) === '{FAILED_RUN}'", 10, "a search by ident")


def _follow_a_run_through(browser: Browser, web: WebProcess, project: Path, ident: str, frontend: str,
                          interrupt) -> list:
    """Open run ``ident``'s page, start it, ``interrupt()`` once the page shows some of it, and return the
    page's events once it has the final status."""
    run_page(browser, web, ident)
    run = long_run(project, ident, frontend, steps=60)
    try:
        browser.wait("return window.zmqEmitterWeb.events().length >= 40", 60, "the run's first events on the page")
        assert run.poll() is None, "the run ended before the interruption: make it longer"
        interrupt()
        assert run.wait(120) == 0, run.stderr.read()
    finally:
        if run.poll() is None:
            run.kill()
    expected = len(job_events(project, ident))
    browser.wait("return window.zmqEmitterWeb.events().length >= arguments[0]", 60,
                 f"the page showing all {expected} events", expected)
    browser.wait("const r = window.zmqEmitterWeb.run(); return r && r.status === 'successful'", 30, "the final status")
    return browser.js("return window.zmqEmitterWeb.events()")


@needs_browser
def test_after_a_broker_sigkill_and_restart_mid_run_the_page_ends_with_every_event_once(browser, project, tmp_path,
                                                                                       shots):
    broker = BrokerProcess(f"ipc://{tmp_path}/frontend", f"ipc://{tmp_path}/backend", "--startup-grace", "0",
                           "--history-dir", str(tmp_path / "journal"))
    web = WebProcess(broker.backend, broker.history)

    def kill_and_restart():
        broker.kill()
        broker.start()

    try:
        events = _follow_a_run_through(browser, web, project, "web-broker-kill", broker.frontend, kill_and_restart)
        browser.screenshot(shots / "web-after-broker-kill.png")
    finally:
        web.stop()
        broker.stop()
    counters = [counter for _, counter, _ in events]
    assert counters == [e["counter"] for e in job_events(project, "web-broker-kill")]
    assert len({key for key, _, _ in events}) == len(events)
    assert browser.js("return window.zmqEmitterWeb.repeats()") == 0
    assert browser.js("return document.querySelectorAll('.notes .gap').length") == 0  # nothing reported lost


@needs_browser
def test_after_a_server_restart_mid_run_the_page_catches_up_without_gaps_or_repeats(browser, bus, project, shots):
    broker, _ = bus
    web = WebProcess(broker.backend, broker.history)

    def restart_server():
        web.kill()
        browser.wait("return document.getElementById('link-state').textContent !== 'live'", 10,
                     "the page noticing the server went away")
        web.start()  # the same port: the page's stream reconnects there, with its cursor

    try:
        events = _follow_a_run_through(browser, web, project, "web-server-restart", broker.frontend, restart_server)
    finally:
        web.stop()
    counters = [counter for _, counter, _ in events]
    assert counters == [e["counter"] for e in job_events(project, "web-server-restart")]
    assert browser.js("return window.zmqEmitterWeb.repeats()") == 0  # the server went on from the page's cursor


@needs_browser
def test_messages_lost_for_good_are_counted_on_their_runs_page(browser, tmp_path):
    broker = BrokerProcess(f"ipc://{tmp_path}/frontend", f"ipc://{tmp_path}/backend", "--startup-grace", "0")
    web = WebProcess(broker.backend, None)  # no history to recover a gap from: it is lost for good
    try:
        run_page(browser, web, "gappy")
        with RawPublisher(broker.frontend) as publisher:
            deadline = time.monotonic() + 30
            while not browser.js("return window.zmqEmitterWeb.events().length"):  # the path up (slow joiner)
                assert time.monotonic() < deadline, "the first event never reached the page"
                publisher.send("gappy", "runner_on_ok", {"stdout": "before", "counter": 1}, seq=1)  # repeats dropped
                time.sleep(0.1)
            publisher.send("gappy", "runner_on_ok", {"stdout": "after", "counter": 5}, seq=5)
            note = browser.wait("const n = document.querySelector('.notes .gap'); return n && n.textContent", 30,
                                "the gap on the page")
    finally:
        web.stop()
        broker.stop()
    assert note.startswith("3 message(s) of this run's publisher(s) were lost for good")
    assert [counter for _, counter, _ in browser.js("return window.zmqEmitterWeb.events()")] == [1, 5]


def test_a_server_started_after_a_run_shows_it_from_a_curve_brokers_history(tmp_path, project):
    keys, allowed = tmp_path / "keys", tmp_path / "subscribers"
    for name in ("broker", "web"):
        subprocess.run([str(BIN / "zmq-emitter"), "keygen", name, "--dir", str(keys)], check=True, capture_output=True)
    allowed.mkdir()
    shutil.copy(keys / "web.key", allowed / "web.key")
    broker = BrokerProcess(f"ipc://{tmp_path}/frontend", f"ipc://{tmp_path}/backend", "--startup-grace", "0",
                           "--curve-secret-key-file", str(keys / "broker.key_secret"), "--subscriber-keys", str(allowed))
    web = None
    try:
        result = run_cli(project, "curve-run", runner_env(RUNNER_ZMQ_URL=broker.frontend,
                                                          RUNNER_ZMQ_CURVE_SERVER_KEY=str(keys / "broker.key")))
        assert result.returncode == 2, result.stderr
        web = WebProcess(broker.backend, broker.history, "--curve-server-key", str(keys / "broker.key"),
                         "--curve-secret-key-file", str(keys / "web.key_secret"))
        deadline, runs = time.monotonic() + 30, []
        while not any(r["ident"] == "curve-run" and r["status"] == "failed" for r in runs):
            assert time.monotonic() < deadline, f"the run never came from the history: {runs}"
            time.sleep(0.2)
            runs = json.loads(_get(web.url + "api/runs")[2])
        detail = json.loads(_get(web.url + "api/runs/curve-run")[2])
    finally:
        if web is not None:
            web.stop()
        broker.stop()
    assert detail["events"] == len(job_events(project, "curve-run")) and detail["stats_final"]
    assert {row["host"]: row["failed"] for row in detail["host_table"]} == {"db1": 0, "web1": 0, "web2": 1}
    assert "refused" not in "".join(web.log)


def _get(url: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
    request = urllib.request.Request(url, headers=headers or {})

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    try:
        with urllib.request.build_opener(NoRedirect).open(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_listening_beyond_loopback_needs_a_token_or_basic_auth(tmp_path):
    refused = subprocess.run([str(BIN / "zmq-emitter"), "web", "--connect", f"ipc://{tmp_path}/backend",
                              "--history", "none", "--listen", "0.0.0.0:0"], capture_output=True, text=True,
                             timeout=30, env=runner_env())
    assert refused.returncode == 2
    assert "--listen '0.0.0.0:0' is not a loopback address" in refused.stderr and "--token-file" in refused.stderr
    assert "Traceback" not in refused.stderr

    (tmp_path / "token").write_text("s3cret-token\n")
    (tmp_path / "basic").write_text("alice:wonder land\n")
    web = WebProcess(f"ipc://{tmp_path}/backend", None, "--token-file", str(tmp_path / "token"),
                     "--basic-auth-file", str(tmp_path / "basic"), listen="0.0.0.0:0")
    try:
        base = web.url.replace("0.0.0.0", "127.0.0.1")
        status, headers, _ = _get(base + "api/runs")
        assert status == 401 and headers["www-authenticate"].startswith("Basic")
        assert _get(base + "api/runs", {"Authorization": "Bearer wrong"})[0] == 401
        assert _get(base + "api/runs", {"Authorization": "Bearer s3cret-token"})[:1] == (200,)
        assert _get(base + "api/runs", {"Authorization": "Basic YWxpY2U6d29uZGVyIGxhbmQ="})[0] == 200  # alice:wonder land
        assert _get(base + "api/runs", {"Authorization": "Basic YWxpY2U6d3Jvbmc="})[0] == 401  # alice:wrong
        status, headers, _ = _get(base + "?token=s3cret-token")  # a browser's first visit: a cookie, the token gone
        assert status == 303 and headers["location"] == "/" and "HttpOnly" in headers["set-cookie"]
        cookie = headers["set-cookie"].split(";")[0]
        assert "s3cret-token" not in cookie
        assert _get(base + "api/runs", {"Cookie": cookie})[0] == 200
        assert _get(base + "?token=wrong")[0] == 401
        status, headers, _ = _get(base + "/evil.example/x?token=s3cret-token")  # //evil.example: another site
        assert status == 303 and headers["location"] == "/evil.example/x"  # a path of this server
    finally:
        web.stop()


def test_every_response_carries_a_strict_content_security_policy_and_loopback_refuses_other_hosts(tmp_path):
    web = WebProcess(f"ipc://{tmp_path}/backend", None)
    try:
        for path in ("", "static/app.js", "api/runs", "no-such-page"):
            status, headers, body = _get(web.url + path)
            policy = headers["content-security-policy"]
            assert "script-src 'self'" in policy and "style-src 'self'" in policy and "default-src 'none'" in policy
            assert "unsafe-inline" not in policy and headers["x-content-type-options"] == "nosniff"
        page = _get(web.url)[2].decode()
        assert "<script>" not in page and "style=" not in page and "<style" not in page  # nothing inline
        assert 'src="/static/app.js"' in page
        # A page of another site whose name resolves to 127.0.0.1 (DNS rebinding) gets nothing.
        assert _get(web.url + "api/runs", {"Host": "evil.example:80"})[0] == 421
    finally:
        web.stop()


# ---- the run model alone (sans-I/O: no processes) -------------------------------------------------------------

def _msg(seq: int, name: str = "runner_on_ok", ident: str = "run", pub: str = "aaaaaaaaaaaaaaaa", kind: str = "event",
         **payload):
    from consumer_helpers import message
    from zmq_emitter import protocol
    return protocol.decode(message(pub, seq, kind, ident, name, payload))


def test_the_run_model_holds_at_most_max_events_and_goes_on_from_exactly_a_cursor():
    from zmq_emitter.consumers.web.model import Runs, format_cursor, parse_cursor
    runs = Runs(max_events=100)
    for seq in range(1, 151):
        runs.add(_msg(seq, stdout=f"line {seq}"), now=0.0)
    run = runs.get("run")
    assert (run.dropped, len(run.events), run.event_count) == (50, 100, 150)
    assert [r.seq for _, r in run.after({"aaaaaaaaaaaaaaaa": 120})] == list(range(121, 151))
    assert [r.seq for _, r in run.after({})] == list(range(51, 151))  # what is held; the page says 50 are gone
    assert ("aaaaaaaaaaaaaaaa", 1) not in run.by_key and ("aaaaaaaaaaaaaaaa", 51) in run.by_key
    assert parse_cursor(format_cursor({"aaaaaaaaaaaaaaaa": 7, "bbbbbbbbbbbbbbbb": 3})) == {
        "aaaaaaaaaaaaaaaa": 7, "bbbbbbbbbbbbbbbb": 3}
    assert parse_cursor("<script>,a.b,c.-1,\u00e9.1") == {}  # anything else a client sends is ignored


def test_the_run_model_takes_at_most_64_publishers_of_a_run_and_counts_what_it_leaves_out():
    # Each publisher of a run is a part of every cursor of its stream: forged ids would make those grow without bound.
    from zmq_emitter.consumers.web.model import Runs, format_cursor
    runs = Runs()
    for n in range(100):
        runs.add(_msg(1, pub=f"{n:016x}", stdout=f"from {n}"), now=0.0)
    run = runs.get("run")
    assert (len(run.publishers), run.left_out, run.event_count) == (64, 36, 64)
    assert run.summary()["left_out"] == 36 and len(runs.publishers) == 64
    assert len(format_cursor({r.pub: r.seq for _, r in run.after({})})) < 64 * 40
    runs.add(_msg(2, pub=f"{0:016x}", stdout="the first goes on"), now=0.0)
    assert run.event_count == 65


def test_the_run_model_keeps_at_most_max_runs_the_least_recently_active_finished_ones_going_first():
    from zmq_emitter.consumers.web.model import Runs
    runs = Runs(max_runs=2)
    runs.add(_msg(1, "running", ident="old-done", kind="status"), now=1.0)
    runs.add(_msg(2, "successful", ident="old-done", kind="status"), now=2.0)
    runs.add(_msg(3, "running", ident="long-running", kind="status"), now=0.5)
    runs.add(_msg(4, "running", ident="new", kind="status"), now=3.0)
    assert sorted(runs.runs) == ["long-running", "new"]
    assert set(runs.publishers) == {"aaaaaaaaaaaaaaaa"} and runs.publishers["aaaaaaaaaaaaaaaa"] == {"long-running", "new"}


def test_the_run_model_counts_hosts_as_ansible_does_then_takes_ansibles_own_stats():
    from zmq_emitter.consumers.web.model import Runs
    runs = Runs()
    runs.add(_msg(1, event_data={"host": "a", "res": {"changed": True}}), now=0.0)
    runs.add(_msg(2, "runner_item_on_ok", event_data={"host": "a", "res": {}}), now=0.0)  # items do not count
    runs.add(_msg(3, "runner_on_failed", event_data={"host": "b", "ignore_errors": True, "res": {"msg": "x"}}), now=0.0)
    runs.add(_msg(4, "runner_on_unreachable", event_data={"host": "c", "task": "ping", "res": {"msg": "no route"}}),
             now=0.0)
    detail = runs.get("run").detail()
    assert {row["host"]: (row["ok"], row["changed"], row["failed"], row["unreachable"])
            for row in detail["host_table"]} == {"a": (1, 1, 0, 0), "b": (1, 0, 0, 0), "c": (0, 0, 0, 1)}
    assert detail["hosts"] == {"ok": 1, "changed": 1, "failed": 0, "unreachable": 1, "skipped": 0}
    assert [(f["host"], f["task"], f["msg"]) for f in detail["failures"]] == [("c", "ping", "no route")]
    runs.add(_msg(5, "playbook_on_stats", event_data={"ok": {"a": 5}, "changed": {"a": 2}, "failures": {"b": 1},
                                                     "dark": {}, "skipped": {}, "processed": {"a": 1, "b": 1}}),
             now=0.0)
    assert runs.get("run").summary()["hosts"] == {"ok": 0, "changed": 1, "failed": 1, "unreachable": 0, "skipped": 0}


def test_web_refuses_a_missing_token_file_and_a_malformed_basic_auth_file_with_a_clear_message(tmp_path):
    (tmp_path / "basic").write_text("no-colon-here\n")
    for option, path, expected in (("--token-file", tmp_path / "absent", "cannot be read"),
                                   ("--basic-auth-file", tmp_path / "basic", "expected one line USER:PASSWORD"),
                                   ("--listen", "nowhere", "expected HOST:PORT"),
                                   ("--listen", "::1", "an IPv6 address in brackets")):  # not host ':', port 1
        result = subprocess.run([str(BIN / "zmq-emitter"), "web", "--history", "none", option, str(path)],
                                capture_output=True, text=True, timeout=30, env=runner_env())
        assert result.returncode == 2 and expected in result.stderr and "Traceback" not in result.stderr, result.stderr
