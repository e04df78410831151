"""A real run from the browser: created through the form, trained by a real dispatcher and a
local trainer subprocess (tiny model, tiny catalog, 2 epochs), watched live on the runs list."""
from __future__ import annotations

import asyncio
import time

from services.dispatcher.launchers import LocalLauncher
from services.dispatcher.service import Dispatcher, DispatcherConfig
from tests.browser.conftest import screenshot

TINY_FORM = {  # field id -> value: the same config as tests/e2e TINY_RUN, typed into the form
    "#f-training-epochs": "2", "#f-training-batch_size": "16", "#f-training-learning_rate": "0.001",
    "#f-training-min_lr": "0.00001", "#f-training-warmup_epochs": "0.5",
    "#f-training-image_size": "32", "#f-training-embedding_dim": "32",
    "#f-training-num_workers": "0", "#f-sampler-p": "4", "#f-sampler-k": "4",
}


RECORD = """id => {
    // every state the row goes through (rows are re-rendered, bars move on each batch event)
    window.seen = [];
    const record = () => {
        const row = document.getElementById('run-' + id);
        if (!row) return;
        const state = {status: row.dataset.status,
                       width: parseFloat(row.querySelector('.epoch-fill').style.width)};
        const last = window.seen[window.seen.length - 1];
        if (!last || last.status !== state.status || last.width !== state.width) window.seen.push(state);
    };
    new MutationObserver(record).observe(document.getElementById('runs'),
        {subtree: true, childList: true, attributes: true, attributeFilter: ['style', 'data-status']});
    record();
}"""


async def _watch(page, run_id: int, timeout: float) -> tuple[list[dict], bool]:
    """The row's states until the run is final; a screenshot while it trains (the bar's moves
    are checked on the states the page recorded, which a poll from here can miss)."""
    shot = False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen = await page.evaluate("window.seen")
        last = seen[-1]
        if last["status"] == "running" and last["width"] < 100 and not shot:
            await screenshot(page, "training_progress")
            shot = True
        if last["status"] in ("completed", "failed", "cancelled"):
            return seen, shot
        await asyncio.sleep(0.1)
    raise AssertionError(f"run {run_id} not final after {timeout}s: {seen}")


async def test_a_run_created_in_the_form_goes_from_queued_to_completed_live(
        page, conn, db_url, data_dir, catalog):
    await page.click("#new-run")
    await page.fill("#f-name", "tiny-live")
    await page.select_option("#f-model", "tiny-dinov2")
    await page.click("#advanced summary")
    for selector, value in TINY_FORM.items():
        await page.fill(selector, value)
    await page.click("#create-submit")
    row = page.locator(".run-row").first
    await row.locator(".badge-queued").wait_for()
    run_id = int(await row.get_attribute("data-run-id"))
    await page.evaluate(RECORD, run_id)

    launcher = LocalLauncher(log_dir=data_dir / "logs", max_concurrent=1, env={
        "DATABASE_URL": db_url, "SKUTRAIN_DATA_DIR": str(data_dir),
        "SKUTRAIN_PROGRESS_INTERVAL": "0", "HF_TOKEN": ""})
    dispatcher = Dispatcher(db_url, launcher, DispatcherConfig(poll_interval=0.5))
    await dispatcher.start()
    waiting = asyncio.create_task(dispatcher.wait())
    try:
        seen, mid_run_shot = await _watch(page, run_id, timeout=150)
    finally:
        dispatcher.stop()
        await waiting
    statuses = [s for i, s in enumerate(x["status"] for x in seen)
                if i == 0 or s != seen[i - 1]["status"]]
    widths = [x["width"] for x in seen]
    assert statuses[0] == "queued" and statuses[-1] == "completed", seen
    assert "running" in statuses, seen
    assert widths == sorted(widths) and widths[-1] == 100, seen
    assert len({w for w in widths if 0 < w < 100}) >= 2, seen  # the bar moved during training
    assert mid_run_shot
    assert await row.locator(".epoch-text").inner_text() == "2/2"
    assert await row.locator(".r1").inner_text() != "–"
    await screenshot(page, "training_completed")

    await page.click(f"#run-{run_id} .name a")
    await page.locator("table.checkpoints tr.best .best-mark").wait_for()
    assert await page.locator("table.checkpoints tbody tr").count() == 2
    products = {r["product_name"] for r in await conn.fetch("SELECT product_name FROM products")}
    hard = await page.locator("table.hard").first.locator("tbody td:first-child").all_inner_texts()
    assert hard and all(any(name in text for name in products) for text in hard)
    await page.locator("#chart-loss svg polyline").first.wait_for()
    await screenshot(page, "run_detail_completed")
