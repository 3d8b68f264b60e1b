import hmac
import os
import stat

import pytest

from kamengd.vault import (DecryptionError, Vault, VaultError, generate_key_file, load_vault,
                           parse_key_file, render_key_file)


@pytest.fixture
def v():
    return Vault({1: os.urandom(32)})


def test_round_trip_and_fresh_nonces(v):
    fp = v.fingerprint(7, "卡密-ÄÖ".encode())
    n1, c1, ver = v.encrypt_card_key(7, "卡密-ÄÖ".encode(), fp)
    n2, c2, _ = v.encrypt_card_key(7, "卡密-ÄÖ".encode(), fp)
    assert len(n1) == 12 and n1 != n2 and c1 != c2 and ver == 1
    assert v.decrypt_card_key(7, fp, n1, c1, ver) == "卡密-ÄÖ".encode()


def test_sealing_many_keys_gives_what_one_at_a_time_gives(v):
    plaintexts = [b"K-1", "卡密-二".encode(), b"K-1"]
    sealed = list(v.seal_card_keys(9, plaintexts))
    assert [fp for _, fp, _ in sealed] == [v.fingerprint(9, p) for p in plaintexts]
    assert [v.decrypt_card_key(9, fp, nonce, ct, v.current_version) for nonce, fp, ct in sealed] == plaintexts
    assert len({nonce for nonce, _, _ in sealed}) == 3   # a fresh nonce for every key, repeats included


def test_ciphertext_is_bound_to_product_and_row(v):
    fp_a, fp_b = v.fingerprint(1, b"A"), v.fingerprint(1, b"B")
    nonce, ct, ver = v.encrypt_card_key(1, b"A", fp_a)
    with pytest.raises(DecryptionError):
        v.decrypt_card_key(1, fp_b, nonce, ct, ver)   # copied to another row
    with pytest.raises(DecryptionError):
        v.decrypt_card_key(2, fp_a, nonce, ct, ver)   # copied to another product
    tampered = bytes([ct[0] ^ 1]) + ct[1:]
    with pytest.raises(DecryptionError):
        v.decrypt_card_key(1, fp_a, nonce, tampered, ver)


def test_fingerprint_is_truncated_hmac_sha256_per_product(v):
    fp = v.fingerprint(3, b"KEY")
    assert len(fp) == 16
    assert fp == v.fingerprint(3, b"KEY")
    assert fp != v.fingerprint(4, b"KEY")
    # Same construction as the standard library's HMAC, with the derived key.
    from kamengd.vault import _derive
    key = _derive(v_key := os.urandom(32), b"card-key/fingerprint")
    assert Vault({1: v_key}).fingerprint(3, b"KEY") == hmac.digest(key, (3).to_bytes(8, "big") + b"KEY",
                                                                    "sha256")[:16]


def test_old_versions_still_decrypt_new_writes_use_newest():
    k1, k2 = os.urandom(32), os.urandom(32)
    old = Vault({1: k1})
    fp = old.fingerprint(1, b"x")
    nonce, ct, ver = old.encrypt_card_key(1, b"x", fp)
    both = Vault({1: k1, 2: k2})
    assert both.current_version == 2
    assert both.decrypt_card_key(1, fp, nonce, ct, ver) == b"x"
    assert both.encrypt_card_key(1, b"x", fp)[2] == 2
    with pytest.raises(DecryptionError, match="version 1 is not in the key file"):
        Vault({2: k2}).decrypt_card_key(1, fp, nonce, ct, ver)


def test_secrets_are_bound_to_their_context(v):
    nonce, ct, ver = v.encrypt_secret("channel:a", b"merchant-key")
    assert v.decrypt_secret("channel:a", nonce, ct, ver) == b"merchant-key"
    with pytest.raises(DecryptionError):
        v.decrypt_secret("channel:b", nonce, ct, ver)


def test_key_file(tmp_path):
    path = tmp_path / "data.key"
    generate_key_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(FileExistsError):
        generate_key_file(path)
    vault = load_vault(path)
    assert vault.versions == [1]
    keys = {1: os.urandom(32), 2: os.urandom(32)}
    assert parse_key_file(render_key_file(keys)) == keys


@pytest.mark.parametrize("text, message", [
    ("", "holds no key"),
    ("# only a comment\n", "holds no key"),
    ("1:not base64!!\n", "line 1 is not VERSION:BASE64KEY"),
    ("1:" + "QUJD" + "\n", "not 32 bytes"),
    ("garbage\n", "line 1 is not VERSION:BASE64KEY"),
])
def test_bad_key_files(text, message):
    with pytest.raises(VaultError, match=message):
        parse_key_file(text)


def test_missing_key_file(tmp_path):
    with pytest.raises(VaultError, match="not found"):
        load_vault(tmp_path / "nope.key")
