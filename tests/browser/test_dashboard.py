"""The dashboard in headless Chromium: every write goes through the page as a person would do it,
every assertion reads the page (and the database the page wrote to)."""
from __future__ import annotations

from db import repository
from tests.browser.conftest import screenshot
from tests.integration.api.live import scripted_training


async def test_create_run_through_the_form_and_an_invalid_form_is_rejected(page, conn):
    await page.click("#new-run")
    assert not await page.is_visible("#f-sampler-p")  # Advanced is collapsed by default
    # browser-side validation: no request is sent
    await page.fill("#f-training-epochs", "0")
    await page.click("#create-submit")
    assert await page.inner_text("[data-field=name] > .field-error") == "give the run a name"
    assert await page.inner_text("[data-field='training.epochs'] > .field-error") == "must be ≥ 1"
    await screenshot(page, "create_form_browser_errors")
    assert await conn.fetchval("SELECT count(*) FROM training_runs") == 0
    # server-side validation: a stated batch size must match the P-K sampler (a cross-field
    # rule; a batch size left at its default follows p * k)
    await page.fill("#f-name", "s2-standard")
    await page.fill("#f-training-epochs", "3")
    await page.click("#advanced summary")
    await page.fill("#f-sampler-p", "6")
    await page.fill("#f-training-batch_size", "40")
    await page.click("#create-submit")
    error = page.locator("[data-field='training.batch_size'] > .field-error")
    await error.wait_for()
    assert "must equal sampler.p * sampler.k" in await error.inner_text()
    await screenshot(page, "create_form_invalid")
    assert await conn.fetchval("SELECT count(*) FROM training_runs") == 0

    await page.fill("#f-training-batch_size", "32")
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
    # a run queued elsewhere (plain SQL) appears from the events stream, no reload
    from_sql = await conn.fetchval("INSERT INTO training_runs (name) VALUES ('from-psql') RETURNING id")
    await page.locator(f"#run-{from_sql} .badge-queued").wait_for()
    assert await page.locator(".run-row").first.get_attribute("id") == f"run-{from_sql}"
    await screenshot(page, "cancel_run")


async def test_delete_through_the_force_dialog_names_the_linked_models(page, catalog_conn):
    conn = catalog_conn
    run_id = await repository.insert_run(conn, "linked-run", {})
    await scripted_training(conn, run_id, [0.5, 0.6], test_r1=0.55)
    best = next(c["id"] for c in await repository.run_checkpoints(conn, run_id) if c["is_best"])
    await repository.register_model(conn, best, "shelf-v1")
    await page.reload()
    await page.click(f"#run-{run_id} [data-action=delete]")
    dialog = page.locator("#delete-dialog")
    await dialog.locator(".linked-list li").wait_for()
    assert await dialog.locator(".linked-list li").all_inner_texts() == ["shelf-v1 (epoch 2)"]
    await dialog.locator(".delete-confirm").click()  # without force: refused, nothing changes
    error = dialog.locator(".delete-error")
    await error.wait_for()
    assert "shelf-v1" in await error.inner_text() and "force" in await error.inner_text()
    assert (await repository.get_run(conn, run_id))["delete_requested_at"] is None
    await dialog.locator(".delete-force").check()
    assert await dialog.locator(".delete-confirm").inner_text() == "Force delete"
    await screenshot(page, "delete_force_dialog")
    await dialog.locator(".delete-confirm").click()
    await page.locator(f"#run-{run_id}").wait_for(state="detached")
    assert (await repository.get_run(conn, run_id))["delete_requested_at"] is not None
    assert await conn.fetchval("SELECT count(*) FROM trained_models") == 0
    await screenshot(page, "delete_done")


async def test_register_two_models_and_compare_them(page, catalog_conn):
    conn = catalog_conn
    runs = {}
    for name, val_r1, test_r1 in (("baseline", [0.4, 0.55, 0.5], 0.52),
                                  ("sota", [0.6, 0.7, 0.8], 0.74)):
        runs[name] = await repository.insert_run(conn, name, {"loss": {"type": "combined"}})
        await scripted_training(conn, runs[name], val_r1, test_r1=test_r1)
    for name, run_id in runs.items():
        await page.goto(f"{page.base}/runs/{run_id}")
        form = page.locator("table.checkpoints tr.best .register-form")
        await form.locator("input").fill(f"{name}-model")
        await form.locator("button").click()
        await page.locator(f"text=Registered models: {name}-model").wait_for()
        if name == "sota":
            await page.locator("#chart-val svg polyline").first.wait_for()
            pairs = await page.locator("table.domain-pairs tbody th").all_inner_texts()
            assert pairs == ["cutout → real", "real → synthetic"]
            await screenshot(page, "run_detail_scripted")

    await page.goto(f"{page.base}/models")
    picks = page.locator(".compare-pick")
    assert await picks.count() == 2
    assert await page.is_disabled("#compare-selected")
    await picks.nth(0).check()
    await picks.nth(1).check()
    await screenshot(page, "models_list")
    await page.click("#compare-selected")
    table = page.locator("#compare-table")
    await table.locator("tbody tr").first.wait_for()
    r1 = table.locator("tr[data-metric='test.recall_at_1'] td")
    assert await r1.all_inner_texts() == ["0.520", "0.740"]
    assert await r1.nth(1).get_attribute("class") == "num best-value"
    assert await page.locator("#chart-compare svg rect").count() == 8  # 4 metrics x 2 models
    await screenshot(page, "compare_models")


async def test_a_failed_run_shows_its_error_and_can_be_resumed(page, conn):
    run_id = await repository.insert_run(conn, "too-small", {})
    (claimed,) = await repository.claim_runs(conn, "test", 1, 60)
    message = "the data source has 4 products; at least 10 are needed (add products or use another source)"
    assert await repository.finish_run(conn, run_id, claimed.lease_epoch, "failed",
                                       error_code="insufficient_products", error_message=message)
    await page.reload()
    assert message in await page.locator(f"#run-{run_id} .error-line").get_attribute("title")
    await page.click(f"#run-{run_id} .name a")
    assert await page.locator(".error-box").inner_text() == f"insufficient_products: {message}"
    await screenshot(page, "run_detail_failed")
    await page.click("[data-action=resume]")
    await page.locator(".badge-queued").wait_for()  # the page follows the run's events
    assert (await repository.get_run(conn, run_id))["status"] == "queued"


async def test_the_openapi_page_renders_from_the_package(page):
    await page.click("header nav >> text=API")
    await page.locator(".swagger-ui [data-path='/api/v1/training/runs']").first.wait_for()
    assert await page.locator(".swagger-ui .opblock").count() >= 14
