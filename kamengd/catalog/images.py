"""Product pictures: an upload checked and resized (Pillow) into a large picture and a
thumbnail, both WebP, kept in the database (every server of a shop serves them; backups
hold them) and served from a copy on each server's disk under addresses named by their
content, so browsers keep them for good.

An upload is refused whole, with words, when it is not a JPEG, PNG, WebP or GIF picture,
is larger than MAX_UPLOAD or has more than MAX_PIXELS (a decompression bomb never reaches
memory: Pillow reads the size from the header first).
"""
from __future__ import annotations

import hashlib
import io
import os
import re
import tempfile
import warnings
from collections.abc import Iterable
from pathlib import Path

import sqlalchemy as sa
from PIL import Image, ImageOps, UnidentifiedImageError
from sqlalchemy.orm import Session

from ..audit.services import record
from ..errors import InvalidRequest
from .models import Product, ProductImage

MAX_UPLOAD = 8 * 1024 * 1024
MAX_PIXELS = 40_000_000
FORMATS = ("JPEG", "PNG", "WEBP", "GIF")
SIZES = {"800": 800, "320": 320}   # the product page's picture, the cards' thumbnail
NAME_RE = re.compile(r"[0-9a-f]{32}")
QUALITY = 82


def _resized(picture: Image.Image, side: int) -> bytes:
    copy = picture.copy()
    copy.thumbnail((side, side), Image.Resampling.LANCZOS)   # (never enlarged)
    out = io.BytesIO()
    copy.save(out, "WEBP", quality=QUALITY, method=4)
    return out.getvalue()


def load(raw: bytes, what: str = "image") -> Image.Image:
    """An upload decoded, the right way up, in RGB(A); InvalidRequest saying what is wrong. Saved
    again by the caller, it keeps nothing of the file but its pixels (no EXIF: a phone's photo
    names where it was taken)."""
    if not raw:
        raise InvalidRequest("%(what)s: choose a picture file", what=what)
    if len(raw) > MAX_UPLOAD:
        raise InvalidRequest("%(what)s: at most %(mib)s MiB", what=what, mib=MAX_UPLOAD // (1024 * 1024))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            picture = Image.open(io.BytesIO(raw), formats=FORMATS)
            width, height = picture.size
            if width * height > MAX_PIXELS:
                raise InvalidRequest("%(what)s: at most %(mp)s million pixels", what=what,
                                     mp=MAX_PIXELS // 1_000_000)
            picture.load()
            picture = ImageOps.exif_transpose(picture)   # a phone's photo the right way up
    except InvalidRequest:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning, OSError,
            ValueError, SyntaxError):
        raise InvalidRequest("%(what)s: not a JPEG, PNG, WebP or GIF picture", what=what) from None
    return picture.convert("RGBA" if "A" in picture.getbands() or "transparency" in picture.info else "RGB")


def resized(picture: Image.Image, side: int) -> tuple[bytes, int, int]:
    """(WebP, width, height) of the picture fitted into side × side (never enlarged)."""
    data = _resized(picture, side)
    with Image.open(io.BytesIO(data)) as stored:
        return data, *stored.size


def prepare(raw: bytes) -> tuple[bytes, bytes, int, int]:
    """(large, thumbnail, width, height) of an upload, or InvalidRequest saying what is wrong."""
    picture = load(raw)
    large, width, height = resized(picture, SIZES["800"])
    return large, _resized(picture, SIZES["320"]), width, height


def set_image(session: Session, product: Product, raw: bytes, *, actor: str,
              source_ip: str | None = None) -> ProductImage:
    """The product's picture is now this upload (the one before, if any, replaced). Audited."""
    large, thumb, width, height = prepare(raw)
    name = hashlib.sha256(large).hexdigest()[:32]
    old = session.get(ProductImage, product.id)
    if old is not None:
        session.delete(old)
        session.flush()
    image = ProductImage(product_id=product.id, name=name, large=large, thumb=thumb, width=width, height=height)
    session.add(image)
    session.flush()
    record(session, "product.image", actor=actor, target=f"product:{product.id}", source_ip=source_ip,
           details={"name": product.name, "image": name, "bytes": len(raw), "width": width, "height": height,
                    "replaced": old.name if old is not None else None})
    return image


def remove_image(session: Session, product: Product, *, actor: str, source_ip: str | None = None) -> bool:
    """The product shows no picture; False when it had none. Audited."""
    old = session.get(ProductImage, product.id)
    if old is None:
        return False
    session.delete(old)
    session.flush()
    record(session, "product.image_remove", actor=actor, target=f"product:{product.id}", source_ip=source_ip,
           details={"name": product.name, "image": old.name})
    return True


def names_for(session: Session, product_ids: Iterable[int]) -> dict[int, str]:
    """{product id: its picture's name} for those of these products that have one."""
    ids = list(product_ids)
    if not ids:
        return {}
    t = ProductImage.__table__
    return dict(session.execute(sa.select(t.c.product_id, t.c.name).where(t.c.product_id.in_(ids))).all())


def served(session: Session, cache_dir: Path | None, name: str, size: str) -> Path | bytes | None:
    """The picture `name` at `size` ("800" or "320"): its file in this server's copy (written
    from the database the first time), or its bytes when there is no copy on disk; None when
    there is no such picture."""
    if not NAME_RE.fullmatch(name) or size not in SIZES:
        return None
    path = cache_dir / f"{name}-{size}.webp" if cache_dir is not None else None
    t = ProductImage.__table__
    if path is not None and path.is_file():
        # Only while some product still has it: a removed or replaced picture is not served.
        in_use = session.execute(sa.select(sa.literal(1)).where(t.c.name == name).limit(1)).first()
        return path if in_use is not None else None
    column = t.c.large if size == "800" else t.c.thumb
    body = session.scalar(sa.select(column).where(t.c.name == name).limit(1))
    if body is None:
        return None
    if path is None:
        return bytes(body)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, partial = tempfile.mkstemp(dir=path.parent, suffix=".part")   # one per request: no torn copy
        with os.fdopen(fd, "wb") as fh:
            fh.write(body)
        os.replace(partial, path)   # whole or not at all, whoever writes it first
    except OSError:
        return bytes(body)   # (a read-only or full disk: served from the database)
    return path
