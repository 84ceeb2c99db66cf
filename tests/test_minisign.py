"""airgap.shared.minisign: round trips, tamper resistance, and interop with the real minisign CLI.

The interop tests drive the ``minisign`` binary (skipped when it is not installed): it must accept
what we write, and we must accept what it writes, keys and signatures alike. Passphrases reach
minisign on stdin, never in argv.
"""

from __future__ import annotations

import base64
import re
import secrets
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from airgap.shared import minisign
from airgap.shared.errors import KeyFileError, SignatureError, UntrustedSignerError, UsageError
from airgap.shared.minisign import PublicKey, SecretKey, Signature

MINISIGN = shutil.which("minisign")
needs_minisign = pytest.mark.skipif(MINISIGN is None, reason="the minisign CLI is not installed")

# Small scrypt limits, one per branch of libsodium's pickparams (p = 1, and p = 2).
FAST_LIMITS = [
    pytest.param({"opslimit": 32768, "memlimit": 16777216}, id="p1"),
    pytest.param({"opslimit": 1048576, "memlimit": 16777216}, id="p2"),
]
FAST = {"opslimit": 32768, "memlimit": 16777216}
PASSPHRASE = b"correct horse battery staple"
REJECTED = (SignatureError, UntrustedSignerError)
comments = st.text(
    alphabet=st.characters(blacklist_characters="\r\n\0", blacklist_categories=("Cs",)),
    max_size=40,
)


def run_minisign(
    *args: str | Path, cwd: Path, stdin: bytes = b""
) -> subprocess.CompletedProcess[str]:
    assert MINISIGN is not None
    return subprocess.run(
        [MINISIGN, *map(str, args)],
        cwd=cwd,
        input=stdin.decode(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def key() -> SecretKey:
    return SecretKey.generate()


@pytest.fixture
def short_id_key() -> SecretKey:
    """A key whose id, read as minisign does, has a leading zero hex digit."""
    return SecretKey(key_id=secrets.token_bytes(7) + b"\x05", seed=secrets.token_bytes(32))


def key_file_fields(pub_text: str) -> tuple[int, str]:
    """The key id in a .pub comment, as a number, and the key line.

    minisign 0.11 prints key ids with ``%lX`` (no leading zeros); later versions and we print
    ``%016X``. The comment is untrusted and nobody parses it, so compare the number.
    """
    comment, line = pub_text.split("\n")[:2]
    assert comment.startswith("untrusted comment: minisign public key ")
    return int(comment.rsplit(" ", 1)[1], 16), line


@pytest.fixture
def signed(key: SecretKey) -> tuple[bytes, str]:
    message = b"bundle manifest\n" * 10
    return message, minisign.sign(key, message, trusted_comment="bundle 7\tairgap")


def _reencode_line(text: str, index: int, change: int) -> str:
    """Replace the last base64 symbol of line ``index`` by one whose data bits are the same."""
    lines = text.split("\n")
    body = lines[index].rstrip("=")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    last = alphabet[alphabet.index(body[-1]) ^ change]
    lines[index] = body[:-1] + last + lines[index][len(body) :]
    return "\n".join(lines)


# -- round trips and tampering ------------------------------------------------------------------


def test_round_trip_returns_parsed_signature(key: SecretKey, signed: tuple[bytes, str]) -> None:
    message, text = signed
    result = minisign.verify([key.public_key], message, text)
    assert result.trusted_comment == "bundle 7\tairgap"
    assert result.key_id == key.key_id
    assert result.algorithm == b"ED"
    assert result.encode() == text
    assert Signature.parse(text.encode()) == result


@settings(max_examples=40, deadline=None)
@given(message=st.binary(max_size=300), trusted=comments, untrusted=comments)
def test_round_trip_any_message_and_comments(message: bytes, trusted: str, untrusted: str) -> None:
    key = SecretKey.generate()
    text = minisign.sign(key, message, trusted_comment=trusted, untrusted_comment=untrusted)
    result = minisign.verify([key.public_key], message, text)
    assert (result.trusted_comment, result.untrusted_comment) == (trusted, untrusted)


def test_prehashed_and_whole_message_agree(key: SecretKey) -> None:
    chunks = [b"a" * 70000, b"", b"tail"]
    digest = minisign.prehash(chunks)
    by_digest = minisign.sign_prehashed(key, digest, trusted_comment="t")
    minisign.verify([key.public_key], b"".join(chunks), by_digest)
    whole = minisign.sign(key, b"".join(chunks), trusted_comment="t")
    minisign.verify_prehashed([key.public_key], digest, whole)
    with pytest.raises(SignatureError):
        minisign.verify_prehashed([key.public_key], minisign.prehash([b"other"]), whole)


@pytest.mark.parametrize("change", [b"x", b"\n", b"\0"])
def test_modified_message_is_refused(
    key: SecretKey, signed: tuple[bytes, str], change: bytes
) -> None:
    message, text = signed
    for modified in (message + change, change + message, message[:-1], message[:5] + change):
        with pytest.raises(SignatureError, match="message"):
            minisign.verify([key.public_key], modified, text)


def test_modified_trusted_comment_is_refused(key: SecretKey, signed: tuple[bytes, str]) -> None:
    message, text = signed
    tampered = text.replace("trusted comment: bundle 7", "trusted comment: bundle 8")
    assert tampered != text
    with pytest.raises(SignatureError, match="trusted comment"):
        minisign.verify([key.public_key], message, tampered)


def test_the_trusted_comment_verifies_without_the_message(
    key: SecretKey, signed: tuple[bytes, str]
) -> None:
    """What a receiver checks before it reads a manifest of any size: the global signature."""
    _, text = signed
    assert minisign.signed_comment([key.public_key], text).trusted_comment == "bundle 7\tairgap"
    tampered = text.replace("trusted comment: bundle 7", "trusted comment: bundle 8")
    with pytest.raises(SignatureError, match="trusted comment"):
        minisign.signed_comment([key.public_key], tampered)
    with pytest.raises(UntrustedSignerError):
        minisign.signed_comment([SecretKey.generate().public_key], text)


def test_a_failed_check_keeps_nothing_of_the_message(
    key: SecretKey, signed: tuple[bytes, str]
) -> None:
    """Chained to the crypto library's error, the refusal's frames would hold the message (a
    manifest of up to 32 MiB) for as long as a fetch keeps the error."""
    message, text = signed
    with pytest.raises(SignatureError) as refused:
        minisign.verify([key.public_key], message + b"x", text)
    assert refused.value.__cause__ is None and refused.value.__context__ is None


def test_untrusted_comment_is_not_authenticated(key: SecretKey, signed: tuple[bytes, str]) -> None:
    message, text = signed
    tampered = text.replace(minisign.DEFAULT_UNTRUSTED_COMMENT, "anything at all", 1)
    assert minisign.verify([key.public_key], message, tampered).untrusted_comment == (
        "anything at all"
    )


def test_wrong_key_is_untrusted(key: SecretKey, signed: tuple[bytes, str]) -> None:
    message, text = signed
    other = SecretKey.generate().public_key
    with pytest.raises(UntrustedSignerError, match=key.public_key.key_id_hex) as refused:
        minisign.verify([other], message, text)
    assert f"keys trusted here: {other.key_id_hex}" in (refused.value.hint or "")
    with pytest.raises(UntrustedSignerError) as refused:
        minisign.verify([], message, text)
    assert "keys trusted here: none" in (refused.value.hint or "")


def test_other_key_with_the_same_id_is_refused(key: SecretKey, signed: tuple[bytes, str]) -> None:
    message, text = signed
    impostor = PublicKey(key_id=key.key_id, key=SecretKey.generate().public_key.key)
    with pytest.raises(SignatureError):
        minisign.verify([impostor], message, text)
    # The real key later in the list still verifies it.
    minisign.verify([impostor, key.public_key], message, text)


def test_every_single_byte_flip_outside_untrusted_comment_is_refused(
    key: SecretKey, signed: tuple[bytes, str]
) -> None:
    message, text = signed
    data = text.encode()
    # The untrusted comment text is unauthenticated by design, so flips there may verify.
    free = range(len(b"untrusted comment: "), data.index(b"\n"))
    for position in range(len(data)):
        if position in free:
            continue
        for bit in range(8):
            flipped = bytearray(data)
            flipped[position] ^= 1 << bit
            # A flip in the key id names another key (untrusted); any other flip is malformed
            # or fails a signature.
            with pytest.raises(REJECTED):
                minisign.verify([key.public_key], message, bytes(flipped))


def test_truncations_are_refused(key: SecretKey, signed: tuple[bytes, str]) -> None:
    message, text = signed
    data = text.encode()
    # minisign writes a final newline and reads the file fine without it; so do we.
    minisign.verify([key.public_key], message, data[:-1])
    for length in range(len(data) - 1):
        with pytest.raises(SignatureError):
            minisign.verify([key.public_key], message, data[:length])


@pytest.mark.parametrize("suffix", [b"\n", b"x", b" ", b"=", b"\r", b"\0", b"\n\n", b"A\n"])
def test_extensions_are_refused(key: SecretKey, signed: tuple[bytes, str], suffix: bytes) -> None:
    message, text = signed
    data = text.encode()
    for extended in (data + suffix, data[:-1] + suffix):
        if extended == data:
            continue
        with pytest.raises(SignatureError):
            minisign.verify([key.public_key], message, extended)


def test_crlf_line_ends_are_refused(key: SecretKey, signed: tuple[bytes, str]) -> None:
    message, text = signed
    with pytest.raises(SignatureError):
        minisign.verify([key.public_key], message, text.replace("\n", "\r\n"))


@pytest.mark.parametrize(("line", "change"), [(1, 1), (3, 1), (3, 8)])
def test_non_canonical_base64_is_refused(
    key: SecretKey, signed: tuple[bytes, str], line: int, change: int
) -> None:
    message, text = signed
    tampered = _reencode_line(text, line, change)
    assert tampered != text
    # Same bytes once decoded, so only the canonical-encoding rule can refuse it.
    assert base64.b64decode(tampered.split("\n")[line]) == base64.b64decode(text.split("\n")[line])
    with pytest.raises(SignatureError, match="canonical"):
        minisign.verify([key.public_key], message, tampered)


def test_unknown_algorithm_is_refused(key: SecretKey, signed: tuple[bytes, str]) -> None:
    message, text = signed
    lines = text.split("\n")
    raw = base64.b64decode(lines[1])
    lines[1] = base64.b64encode(b"EE" + raw[2:]).decode()
    with pytest.raises(SignatureError, match="algorithm"):
        minisign.verify([key.public_key], message, "\n".join(lines))


def test_legacy_signature_verifies_with_whole_message_only(key: SecretKey) -> None:
    message = b"legacy"
    private = Ed25519PrivateKey.from_private_bytes(key.seed)
    raw_sig = private.sign(message)
    text = Signature(
        key_id=key.key_id,
        algorithm=b"Ed",
        signature=raw_sig,
        trusted_comment="old",
        global_signature=private.sign(raw_sig + b"old"),
        untrusted_comment="u",
    ).encode()
    assert minisign.verify([key.public_key], message, text).algorithm == b"Ed"
    with pytest.raises(SignatureError, match="legacy"):
        minisign.verify_prehashed([key.public_key], minisign.prehash([message]), text)


@pytest.mark.parametrize("bad", ["two\nlines", "cr\r", "nul\0"])
def test_sign_refuses_multiline_comments(key: SecretKey, bad: str) -> None:
    with pytest.raises(UsageError):
        minisign.sign(key, b"m", trusted_comment=bad)
    with pytest.raises(UsageError):
        minisign.sign(key, b"m", trusted_comment="ok", untrusted_comment=bad)


def test_sign_refuses_comments_minisign_cannot_read(key: SecretKey) -> None:
    longest = "é" * (minisign.MAX_TRUSTED_COMMENT // 2)
    minisign.verify([key.public_key], b"m", minisign.sign(key, b"m", trusted_comment=longest))
    with pytest.raises(UsageError):
        minisign.sign(key, b"m", trusted_comment="t" * (minisign.MAX_TRUSTED_COMMENT + 1))
    with pytest.raises(UsageError):
        minisign.sign(
            key,
            b"m",
            trusted_comment="t",
            untrusted_comment="u" * (minisign.MAX_UNTRUSTED_COMMENT + 1),
        )


# -- key files --------------------------------------------------------------------------------


def test_public_key_round_trip_and_bare_line(key: SecretKey) -> None:
    public = key.public_key
    text = public.encode()
    comment, line, end = text.split("\n")
    assert (comment.split()[-1], end) == (public.key_id_hex, "")
    assert re.fullmatch("[0-9A-F]{16}", public.key_id_hex)
    assert PublicKey.parse(text) == public
    assert PublicKey.parse(line) == public
    assert PublicKey.parse(line + "\n") == public


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t.replace("\n", "\r\n"),
        lambda t: t + "\n",
        lambda t: t + "extra\n",
        lambda t: "comment: x\n" + t.split("\n")[1],
        lambda t: t.replace("RW", "RX", 1),
        lambda t: t.split("\n")[0] + "\n" + t.split("\n")[1][:-1] + "\n",
        lambda t: "",
    ],
)
def test_public_key_parse_is_strict(key: SecretKey, mangle: object) -> None:
    assert callable(mangle)
    with pytest.raises(KeyFileError):
        PublicKey.parse(mangle(key.public_key.encode()))


def test_secret_key_refuses_non_canonical_base64(key: SecretKey) -> None:
    # 158 bytes leave two spare bits before the "=" (a public key, 42 bytes, has none).
    text = key.encode()
    tampered = _reencode_line(text, 1, 1)
    assert tampered != text
    with pytest.raises(KeyFileError, match="canonical"):
        SecretKey.parse(tampered)


def test_unencrypted_secret_key_round_trip(key: SecretKey) -> None:
    def never() -> bytes:
        raise AssertionError("no passphrase needed for an unencrypted key")

    text = key.encode()
    assert SecretKey.parse(text, passphrase=never) == key
    assert key.seed.hex() not in repr(key)
    assert repr(key.seed) not in repr(key)


def test_encrypted_secret_key_round_trip(key: SecretKey) -> None:
    text = key.encode(passphrase=PASSPHRASE, **FAST)
    assert key.seed not in base64.b64decode(text.split("\n")[1])
    assert SecretKey.parse(text, passphrase=lambda: PASSPHRASE) == key
    with pytest.raises(KeyFileError, match="passphrase"):
        SecretKey.parse(text, passphrase=lambda: PASSPHRASE + b"!")
    with pytest.raises(KeyFileError, match="passphrase"):
        SecretKey.parse(text)


def test_encrypted_secret_key_flips_are_refused(key: SecretKey) -> None:
    text = key.encode(passphrase=PASSPHRASE, **FAST)
    comment, line, _ = text.split("\n")
    raw = base64.b64decode(line)
    # Algorithm ids and the whole encrypted key number; scrypt limits that round to the same
    # parameters are as acceptable here as they are to libsodium.
    for position in [*range(6), *range(54, len(raw))]:
        flipped = bytearray(raw)
        flipped[position] ^= 0x01
        tampered = f"{comment}\n{base64.b64encode(bytes(flipped)).decode()}\n"
        with pytest.raises(KeyFileError):
            SecretKey.parse(tampered, passphrase=lambda: PASSPHRASE)


def test_unencrypted_secret_key_refuses_mismatched_halves(key: SecretKey) -> None:
    comment, line, _ = key.encode().split("\n")
    raw = bytearray(base64.b64decode(line))
    raw[54 + 8 + 32] ^= 0x01  # first byte of the stored public key
    with pytest.raises(KeyFileError, match="public key"):
        SecretKey.parse(f"{comment}\n{base64.b64encode(bytes(raw)).decode()}\n")


@pytest.mark.parametrize("bad", [b"", b"a\nb", b"\r", b"\0", b"x" * 2000])
def test_encode_refuses_passphrases_minisign_cannot_read(key: SecretKey, bad: bytes) -> None:
    with pytest.raises(UsageError):
        key.encode(passphrase=bad, **FAST)


# -- interop with the minisign CLI -------------------------------------------------------------


@needs_minisign
def test_minisign_verifies_our_signature(tmp_path: Path, key: SecretKey) -> None:
    (tmp_path / "our.pub").write_text(key.public_key.encode())
    (tmp_path / "file").write_bytes(b"payload\x00\xff" * 1000)
    text = minisign.sign(key, b"payload\x00\xff" * 1000, trusted_comment="bundle 42\tairgap")
    (tmp_path / "file.sig").write_text(text)
    ok = run_minisign("-V", "-m", "file", "-x", "file.sig", "-p", "our.pub", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "bundle 42\tairgap" in ok.stdout
    bare = key.public_key.encode().split("\n")[1]
    by_string = run_minisign("-V", "-m", "file", "-x", "file.sig", "-P", bare, cwd=tmp_path)
    assert by_string.returncode == 0, by_string.stderr
    (tmp_path / "file").write_bytes(b"payload\x00\xfe" * 1000)
    bad = run_minisign("-V", "-m", "file", "-x", "file.sig", "-p", "our.pub", cwd=tmp_path)
    assert bad.returncode != 0


@needs_minisign
def test_we_verify_minisign_signatures(tmp_path: Path) -> None:
    made = run_minisign("-G", "-W", "-p", "k.pub", "-s", "k.key", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    public = PublicKey.parse((tmp_path / "k.pub").read_text())
    message = b"signed by the real minisign\n"
    (tmp_path / "file").write_bytes(message)
    for legacy, algorithm in (([], b"ED"), (["-l"], b"Ed")):
        signing = run_minisign(
            "-S", *legacy, "-s", "k.key", "-m", "file", "-t", "tc: é", cwd=tmp_path
        )
        assert signing.returncode == 0, signing.stderr
        text = (tmp_path / "file.minisig").read_bytes()
        result = minisign.verify([public], message, text)
        assert (result.algorithm, result.trusted_comment) == (algorithm, "tc: é")
        with pytest.raises(SignatureError):
            minisign.verify([public], message + b"!", text)


@needs_minisign
def test_minisign_key_files_round_trip(tmp_path: Path) -> None:
    made = run_minisign("-G", "-W", "-p", "k.pub", "-s", "k.key", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    pub_text, key_text = (tmp_path / "k.pub").read_text(), (tmp_path / "k.key").read_text()
    secret = SecretKey.parse(key_text)
    assert PublicKey.parse(pub_text) == secret.public_key
    assert key_file_fields(secret.public_key.encode()) == key_file_fields(pub_text)
    assert secret.encode() == key_text
    assert secret.public_key.encode().split("\n")[1] in made.stdout


@needs_minisign
def test_minisign_prints_the_key_ids_we_compute(tmp_path: Path, short_id_key: SecretKey) -> None:
    made = run_minisign("-G", "-W", "-p", "theirs.pub", "-s", "theirs.key", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    theirs = PublicKey.parse((tmp_path / "theirs.pub").read_text())
    ours = short_id_key.public_key
    assert ours.key_id_hex.startswith("05")
    (tmp_path / "file").write_bytes(b"x")
    (tmp_path / "file.minisig").write_text(minisign.sign(short_id_key, b"x", trusted_comment="t"))
    # minisign names both key ids when the signature's is not the public key's.
    mismatch = run_minisign("-V", "-m", "file", "-p", "theirs.pub", cwd=tmp_path)
    assert mismatch.returncode != 0
    printed = re.findall(r" is ([0-9A-F]+)\n", mismatch.stderr)
    assert [int(x, 16) for x in printed] == [int(ours.key_id_hex, 16), int(theirs.key_id_hex, 16)]


@needs_minisign
def test_minisign_signs_with_our_unencrypted_key(tmp_path: Path, short_id_key: SecretKey) -> None:
    key = short_id_key
    (tmp_path / "our.key").write_text(key.encode())
    (tmp_path / "our.pub").write_text(key.public_key.encode())
    (tmp_path / "file").write_bytes(b"content")
    # With -p, minisign refuses a secret key whose signatures the public key would not verify.
    signing = run_minisign("-S", "-s", "our.key", "-p", "our.pub", "-m", "file", cwd=tmp_path)
    assert signing.returncode == 0, signing.stderr
    check = run_minisign("-V", "-m", "file", "-p", "our.pub", cwd=tmp_path)
    assert check.returncode == 0, check.stderr
    minisign.verify([key.public_key], b"content", (tmp_path / "file.minisig").read_text())
    recreated = run_minisign("-R", "-s", "our.key", "-p", "re.pub", cwd=tmp_path)
    assert recreated.returncode == 0, recreated.stderr
    recreated_text = (tmp_path / "re.pub").read_text()
    assert key_file_fields(recreated_text) == key_file_fields(key.public_key.encode())
    assert PublicKey.parse(recreated_text) == key.public_key


@needs_minisign
@pytest.mark.parametrize("limits", FAST_LIMITS)
def test_minisign_signs_with_our_encrypted_key(
    tmp_path: Path, key: SecretKey, limits: dict[str, int]
) -> None:
    (tmp_path / "our.key").write_text(key.encode(passphrase=PASSPHRASE, **limits))
    (tmp_path / "file").write_bytes(b"content")
    args = ("-S", "-s", "our.key", "-m", "file")
    wrong = run_minisign(*args, cwd=tmp_path, stdin=b"not it\n")
    assert wrong.returncode != 0
    assert "Wrong password" in wrong.stderr
    signing = run_minisign(*args, cwd=tmp_path, stdin=PASSPHRASE + b"\n")
    assert signing.returncode == 0, signing.stderr
    minisign.verify([key.public_key], b"content", (tmp_path / "file.minisig").read_text())


@needs_minisign
@pytest.mark.slow
def test_we_read_minisign_encrypted_key(tmp_path: Path) -> None:
    # minisign's own default scrypt limits: N = 2**20, 1 GiB, a few seconds each way.
    made = run_minisign("-G", "-p", "k.pub", "-s", "k.key", cwd=tmp_path, stdin=b"pw\npw\n")
    assert made.returncode == 0, made.stderr
    text = (tmp_path / "k.key").read_text()
    secret = SecretKey.parse(text, passphrase=lambda: b"pw")
    assert secret.public_key == PublicKey.parse((tmp_path / "k.pub").read_text())
    with pytest.raises(KeyFileError, match="passphrase"):
        SecretKey.parse(text, passphrase=lambda: b"pW")


@needs_minisign
def test_comment_limits_match_minisign(tmp_path: Path, key: SecretKey) -> None:
    (tmp_path / "our.pub").write_text(key.public_key.encode())
    (tmp_path / "file").write_bytes(b"m")
    longest = minisign.sign(
        key,
        b"m",
        trusted_comment="t" * minisign.MAX_TRUSTED_COMMENT,
        untrusted_comment="u" * minisign.MAX_UNTRUSTED_COMMENT,
    )
    parsed = Signature.parse(longest)
    private = Ed25519PrivateKey.from_private_bytes(key.seed)
    trusted_over = parsed.trusted_comment + "t"
    one_over = {
        "longest": longest,
        "trusted": Signature(
            key_id=parsed.key_id,
            algorithm=parsed.algorithm,
            signature=parsed.signature,
            trusted_comment=trusted_over,
            global_signature=private.sign(parsed.signature + trusted_over.encode()),
            untrusted_comment="u",
        ).encode(),
        "untrusted": longest.replace("u\n", "uu\n", 1),
    }
    for name, text in one_over.items():
        (tmp_path / "file.minisig").write_text(text)
        result = run_minisign("-V", "-m", "file", "-p", "our.pub", cwd=tmp_path)
        assert (result.returncode == 0) == (name == "longest"), (name, result.stderr)
        if name != "longest":
            with pytest.raises(SignatureError, match="longer"):
                Signature.parse(text)


_P = 2**255 - 19
_SMALL_ORDER_Y = (
    0,
    1,
    _P - 1,
    2707385501144840649318225287225658788936804267575313519463743609750303402022,
    55188659117513257062467267217118295137698188065244968500265048394206261417927,
)
_UNUSABLE = [
    *(y.to_bytes(32, "little") for y in _SMALL_ORDER_Y),
    *((y | 1 << 255).to_bytes(32, "little") for y in _SMALL_ORDER_Y),  # x of the other sign
    _P.to_bytes(32, "little"),  # 0 and 1 again, not canonical
    (_P + 1).to_bytes(32, "little"),
    ((1 << 255) - 1).to_bytes(32, "little"),
]


def _forged(tmp_path: Path, point: bytes) -> tuple[Path, Path, Path]:
    """A .pub of ``point`` and a .minisig with R = the identity, S = 0, over a message."""
    key_id = b"\x11" * 8
    (tmp_path / "weak.pub").write_text(
        "untrusted comment: weak\n" + base64.b64encode(b"Ed" + key_id + point).decode() + "\n"
    )
    identity = (1).to_bytes(32, "little") + bytes(32)
    trusted = "timestamp:0"
    signature = Signature(key_id, b"ED", identity, trusted, identity, "forged")
    (tmp_path / "m.txt").write_bytes(b"anything at all")
    (tmp_path / "m.txt.minisig").write_text(signature.encode())
    return tmp_path / "weak.pub", tmp_path / "m.txt", tmp_path / "m.txt.minisig"


@pytest.mark.parametrize("point", _UNUSABLE, ids=range(len(_UNUSABLE)))
def test_a_public_key_of_small_order_is_refused(point: bytes, tmp_path: Path) -> None:
    """Found in review: OpenSSL verifies against such a key, and a small-order key takes a
    forged signature over anything; libsodium (so minisign) refuses it, and so must we."""
    pub, message, _ = _forged(tmp_path, point)
    with pytest.raises(KeyFileError, match="not a usable Ed25519 key"):
        PublicKey.parse(pub.read_text())
    if MINISIGN is not None:  # the reference refuses it too
        checked = run_minisign("-Vm", message, "-p", pub, cwd=tmp_path)
        assert checked.returncode != 0, checked.stdout


def test_the_identity_key_would_have_taken_a_forged_signature(tmp_path: Path) -> None:
    """What the check stops: past it, the forgery verifies (so the test above means it)."""
    pub, message, signature = _forged(tmp_path, (1).to_bytes(32, "little"))
    raw = base64.b64decode(pub.read_text().splitlines()[1])
    unchecked = object.__new__(PublicKey)
    object.__setattr__(unchecked, "key_id", raw[2:10])
    object.__setattr__(unchecked, "key", raw[10:])
    minisign.verify([unchecked], message.read_bytes(), signature.read_text())
