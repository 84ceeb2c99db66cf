"""The zstd level of an upload follows the link: it climbs while the encoder outpaces the
upload, stays put on a fast link, and a continued send repeats the levels it recorded. The
rules with a clock of our own; the effect through a real, throttled vsftpd, with the bundle
opened by hand (age, zstd, tar) as well as by airgap."""

from __future__ import annotations

import contextlib
import json
import random
import subprocess
from pathlib import Path

import pytest

from airgap.client.pace import CEILING, CHUNK, Pace
from airgap.shared.stages import LEVEL_STEP, ZstdCompress, zstd_decompress
from tests import vsftpd
from tests.conftest import receiving, run_airgap, spawn_airgap
from tests.test_remote import _env, _wait_for, needs_vsftpd

MB = 1_000_000


class _Link:
    """A clock, an upload counter and an encoder that the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sent = 0
        self.produced = 0
        self.step = 0
        self.level = 1

    def clock(self) -> float:
        return self.now

    def uploaded(self) -> int:
        return self.sent


def _drive(pace: Pace, link: _Link, rounds: list[tuple[float, int, int]]) -> list[int]:
    """Each round: seconds pass, the encoder makes ``made`` bytes, the upload takes ``taken``,
    and a step ends. Returns the level after each step."""
    levels = []
    for seconds, made, taken in rounds:
        link.now += seconds
        link.produced += made
        link.sent += taken
        link.step += 1
        link.level = pace(link.step, link.level, link.produced)
        levels.append(link.level)
    return levels


def test_a_slow_link_makes_the_level_climb_to_the_ceiling(tmp_path: Path) -> None:
    link = _Link()
    pace = Pace(link.uploaded, tmp_path / "levels", clock=link.clock)
    # The encoder makes 50 MB/s at first, the link takes 10: five times over.
    levels = _drive(pace, link, [(0.3, 15 * MB, 3 * MB)] * 12)
    assert levels[0] == 1  # the first step only marks where the upload stands
    assert 5 in levels and levels[-1] == CEILING
    assert levels == sorted(levels)
    assert (tmp_path / "levels").read_text() == "".join(f"{n}\n" for n in levels)


def test_a_fast_link_keeps_the_first_level(tmp_path: Path) -> None:
    """The encoder is the slower one (1.3 times the upload at most): nothing to gain."""
    link = _Link()
    pace = Pace(link.uploaded, tmp_path / "levels", clock=link.clock)
    assert set(_drive(pace, link, [(0.3, 13 * MB, 10 * MB)] * 30)) == {1}


def test_an_upload_slowed_by_a_climb_sends_the_level_back_down(tmp_path: Path) -> None:
    """On cores the upload shares, a dearer level can take the upload's share: the pace
    steps back and climbs no higher than the level that left the upload its speed."""
    link = _Link()
    pace = Pace(link.uploaded, tmp_path / "levels", clock=link.clock)
    assert _drive(pace, link, [(0.3, 15 * MB, 3 * MB)] * 5)[-1] == CEILING
    # From now on the upload runs at 60% of what it did, whatever the level.
    after = _drive(pace, link, [(0.3, 15 * MB, int(1.8 * MB))] * 12)
    assert after[:3] == [CEILING] * 3  # judged over two windows first
    assert set(after[4:]) == {CEILING - 2}


@pytest.mark.parametrize("every", [0.05, 0.07, 0.1, 0.11, 0.13, 0.17])
def test_a_steady_link_counted_a_chunk_at_a_time_keeps_the_ceiling(
    every: float, tmp_path: Path
) -> None:
    """Found in review: the upload's counter moves 1 MiB at a time, and a half-second window
    that saw one chunk fewer looked like an upload slowed by the climb (a step every 0.07 s
    or 0.11 s left the level at 5)."""
    link = _Link()
    pace = Pace(link.uploaded, tmp_path / "levels", clock=link.clock)
    exact, levels = 0.0, []
    for _ in range(120):  # 12.5 MB/s, counted in whole chunks; the encoder five times faster
        exact += 12.5 * MB * every
        link.now += every
        link.sent = int(exact) // CHUNK * CHUNK
        link.produced += int(5 * 12.5 * MB * every)
        link.step += 1
        link.level = pace(link.step, link.level, link.produced)
        levels.append(link.level)
    assert levels[-1] == CEILING and levels == sorted(levels)


def test_an_upload_that_stalls_after_a_climb_keeps_the_ceiling(tmp_path: Path) -> None:
    """Found in review: a retry's backoff in the window after a climb read as an upload the
    climb had slowed, and the level stayed lower for the rest of the send."""
    link = _Link()
    pace = Pace(link.uploaded, tmp_path / "levels", clock=link.clock)
    assert _drive(pace, link, [(0.3, 15 * MB, 3 * MB)] * 5)[-1] == CEILING
    stalled = _drive(pace, link, [(1.0, 15 * MB, 0)] * 4)  # a network error, then backoff
    assert set(stalled) == {CEILING}
    assert set(_drive(pace, link, [(0.3, 15 * MB, 3 * MB)] * 8)) == {CEILING}


def test_the_level_eases_off_when_the_upload_catches_up(tmp_path: Path) -> None:
    link = _Link()
    pace = Pace(link.uploaded, tmp_path / "levels", clock=link.clock)
    assert _drive(pace, link, [(0.3, 15 * MB, 3 * MB)] * 6)[-1] > 1
    link.sent = link.produced - 1 * MB  # the queue nearly gone, and the encoder now slower
    assert _drive(pace, link, [(0.3, 2 * MB, 3 * MB)] * 10)[-1] == 1


def test_a_continued_send_repeats_the_recorded_levels_then_chooses(tmp_path: Path) -> None:
    record = tmp_path / "levels"
    record.write_text("1\n3\n7\n7\n5")  # the crash cut the last line: not a choice yet
    link = _Link()
    pace = Pace(link.uploaded, record, replay=True, clock=link.clock)
    assert [pace(step, 1, 0) for step in (1, 2, 3, 4)] == [1, 3, 7, 7]
    assert record.read_text() == "1\n3\n7\n7\n"  # kept, the cut line dropped
    assert pace(5, 7, 0) == 7  # past the record: its own choice (no window measured yet)
    assert record.read_text() == "1\n3\n7\n7\n7\n"
    fresh = Pace(link.uploaded, record, clock=link.clock)  # a new send: a new record
    assert record.read_text() == ""
    assert fresh(1, 1, 0) == 1


def test_a_paced_stream_is_the_same_however_it_is_cut() -> None:
    """What a continued send relies on: the levels change at fixed plaintext offsets, so the
    same answers give the same bytes; and concatenated frames read back as one stream."""
    chunk = random.Random(7).randbytes(1 << 20)
    data = chunk * (3 * LEVEL_STEP // len(chunk)) + b"tail" * 1000
    answers = {1: 3, 2: 7, 3: 1}

    def encode(cuts: list[int]) -> tuple[bytes, int]:
        zstd = ZstdCompress(level=1, threads=2, pace=lambda step, level, made: answers[step])
        out, at = [], 0
        for cut in cuts:
            out.append(zstd.update(data[at : at + cut]))
            at += cut
        out += [zstd.update(data[at:]), zstd.finish()]
        return b"".join(out), zstd.highest

    one, highest = encode([])
    assert highest == 7
    assert encode([12345, LEVEL_STEP, 5 << 20, 1])[0] == one
    assert encode([1 << 20] * 50)[0] == one
    assert b"".join(zstd_decompress(iter([one]))) == data
    by_hand = subprocess.run(["zstd", "-d", "-c"], input=one, capture_output=True, check=True)
    assert by_hand.stdout == data


def test_a_plaintext_that_ends_on_a_level_change_ends_with_its_last_frame() -> None:
    """Found in review: a level chosen at the last step began a frame no byte went into, and
    the stream ended in an empty frame that claimed that level."""
    data = random.Random(3).randbytes(1 << 20) * (2 * LEVEL_STEP >> 20)

    def encode(last: int) -> tuple[bytes, int]:
        zstd = ZstdCompress(level=1, pace=lambda step, level, made: 3 if step == 1 else last)
        out = zstd.update(data) + zstd.finish()
        return out, zstd.highest

    out, highest = encode(7)
    assert (out, highest) == encode(3)
    assert highest == 3
    assert b"".join(zstd_decompress(iter([out]))) == data


def _climbed(spools: Path) -> bool:
    """Whether a send's record of levels in ``spools`` holds a level above 1."""
    for record in spools.glob("*/levels"):
        with contextlib.suppress(OSError):
            if any(line.isdigit() and int(line) > 1 for line in record.read_text().split()):
                return True
    return False


def _binaries(size: int) -> bytes:
    """``size`` bytes of this machine's shared libraries: what images carry, compressed at
    level 1 about as fast as a real send's."""
    found, total = [], 0
    for path in sorted(Path("/usr/lib/x86_64-linux-gnu").rglob("*.so*")):
        if path.is_file() and not path.is_symlink() and total < size:
            found.append(path.read_bytes()[: size - total])
            total += len(found[-1])
    return b"".join(found)


@needs_vsftpd
def test_a_throttled_link_gets_a_smaller_payload_that_opens_by_hand(
    keydir: Path, tmp_path: Path
) -> None:
    """Sent through vsftpd at 8 MiB/s, where level 1 makes payload several times faster than
    the link takes it, the level climbs and the payload comes out smaller than at level 1; a
    send killed after the climb continues byte for byte; the bundle opens with age, zstd and
    tar as well as with airgap fetch."""
    data = _binaries(200 << 20)
    if len(data) < 120 << 20:
        pytest.skip("too few shared libraries here to outpace the link for long")
    source = tmp_path / "libs.bin"
    source.write_bytes(data)
    signing = ["--sign-key", keydir / "signing.key", "-R", keydir / "recipient.txt"]
    (tmp_path / "stick").mkdir()
    plain = run_airgap(["send", "--file", source, "--to", tmp_path / "stick", *signing])
    assert plain.returncode == 0, plain.stderr
    (at_level_1,) = (tmp_path / "stick").glob("*.tar.zst.age")

    with vsftpd.running(tmp_path / "ftp", max_rate=8 << 20) as ftp:
        url = f"ftp://{ftp.user}@127.0.0.1:{ftp.port}{ftp.home}/"
        argv = ["send", "--file", source, "--server", url, *signing]
        env = _env(tmp_path, ftp.password)
        # Killed once the level has climbed, while still encoding: the same command then
        # encodes the start again with the recorded levels, compares it with the spool's bytes
        # (a level chosen anew would differ) and goes on.
        send = spawn_airgap(argv, env=env)
        spools = tmp_path / "cache" / "airgap" / "send"
        _wait_for(lambda: _climbed(spools) or send.poll() is not None, "a climb", timeout=60)
        send.kill()
        send.communicate()
        (spool,) = spools.iterdir()
        assert not list(spool.glob("*.manifest.json")), "encoded whole before the kill"
        sent = run_airgap(argv, env=env)
        assert sent.returncode == 0, sent.stderr
        assert f"continuing the interrupted send of bundle {spool.name}" in sent.stderr
        assert "not continuing" not in sent.stderr
        (payload,) = Path(ftp.home).glob("*.tar.zst.age")
        (manifest,) = Path(ftp.home).glob("*.manifest.json")
        level = json.loads(manifest.read_text())["compression"]["level"]
        assert level > 1
        assert payload.stat().st_size < at_level_1.stat().st_size

        age = subprocess.Popen(
            ["age", "-d", "-i", str(keydir / "identity.txt"), str(payload)],
            stdout=subprocess.PIPE,
        )
        unzstd = subprocess.Popen(["zstd", "-d", "-c"], stdin=age.stdout, stdout=subprocess.PIPE)
        assert age.stdout is not None
        age.stdout.close()
        assert unzstd.stdout is not None
        with unzstd.stdout:
            tar = subprocess.run(["tar", "-xO"], stdin=unzstd.stdout, capture_output=True)
        assert unzstd.wait() == 0 and age.wait() == 0 and tar.returncode == 0
        assert tar.stdout == data

        fetch = ["fetch", "--server", url, "--output-dir", tmp_path / "out"]
        fetched = run_airgap(
            [*fetch, *receiving(keydir, tmp_path / "state")], env=_env(tmp_path, ftp.password)
        )
        assert fetched.returncode == 0, fetched.stderr
        assert (tmp_path / "out" / "libs.bin").read_bytes() == data
