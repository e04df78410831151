"""The dashboard in headless Chromium: every write goes through the page as a person would do it,
every assertion reads the page (and the database the page wrote to)."""
from __future__ import annotations

from db import repository
from tests.browser.conftest import screenshot


async def test_create_run_through_the_form_and_an_invalid_form_is_rejected(page, conn):
    await page.click("#new-run")
    assert not await page.is_visible("#f-sampler-p")  # Advanced is collapsed by default
    # browser-side validation: no request is sent
    await page.fill("#f-training-epochs", "0")
    await page.click("#create-submit")
    assert await page.inner_text("[data-field=name] > .field-error") == "give the run a name"
    assert await page.inner_text("[data-field='training.epochs'] > .field-error") == "must be ≥ 1"
    assert await conn.fetchval("SELECT count(*) FROM training_runs") == 0
    # server-side validation: the batch size must match the P-K sampler (a cross-field rule)
    await page.fill("#f-name", "s2-standard")
    await page.fill("#f-training-epochs", "3")
    await page.click("#advanced summary")
    await page.fill("#f-sampler-p", "6")
    await page.click("#create-submit")
    error = page.locator("[data-field='training.batch_size'] > .field-error")
    await error.wait_for()
    assert "must equal sampler.p * sampler.k" in await error.inner_text()
    await screenshot(page, "create_form_invalid")
    assert await conn.fetchval("SELECT count(*) FROM training_runs") == 0

    await page.fill("#f-sampler-p", "8")
    await page.select_option("#f-model", "dinov2-large")
    await page.click("#create-submit")
    row = page.locator(".run-row").first
    await row.locator(".badge-queued").wait_for()
    assert await row.locator(".name a").inner_text() == "s2-standard"
    run = await repository.get_run(conn, int(await row.get_attribute("data-run-id")))
    assert run["config"] == {"model": "dinov2-large", "training": {"epochs": 3}}
    assert await row.locator(".epoch-text").inner_text() == "0/3"
    await screenshot(page, "create_form_queued")


async def test_cancel_a_queued_run_from_the_list(page, conn):
    keep = await repository.insert_run(conn, "keep", {})
    doomed = await repository.insert_run(conn, "doomed", {})
    await page.reload()
    await page.click(f"#run-{doomed} [data-action=cancel]")
    await page.locator(f"#run-{doomed} .badge-cancelled").wait_for()
    assert await page.locator(f"#run-{keep} .badge").inner_text() == "queued"
    assert (await repository.get_run(conn, doomed))["status"] == "cancelled"
    assert await page.locator(f"#run-{doomed} [data-action=cancel]").count() == 0
    await screenshot(page, "cancel_run")
