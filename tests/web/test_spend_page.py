"""The spend page in headless Chromium against a real daemon with known traffic.

Every number the page shows must equal the same SQL run through `costwatch sql` / `POST /v1/sql`
(and the totals computed from the traffic itself); the charts must have drawn pixels.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from costwatch.daemon import web
from tests.web.conftest import LAPTOP, ROOT, PageDaemon, browser_errors, loaded, wait_for
from tests.web.traffic import DAY, PRICES, UNPRICED

KPIS = {
    "kpi-today": "spend_today_usd",
    "kpi-month": "spend_month_usd",
    "kpi-range": "spend_range_usd",
    "kpi-requests": "requests",
}


def usd(v: float | None) -> str:
    """Twin of format.js usd() (no exact-half ties in the test data)."""
    if v is None:
        return "—"
    if abs(v) >= 1000:
        return f"${v:,.0f}"
    return f"${v:.2f}" if abs(v) >= 1 else f"${v:.4f}"


def num(text: str) -> float | None:
    return None if text == "" else float(text)


def kpi_values(driver: Any) -> dict[str, tuple[str, str]]:
    return driver.execute_script(
        "const out = {}; for (const el of document.querySelectorAll('.kpi .value'))"
        " out[el.id] = [el.dataset.value, el.textContent]; return out;"
    )


def table(driver: Any, name: str) -> list[tuple[str, dict[str, str]]]:
    """[(row key, {column title: data-value})] of one table panel, in display order."""
    return [
        (key, cells)
        for key, cells in driver.execute_script(
            "return [...document.querySelectorAll(`#tbl-${arguments[0]} tbody tr`)]"
            ".map(tr => [tr.dataset.key, Object.fromEntries([...tr.cells]"
            "  .filter(td => td.dataset.value !== undefined)"
            "  .map(td => [td.dataset.col, td.dataset.value]))])",
            name,
        )
    ]


def choose_range(driver: Any, key: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element(By.ID, "range")).select_by_value(key)
    wait_for(
        lambda: driver.execute_script(
            "return document.body.dataset.range === arguments[0] && !window.costwatchPage.busy", key
        ),
        15,
        f"the page to show range {key}",
    )


# -- without a browser ------------------------------------------------------------------
def test_page_is_self_contained_and_served_with_a_strict_csp(page_daemon: PageDaemon) -> None:
    response = httpx.get(page_daemon.url + "/")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    csp = response.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "connect-src 'self'" in csp
    assert response.headers["referrer-policy"] == "no-referrer"
    # Nothing is loaded from another origin: no CDN, no fonts, no analytics.
    static = web.STATIC_DIR
    for path in [*static.glob("*.html"), *static.glob("*.js"), *static.glob("*.css")]:
        text = path.read_text()
        assert 'src="http' not in text and 'href="http' not in text and "import(" not in text, path
        assert "//cdn" not in text and "googleapis" not in text, path
    for asset in ("app.js", "api.js", "charts.js", "tables.js", "style.css", "vendor/uPlot.iife.min.js"):
        assert httpx.get(f"{page_daemon.url}/spend-page/{asset}").status_code == 200, asset


def test_vendored_chart_library_matches_package_json_and_keeps_its_license() -> None:
    wanted = json.loads((ROOT / "web" / "package.json").read_text())["devDependencies"]["uplot"]
    vendor = web.STATIC_DIR / "vendor"
    header = (vendor / "uPlot.iife.min.js").read_text().splitlines()[0]
    assert header == f"/*! https://github.com/leeoniya/uPlot (v{wanted}) */"
    assert "MIT License" in (vendor / "uPlot.LICENSE.txt").read_text()


def test_the_page_fetches_exactly_the_queries_of_web_py_and_they_all_run(page_daemon: PageDaemon) -> None:
    served = httpx.get(page_daemon.url + "/spend-page/queries.json").json()
    assert served["queries"] == web.QUERIES
    assert set(served["ranges"]) == set(web.RANGES)
    for range_key in web.RANGES:
        for name in web.QUERIES:
            page_daemon.sql(web.render(name, range_key, "Europe/Berlin"))  # asserts 200


def test_queries_print_from_the_command_line() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "costwatch.daemon.web", "top_users", "7d", "Europe/Berlin"],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert out == web.render("top_users", "7d", "Europe/Berlin") + "\n"
    with pytest.raises(ValueError):
        web.render("kpis", "2h")
    with pytest.raises(ValueError):
        web.render("kpis", "24h", "UTC'; DROP")


def test_budgets_endpoint_needs_the_token(page_daemon: PageDaemon) -> None:
    assert httpx.get(page_daemon.url + "/v1/budgets").status_code == 401
    bad = httpx.get(page_daemon.url + "/v1/budgets", headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401
    data = page_daemon.http.get("/v1/budgets").json()
    assert data["rules_loaded"] is True
    assert [b["rule"] for b in data["budgets"]] == ["daily-spend", "monthly-spend"]


# -- in Chromium ------------------------------------------------------------------------
def test_numbers_on_the_page_equal_costwatch_sql(open_page: Any, page_daemon: PageDaemon) -> None:
    driver = open_page()
    # The token left the address bar for localStorage.
    assert "token" not in driver.current_url
    assert driver.execute_script("return localStorage.getItem('costwatch.token')") == page_daemon.token
    choose_range(driver, "30d")

    # The SQL the page lists is the SQL it ran: render() of web.py, for the chosen range.
    listed = driver.execute_script(
        "return Object.fromEntries([...document.querySelectorAll('#sql-list pre')]"
        ".map(p => [p.dataset.query, p.textContent]))"
    )
    assert listed == {name: web.render(name, "30d", "UTC") for name in web.QUERIES}

    shown = kpi_values(driver)
    sql = page_daemon.cli_sql(web.render("kpis", "30d", "UTC"))[0]
    for element, column in KPIS.items():
        assert num(shown[element][0]) == sql[column], element
    projected = num(shown["kpi-projected"][0])
    assert projected == pytest.approx(sql["projected_month_usd"], rel=1e-2)  # now() moved on meanwhile
    for element in ("kpi-today", "kpi-month", "kpi-range", "kpi-projected"):
        assert shown[element][1] == usd(num(shown[element][0])), element
    # ... and equal what the traffic adds up to.
    traffic = page_daemon.traffic
    assert num(shown["kpi-range"][0]) == pytest.approx(traffic.total_30d, abs=1e-9)
    in_30d = [e for e in traffic.events if e.ts_start > sql_now(page_daemon) - 30 * DAY]
    assert num(shown["kpi-requests"][0]) == len(in_30d)
    # The calls whose tokens are estimated, and their spend: counted apart, and inside the totals.
    count, value, text = driver.execute_script(
        "const el = document.getElementById('kpi-estimated');"
        " return [el.dataset.count, el.dataset.value, el.textContent];"
    )
    assert int(count) == sql["estimated"] == traffic.estimated_30d > 0
    assert float(value) == sql["estimated_usd"]
    assert sql["estimated_usd"] == pytest.approx(traffic.estimated_usd_30d, abs=1e-9)
    assert 0 < sql["estimated_usd"] < sql["spend_range_usd"]
    assert text == f"{usd(sql['estimated_usd'])} from {traffic.estimated_30d} estimated calls"
    assert 0 <= num(shown["kpi-today"][0]) <= num(shown["kpi-month"][0])  # type: ignore[operator]

    # Spend by model: the same rows, in the same order, as `costwatch sql`.
    rows = page_daemon.cli_sql(web.render("spend_by_model", "30d", "UTC"))
    page_rows = table(driver, "spend_by_model")
    assert [k for k, _ in page_rows] == [f"{r['provider']}/{r['model']}" for r in rows]
    for (_, cells), row in zip(page_rows, rows, strict=True):
        assert num(cells["Cost"]) == row["cost_usd"]
        assert num(cells["Requests"]) == row["requests"]
        assert num(cells["Tokens in"]) == row["input_tokens"]
        expected = traffic.cost_by_model_30d[row["model"]]
        if row["model"] == UNPRICED:
            assert row["cost_usd"] is None  # never a guessed $0
        else:
            assert row["model"] in PRICES and row["cost_usd"] == pytest.approx(expected, abs=1e-9)
    unpriced_cell = driver.execute_script(
        "return document.querySelector(`#tbl-spend_by_model tr[data-key='openai/${arguments[0]}']"
        " td[data-col='Cost']`).textContent",
        UNPRICED,
    )
    assert unpriced_cell == "unpriced"

    # Top users, errors, latency: equal POST /v1/sql.
    users = page_daemon.sql(web.render("top_users", "30d", "UTC"))
    assert [(k, num(c["Cost"]), num(c["Requests"])) for k, c in table(driver, "top_users")] == [
        (u["user"], u["cost_usd"], u["requests"]) for u in users
    ]
    for user in users:
        assert user["cost_usd"] == pytest.approx(traffic.cost_by_user_30d[user["user"]], abs=1e-9)
    errors = page_daemon.sql(web.render("errors_by_class", "30d", "UTC"))
    assert [(k, num(c["Requests"]), num(c["Share"])) for k, c in table(driver, "errors_by_class")] == [
        (e["error_class"], e["requests"], e["share"]) for e in errors
    ]
    latency = page_daemon.sql(web.render("latency_by_model", "30d", "UTC"))
    assert [(k, num(c["p50"]), num(c["p95"]), num(c["p99"]), num(c["TTFT p95"])) for k, c in
            table(driver, "latency_by_model")] == [
        (r["model"], r["p50_ms"], r["p95_ms"], r["p99_ms"], r["ttft_p95_ms"]) for r in latency
    ]  # fmt: skip
    assert len(table(driver, "ratelimit_headroom")) == len(PRICES) + 1

    # Budgets: what the rules engine reports, next to the same day's spend.
    budgets = driver.execute_script(
        "return [...document.querySelectorAll('.budget')].map(b => [b.dataset.rule, +b.dataset.spent])"
    )
    assert [rule for rule, _ in budgets] == ["daily-spend", "monthly-spend"]
    assert budgets[0][1] == pytest.approx(sql["spend_today_usd"], abs=1e-9)
    assert budgets[1][1] == pytest.approx(sql["spend_month_usd"], abs=1e-9)
    assert page_errors(driver) == []
    # Works offline: every resource the page loaded came from the daemon itself.
    foreign = driver.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
        ".filter(u => !u.startsWith(location.origin + '/'))"
    )
    assert foreign == []


def sql_now(page_daemon: PageDaemon) -> float:
    return page_daemon.sql("SELECT epoch(now()) AS t")[0]["t"]


def page_errors(driver: Any) -> list[str]:
    return [m for m in browser_errors(driver) if "favicon" not in m]


def test_range_selector_reruns_the_queries(open_page: Any, page_daemon: PageDaemon) -> None:
    driver = open_page()
    assert driver.execute_script("return document.getElementById('range').value") == web.DEFAULT_RANGE
    choose_range(driver, "1h")
    sql = page_daemon.sql(web.render("kpis", "1h", "UTC"))[0]
    shown = kpi_values(driver)
    assert num(shown["kpi-range"][0]) == sql["spend_range_usd"]
    assert num(shown["kpi-requests"][0]) == sql["requests"]
    choose_range(driver, "90d")
    shown = kpi_values(driver)
    assert num(shown["kpi-requests"][0]) == len(page_daemon.traffic.events)  # the 40-day-old ones too
    # The choice is remembered across reloads.
    driver.refresh()
    loaded(driver)
    assert driver.execute_script("return document.getElementById('range').value") == "90d"


def test_charts_are_drawn(open_page: Any, page_daemon: PageDaemon) -> None:
    driver = open_page(range_key="30d")
    priced = [r for r in page_daemon.sql(web.render("spend_by_model", "30d", "UTC")) if r["cost_usd"]]
    for chart_id in ("chart-model", "chart-app"):
        info = driver.execute_script(
            """const el = document.getElementById(arguments[0]);
            const canvas = el.querySelector('canvas');
            if (!canvas) return null;
            const px = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
            let first = 0, drawn = 0;  // pixels in the first series' colour (#2563eb), and any ink at all
            for (let i = 0; i < px.length; i += 4) {
              if (px[i + 3] > 0) drawn++;
              if (Math.abs(px[i] - 37) < 12 && Math.abs(px[i + 1] - 99) < 12 && Math.abs(px[i + 2] - 235) < 12
                  && px[i + 3] > 200) first++;
            }
            return {series: +el.dataset.series, total: +el.dataset.total, first, drawn,
                    w: canvas.width, h: canvas.height};""",
            chart_id,
        )
        assert info is not None, f"{chart_id}: no canvas"
        assert info["w"] > 200 and info["h"] > 100
        assert info["first"] > 100, f"{chart_id}: the first series drew only {info['first']} pixels"
        assert info["drawn"] > info["first"]
        assert info["total"] == pytest.approx(sum(r["cost_usd"] for r in priced), abs=1e-9)
    assert driver.execute_script("return +document.getElementById('chart-model').dataset.series") == len(
        PRICES
    )
    assert driver.execute_script("return +document.getElementById('chart-app').dataset.series") == 3


def test_without_a_token_the_page_asks_for_one(open_page: Any, page_daemon: PageDaemon) -> None:
    from selenium.webdriver.common.by import By

    driver = open_page(with_token=False)
    wait_for(lambda: driver.find_element(By.ID, "login").is_displayed(), what="the token form")
    assert not driver.find_element(By.ID, "main").is_displayed()
    field = driver.find_element(By.ID, "login-token")
    field.send_keys("wrong-token")
    driver.find_element(By.CSS_SELECTOR, "#login-form button").click()
    error = wait_for(lambda: driver.find_element(By.ID, "login-error").text, what="the refusal")
    assert "refused" in error
    field.clear()
    field.send_keys(page_daemon.token)
    driver.find_element(By.CSS_SELECTOR, "#login-form button").click()
    loaded(driver)
    assert driver.find_element(By.ID, "main").is_displayed()
    assert num(kpi_values(driver)["kpi-month"][0]) is not None


def test_screenshots_laptop_and_phone(open_page: Any, tmp_path: Path) -> None:
    """Laptop and phone layouts render without horizontal scrolling; the laptop one goes to docs/ when
    COSTWATCH_UPDATE_SCREENSHOTS=1."""
    driver = open_page(range_key="30d")
    try:
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(LAPTOP[0], height)
        assert driver.execute_script("return document.documentElement.scrollWidth <= innerWidth")
        target = ROOT / "docs" / "img" if os.environ.get("COSTWATCH_UPDATE_SCREENSHOTS") == "1" else tmp_path
        target.mkdir(parents=True, exist_ok=True)
        assert driver.save_screenshot(str(target / "spend-page.png"))
        phone = {"width": 390, "height": 844, "deviceScaleFactor": 1, "mobile": True}
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", phone)
        driver.refresh()
        loaded(driver)
        assert driver.execute_script("return document.documentElement.scrollWidth <= innerWidth")
        # One column: every card starts at the same x.
        lefts = driver.execute_script(
            "return [...new Set([...document.querySelectorAll('main .card')]"
            ".map(c => Math.round(c.getBoundingClientRect().left)))]"
        )
        assert len(lefts) <= 2, lefts  # the KPI grid has two columns on a phone
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {**phone, "height": height})
        assert driver.save_screenshot(str(target / "spend-page-phone.png"))
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
        driver.set_window_size(*LAPTOP)
    assert (target / "spend-page.png").stat().st_size > 20_000


def test_page_url_keeps_the_token_in_the_fragment() -> None:
    assert web.page_url("127.0.0.1", 7707, "abc_-1") == "http://127.0.0.1:7707/#token=abc_-1"
    assert web.page_url("0.0.0.0", 7707, "a+b/c") == "http://127.0.0.1:7707/#token=a%2Bb%2Fc"
    assert web.page_url("::1", 7707, None) == "http://[::1]:7707/"
