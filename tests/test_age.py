"""age v1 stages and keys: round trips, tampering, key formats, and interop with the age CLI."""

from __future__ import annotations

import itertools
import os
import random
import re
import select
import shutil
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airgap.shared import age, bech32
from airgap.shared.age import (
    CHUNK_SIZE,
    AgeDecryptor,
    AgeEncryptor,
    Identity,
    ScryptIdentity,
    ScryptRecipient,
    X25519Identity,
    X25519Recipient,
)
from airgap.shared.age_header import MAX_HEADER_SIZE
from airgap.shared.errors import (
    AgeHeaderError,
    HeaderMacError,
    KeyFileError,
    NoIdentityMatchError,
    PayloadAuthError,
    UsageError,
    VerificationError,
)

SIZES = [0, 1, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 2 * CHUNK_SIZE, 2 * CHUNK_SIZE + 1]
HEADER_ERRORS = (AgeHeaderError, HeaderMacError, NoIdentityMatchError)
PASSPHRASE = b"correct horse battery staple"
IDENTITY = X25519Identity.generate()
needs_age = pytest.mark.skipif(shutil.which("age") is None, reason="the age CLI is not installed")


def payload(size: int, seed: int = 0) -> bytes:
    return random.Random(seed * 1_000_003 + size).randbytes(size)


LONG_DATA = payload(2 * CHUNK_SIZE + 100)
LONG_CIPHERTEXT = age.encrypt(LONG_DATA, [IDENTITY.recipient])


def header_length(ciphertext: bytes) -> int:
    footer = ciphertext.index(b"\n--- ")
    return ciphertext.index(b"\n", footer + 1) + 1


def chunk_count(size: int) -> int:
    return max(1, (size + CHUNK_SIZE - 1) // CHUNK_SIZE)


def decrypt_released(
    ciphertext: bytes, identities: list[Identity], piece: int = 4096
) -> tuple[bytes, VerificationError | None]:
    """All plaintext the decryptor releases, and the error that stopped it (if any)."""
    decryptor = AgeDecryptor(identities)
    released: list[bytes] = []
    try:
        for start in range(0, len(ciphertext), piece):
            released.append(decryptor.update(ciphertext[start : start + piece]))
        released.append(decryptor.finish())
    except VerificationError as exc:
        return b"".join(released), exc
    return b"".join(released), None


# Round trips


@pytest.mark.parametrize("size", SIZES)
def test_x25519_round_trip(size: int) -> None:
    data = payload(size)
    ciphertext = age.encrypt(data, [IDENTITY.recipient])
    overhead = header_length(ciphertext) + 16 + 16 * chunk_count(size)
    assert len(ciphertext) == overhead + size
    assert age.decrypt(ciphertext, [IDENTITY]) == data


@pytest.mark.parametrize("size", SIZES)
def test_scrypt_round_trip(size: int) -> None:
    data = payload(size)
    ciphertext = age.encrypt(data, [ScryptRecipient(PASSPHRASE, work_factor=10)])
    assert age.decrypt(ciphertext, [ScryptIdentity(PASSPHRASE)]) == data


def test_scrypt_default_work_factor_round_trip() -> None:
    ciphertext = age.encrypt(b"default", [ScryptRecipient(PASSPHRASE)])
    assert re.search(rb"\n-> scrypt \S{22} 18\n", ciphertext[: header_length(ciphertext)])
    assert age.decrypt(ciphertext, [ScryptIdentity(PASSPHRASE)]) == b"default"


def test_several_recipients() -> None:
    identities = [X25519Identity.generate() for _ in range(3)]
    data = payload(CHUNK_SIZE + 7)
    ciphertext = age.encrypt(data, [identity.recipient for identity in identities])
    for identity in identities:
        assert age.decrypt(ciphertext, [identity]) == data
    with pytest.raises(NoIdentityMatchError):
        age.decrypt(ciphertext, [X25519Identity.generate()])
    decryptor = AgeDecryptor([X25519Identity.generate(), identities[2]])
    released = decryptor.update(ciphertext) + decryptor.finish()
    assert released == data
    assert decryptor.recipient_types == ("X25519", "X25519", "X25519")


def test_wrong_passphrase_is_no_match() -> None:
    ciphertext = age.encrypt(b"x", [ScryptRecipient(PASSPHRASE, work_factor=10)])
    with pytest.raises(NoIdentityMatchError, match="the passphrase does not open"):
        age.decrypt(ciphertext, [ScryptIdentity(b"wrong"), IDENTITY])
    with pytest.raises(NoIdentityMatchError, match="no identity opens"):  # none was asked
        age.decrypt(ciphertext, [IDENTITY])


def test_scrypt_work_factor_above_maximum_is_refused() -> None:
    ciphertext = age.encrypt(b"x", [ScryptRecipient(PASSPHRASE, work_factor=12)])
    with pytest.raises(AgeHeaderError, match="work factor"):
        age.decrypt(ciphertext, [ScryptIdentity(PASSPHRASE, max_work_factor=11)])
    assert age.decrypt(ciphertext, [ScryptIdentity(PASSPHRASE, max_work_factor=12)]) == b"x"


def test_recipient_rules() -> None:
    scrypt = ScryptRecipient(PASSPHRASE, work_factor=10)
    with pytest.raises(UsageError):
        AgeEncryptor([scrypt, IDENTITY.recipient])
    with pytest.raises(UsageError):
        AgeEncryptor([])
    with pytest.raises(UsageError):
        AgeDecryptor([])
    with pytest.raises(UsageError):
        ScryptRecipient(b"")


@settings(max_examples=60, deadline=None)
@given(
    size=st.integers(min_value=0, max_value=3 * CHUNK_SIZE + 100),
    seed=st.integers(min_value=0, max_value=2**32),
    cuts=st.lists(st.floats(min_value=0, max_value=1), max_size=8),
)
def test_round_trip_with_random_splits(size: int, seed: int, cuts: list[float]) -> None:
    data = payload(size, seed)
    encryptor = AgeEncryptor([IDENTITY.recipient])
    pieces = split(data, cuts)
    ciphertext = b"".join(encryptor.update(piece) for piece in pieces) + encryptor.finish()
    decryptor = AgeDecryptor([IDENTITY])
    parts = split(ciphertext, list(reversed(cuts)))
    assert b"".join(decryptor.update(part) for part in parts) + decryptor.finish() == data


def split(data: bytes, cuts: list[float]) -> list[bytes]:
    points = sorted({0, len(data), *(int(cut * len(data)) for cut in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def test_chunk_released_as_soon_as_it_authenticates() -> None:
    data = payload(3 * CHUNK_SIZE + 5)
    ciphertext = age.encrypt(data, [IDENTITY.recipient])
    first_chunk_end = header_length(ciphertext) + 16 + CHUNK_SIZE + 16
    decryptor = AgeDecryptor([IDENTITY])
    assert decryptor.update(ciphertext[: first_chunk_end - 1]) == b""
    assert decryptor.update(ciphertext[first_chunk_end - 1 : first_chunk_end]) == data[:CHUNK_SIZE]
    assert decryptor.update(ciphertext[first_chunk_end:]) + decryptor.finish() == data[CHUNK_SIZE:]


def test_encryptor_emits_header_with_first_output() -> None:
    encryptor = AgeEncryptor([IDENTITY.recipient])
    first = encryptor.update(b"")
    assert first.startswith(b"age-encryption.org/v1\n")
    assert len(first) == header_length(first) + 16
    rest = encryptor.update(b"tail") + encryptor.finish()
    assert age.decrypt(first + rest, [IDENTITY]) == b"tail"


# Tampering


def test_every_single_byte_flip_is_refused() -> None:
    data = payload(40)
    ciphertext = age.encrypt(data, [IDENTITY.recipient])
    header_end = header_length(ciphertext)
    for position in range(len(ciphertext)):
        for mask in (0x01, 0x80):
            tampered = bytearray(ciphertext)
            tampered[position] ^= mask
            released, error = decrypt_released(bytes(tampered), [IDENTITY], piece=64)
            expected = HEADER_ERRORS if position < header_end else (PayloadAuthError,)
            assert isinstance(error, expected), (position, mask, error)
            assert released == b""


@settings(max_examples=40, deadline=None)
@given(position=st.integers(min_value=0), mask=st.integers(min_value=1, max_value=255))
def test_flip_in_a_long_file_releases_only_an_authentic_prefix(position: int, mask: int) -> None:
    data, ciphertext = LONG_DATA, LONG_CIPHERTEXT
    tampered = bytearray(ciphertext)
    position %= len(ciphertext)
    tampered[position] ^= mask
    released, error = decrypt_released(bytes(tampered), [IDENTITY], piece=10_000)
    expected = HEADER_ERRORS if position < header_length(ciphertext) else (PayloadAuthError,)
    assert isinstance(error, expected)
    assert data.startswith(released)


def test_every_truncation_of_a_small_file_is_refused() -> None:
    ciphertext = age.encrypt(payload(40), [IDENTITY.recipient])
    payload_start = header_length(ciphertext) + 16
    for length in range(len(ciphertext)):
        released, error = decrypt_released(ciphertext[:length], [IDENTITY], piece=64)
        expected = AgeHeaderError if length < payload_start else PayloadAuthError
        assert type(error) is expected, (length, error)
        assert released == b""


@pytest.mark.parametrize("size", [CHUNK_SIZE, 2 * CHUNK_SIZE, 2 * CHUNK_SIZE + 1])
def test_truncation_at_chunk_boundaries_is_refused(size: int) -> None:
    data = payload(size)
    ciphertext = age.encrypt(data, [IDENTITY.recipient])
    start = header_length(ciphertext) + 16
    for chunks in range(chunk_count(size) + 1):
        for delta in (-1, 0, 1):
            length = start + chunks * (CHUNK_SIZE + 16) + delta
            if length >= len(ciphertext):
                continue
            released, error = decrypt_released(ciphertext[:length], [IDENTITY])
            assert isinstance(error, (AgeHeaderError, PayloadAuthError)), (length, error)
            assert data.startswith(released)


@pytest.mark.parametrize("size", [0, 40, CHUNK_SIZE, CHUNK_SIZE + 40])
@pytest.mark.parametrize("extra", [b"\x00", bytes(16), bytes(CHUNK_SIZE + 16)])
def test_extension_is_refused(size: int, extra: bytes) -> None:
    data = payload(size)
    ciphertext = age.encrypt(data, [IDENTITY.recipient])
    released, error = decrypt_released(ciphertext + extra, [IDENTITY])
    assert type(error) is PayloadAuthError
    assert data.startswith(released)


def test_appended_copy_of_the_final_chunk_is_refused() -> None:
    data = payload(CHUNK_SIZE)
    ciphertext = age.encrypt(data, [IDENTITY.recipient])
    released, error = decrypt_released(ciphertext + ciphertext[-(CHUNK_SIZE + 16) :], [IDENTITY])
    assert type(error) is PayloadAuthError
    assert released == data


def _crafted(chunks: list[tuple[bytes, bool]]) -> tuple[bytes, bytes]:
    """An age file whose payload chunks are sealed as given (plaintext, marked last), and the
    plaintext of its chunks: streams no encryptor of ours writes, as the spec's vectors have."""
    key = age.PayloadKey.new([IDENTITY.recipient])
    cipher = age._payload_cipher(key.file_key, key.preamble[-age.NONCE_SIZE :])
    sealed = [
        cipher.encrypt(age._chunk_nonce(counter, last=last), plaintext, None)
        for counter, (plaintext, last) in enumerate(chunks)
    ]
    return key.preamble + b"".join(sealed), b"".join(plaintext for plaintext, _ in chunks)


def test_an_empty_final_chunk_after_a_full_one_is_refused() -> None:
    """The spec's stream_last_chunk_empty, here too: the vectors live outside this repository."""
    full = payload(CHUNK_SIZE)
    ciphertext, _ = _crafted([(full, False), (b"", True)])
    released, error = decrypt_released(ciphertext, [IDENTITY])
    assert type(error) is PayloadAuthError and "final chunk is empty" in str(error), error
    assert full.startswith(released)


@pytest.mark.parametrize("piece", [4096, 3 * CHUNK_SIZE])
def test_two_full_chunks_both_final_are_refused(piece: int) -> None:
    """The spec's stream_two_final_chunks_full: nothing may follow a final chunk, whether the
    chunk after it comes as a full one (in one piece) or as the file's end."""
    ciphertext, both = _crafted([(payload(CHUNK_SIZE), True), (payload(CHUNK_SIZE, 1), True)])
    released, error = decrypt_released(ciphertext, [IDENTITY], piece)
    assert type(error) is PayloadAuthError and "after the final chunk" in str(error), error
    assert len(released) <= CHUNK_SIZE and both.startswith(released)


def test_non_age_input_is_refused_at_once() -> None:
    decryptor = AgeDecryptor([IDENTITY])
    with pytest.raises(AgeHeaderError, match="not an age file"):
        decryptor.update(b"PK\x03\x04 a zip file")


def test_header_size_is_capped() -> None:
    decryptor = AgeDecryptor([IDENTITY])
    fed = 0
    with pytest.raises(AgeHeaderError, match="longer than"):
        decryptor.update(b"age-encryption.org/v1\n-> grease\n")
        while fed < 4 * MAX_HEADER_SIZE:
            decryptor.update(b"A" * 64 + b"\n")
            fed += 65
    assert fed <= MAX_HEADER_SIZE


def test_error_is_sticky() -> None:
    ciphertext = bytearray(age.encrypt(payload(3 * CHUNK_SIZE), [IDENTITY.recipient]))
    ciphertext[-100] ^= 1
    decryptor = AgeDecryptor([IDENTITY])
    # The third chunk fails: the two before it are still released, the error comes next.
    assert decryptor.update(bytes(ciphertext)) == payload(3 * CHUNK_SIZE)[: 2 * CHUNK_SIZE]
    with pytest.raises(PayloadAuthError):
        decryptor.finish()
    with pytest.raises(PayloadAuthError):
        decryptor.update(b"")
    stranger = AgeDecryptor([X25519Identity.generate()])
    with pytest.raises(NoIdentityMatchError):
        stranger.update(bytes(ciphertext))
    with pytest.raises(NoIdentityMatchError):
        stranger.finish()


def _held_by(exc: BaseException) -> list[object]:
    """Every local of every frame of age.py an exception (and those it chains) keeps alive."""
    found: list[object] = []
    seen: BaseException | None = exc
    while seen is not None:
        trace = seen.__traceback__
        while trace is not None:
            if trace.tb_frame.f_code.co_filename == age.__file__:
                found += trace.tb_frame.f_locals.values()
            trace = trace.tb_next
        seen = seen.__context__
    return found


@pytest.mark.parametrize("chunks", [1, 3])
def test_a_failed_chunk_leaves_no_plaintext_behind(chunks: int) -> None:
    """decrypt_into writes a chunk before it checks the tag: a chunk that fails must not
    stay readable anywhere, not in the buffer returned nor in a frame the error keeps."""
    secret = b"TOP-SECRET-" * (chunks * CHUNK_SIZE // 11 + 1)
    ciphertext = bytearray(age.encrypt(secret[: chunks * CHUNK_SIZE], [IDENTITY.recipient]))
    ciphertext[-100] ^= 1  # in the last chunk
    decryptor = AgeDecryptor([IDENTITY])
    released = b""
    with pytest.raises(PayloadAuthError) as caught:
        released += decryptor.update(bytes(ciphertext))
        decryptor.finish()
    assert len(released) == (chunks - 1) * CHUNK_SIZE
    held = [bytes(v) for v in _held_by(caught.value) if isinstance(v, bytes | bytearray)]
    assert held  # the frames are there to look at (a released view holds nothing)
    for value in held:
        assert b"TOP-SECRET" not in value[(chunks - 1) * CHUNK_SIZE :]


# Keys


def test_identity_encoding_round_trip() -> None:
    identity = X25519Identity.generate()
    text = identity.encode()
    assert text.startswith("AGE-SECRET-KEY-1") and text == text.upper()
    assert X25519Identity.parse(text) == identity
    recipient = identity.recipient.encode()
    assert recipient.startswith("age1") and len(recipient) == 62
    assert X25519Recipient.parse(recipient) == identity.recipient
    assert text not in repr(identity)


def corrupt_last(text: str) -> str:
    last = text[-1].lower()
    replacement = bech32.CHARSET[(bech32.CHARSET.index(last) + 1) % 32]
    return text[:-1] + (replacement.upper() if text[-1].isupper() else replacement)


@pytest.mark.parametrize(
    "make",
    [
        lambda key: key.lower(),  # age accepts only the upper-case spelling
        lambda key: key[:20] + key[20:].lower(),  # mixed case
        corrupt_last,  # bad checksum
        lambda key: " " + key,
        lambda key: key.removeprefix("AGE-SECRET-KEY-1"),
        lambda key: bech32.encode("AGE-SECRET-KEY-", bytes(31)).upper(),
        lambda key: X25519Identity.parse(key).recipient.encode(),
    ],
)
def test_bad_identity_is_refused_without_echo(make: Callable[[str], str]) -> None:
    key = IDENTITY.encode()
    bad = make(key)
    with pytest.raises(KeyFileError) as caught:
        X25519Identity.parse(bad)
    assert key[16:] not in str(caught.value)


@pytest.mark.parametrize(
    "make",
    [
        lambda key: key.upper(),
        corrupt_last,
        lambda key: bech32.encode("age", bytes(33)),
        lambda key: IDENTITY.encode(),
        lambda key: key + " ",
    ],
)
def test_bad_recipient_is_refused(make: Callable[[str], str]) -> None:
    with pytest.raises(KeyFileError):
        X25519Recipient.parse(make(IDENTITY.recipient.encode()))


def test_bech32_bip173_vectors() -> None:
    for valid in [
        "A12UEL5L",
        "a12uel5l",
        "?1ezyfcl",
        "abcdef1qpzry9x8gf2tvdw0s3jn54khce6mua7lmqqqxw",
    ]:
        hrp, data = bech32.decode(valid)
        assert bech32.encode(hrp, data) == valid.lower()
    for invalid in ["A1G7SGD8", "10a06t8", "1qzzfhee", "x1b4n0q5v", "li1dgmt3", "A12UEL5l"]:
        with pytest.raises(KeyFileError):
            bech32.decode(invalid)


def with_checksum(hrp: str, groups: list[int]) -> str:
    """Bech32 string of raw 5-bit groups, checksummed by the BIP-173 reference algorithm."""
    generator = [0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3]
    values = [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp] + groups + [0] * 6
    check = 1
    for value in values:
        top = check >> 25
        check = (check & 0x1FFFFFF) << 5 ^ value
        for bit, g in enumerate(generator):
            check ^= g if (top >> bit) & 1 else 0
    check ^= 1
    checksum = [(check >> 5 * (5 - i)) & 31 for i in range(6)]
    return hrp + "1" + "".join(bech32.CHARSET[g] for g in groups + checksum)


def test_bech32_padding_must_be_minimal_and_zero() -> None:
    assert bech32.decode(with_checksum("a", [1, 4])) == ("a", bytes([0b00001001]))
    with pytest.raises(KeyFileError, match="padding"):
        bech32.decode(with_checksum("a", [1, 5]))  # a non-zero padding bit
    with pytest.raises(KeyFileError, match="padding"):
        bech32.decode(with_checksum("a", [1, 4, 0]))  # a whole extra group of padding


def test_parse_identity_and_recipient_files() -> None:
    other = X25519Identity.generate()
    text = f"# comment\r\n\r\n{IDENTITY.encode()}\r\n# another\n{other.encode()}\n"
    assert age.parse_identities(text) == [IDENTITY, other]
    recipients = f"# team\n{IDENTITY.recipient.encode()}\n\n{other.recipient.encode()}"
    assert age.parse_recipients(recipients) == [IDENTITY.recipient, other.recipient]
    with pytest.raises(KeyFileError, match="no secret key"):
        age.parse_identities("# only a comment\n")
    with pytest.raises(KeyFileError, match="no recipient"):
        age.parse_recipients("\n")
    with pytest.raises(KeyFileError, match="line 3"):
        age.parse_identities(f"# c\n{IDENTITY.encode()}\n{IDENTITY.recipient.encode()}\n")


def test_format_identity_file() -> None:
    created = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    text = age.format_identity_file(IDENTITY, created=created)
    assert text == (
        "# created: 2024-05-06T07:08:09Z\n"
        f"# public key: {IDENTITY.recipient.encode()}\n"
        f"{IDENTITY.encode()}\n"
    )
    eastern = created.astimezone(timezone(timedelta(hours=-5)))
    first = age.format_identity_file(IDENTITY, created=eastern).splitlines()[0]
    assert first == "# created: 2024-05-06T02:08:09-05:00"


# Interop with the age and age-keygen CLIs


def run(argv: list[str], *, stdin: bytes = b"") -> bytes:
    done = subprocess.run(argv, input=stdin, capture_output=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return done.stdout


def run_with_passphrase(argv: list[str], passphrase: bytes, *, prompts: int) -> None:
    """Run an age command that reads a passphrase from its terminal, via a pseudo-terminal.

    The child gets a new session without a controlling terminal, so age cannot open
    /dev/tty and reads from stdin, which is the pty. The passphrase never appears in argv.
    """
    master, slave = os.openpty()
    try:
        process = subprocess.Popen(
            argv, stdin=slave, stdout=subprocess.DEVNULL, stderr=slave, start_new_session=True
        )
    finally:
        os.close(slave)
    seen, answered, deadline = b"", 0, time.monotonic() + 60
    try:
        while chunk := read_pty(master, deadline):
            seen += chunk
            # Answer each prompt once it has appeared; a prompt may arrive in pieces.
            if answered < prompts and seen.lower().count(b"passphrase") > answered:
                os.write(master, passphrase + b"\n")
                answered += 1
    finally:
        os.close(master)
    assert process.wait(timeout=60) == 0, seen.decode(errors="replace")
    assert answered == prompts


def read_pty(master: int, deadline: float) -> bytes:
    ready, _, _ = select.select([master], [], [], max(0.0, deadline - time.monotonic()))
    if not ready:
        raise TimeoutError("age did not finish in time")
    try:
        return os.read(master, 4096)
    except OSError:  # EIO: the child closed the terminal
        return b""


@pytest.fixture
def identity_file(tmp_path: Path) -> Path:
    path = tmp_path / "identity.txt"
    path.write_text(age.format_identity_file(IDENTITY, created=datetime.now(UTC)))
    return path


@needs_age
@pytest.mark.parametrize("size", [0, 100, CHUNK_SIZE, 3 * CHUNK_SIZE + 1])
def test_age_decrypts_our_x25519_output(tmp_path: Path, identity_file: Path, size: int) -> None:
    data = payload(size)
    encrypted = tmp_path / "data.age"
    encrypted.write_bytes(age.encrypt(data, [IDENTITY.recipient]))
    assert run(["age", "-d", "-i", str(identity_file), str(encrypted)]) == data


@needs_age
@pytest.mark.parametrize("size", [0, 100, CHUNK_SIZE, 3 * CHUNK_SIZE + 1])
def test_we_decrypt_age_x25519_output(size: int) -> None:
    data = payload(size)
    other = X25519Identity.generate()
    recipients = ["-r", IDENTITY.recipient.encode(), "-r", other.recipient.encode()]
    ciphertext = run(["age", *recipients], stdin=data)
    assert age.decrypt(ciphertext, [IDENTITY]) == data
    assert age.decrypt(ciphertext, [other]) == data


@needs_age
def test_age_keygen_derives_our_recipient(identity_file: Path) -> None:
    assert (
        run(["age-keygen", "-y", str(identity_file)]).decode() == IDENTITY.recipient.encode() + "\n"
    )


@needs_age
def test_we_read_age_keygen_identity_file(tmp_path: Path) -> None:
    path = tmp_path / "keygen.txt"
    run(["age-keygen", "-o", str(path)])
    text = path.read_text()
    [identity] = age.parse_identities(text)
    assert run(["age-keygen", "-y", str(path)]).decode() == identity.recipient.encode() + "\n"
    stamp = text.splitlines()[0].removeprefix("# created: ")
    # Writing it back with its own timestamp must give age-keygen's file byte for byte.
    assert age.format_identity_file(identity, created=datetime.fromisoformat(stamp)) == text


@needs_age
def test_age_decrypts_our_scrypt_output(tmp_path: Path) -> None:
    data = payload(CHUNK_SIZE + 3)
    encrypted, out = tmp_path / "data.age", tmp_path / "data.out"
    encrypted.write_bytes(age.encrypt(data, [ScryptRecipient(PASSPHRASE, work_factor=10)]))
    run_with_passphrase(["age", "-d", "-o", str(out), str(encrypted)], PASSPHRASE, prompts=1)
    assert out.read_bytes() == data


@needs_age
def test_we_decrypt_age_scrypt_output(tmp_path: Path) -> None:
    data = payload(CHUNK_SIZE + 3)
    plain, encrypted = tmp_path / "data", tmp_path / "data.age"
    plain.write_bytes(data)
    run_with_passphrase(["age", "-p", "-o", str(encrypted), str(plain)], PASSPHRASE, prompts=2)
    ciphertext = encrypted.read_bytes()
    decryptor = AgeDecryptor([ScryptIdentity(PASSPHRASE)])
    assert decryptor.update(ciphertext) + decryptor.finish() == data
    assert decryptor.recipient_types == ("scrypt",)


def test_a_payload_key_repeats_an_encryption_byte_for_byte() -> None:
    recipient = age.X25519Identity.generate().recipient
    key = age.PayloadKey.new([recipient])
    data = os.urandom(200_000)

    def sealed(pieces: int) -> bytes:
        encryptor = age.AgeEncryptor([recipient], key=key)
        step = -(-len(data) // pieces)
        body = b"".join(encryptor.update(data[i : i + step]) for i in range(0, len(data), step))
        return body + encryptor.finish()

    assert sealed(1) == sealed(7) != _encrypt_once(recipient, data)
    assert "file_key" not in repr(key) and repr(key.file_key) not in repr(key)


def _encrypt_once(recipient: age.Recipient, data: bytes) -> bytes:
    encryptor = age.AgeEncryptor([recipient])
    return encryptor.update(data) + encryptor.finish()


def test_a_work_factor_beyond_this_machines_memory_is_a_header_error() -> None:
    """Found in review: scrypt's MemoryError came out as an internal error."""
    from airgap.shared.age_header import Stanza, b64encode

    stanza = Stanza(("scrypt", b64encode(b"s" * 16), "30"), bytes(32))
    with pytest.raises(AgeHeaderError, match="needs more memory than there is"):
        age.ScryptIdentity(b"pw", max_work_factor=30).unwrap([stanza])
