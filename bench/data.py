"""Data pipeline throughput: cold download + decode, then warm (cached) decode + augment.

    python bench/data.py [--products 30] [--images 10] [--size 96] [--train-size 64]

A generated catalog is served by `python -m http.server` in its own process on loopback (in
this process it would compete for the GIL), so "cold" measures the downloader's own cost
(requests, size cap, Pillow verification, cache writes), not a network.
`data_throughput` returns the figures for other benchmarks to reuse.
"""
from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

# Run as a script, bench/ would be first on sys.path and its modules (queue.py, ...) would
# shadow the standard library's: put the repository root there instead.
sys.path[0] = str(Path(__file__).resolve().parents[1])

from torch.utils.data import DataLoader  # noqa: E402

from services.catalog.generate import generate_catalog  # noqa: E402
from services.common.storage import SCHEME, LocalStorage  # noqa: E402
from services.trainer.config import RunConfig  # noqa: E402
from services.trainer.data.dataset import ProductImageDataset  # noqa: E402
from services.trainer.data.download import DownloadConfig, download_images  # noqa: E402
from services.trainer.data.manifest import build_manifest  # noqa: E402


@contextmanager
def _file_server(directory: Path) -> Iterator[str]:
    """`python -m http.server` over `directory`; yields its base URL once it accepts."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
               "--directory", str(directory)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("the benchmark file server did not start") from None
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/"
    finally:
        proc.terminate()
        proc.wait()


def _catalog_rows(products: list[dict], base_url: str) -> tuple[list[dict], list[dict]]:
    """Product and image rows as the database would give them, with http:// URLs."""

    def http(url: str | None) -> str | None:
        return url and base_url + url[len(SCHEME):]

    product_rows, image_rows = [], []
    for pid, p in enumerate(products, start=1):
        row = {k: v for k, v in p.items() if k != "images"}
        product_rows.append({**row, "id": pid, "frames_path": http(p["frames_path"])})
        for img in p["images"]:
            image_rows.append({**img, "product_id": pid, "url": http(img["url"])})
    return product_rows, image_rows


def _rate(n: int, seconds: float) -> float:
    return round(n / seconds, 1) if seconds > 0 else float("inf")


def _iterate(dataset: ProductImageDataset, batch_size: int, workers: int) -> float:
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, shuffle=True)
    started = time.perf_counter()
    for _ in loader:
        pass
    return time.perf_counter() - started


def data_throughput(
    n_products: int = 30,
    images_per_product: int = 10,
    image_size: int = 96,
    train_size: int = 64,
    frame_count: int = 8,
    download_workers: int = 16,
    loader_workers: tuple[int, ...] = (0, 2),
) -> dict:
    """Images per second for each stage of the data pipeline on this machine."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        products = generate_catalog(
            LocalStorage(root / "storage"),
            n_products,
            images_per_product=images_per_product,
            image_size=image_size,
            frame_count=frame_count,
        )
        generate_s = time.perf_counter() - started

        with _file_server(root / "storage") as base_url:
            run = RunConfig.model_validate({"image_config": {"frame_selection": "all"}})
            records = build_manifest(*_catalog_rows(products, base_url), run)
            config = DownloadConfig(cache_dir=root / "cache", max_workers=download_workers)

            started = time.perf_counter()
            cold = download_images(records, config)
            cold_s = time.perf_counter() - started
            started = time.perf_counter()
            warm = download_images(records, config)
            warm_s = time.perf_counter() - started
        if cold.report.ok != len(records) or warm.report.cached != len(records):
            raise RuntimeError(f"benchmark downloads failed: {cold.report.to_dict()}")

        n = len(cold.images)
        figures = {
            "images": n,
            "image_size": image_size,
            "train_size": train_size,
            "generate_images_per_s": _rate(
                n_products * (frame_count + images_per_product), generate_s
            ),
            "cold_download_decode_images_per_s": _rate(n, cold_s),
            "warm_resolve_images_per_s": _rate(n, warm_s),
        }
        for train in (True, False):
            dataset = ProductImageDataset(cold.images, train_size, train=train)
            for workers in loader_workers:
                seconds = _iterate(dataset, 32, workers)
                key = f"{'train' if train else 'eval'}_decode_transform_workers{workers}"
                figures[f"{key}_images_per_s"] = _rate(n, seconds)
        return figures


def training_step_throughput(train_size: int = 64, batch_size: int = 32, steps: int = 15) -> float:
    """Images per second of the demo's tiny model doing forward + backward + AdamW step on
    batches already in memory: the rate the loader has to keep up with."""
    import torch

    from services.trainer.losses import build_loss
    from services.trainer.model import build_embedding_model

    torch.set_num_threads(1)  # as bench/trainer_overhead.py: two threads collapse on a busy 2-core box
    config = RunConfig.model_validate({"model": "tiny-dinov2", "training": {
        "image_size": train_size, "embedding_dim": 128, "batch_size": batch_size},
        "sampler": {"p": batch_size // 4, "k": 4}})
    model = build_embedding_model(config)
    loss = build_loss(config.loss, num_classes=batch_size // 4, embedding_dim=128)
    optimizer = torch.optim.AdamW(list(model.parameters()) + list(loss.parameters()), lr=1e-4)
    images = torch.randn(batch_size, 3, train_size, train_size)
    labels = torch.arange(batch_size) // 4
    domains = ["synthetic", "real"] * (batch_size // 2)

    def step() -> None:
        optimizer.zero_grad()
        loss(model(images), labels, domains)["total"].backward()
        optimizer.step()

    step()  # warm-up
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return _rate(steps * batch_size, time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--products", type=int, default=30)
    parser.add_argument("--images", type=int, default=10, help="non-synthetic images per product")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=96, help="generated image size")
    parser.add_argument("--train-size", type=int, default=64, help="Dataset output size")
    args = parser.parse_args()
    figures = data_throughput(
        n_products=args.products,
        images_per_product=args.images,
        image_size=args.size,
        train_size=args.train_size,
        frame_count=args.frames,
    )
    train_step = training_step_throughput(args.train_size)
    figures["tiny_model_train_step_images_per_s"] = train_step
    for workers in (0, 2):
        key = f"train_decode_transform_workers{workers}_images_per_s"
        figures[f"loader_vs_train_step_ratio_workers{workers}"] = round(figures[key] / train_step, 2)
    width = max(map(len, figures))
    for name, value in figures.items():
        print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    main()
