"""The dashboard in a real headless Chromium (Debian's ``chromium`` and ``chromium-driver``,
installed by ``.ci/run``; no browser is downloaded), driven by Selenium.

Two cluster nodes on a real nats-server host agents; the dashboard runs on a plain client
mesh. The test loads the page, waits for the nodes and agents tables to fill, searches an
agent, opens it and reads its stored state, migrates it through the page's confirmation
dialog and checks the move in the cluster, drains a node from the nodes table, views a dead
letter, and saves screenshots to ``tests/artifacts/`` (printed; the folder is git-ignored).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from natsagents import Mesh
from natsagents.cluster.membership import Membership
from natsagents.dashboard import Dashboard
from natsagents.testing import wait_for
from natsagents.testing.plugin import MeshFactory
from tests.dashboard_helpers import Ledger, cluster

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
XSS = '<img src=x onerror="window.__xss=1">'

pytestmark = pytest.mark.skipif(
    not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)),
    reason=f"no {CHROMIUM} or {CHROMEDRIVER}: apt-get install chromium chromium-driver (.ci/run does)",
)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    # Imported here: collection must not need selenium where the test is skipped.
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_AVOID_STATS", "true")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1440,1000",
        f"--user-data-dir={tmp_path / 'chromium'}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


async def until(check: Callable[[], Any], what: str, timeout: float = 10.0) -> None:
    """Wait until ``check()`` (run in a thread: Selenium blocks) is truthy; a stale or
    missing element counts as not yet."""
    from selenium.common.exceptions import WebDriverException

    def attempt() -> bool:
        try:
            return bool(check())
        except WebDriverException:
            return False

    async def checked() -> bool:
        return await asyncio.to_thread(attempt)

    await wait_for(checked, timeout=timeout, interval=0.1, what=what)


async def test_dashboard_in_chromium(
    mesh_factory: MeshFactory, browser: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    Ledger.broken = True
    n1, n2 = await cluster(mesh_factory, "n1", "n2", durable=True)
    for i in range(12):
        await n1.ref(f"Counter/c{i:02d}").call("add", by=i + 1)
    await n1.ref("Counter", XSS).call("add", by=1)  # an id is any text: the page must show it as text
    await n1.ref("Ledger/l-0").with_options(delivery="at_least_once").send("poison", params={"note": "bad batch"})
    client = await mesh_factory(name="dashboard")
    caller = await mesh_factory(name="caller")

    async def traffic() -> None:  # a light, steady load, so that the per-kind plots have a line
        while True:
            await asyncio.gather(*(caller.ref(f"Counter/c{i:02d}").call("get") for i in range(12)))
            await asyncio.sleep(0.05)

    load = asyncio.get_running_loop().create_task(traffic())
    try:
        shot, took = await drive(browser, client, n1, n2)
    finally:
        load.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await load
    with capsys.disabled():  # shown in a quiet run too
        print(f"\ndashboard screenshots: {shot} (+ dashboard-agent.png, dashboard-dead-letter.png); {took:.1f} s")


async def drive(browser: Any, client: Mesh, n1: Mesh, n2: Mesh) -> tuple[Path, float]:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    started = time.monotonic()
    find = browser.find_element
    rows = browser.find_elements

    def text(css: str) -> str:
        return str(find(By.CSS_SELECTOR, css).text)

    def click_now(css: str) -> bool:
        try:
            element = find(By.CSS_SELECTOR, css)
            # Centred, so that the sticky top bar never covers what is clicked.
            browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
            element.click()
        except StaleElementReferenceException:
            return False  # the live table was redrawn between finding and clicking: again
        return True

    async def click(css: str) -> None:
        await until(lambda: click_now(css), f"clicked {css}", 5)

    async with Dashboard(client, port=0, interval=0.5) as dashboard:
        await asyncio.to_thread(browser.get, dashboard.url)

        # Overview: both nodes listed with their agent counts, then the plots have points.
        await until(lambda: len(rows(By.CSS_SELECTOR, "#nodes-table tr[data-node]")) == 2, "two nodes listed")
        await until(lambda: text("#stat-agents") == "14", "14 agents counted (13 Counters, the Ledger)")
        await until(lambda: "live" in text("#conn-text"), "the page is live")
        await until(lambda: text("#stat-dlq") == "1", "the dead letter counted")
        assert text("#stat-nodes") == "2 / 2"
        # Kinds: each with its consistency mode (from the nodes' services API), the rest on hover.
        mode = '#kinds-table tr[data-kind="{}"] td.mode span'
        await until(lambda: text(mode.format("Presence")) == "eventual", "Presence shown as eventual")
        assert text(mode.format("Counter")) == "strong"
        described = find(By.CSS_SELECTOR, mode.format("Presence")).get_attribute("title")
        assert "persistence: action" in described and "read_only: who" in described, described
        assert {r.get_attribute("data-node") for r in rows(By.CSS_SELECTOR, "#nodes-table tr[data-node]")} == {
            "n1",
            "n2",
        }

        # Agents: the table fills; a search narrows it to one agent; its state opens.
        await click('a[data-tab="agents"]')
        await until(lambda: len(rows(By.CSS_SELECTOR, "#agents-table tr[data-agent]")) == 14, "14 agents listed")
        assert f"Counter/{XSS}" in text("#agents-table")  # shown as text, not markup
        assert browser.execute_script("return window.__xss") is None
        assert rows(By.CSS_SELECTOR, "#agents-table img") == []
        await asyncio.to_thread(lambda: find(By.ID, "agent-search").send_keys("c07"))
        await until(
            lambda: (
                [r.get_attribute("data-agent") for r in rows(By.CSS_SELECTOR, "#agents-table tr[data-agent]")]
                == ["Counter/c07"]
            ),
            "the search found Counter/c07",
        )
        await click('#agents-table tr[data-agent="Counter/c07"]')
        await until(lambda: '"n": 8' in text("#agent-state"), "the agent's stored state is shown")
        owner = {r.address: r.node for r in await n1.agents()}["Counter/c07"]
        target = "n2" if owner == "n1" else "n1"
        await until(
            lambda: Select(find(By.ID, "migrate-target")).first_selected_option.get_attribute("value") == target,
            "the other node is offered as target",
        )
        ARTIFACTS.mkdir(exist_ok=True)
        await asyncio.to_thread(browser.save_screenshot, str(ARTIFACTS / "dashboard-agent.png"))

        # Migrate through the confirmation dialog; the cluster shows the move.
        await click("#migrate-button")
        await until(lambda: find(By.ID, "confirm").get_attribute("open") is not None, "the confirmation opens")
        assert "Migrate Counter/c07?" in text("#confirm-title")
        await click("#confirm-ok")

        async def moved() -> bool:
            return {r.address: r.node for r in await n1.agents()}.get("Counter/c07") == target

        await wait_for(moved, timeout=10, interval=0.05, what="Counter/c07 moved")
        assert await n2.ref("Counter/c07").call("get") == 8
        await until(lambda: f"node{target}" in text("#detail-fields").replace("\n", ""), "the detail shows the node")

        # Drain the other node from the overview, confirming.
        await click('a[data-tab="overview"]')
        await click(f'button[data-action="drain"][data-node="{owner}"]')
        await until(lambda: find(By.ID, "confirm").get_attribute("open") is not None, "the drain confirmation opens")
        await click("#confirm-ok")
        await until(
            lambda: "draining" in text(f'#nodes-table tr[data-node="{owner}"]'), "the node shows as draining", 15
        )
        drained = n1 if owner == "n1" else n2
        assert drained.cluster_node is not None and drained.cluster_node.draining

        async def emptied() -> bool:
            return all(r.node != owner for r in await n1.agents())

        await wait_for(emptied, timeout=15, interval=0.05, what=f"{owner} drained")
        undrain = f'button[data-action="undrain"][data-node="{owner}"]'
        if hasattr(Mesh, "undrain"):  # the SDK can take a node out of draining: the page offers it
            await click(undrain)
            await until(lambda: find(By.ID, "confirm").get_attribute("open") is not None, "the undrain confirmation")
            await click("#confirm-ok")
            row = f'#nodes-table tr[data-node="{owner}"]'
            await until(lambda: "draining" not in text(row) and "live" in text(row), "the node takes agents again")
            assert not drained.cluster_node.draining
        else:
            assert rows(By.CSS_SELECTOR, undrain) == []

        # Dead letters: listed, and its body opens.
        await click('a[data-tab="dead-letters"]')
        await until(lambda: "Ledger/l-0" in text("#dlq-table"), "the dead letter is listed")
        assert "handler_error" in text("#dlq-table")
        await click('#dlq-table button[data-action="view"]')
        await until(lambda: "bad batch" in text("#letter-body"), "the dead letter's body is shown")
        await asyncio.to_thread(browser.save_screenshot, str(ARTIFACTS / "dashboard-dead-letter.png"))
        await click("#letter-close")

        # The activity list says what was done.
        await click('a[data-tab="activity"]')
        await until(lambda: f"from {owner} to {target}, paused" in text("#activity-table"), "the migration is listed")
        assert "moved " in text("#activity-table")  # the drain's summary

        # Back to the overview for the main screenshot (plots with a few points).
        await click('a[data-tab="overview"]')
        await until(lambda: "0" == text(f'#nodes-table tr[data-node="{owner}"] td.num'), "the drained node is empty")
        await until(lambda: not rows(By.CSS_SELECTOR, ".toast"), "the notices faded", 10)

        # A member that stops beating (crashed, paused, cut off): each live node reports
        # its side through the services API, and the page shows it beside the node.
        ghost = Membership(n1.transport, n1.prefix, "ghost", lease=1.5)
        await ghost.start()
        await ghost.stop(leave=False)
        for node in ("n1", "n2"):
            badge = f'#nodes-table tr[data-node="{node}"] .badge.partition'

            def lapsed_shown(badge: str = badge) -> bool:
                return text(badge) == "peers lapsed"

            await until(lapsed_shown, f"{node} shows its peers lapsed", 15)
        assert "members it saw live have lapsed" in find(By.CSS_SELECTOR, badge).get_attribute("title")
        shot = ARTIFACTS / "dashboard.png"
        await asyncio.to_thread(browser.save_screenshot, str(shot))
        errors = [e for e in await asyncio.to_thread(browser.get_log, "browser") if e.get("level") == "SEVERE"]
        assert errors == [], errors
    took = time.monotonic() - started
    return shot, took
