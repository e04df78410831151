"""The manifest: every image a run trains on, one `ImageRecord` each, before any download.

Inputs are the rows the data-source query (db/) already chose for the run: products (`id`,
`barcode`, `product_name`, `brand_name`, `category`, `frames_path`, `frame_count`) and their
`product_images` rows (`product_id`, `url`, `domain`, `frame_index`, `source_key`), as dicts
or objects with those attributes.

Decisions:
- Every domain in `image_config.image_types` is really included (the original system counted
  `real` and `augmented` images in its stats but never fetched them).
- Synthetic images come only from the turntable: `{frames_path}/frame_{idx:04d}.png` for the
  indices `select_frames` picks. `product_images` rows with domain `synthetic` are ignored, so
  a frame listed in both places is never counted twice.
- `max_frames_per_type` caps every domain per product: the frame selection for synthetic, an
  evenly spaced subset of the rows (ordered by source_key, url) for the others, so the cap
  spreads over different source photos instead of keeping copies of the first one.
- The label is `label_config.label_field` as a string. A product whose label field is empty
  (no category, no brand) is left out: putting unrelated products under one "unknown" label
  would teach the model that they are the same thing.
- Output order is canonical (product id, domain, frame index, url), whatever the input order.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, replace
from typing import Any, Iterable, Mapping

from services.trainer.config import DOMAINS, RunConfig
from services.trainer.data.frames import evenly_spaced, select_frames
from services.trainer.data.split import filter_min_samples

_LABEL_SOURCES = {"product_id": "id", "category": "category", "brand_name": "brand_name"}


@dataclass(frozen=True)
class ImageRecord:
    """One training image; `label` is what the run classifies by, `source_key` groups the
    augmented copies and cutouts made from one photo."""

    product_id: int
    url: str
    domain: str
    frame_index: int | None
    category: str | None
    brand: str | None
    label: str
    source_key: str | None = None


def _field(row: Any, name: str) -> Any:
    if isinstance(row, Mapping):
        return row.get(name)
    return getattr(row, name, None)


def frame_url(frames_path: str, index: int) -> str:
    return f"{frames_path.rstrip('/')}/frame_{index:04d}.png"


def _label(product: Any, label_field: str) -> str | None:
    value = _field(product, _LABEL_SOURCES[label_field])
    if value is None or str(value).strip() == "":
        return None
    return str(value)


def build_manifest(
    products: Iterable[Any], images: Iterable[Any], config: RunConfig
) -> list[ImageRecord]:
    """One record per image the run will use; no I/O."""
    image_cfg = config.image_config
    wanted = set(image_cfg.image_types)
    cap = image_cfg.max_frames_per_type

    rows_by_product: dict[int, dict[str, list[Any]]] = defaultdict(lambda: defaultdict(list))
    for row in images:
        domain = _field(row, "domain")
        if domain in wanted and domain != "synthetic":
            rows_by_product[int(_field(row, "product_id"))][domain].append(row)

    records: list[ImageRecord] = []
    for product in products:
        label = _label(product, config.label_config.label_field)
        if label is None:
            continue
        base = ImageRecord(
            product_id=int(_field(product, "id")),
            url="",
            domain="",
            frame_index=None,
            category=_field(product, "category"),
            brand=_field(product, "brand_name"),
            label=label,
        )

        frames_path = _field(product, "frames_path")
        if "synthetic" in wanted and frames_path:
            for idx in select_frames(
                image_cfg.frame_selection,
                int(_field(product, "frame_count") or 0),
                image_cfg.frame_interval,
                cap,
            ):
                url = frame_url(frames_path, idx)
                records.append(replace(base, url=url, domain="synthetic", frame_index=idx))

        for domain, rows in rows_by_product.get(base.product_id, {}).items():
            rows = sorted(rows, key=lambda r: (_field(r, "source_key") or "", _field(r, "url")))
            for row in evenly_spaced(rows, cap):
                frame_index = _field(row, "frame_index")
                records.append(
                    replace(
                        base,
                        url=_field(row, "url"),
                        domain=domain,
                        frame_index=None if frame_index is None else int(frame_index),
                        source_key=_field(row, "source_key"),
                    )
                )

    domain_order = {d: i for i, d in enumerate(DOMAINS)}
    records.sort(
        key=lambda r: (
            r.product_id,
            domain_order.get(r.domain, len(domain_order)),
            -1 if r.frame_index is None else r.frame_index,
            r.url,
        )
    )
    return records


def count_manifest(
    products: Iterable[Any], images: Iterable[Any], config: RunConfig
) -> tuple[int, int]:
    """(products, images) a run would train on, after the min-samples filter; for preflight.

    Counts what the manifest promises, before any download, so broken URLs can still lower
    the real numbers; the trainer checks the minimums again after downloading.
    """
    records = filter_min_samples(
        build_manifest(products, images, config), config.label_config.min_samples_per_class
    )
    return len({r.product_id for r in records}), len(records)
