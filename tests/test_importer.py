import codecs
import io

import pytest

from kamengd.inventory.importer import ImportFileError, check_key, iter_lines

KEYS = ["卡密-一二三", "ÄBC-123", "plain-key"]


def lines_of(data: bytes, encoding=None):
    used, it = iter_lines(io.BytesIO(data), encoding)
    return used, [line for _, line in it]


@pytest.mark.parametrize("data, expected_encoding", [
    ("\n".join(KEYS).encode("utf-8"), "utf-8"),
    (codecs.BOM_UTF8 + "\r\n".join(KEYS).encode("utf-8"), "utf-8-sig"),
    ("\ufeff" .encode("utf-16-le") + "\r\n".join(KEYS).encode("utf-16-le"), "utf-16"),
    ("\ufeff".encode("utf-16-be") + "\n".join(KEYS).encode("utf-16-be"), "utf-16"),
    ("\r\n".join(KEYS).replace("Ä", "A").encode("gb18030"), "gb18030"),
    ("\r".join(KEYS).encode("utf-8"), "utf-8"),
])
def test_encodings_and_newlines(data, expected_encoding):
    used, lines = lines_of(data)
    assert used == expected_encoding
    expected = [k.replace("Ä", "A") for k in KEYS] if used == "gb18030" else KEYS
    assert lines == expected


def test_forced_encoding():
    data = "\n".join(KEYS).encode("utf-16-le")
    assert lines_of(data, "utf-16-le")[1] == KEYS
    with pytest.raises(ImportFileError, match="unknown encoding 'klingon'"):
        iter_lines(io.BytesIO(b""), "klingon")


def test_undecodable_file_names_the_exact_line():
    good = b"".join(f"key-{i}\n".encode() for i in range(200_000))
    data = good + b"\x80\xff broken\nafter\n"
    with pytest.raises(ImportFileError, match=r"line 200001: the file does not decode as UTF-8 or GB18030"):
        lines_of(data)


def test_forced_encoding_error_names_line():
    with pytest.raises(ImportFileError, match="line 2: the file does not decode as utf-8"):
        lines_of(b"ok\n\xff\xfe\xfa\n", "utf-8")


def test_check_key():
    check_key(1, "a\tb c", 10)
    with pytest.raises(ImportFileError, match="line 7: key is 11 characters, longer than the limit of 10"):
        check_key(7, "x" * 11, 10)
    with pytest.raises(ImportFileError, match="line 3: key contains control characters"):
        check_key(3, "a\x00b", 10)


def test_forced_encoding_drops_the_bom():
    data = "\ufeff甲\n乙\n".encode("utf-16-le")
    assert lines_of(data, "utf-16-le")[1] == ["甲", "乙"]
    assert lines_of(b"\xef\xbb\xbfA\n", "utf-8")[1] == ["A"]
