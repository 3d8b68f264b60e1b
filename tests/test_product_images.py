"""Product pictures (W5): an upload resized into a large picture and a thumbnail (WebP),
kept in the database and served from each server's copy on disk under a content-named
address cached for a year; anything that is not a picture refused whole with words;
replaced and removed (audited); shown on the cards and the product page. SQLite and MariaDB.
"""
from __future__ import annotations

import io
import re
import secrets

import pytest
import sqlalchemy as sa
from PIL import Image

from kamengd.errors import InvalidRequest


def _db():
    from kamengd.extensions import db
    return db


def picture(width=1600, height=1200, fmt="JPEG", colour=(200, 30, 30), **save) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(out, fmt, **save)
    return out.getvalue()


def test_an_upload_is_resized_into_two_webp_pictures(backend, session):
    from kamengd.catalog import images
    from kamengd.catalog.services import create_product
    product = create_product(session, name=f"pic {secrets.token_hex(3)}", price_cents=100, actor="t")
    made = images.set_image(session, product, picture(), actor="t")
    assert (made.width, made.height) == (800, 600)            # within 800 × 800, the shape kept
    with Image.open(io.BytesIO(made.thumb)) as thumb:
        assert (thumb.format, thumb.size) == ("WEBP", (320, 240))
    assert re.fullmatch(r"[0-9a-f]{32}", made.name)
    small = images.set_image(session, product, picture(100, 50, "PNG"), actor="t")   # never enlarged; replaced
    assert (small.width, small.height) == (100, 50) and small.name != made.name
    assert images.names_for(session, [product.id]) == {product.id: small.name}
    # A phone's photo turned by its EXIF orientation is stored the right way up.
    exif = Image.Exif()
    exif[0x0112] = 6   # rotate 90° clockwise to view
    out = io.BytesIO()
    Image.new("RGB", (400, 200), (0, 0, 255)).save(out, "JPEG", exif=exif)
    turned = images.set_image(session, product, out.getvalue(), actor="t")
    assert (turned.width, turned.height) == (200, 400)
    assert images.remove_image(session, product, actor="t") is True
    assert images.remove_image(session, product, actor="t") is False
    assert images.names_for(session, [product.id]) == {}


@pytest.mark.parametrize("raw, words", [
    (b"", "choose a picture file"),
    (b"GIF89a not really", "not a JPEG, PNG, WebP or GIF picture"),
    (b"%PDF-1.4\n" + b"x" * 100, "not a JPEG, PNG, WebP or GIF picture"),
    (picture(fmt="BMP"), "not a JPEG, PNG, WebP or GIF picture"),
    (picture(fmt="JPEG")[:300], "not a JPEG, PNG, WebP or GIF picture"),     # cut short
    (b"\xff" * (8 * 1024 * 1024 + 1), "at most 8 MiB"),
])
def test_what_is_not_a_picture_is_refused_and_nothing_is_stored(backend, session, raw, words):
    from kamengd.catalog import images
    from kamengd.catalog.services import create_product
    product = create_product(session, name=f"bad pic {secrets.token_hex(3)}", price_cents=100, actor="t")
    with pytest.raises(InvalidRequest, match=words):
        images.set_image(session, product, raw, actor="t")
    assert images.names_for(session, [product.id]) == {}


def test_a_decompression_bomb_is_refused_before_it_is_decoded(backend, session):
    from kamengd.catalog import images
    from kamengd.catalog.services import create_product
    product = create_product(session, name=f"bomb {secrets.token_hex(3)}", price_cents=100, actor="t")
    bomb = picture(8000, 6000, "PNG", colour=(0, 0, 0))   # 48 million pixels, a small file
    assert len(bomb) < 1024 * 1024
    with pytest.raises(InvalidRequest, match="at most 40 million pixels"):
        images.set_image(session, product, bomb, actor="t")


@pytest.fixture
def staff_client(app, client):
    from panel_support import login, make_staff
    staff = make_staff(app, "operator")
    client.set_cookie("lang", "en")
    assert login(client, staff).status_code == 302
    return client


def test_the_panel_uploads_the_shop_shows_and_serves_it_cached(app, staff_client, tmp_path):
    from kamengd.audit.models import AuditEntry
    from kamengd.catalog.services import create_product
    from panel_support import csrf_of
    client = staff_client
    db = _db()
    tag = secrets.token_hex(3)
    with app.app_context():
        product_id = create_product(db.session, name=f"图 {tag}", price_cents=100, actor="t").id
        db.session.commit()
        db.session.remove()
    edit = f"/admin/products/{product_id}"
    token = csrf_of(client.get(edit).get_data(as_text=True))
    sent = client.post(f"{edit}/picture", data={"csrf_token": token, "picture": (io.BytesIO(picture()), "a.jpg")},
                       content_type="multipart/form-data")
    assert sent.status_code == 303
    page = client.get(edit).get_data(as_text=True)
    assert "is saved" in page
    name = re.search(r'/media/([0-9a-f]{32})-320\.webp', page).group(1)
    # The storefront: the card's thumbnail, the product page's picture.
    html = client.get("/", query_string={"q": tag, "all": 1}).get_data(as_text=True)
    assert f'src="/media/{name}-320.webp"' in html and 'loading="lazy"' in html
    assert f'src="/media/{name}-800.webp"' in client.get(f"/product/{product_id}").get_data(as_text=True)
    for size, side in (("800", 800), ("320", 320)):
        served = client.get(f"/media/{name}-{size}.webp")
        assert served.status_code == 200 and served.mimetype == "image/webp"
        assert "immutable" in served.headers["Cache-Control"] and "max-age=31536000" in served.headers["Cache-Control"]
        with Image.open(io.BytesIO(served.get_data())) as shown:
            assert max(shown.size) == side
    for bad in (f"{name[:-1]}g-320", f"{name}-640", "0" * 32 + "-800", "../../etc/passwd-800"):
        assert client.get(f"/media/{bad}.webp").status_code == 404
    # Not a picture: said, the old one kept.
    token = csrf_of(client.get(edit).get_data(as_text=True))
    client.post(f"{edit}/picture", data={"csrf_token": token, "picture": (io.BytesIO(b"hello"), "a.txt")},
                content_type="multipart/form-data")
    page = client.get(edit).get_data(as_text=True)
    assert "not a JPEG, PNG, WebP or GIF picture" in page and f"/media/{name}-320.webp" in page
    # Without the CSRF token: refused (the panel says so on the page it goes back to), nothing stored.
    assert client.post(f"{edit}/picture", data={"picture": (io.BytesIO(picture(colour=(1, 2, 3))), "a.jpg")},
                       content_type="multipart/form-data").status_code == 303
    assert f"/media/{name}-320.webp" in client.get(edit).get_data(as_text=True)
    # Removed.
    token = csrf_of(client.get(edit).get_data(as_text=True))
    assert client.post(f"{edit}/picture/remove", data={"csrf_token": token}).status_code == 303
    assert "/media/" not in client.get(f"/product/{product_id}").get_data(as_text=True)
    with app.app_context():
        actions = db.session.scalars(sa.select(AuditEntry.action).where(AuditEntry.target == f"product:{product_id}")
                                     .order_by(AuditEntry.id)).all()
        db.session.remove()
    assert actions == ["product.create", "product.image", "product.image_remove"]


def test_a_server_without_its_copy_serves_from_the_database(app, client):
    """A second server (or a fresh disk): the first request writes the copy, the next reads it."""
    from kamengd.catalog import images
    from kamengd.catalog.services import create_product
    from kamengd.context import get_config
    db = _db()
    with app.app_context():
        product = create_product(db.session, name=f"copy {secrets.token_hex(3)}", price_cents=100, actor="t")
        colour = tuple(secrets.randbelow(256) for _ in range(3))   # a picture no other test served
        name = images.set_image(db.session, product, picture(colour=colour), actor="t").name
        product_id = product.id
        db.session.commit()
        db.session.remove()
        copy = get_config().media_dir() / f"{name}-320.webp"
    assert not copy.exists()
    first = client.get(f"/media/{name}-320.webp")
    assert first.status_code == 200 and copy.is_file() and copy.read_bytes() == first.get_data()
    assert client.get(f"/media/{name}-320.webp").get_data() == first.get_data()
    with app.app_context():
        from kamengd.catalog.models import Product
        images.remove_image(db.session, db.session.get(Product, product_id), actor="t")
        db.session.commit()
        db.session.remove()
    assert copy.is_file() and client.get(f"/media/{name}-320.webp").status_code == 404   # removed: gone
