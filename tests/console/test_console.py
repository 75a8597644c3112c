"""The operator console in a real browser (headless Chromium) against a real server and agent:
sign-in, the fleet, a generated form, validation, live jobs, cancellation, two-person approval,
permissions, the audit page; then CSRF, session expiry, the login rate limit and API tokens."""

from __future__ import annotations

import json
import time
from pathlib import Path

from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import Select, WebDriverWait

from conftest import PASSWORD, Api, Mesh


def wait(d: WebDriver, timeout: float = 30) -> WebDriverWait:  # type: ignore[type-arg]
    return WebDriverWait(d, timeout)


def text_of(d: WebDriver, css: str) -> str:
    return d.find_element(By.CSS_SELECTOR, css).text


def sign_in(d: WebDriver, mesh: Mesh, user: str) -> None:
    d.get(mesh.console + "/")
    wait(d).until(ec.visibility_of_element_located((By.ID, "login-user"))).send_keys(user)
    d.find_element(By.ID, "login-password").send_keys(PASSWORD)
    d.find_element(By.ID, "login-submit").click()
    wait(d).until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, "[data-testid=who]"), user))


def no_console_errors(d: WebDriver) -> None:
    """No script errors and no Content-Security-Policy violations in the page (failed requests,
    which some tests cause on purpose, are logged as `network` and not counted)."""
    bad = [e for e in d.get_log("browser") if e["level"] == "SEVERE" and e.get("source") != "network"]
    assert not bad, bad


def test_sign_in_shows_the_fleet_with_the_agent(browser: WebDriver, mesh: Mesh, shots: Path) -> None:
    sign_in(browser, mesh, "alice")
    row = wait(browser).until(ec.presence_of_element_located((By.CSS_SELECTOR, "tr[data-agent=a1]")))
    assert "online" in row.text
    assert "default/dev" in row.text
    browser.save_screenshot(str(shots / "console-fleet.png"))
    # The filter narrows the list without asking the server.
    browser.find_element(By.ID, "f-text").send_keys("zzz")
    assert "0 of 1 agents" in text_of(browser, "[data-testid=fleet-count]")
    no_console_errors(browser)


def test_invoke_ping_through_its_generated_form(browser: WebDriver, mesh: Mesh, shots: Path) -> None:
    sign_in(browser, mesh, "alice")
    browser.get(mesh.console + "/#/function/default/dev/agent.ping")
    wait(browser).until(ec.presence_of_element_located((By.CSS_SELECTOR, "[data-testid=payload-form] .je-object__container, [data-testid=payload-form] div")))
    browser.find_element(By.ID, "invoke").click()
    status = wait(browser).until(ec.presence_of_element_located((By.CSS_SELECTOR, "[data-testid=invoke-status]")))
    assert "succeeded on a1" in status.text
    assert "agent_id" in text_of(browser, "[data-testid=result-tree]")
    browser.find_element(By.CSS_SELECTOR, "[data-testid=raw-toggle]").click()
    raw = json.loads(text_of(browser, "[data-testid=result-raw]"))
    assert raw["agent_id"] == "a1"
    browser.save_screenshot(str(shots / "console-invoke.png"))
    no_console_errors(browser)


def set_field(d: WebDriver, name: str, value: str) -> None:
    field = d.find_element(By.CSS_SELECTOR, f"[data-testid=payload-form] input[name='root[{name}]']")
    field.clear()
    # Tab commits the value (the form takes it on "change") before anything else is clicked.
    field.send_keys(value, Keys.TAB)


def jobs_of(api: Api) -> int:
    status, out = api.rpc("ListJobs", {"function_id": "agent.countdown", "page_size": 1000})
    assert status == 200, out
    return len(out["jobs"])


def test_a_bad_value_gets_a_message_before_anything_is_sent(browser: WebDriver, mesh: Mesh, shots: Path) -> None:
    api = Api(mesh.console)
    assert api.login("alice")[0] == 200
    before = jobs_of(api)
    sign_in(browser, mesh, "alice")
    browser.get(mesh.console + "/#/function/default/dev/agent.countdown")
    wait(browser).until(ec.presence_of_element_located((By.CSS_SELECTOR, "input[name='root[steps]']")))
    set_field(browser, "steps", "-5")
    browser.find_element(By.ID, "invoke").click()
    errors = wait(browser).until(ec.visibility_of_element_located((By.CSS_SELECTOR, "[data-testid=form-errors] li")))
    assert "steps" in errors.text
    browser.save_screenshot(str(shots / "console-validation.png"))
    time.sleep(1)
    assert jobs_of(api) == before, "a job started although the form was invalid"
    assert "#/function/" in browser.current_url


def start_countdown(d: WebDriver, mesh: Mesh, steps: int, ms: int) -> str:
    d.get(mesh.console + "/#/function/default/dev/agent.countdown")
    wait(d).until(ec.presence_of_element_located((By.CSS_SELECTOR, "input[name='root[steps]']")))
    set_field(d, "steps", str(steps))
    set_field(d, "ms", str(ms))
    d.find_element(By.ID, "invoke").click()
    wait(d).until(lambda x: "#/job/" in x.current_url)
    wait(d).until(ec.presence_of_element_located((By.CSS_SELECTOR, "[data-testid=job-status]")))
    return d.current_url.split("#/job/")[1]


def test_countdown_progress_reaches_100_percent(browser: WebDriver, mesh: Mesh, shots: Path) -> None:
    sign_in(browser, mesh, "alice")
    job_id = start_countdown(browser, mesh, 5, 300)
    wait(browser, 30).until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, "[data-testid=job-status]"), "completed"))
    assert text_of(browser, "[data-testid=job-progress]") == "100%"
    log = text_of(browser, "[data-testid=job-log]")
    assert log.count("to go") >= 4, log
    browser.save_screenshot(str(shots / "console-job.png"))
    api = Api(mesh.console)
    api.login("alice")
    status, out = api.rpc("GetJob", {"job_id": job_id})
    assert status == 200 and out["job"]["status"] == "completed", out
    no_console_errors(browser)


def test_cancel_a_running_job_with_a_reason(browser: WebDriver, mesh: Mesh) -> None:
    sign_in(browser, mesh, "alice")
    job_id = start_countdown(browser, mesh, 100, 500)
    wait(browser).until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, "[data-testid=job-log]"), "to go"))
    browser.find_element(By.ID, "cancel-reason").send_keys("wrong node")
    browser.find_element(By.ID, "cancel-job").click()
    wait(browser, 30).until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, "[data-testid=job-status]"), "cancelled"))
    api = Api(mesh.console)
    api.login("alice")
    _, out = api.rpc("GetJob", {"job_id": job_id})
    assert out["job"]["status"] == "cancelled"
    assert "wrong node" in out["job"]["cancel_reason"]


def test_a_second_person_approves_and_the_requester_sees_it_run(
        browser: WebDriver, browser2: WebDriver, mesh: Mesh, shots: Path) -> None:
    sign_in(browser, mesh, "carol")
    browser.get(mesh.console + "/#/function/default/dev/agent.ping")
    wait(browser).until(ec.element_to_be_clickable((By.ID, "invoke"))).click()
    waiting = wait(browser).until(ec.presence_of_element_located((By.CSS_SELECTOR, "[data-testid=approval-wait]")))
    assert "Waiting for approval" in waiting.text
    # Carol cannot approve her own request: no buttons on her row.
    sign_in(browser2, mesh, "bob")
    browser2.get(mesh.console + "/#/approvals")
    row = wait(browser2).until(ec.presence_of_element_located((By.CSS_SELECTOR, "tr[data-approval]")))
    assert "spiffe://croupier/client/carol" in row.text
    browser2.save_screenshot(str(shots / "console-approvals.png"))
    row.find_element(By.CSS_SELECTOR, "input").send_keys("looks fine")
    row.find_element(By.CSS_SELECTOR, "button.approve").click()
    outcome = wait(browser, 30).until(ec.presence_of_element_located((By.CSS_SELECTOR, "[data-testid=approval-outcome]")))
    assert outcome.text.startswith("approved")
    assert "a1" in text_of(browser, "[data-testid=approval-wait]")


def test_a_client_does_not_get_admin_actions_and_the_server_refuses_them(browser: WebDriver, mesh: Mesh) -> None:
    sign_in(browser, mesh, "carol")
    browser.get(mesh.console + "/#/agent/a1")
    wait(browser).until(ec.presence_of_element_located((By.CSS_SELECTOR, "[data-testid=node-state]")))
    assert not browser.find_elements(By.ID, "state-select"), "a client sees the node state form"
    api = Api(mesh.console)
    assert api.login("carol")[0] == 200
    status, out = api.rpc("SetNodeState", {"agent_id": "a1", "state": "NODE_STATE_DISABLED", "reason": "x"})
    assert status == 403 and out["code"] == "PERMISSION_DENIED", out
    status, out = api.rpc("ListAudit", {})
    assert status == 403, out


def test_an_admin_sets_node_state_with_a_reason(browser: WebDriver, mesh: Mesh) -> None:
    sign_in(browser, mesh, "alice")
    browser.get(mesh.console + "/#/agent/a1")
    sel = wait(browser).until(ec.presence_of_element_located((By.ID, "state-select")))
    Select(sel).select_by_value("NODE_STATE_MAINTENANCE")
    browser.find_element(By.ID, "state-reason").send_keys("kernel update")
    browser.find_element(By.CSS_SELECTOR, "form[aria-label='Set node state'] button").click()
    wait(browser).until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, "[data-testid=node-state]"), "kernel update"))
    assert "spiffe://croupier/admin/alice" in text_of(browser, "[data-testid=node-state]")
    Select(browser.find_element(By.ID, "state-select")).select_by_value("NODE_STATE_NORMAL")
    browser.find_element(By.ID, "state-reason").send_keys("done")
    browser.find_element(By.CSS_SELECTOR, "form[aria-label='Set node state'] button").click()
    wait(browser).until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, "[data-testid=node-state]"), "normal"))


def test_the_audit_page_lists_the_console_actions(browser: WebDriver, mesh: Mesh, shots: Path) -> None:
    sign_in(browser, mesh, "alice")
    browser.get(mesh.console + "/#/audit")
    table = wait(browser).until(ec.presence_of_element_located((By.CSS_SELECTOR, "[data-testid=audit] tbody tr")))
    assert table
    wait(browser).until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, "[data-testid=audit-chain]"), "chain intact"))
    text = text_of(browser, "[data-testid=audit]")
    for needle in ["spiffe://croupier/admin/alice", "invoke", "invoke_job", "cancel_job",
                   "spiffe://croupier/admin/bob", "approve", "spiffe://croupier/client/carol", "login"]:
        assert needle in text, f"{needle} not on the audit page"
    browser.save_screenshot(str(shots / "console-audit.png"))
    no_console_errors(browser)


# ---- the protections, through the HTTP API ---------------------------------------------------

def test_csrf_token_and_origin_are_required_for_changes(mesh: Mesh) -> None:
    api = Api(mesh.console)
    assert api.login("alice")[0] == 200
    req = {"game_id": "default", "env": "dev", "function_id": "agent.ping"}
    status, out = api.rpc("InvokeFunction", req, csrf=False)
    assert status == 403 and out["code"] == "CSRF", out
    status, _, out = api.request("POST", "/api/rpc/InvokeFunction", req,
                                 {"X-CSRF-Token": api.csrf, "Origin": "https://evil.example"})
    assert status == 403 and out["code"] == "CSRF", out
    status, out = api.rpc("InvokeFunction", req)
    assert status == 200 and out["success"], out
    # Security headers on every answer.
    _, headers, _ = api.request("GET", "/api/me")
    csp = headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp.split("script-src")[1].split(";")[0]
    assert headers["strict-transport-security"].startswith("max-age=")


def test_an_idle_session_expires(strict_mesh: Mesh) -> None:
    api = Api(strict_mesh.console)
    assert api.login("dave")[0] == 200
    assert api.request("GET", "/api/me")[0] == 200
    time.sleep(3)
    status, _, out = api.request("GET", "/api/me")
    assert status == 401 and out["code"] == "SESSION_EXPIRED", out


def test_failed_logins_are_rate_limited_and_audited(strict_mesh: Mesh) -> None:
    api = Api(strict_mesh.console)
    for _ in range(3):
        assert api.login("dave", "not the password")[0] == 401
    status, headers, out = api.login("dave")
    assert status == 429 and out["code"] == "RATE_LIMITED", out
    assert int(headers["retry-after"]) > 0
    # Another name from the same address is limited too: the address has failed three times.
    assert api.login("erin", "whatever it is")[0] == 429
    records = strict_mesh.cli("admin-admin", "audit", "list", "--action", "login", "--json")
    outcomes = [r["outcome"] for r in json.loads(records)["records"]]
    assert outcomes.count("bad_credentials") == 3 and "rate_limited" in outcomes, outcomes


def test_job_events_resume_after_the_last_event_id(mesh: Mesh) -> None:
    """What a reconnecting EventSource gets: the events after its Last-Event-ID, each once."""
    import urllib.parse

    api = Api(mesh.console)
    assert api.login("alice")[0] == 200
    status, out = api.rpc("InvokeJob", {"game_id": "default", "env": "dev", "function_id": "agent.countdown",
                                        "payload": {"steps": 4, "ms": 20}})
    assert status == 200, out
    job_id = out["job_id"]
    deadline = time.time() + 30
    while api.rpc("GetJob", {"job_id": job_id})[1]["job"]["status"] != "completed":
        assert time.time() < deadline, "the countdown did not complete"
        time.sleep(0.2)
    path = "/api/stream/StreamJobEvents?request=" + urllib.parse.quote(json.dumps({"job_id": job_id}))
    everything = api.events(path)
    seqs = [int(i) for i, _ in everything]
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) >= 6, seqs
    assert everything[-1][1]["type"] == "DONE"
    resumed = api.events(path, {"Last-Event-ID": str(seqs[2])})
    assert [int(i) for i, _ in resumed] == seqs[3:]


def test_api_tokens_work_until_revoked(mesh: Mesh) -> None:
    out = json.loads(mesh.cli("admin-admin", "token", "create", "ci-bot", "--role", "client",
                              "--ttl", "1h", "--json"))
    secret, token_id = out["secret"], out["token"]["id"]
    api = Api(mesh.console)
    status, _, body = api.request("POST", "/api/rpc/ListAgents", {}, {"Authorization": f"Bearer {secret}"})
    assert status == 200 and body["agents"][0]["agent_id"] == "a1", body
    status, _, body = api.request("POST", "/api/rpc/SetNodeState", {"agent_id": "a1", "reason": "x"},
                                  {"Authorization": f"Bearer {secret}"})
    assert status == 403, body
    mesh.cli("admin-admin", "token", "revoke", token_id)
    status, _, body = api.request("POST", "/api/rpc/ListAgents", {}, {"Authorization": f"Bearer {secret}"})
    assert status == 401, body


def test_croupier_dev_opens_a_working_console(browser: WebDriver, tmp_path: Path) -> None:
    """`croupier dev` prints the console's URL and credentials, and they work as printed."""
    import re
    import subprocess

    from conftest import BIN

    p = subprocess.Popen(
        [BIN, "dev", "--dir", str(tmp_path), "--listen", "127.0.0.1:0", "--http-listen", "",
         "--console-listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        banner = Mesh.read_until(p, "Press Ctrl-C")
        m = re.search(r"console:\s+(https://\S+)/ \(sign in as (\S+), password (\S+);", banner)
        assert m, banner
        url, user, password = m.groups()
        browser.get(url + "/")
        wait(browser).until(ec.visibility_of_element_located((By.ID, "login-user"))).send_keys(user)
        browser.find_element(By.ID, "login-password").send_keys(password)
        browser.find_element(By.ID, "login-submit").click()
        row = wait(browser, 30).until(ec.presence_of_element_located((By.CSS_SELECTOR, "tr[data-agent=dev-agent]")))
        assert "online" in row.text
    finally:
        p.terminate()
        p.wait(timeout=20)


def test_a_pipeline_is_edited_as_toml_validated_and_run_with_its_args(browser: WebDriver, mesh: Mesh) -> None:
    sign_in(browser, mesh, "alice")
    browser.get(mesh.console + "/#/pipelines")
    editor = wait(browser).until(ec.presence_of_element_located((By.ID, "pipeline-toml")))
    editor.clear()
    editor.send_keys('id = "bad"\nstep = []\n')
    browser.find_element(By.ID, "pipeline-save").click()
    wait(browser).until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, "[data-testid=pipeline-result]"), "INVALID_ARGUMENT"))
    assert "step" in text_of(browser, "[data-testid=pipeline-result]")
    editor.clear()
    editor.send_keys('id = "pings"\ndescription = "two pings"\n\n[[args]]\nname = "who"\nrequired = true\n\n'
                     '[[steps]]\nname = "first"\nfunction = "agent.ping"\nargs = { to = "${args.who}" }\n\n'
                     '[[steps]]\nname = "second"\nfunction = "agent.ping"\n')
    browser.find_element(By.ID, "pipeline-save").click()
    wait(browser).until(lambda d: "#/pipelines/pings" in d.current_url)
    form = wait(browser).until(ec.presence_of_element_located((By.CSS_SELECTOR, "form[aria-label='Run pings']")))
    form.find_element(By.CSS_SELECTOR, "input[name=who]").send_keys("carol")
    form.find_element(By.CSS_SELECTOR, "button").click()
    wait(browser).until(lambda d: "#/job/" in d.current_url)
    wait(browser, 30).until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, "[data-testid=job-status]"), "completed"))
    steps = text_of(browser, "[data-testid=job-steps]")
    assert "first" in steps and "second" in steps, steps


def test_signing_in_and_moving_around_work_from_the_keyboard(browser: WebDriver, mesh: Mesh) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    browser.get(mesh.console + "/")
    wait(browser).until(ec.visibility_of_element_located((By.ID, "login-user")))
    # The user field has the focus; Tab moves to the password, Enter signs in.
    ActionChains(browser).send_keys("alice", Keys.TAB, PASSWORD, Keys.ENTER).perform()
    wait(browser).until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, "[data-testid=who]"), "alice"))
    wait(browser).until(ec.presence_of_element_located((By.CSS_SELECTOR, "tr[data-agent=a1]")))
    # A page's content has the focus once it is shown: Tab reaches its first field, and
    # Shift+Tab goes back through the header (Sign out, then the sections from the last).
    browser.get(mesh.console + "/#/fleet")
    wait(browser).until(ec.presence_of_element_located((By.CSS_SELECTOR, "tr[data-agent=a1]")))
    focused = lambda: browser.switch_to.active_element.get_attribute("textContent")  # noqa: E731
    assert browser.switch_to.active_element.get_attribute("id") == "main"
    ActionChains(browser).send_keys(Keys.TAB).perform()
    assert browser.switch_to.active_element.get_attribute("id") == "f-text"
    ActionChains(browser).key_down(Keys.SHIFT).send_keys(Keys.TAB).key_up(Keys.SHIFT).perform()
    assert focused() == "Sign out"
    ActionChains(browser).key_down(Keys.SHIFT).send_keys(*[Keys.TAB] * 5).key_up(Keys.SHIFT).perform()
    assert focused() == "Functions"
    ActionChains(browser).send_keys(Keys.ENTER).perform()
    wait(browser).until(ec.presence_of_element_located((By.CSS_SELECTOR, "tr[data-function='agent.ping']")))
