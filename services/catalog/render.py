"""Draw packaged products: label artwork, a turntable rotation, shelf photos and cutouts.

The package is a 2D approximation of a 3D object seen from the side at eye level. Its
artwork is drawn once per product (`build_textures`) as flat panels; a rotation then maps
every image column to a panel column and a shade (`render_package`):
- box and pouch: a rectangular prism of front, right, back and left panels; the visible faces
  are projected and lit by how much they face a light at the front left (a pouch is a thin,
  puffy box);
- can and bottle: a cylinder whose label wraps all the way round; a column at offset `x` from
  the axis shows the label at angle ``asin(x / r) - rotation``, lit the same way, with a
  specular streak; a bottle adds neck and cap by narrowing rows.
Sampling is nearest-neighbour on small numpy arrays, so one frame takes well under a
millisecond; scenes (`shelf_photo`, `cutout`, `augment_photo`) add clutter, perspective,
lighting, occlusion, blur and noise with Pillow and numpy, all driven by a seeded generator.
"""
from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

RGB = tuple[int, int, int]
SHAPES = ("box", "bottle", "can", "pouch")
BANDS = ("top", "middle", "bottom")
EMBLEMS = ("circle", "ring", "diamond", "stripes", "dots", "chevron", "star")
BACKDROPS = ("plain", "diagonal", "split", "frame")
TEXTURE_SCALE = 2  # artwork is drawn at twice the package's pixel size, so text stays legible


@dataclass(frozen=True)
class Palette:
    primary: RGB
    secondary: RGB
    accent: RGB


@dataclass(frozen=True)
class PackageDesign:
    """Everything that makes a product look like itself; sizes are fractions of the image."""

    shape: str
    category: str
    brand: str
    name: str
    size_text: str
    barcode: str
    palette: Palette
    band: str
    backdrop: str
    emblem: str
    emblem_side: str
    height: float
    width: float
    depth: float


@dataclass(frozen=True)
class PackageTextures:
    """Artwork as one strip of panels; `panels` are (column offset, width) in the strip."""

    strip: np.ndarray
    panels: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class Pose:
    """How one photo shows the package: rotation (degrees), size, light colour (RGB gains)."""

    angle: float
    scale: float
    light: tuple[float, float, float]


def hsv(h: float, s: float, v: float) -> RGB:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
    return (round(r * 255), round(g * 255), round(b * 255))


def _ink(background: RGB) -> RGB:
    luminance = 0.299 * background[0] + 0.587 * background[1] + 0.114 * background[2]
    return (20, 20, 24) if luminance > 140 else (250, 250, 246)


@lru_cache(maxsize=64)
def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(max(6, size))


def _centered_text(draw: ImageDraw.ImageDraw, box, text: str, fill: RGB, size: int) -> None:
    left, top, right, bottom = box
    font = _font(size)
    while size > 6 and draw.textlength(text, font=font) > (right - left) * 0.92:
        size -= 1
        font = _font(size)
    draw.text(((left + right) / 2, (top + bottom) / 2), text, fill=fill, font=font, anchor="mm")


def _emblem(draw: ImageDraw.ImageDraw, kind: str, cx: float, cy: float, r: float, color: RGB):
    if kind == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=color)
    elif kind == "ring":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=color, width=max(2, round(r / 3)))
    elif kind == "diamond":
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=color)
    elif kind == "stripes":
        for k in (-1, 0, 1):
            off = k * r * 0.7
            line = (cx - r + off, cy + r, cx + off + r * 0.3, cy - r)
            draw.line(line, fill=color, width=max(2, round(r / 4)))
    elif kind == "dots":
        for i in (-1, 0, 1):
            for j in (-1, 0, 1):
                x, y, d = cx + i * r * 0.65, cy + j * r * 0.65, r * 0.22
                draw.ellipse((x - d, y - d, x + d, y + d), fill=color)
    elif kind == "chevron":
        for k in (-0.5, 0.4):
            y = cy + k * r
            line = (cx - r, y + r * 0.5, cx, y - r * 0.3, cx + r, y + r * 0.5)
            draw.line(line, fill=color, width=max(2, round(r / 3.5)))
    else:  # star
        points = []
        for i in range(10):
            radius = r if i % 2 == 0 else r * 0.45
            a = -math.pi / 2 + i * math.pi / 5
            points.append((cx + radius * math.cos(a), cy + radius * math.sin(a)))
        draw.polygon(points, fill=color)


def _band_top(d: PackageDesign) -> float:
    return {"top": 0.06, "middle": 0.34, "bottom": 0.6}[d.band]


def _front_panel(d: PackageDesign, w: int, h: int) -> Image.Image:
    """Brand band, product name, emblem and size; the band position decides the layout."""
    p = d.palette
    img = Image.new("RGB", (w, h), p.primary)
    draw = ImageDraw.Draw(img)
    _backdrop(draw, d, w, h)
    band = (0, _band_top(d) * h, w, (_band_top(d) + 0.3) * h)
    draw.rectangle(band, fill=p.secondary)
    _centered_text(draw, band, d.brand.upper(), _ink(p.secondary), round(0.16 * h))
    name_h = 0.15 * h
    if d.band == "top":
        name_box = (0, band[3], w, band[3] + name_h)
        emblem_box = (name_box[3], h * 0.93)
    elif d.band == "middle":
        name_box = (0, band[3], w, band[3] + name_h)
        emblem_box = (h * 0.02, band[1])
    else:
        name_box = (0, band[1] - name_h, w, band[1])
        emblem_box = (h * 0.03, name_box[1])
    _centered_text(draw, name_box, d.name, _ink(p.primary), round(0.09 * h))
    top, bottom = emblem_box
    r = max(3.0, min(0.24 * w, 0.42 * (bottom - top)))
    cx = {"left": 0.3, "center": 0.5, "right": 0.7}[d.emblem_side] * w
    cx = min(max(cx, r + 1), w - r - 1)
    _emblem(draw, d.emblem, cx, (top + bottom) / 2, r, p.accent)
    draw.text(
        (w * 0.95, h * 0.985), d.size_text, fill=_ink(p.primary),
        font=_font(round(0.06 * h)), anchor="rb",
    )
    if d.shape == "pouch":
        _seal(draw, d, w, h)
    return img


def _backdrop(draw: ImageDraw.ImageDraw, d: PackageDesign, w: int, h: int) -> None:
    """A second tone of the brand's primary colour laid out per product."""
    shade = tuple(round(c * 0.72) for c in d.palette.primary)
    if d.backdrop == "diagonal":
        draw.polygon([(0, h), (w, 0.25 * h), (w, h)], fill=shade)
    elif d.backdrop == "split":
        draw.rectangle((0, 0, w * 0.5, h), fill=shade)
    elif d.backdrop == "frame":
        draw.rectangle((0, 0, w - 1, h - 1), outline=d.palette.accent, width=max(2, w // 14))


def _seal(draw: ImageDraw.ImageDraw, d: PackageDesign, w: int, h: int) -> None:
    """A pouch's crimped heat seal across the top."""
    dark = tuple(round(c * 0.7) for c in d.palette.secondary)
    draw.rectangle((0, 0, w, 0.07 * h), fill=dark)
    for x in range(0, w, 4):
        draw.line((x, 0, x, 0.07 * h), fill=d.palette.secondary)


def _back_panel(d: PackageDesign, w: int, h: int) -> Image.Image:
    """Ingredients block and the product's barcode."""
    p = d.palette
    img = Image.new("RGB", (w, h), p.primary)
    draw = ImageDraw.Draw(img)
    draw.rectangle((0.1 * w, 0.08 * h, 0.9 * w, 0.5 * h), fill=(245, 245, 240))
    for i in range(6):
        y = 0.12 * h + i * 0.06 * h
        draw.rectangle((0.15 * w, y, (0.85 - 0.08 * (i % 3)) * w, y + 0.025 * h), fill=(90, 90, 90))
    bx0, by0, bx1, by1 = 0.2 * w, 0.62 * h, 0.8 * w, 0.85 * h
    draw.rectangle((bx0, by0, bx1, by1), fill=(255, 255, 255))
    bits = "".join(f"{int(c):04b}" for c in d.barcode)
    step = (bx1 - bx0 - 4) / len(bits)
    for i, bit in enumerate(bits):
        if bit == "1":
            x = bx0 + 2 + i * step
            draw.rectangle((x, by0 + 2, x + step, by1 - 2), fill=(0, 0, 0))
    _centered_text(draw, (0, 0.88 * h, w, h), d.brand, _ink(p.primary), round(0.07 * h))
    if d.shape == "pouch":
        _seal(draw, d, w, h)
    return img


def _side_panel(d: PackageDesign, w: int, h: int) -> Image.Image:
    img = Image.new("RGB", (w, h), d.palette.primary)
    draw = ImageDraw.Draw(img)
    draw.rectangle((0, _band_top(d) * h, w, (_band_top(d) + 0.3) * h), fill=d.palette.secondary)
    if d.shape == "pouch":
        _seal(draw, d, w, h)
    return img


def _bottle_panel(d: PackageDesign, panel: Image.Image, w: int, h: int) -> Image.Image:
    """Bottle artwork: body colour, the label between 38% and 92% of the height, a cap."""
    body = tuple(min(255, round(c * 0.55 + 110)) for c in d.palette.secondary)
    img = Image.new("RGB", (w, h), body)
    top, bottom = round(0.38 * h), round(0.92 * h)
    img.paste(panel.resize((w, bottom - top), Image.BILINEAR), (0, top))
    ImageDraw.Draw(img).rectangle((0, 0, w, 0.1 * h), fill=d.palette.accent)
    return img


def build_textures(d: PackageDesign, image_size: int) -> PackageTextures:
    """Draw the artwork once; every rendered view samples it."""
    h = round(d.height * image_size * TEXTURE_SCALE)
    w = round(d.width * image_size * TEXTURE_SCALE)
    if d.shape in ("can", "bottle"):
        half = round(math.pi * w / 2)
        front_h = h if d.shape == "can" else round(0.54 * h)
        front = _front_panel(d, half, front_h)
        back = _back_panel(d, half, front_h)
        if d.shape == "bottle":
            front, back = _bottle_panel(d, front, half, h), _bottle_panel(d, back, half, h)
        strip = np.concatenate([np.asarray(front), np.asarray(back)], axis=1)
        return PackageTextures(strip, ((0, half), (half, half)))
    depth = max(2, round(d.depth * image_size * TEXTURE_SCALE))
    side = _side_panel(d, depth, h)
    panels = [_front_panel(d, w, h), side, _back_panel(d, w, h), side]
    offsets, x = [], 0
    for p in panels:
        offsets.append((x, p.width))
        x += p.width
    strip = np.concatenate([np.asarray(p) for p in panels], axis=1)
    return PackageTextures(strip, tuple(offsets))


LIGHT = (math.sin(math.radians(-35)), math.cos(math.radians(-35)))  # from the front left


def _prism_columns(
    d: PackageDesign, tex: PackageTextures, angle: float, fw: float, dw: float, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """Strip column and shade of each image column for a box seen at `angle` (radians)."""
    a, b = fw / 2, dw / 2
    c, s = math.cos(angle), math.sin(angle)
    corners = [(-a, b), (a, b), (a, -b), (-a, -b)]
    normals = [(0, 1), (1, 0), (0, -1), (-1, 0)]
    xs = np.arange(n) + 0.5 - n / 2
    cols = np.full(n, -1)
    shade = np.zeros(n)
    for k in range(4):
        nx, nz = normals[k][0] * c + normals[k][1] * s, -normals[k][0] * s + normals[k][1] * c
        if nz <= 1e-3:
            continue
        (px, pz), (qx, qz) = corners[k], corners[(k + 1) % 4]
        x0, x1 = px * c + pz * s, qx * c + qz * s
        t = (xs - x0) / (x1 - x0)
        inside = (t >= 0) & (t < 1)
        offset, width = tex.panels[k]
        cols[inside] = offset + np.clip((t[inside] * width).astype(int), 0, width - 1)
        face = 0.4 + 0.6 * max(0.0, nx * LIGHT[0] + nz * LIGHT[1])
        if d.shape == "pouch" and k in (0, 2):
            face = face * (0.8 + 0.2 * np.sin(np.pi * t[inside]))
        shade[inside] = face
    return cols, shade


def _cylinder_columns(
    tex: PackageTextures, angle: float, n: int, glossy: float
) -> tuple[np.ndarray, np.ndarray]:
    """Strip column and shade of each image column for a cylinder seen at `angle` (radians)."""
    r = n / 2
    phi = np.arcsin(np.clip((np.arange(n) + 0.5 - r) / r, -1, 1))
    width = tex.strip.shape[1]
    u = ((phi - angle) / (2 * math.pi) * width + width / 4) % width
    diffuse = np.maximum(0.0, np.sin(phi) * LIGHT[0] + np.cos(phi) * LIGHT[1])
    shade = 0.35 + 0.65 * diffuse + glossy * np.exp(-(((phi + 0.55) / 0.16) ** 2))
    return u.astype(int), shade


def _row_profile(shape: str, h: int) -> np.ndarray:
    """Half-width of each row as a fraction of the full half-width (bottle neck, pouch seal)."""
    y = (np.arange(h) + 0.5) / h
    if shape == "bottle":
        neck = np.interp(y, [0.0, 0.1, 0.1, 0.2, 0.34, 1.0], [0.34, 0.34, 0.4, 0.4, 1.0, 1.0])
        return np.where(y > 0.97, 0.93, neck)
    if shape == "pouch":
        return np.interp(y, [0.0, 0.07, 0.07, 0.85, 1.0], [0.97, 0.97, 1.0, 1.0, 0.86])
    if shape == "can":
        return np.where((y < 0.03) | (y > 0.97), 0.94, 1.0)
    return np.ones(h)


def render_package(
    d: PackageDesign,
    tex: PackageTextures,
    angle_deg: float,
    height_px: int,
    light: tuple[float, float, float] = (1.0, 1.0, 1.0),
) -> Image.Image:
    """The package rotated by `angle_deg` about its vertical axis, as an RGBA sprite."""
    angle = math.radians(angle_deg)
    h = max(4, height_px)
    fw, dw = d.width * h / d.height, d.depth * h / d.height
    if d.shape in ("can", "bottle"):
        n = max(2, round(fw))
        cols, shade = _cylinder_columns(tex, angle, n, 0.45 if d.shape == "can" else 0.3)
        half_width = n / 2
    else:
        n = max(2, math.ceil(math.hypot(fw, dw)))
        cols, shade = _prism_columns(d, tex, angle, fw, dw, n)
        visible = np.abs(np.nonzero(cols >= 0)[0] + 0.5 - n / 2)
        half_width = float(visible.max()) if len(visible) else 0.0
    rows = (np.arange(h) * tex.strip.shape[0]) // h
    rgb = tex.strip[rows[:, None], np.maximum(cols, 0)[None, :]].astype(np.float32)
    rgb *= (shade[None, :, None] * np.asarray(light)).astype(np.float32)
    if d.shape == "can":
        rim = (rows < 0.03 * tex.strip.shape[0]) | (rows > 0.97 * tex.strip.shape[0])
        rgb[rim] = 185 * shade[None, :, None]
    offsets = np.abs(np.arange(n) + 0.5 - n / 2)
    inside = offsets[None, :] <= _row_profile(d.shape, h)[:, None] * half_width + 0.5
    alpha = (inside & (cols >= 0)[None, :]).astype(np.uint8) * 255
    out = np.dstack([np.clip(rgb, 0, 255).astype(np.uint8), alpha])
    return Image.fromarray(out, "RGBA")


def _vertical_gradient(size: int, top: np.ndarray, drop: float) -> np.ndarray:
    column = np.clip(top[None, :] + np.linspace(0, -drop, size)[:, None], 0, 255)
    out = np.empty((size, size, 3), np.uint8)
    out[:] = column.astype(np.uint8)[:, None, :]
    return out


def _paste_bottom_centered(
    canvas: Image.Image, sprite: Image.Image, cx: float, bottom: float
) -> tuple[int, int]:
    x, y = round(cx - sprite.width / 2), round(bottom - sprite.height)
    canvas.paste(sprite, (x, y), sprite)
    return x, y


@lru_cache(maxsize=32)
def _studio(size: int, bottom: int, shadow_half_width: int) -> Image.Image:
    """Turntable backdrop with a soft floor shadow; one per package size, reused per frame."""
    canvas = Image.fromarray(_vertical_gradient(size, np.full(3, 236.0), 28), "RGB")
    shadow = Image.new("L", (size, size), 0)
    box = (
        size / 2 - shadow_half_width, bottom - size * 0.04,
        size / 2 + shadow_half_width, bottom + size * 0.03,
    )
    ImageDraw.Draw(shadow).ellipse(box, fill=90)
    canvas.paste((150, 150, 150), (0, 0), shadow.filter(ImageFilter.GaussianBlur(size / 60)))
    return canvas


def turntable_frame(
    d: PackageDesign, tex: PackageTextures, index: int, frame_count: int, size: int
) -> Image.Image:
    """Frame `index` of a studio turntable video: the package alone, evenly lit, on grey."""
    bottom = round(size * (0.5 + d.height / 2))
    canvas = _studio(size, bottom, round(size * d.width * 0.6)).copy()
    sprite = render_package(d, tex, 360.0 * index / frame_count, round(d.height * size))
    _paste_bottom_centered(canvas, sprite, size / 2, bottom)
    return canvas


def random_pose(rng: np.random.Generator) -> Pose:
    """How a photo shows the package: mostly the front, turned up to 40 degrees, rarely back."""
    warm = rng.uniform(-0.08, 0.08)
    return Pose(
        angle=float(rng.uniform(-40, 40) + (180 if rng.random() < 0.08 else 0)),
        scale=float(rng.uniform(0.75, 1.05)),
        light=(1 + warm, 1.0, 1 - warm),
    )


def _clutter(canvas: Image.Image, rng: np.random.Generator) -> None:
    """Other packages on the shelf, the shelf edge and a price tag."""
    size = canvas.width
    draw = ImageDraw.Draw(canvas)
    shelf_y = size * rng.uniform(0.78, 0.9)
    for _ in range(int(rng.integers(5, 10))):
        w, h = size * rng.uniform(0.12, 0.3), size * rng.uniform(0.3, 0.7)
        x = rng.uniform(-0.1, 1.0) * size
        color = hsv(rng.random(), rng.uniform(0.3, 0.9), rng.uniform(0.3, 0.95))
        box = (x, shelf_y - h, x + w, shelf_y)
        if rng.random() < 0.5:
            draw.rounded_rectangle(box, radius=w / 2.5, fill=color)
        else:
            draw.rectangle(box, fill=color)
        band_y = shelf_y - h * rng.uniform(0.3, 0.8)
        draw.rectangle((x, band_y, x + w, band_y + h * 0.15), fill=hsv(rng.random(), 0.5, 0.9))
    draw.rectangle((0, shelf_y, size, size), fill=hsv(0.08, 0.25, rng.uniform(0.35, 0.6)))
    draw.rectangle((0, shelf_y, size, shelf_y + size * 0.03), fill=(60, 60, 60))
    tag_x = rng.uniform(0.1, 0.7) * size
    tag = (tag_x, shelf_y + size * 0.04, tag_x + size * 0.18, shelf_y + size * 0.1)
    draw.rectangle(tag, fill=(250, 250, 235))


def _perspective_coeffs(src, dst) -> list[float]:
    """Coefficients for Image.transform(PERSPECTIVE) taking output points `dst` to `src`."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(dst, src):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        rhs.extend([u, v])
    return np.linalg.solve(np.asarray(rows, float), np.asarray(rhs, float)).tolist()


def _perspective(sprite: Image.Image, rng: np.random.Generator, amount: float) -> Image.Image:
    """Move each corner by up to `amount` of the size: a camera not quite square to the shelf."""
    w, h = sprite.size
    pad = round(max(w, h) * amount) + 1
    src = [(0, 0), (w, 0), (w, h), (0, h)]
    jitter = rng.uniform(-amount, amount, (4, 2)) * (w, h)
    dst = [(x + pad + jx, y + pad + jy) for (x, y), (jx, jy) in zip(src, jitter)]
    coeffs = _perspective_coeffs(src, dst)
    return sprite.transform((w + 2 * pad, h + 2 * pad), Image.PERSPECTIVE, coeffs, Image.BILINEAR)


def _finish(
    img: Image.Image, rng: np.random.Generator, blur: float, noise: float, brightness: float
) -> Image.Image:
    """Camera effects: defocus blur, uneven lighting, exposure and sensor noise."""
    if blur > 0.3:
        img = img.filter(ImageFilter.GaussianBlur(blur))
    size = img.width
    direction = rng.uniform(0, 2 * math.pi)
    ramp = np.linspace(-1, 1, size, dtype=np.float32)
    slope = rng.uniform(0.1, 0.35)
    gradient = brightness * (
        1 + slope * (math.cos(direction) * ramp[None, :] + math.sin(direction) * ramp[:, None])
    )
    arr = np.asarray(img, dtype=np.float32) * gradient[:, :, None]
    arr += rng.standard_normal((size, size, 1), dtype=np.float32) * np.float32(noise)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def _occlude(canvas: Image.Image, box: tuple[int, int, int, int], rng: np.random.Generator):
    """Something in front of the package: a neighbour at one side or the shelf lip below."""
    x, y, w, h = box
    size = canvas.width
    color = hsv(rng.random(), rng.uniform(0.2, 0.8), rng.uniform(0.3, 0.95))
    cover = rng.uniform(0.15, 0.3)
    side = int(rng.integers(3))
    if side == 0:
        rect = (x - size, y, x + w * cover, y + h * 1.2)
    elif side == 1:
        rect = (x + w * (1 - cover), y, x + size, y + h * 1.2)
    else:
        rect = (x - 2, y + h * (1 - cover), x + w + 2, size)
    ImageDraw.Draw(canvas).rectangle(rect, fill=color)


def shelf_photo(
    d: PackageDesign, tex: PackageTextures, pose: Pose, rng: np.random.Generator, size: int
) -> Image.Image:
    """A phone photo of the package on a cluttered shelf, sometimes occluded, lit and noisy."""
    wall = hsv(rng.random(), rng.uniform(0, 0.2), rng.uniform(0.55, 0.9))
    canvas = Image.new("RGB", (size, size), wall)
    _clutter(canvas, rng)
    sprite = render_package(d, tex, pose.angle, round(d.height * size * pose.scale), pose.light)
    sprite = _perspective(sprite, rng, 0.06)
    cx = size * (0.5 + rng.uniform(-0.1, 0.1))
    bottom = size * min(0.98, 0.5 + d.height * pose.scale / 2 + rng.uniform(-0.04, 0.04))
    x, y = _paste_bottom_centered(canvas, sprite, cx, bottom)
    if rng.random() < 0.45:
        _occlude(canvas, (x, y, sprite.width, sprite.height), rng)
    return _finish(
        canvas,
        rng,
        blur=rng.uniform(0, 1.2) * size / 128,
        noise=rng.uniform(2, 8),
        brightness=rng.uniform(0.75, 1.15),
    )


def cutout(
    d: PackageDesign, tex: PackageTextures, pose: Pose, rng: np.random.Generator, size: int
) -> Image.Image:
    """The package of a photo, cut out and placed on a plain background, filling the frame."""
    top = np.full(3, rng.uniform(225, 255)) + rng.uniform(-6, 6, 3)
    canvas = Image.fromarray(_vertical_gradient(size, top, 20), "RGB")
    sprite = render_package(d, tex, pose.angle, round(size * 0.86), pose.light)
    if sprite.width > size * 0.9:
        scale = size * 0.9 / sprite.width
        sprite = sprite.resize((round(size * 0.9), round(sprite.height * scale)), Image.BILINEAR)
    _paste_bottom_centered(canvas, sprite, size / 2, (size + sprite.height) / 2)
    return canvas


def augment_photo(photo: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A copy of a photo as an augmentation pipeline makes it: crop, tilt, colour, noise."""
    size = photo.width
    crop = rng.uniform(0.75, 1.0) * size
    x, y = rng.uniform(0, size - crop, 2)
    img = photo.resize((size, size), Image.BILINEAR, box=(x, y, x + crop, y + crop))
    mean = tuple(int(c) for c in np.asarray(img).reshape(-1, 3).mean(0))
    img = img.rotate(float(rng.uniform(-12, 12)), Image.BILINEAR, fillcolor=mean)
    hsv_arr = np.asarray(img.convert("HSV")).astype(np.int16)
    hsv_arr[..., 0] = (hsv_arr[..., 0] + int(rng.integers(-8, 9))) % 256
    hsv_arr[..., 1] = np.clip(hsv_arr[..., 1] * rng.uniform(0.7, 1.3), 0, 255)
    img = Image.fromarray(hsv_arr.astype(np.uint8), "HSV").convert("RGB")
    return _finish(
        img,
        rng,
        blur=rng.uniform(0, 0.8),
        noise=rng.uniform(1, 6),
        brightness=rng.uniform(0.8, 1.2),
    )
