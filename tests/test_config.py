"""airgap init and the config file: after set-up and a key exchange, plain commands work."""

from __future__ import annotations

import grp
import os
import shlex
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from airgap.client import config
from airgap.client.credentials import password_for
from airgap.client.ftp import FtpTarget
from airgap.client.places import Place
from airgap.shared.errors import KeyFileError, UsageError
from airgap.shared.owners import written_by_others
from tests.conftest import run_airgap
from tests.server.conftest import start_server


def _init(home: Path, role: str, *extra: str) -> dict[str, str]:
    env = {
        "XDG_CONFIG_HOME": str(home / "config"),
        "XDG_STATE_HOME": str(home / "state"),
        "XDG_CACHE_HOME": str(home / "cache"),
    }
    made = run_airgap(["init", "--role", role, *extra], env=env)
    assert made.returncode == 0, made.stderr
    if role == "sender":  # the appliance checks signers too (README: "as it should")
        assert "to the drop box (airgap serve --trusted-signer)" in made.stderr, made.stderr
    return env


def _exchange(sender: Path, receiver: Path) -> None:
    s, r = sender / "config" / "airgap", receiver / "config" / "airgap"
    shutil.copy(s / "keys" / "signing.pub", r / "trusted" / "sender.pub")
    with (s / "recipients.txt").open("a") as out:
        out.write((r / "keys" / "recipient.txt").read_text())


def test_init_then_plain_send_and_fetch(tmp_path: Path) -> None:
    sender = _init(tmp_path / "s", "sender")
    receiver = _init(tmp_path / "r", "receiver")
    keys = tmp_path / "s" / "config" / "airgap" / "keys"
    assert stat.S_IMODE((keys / "signing.key").stat().st_mode) == 0o600
    again = run_airgap(["init", "--role", "sender"], env=sender)
    assert again.returncode == 1 and "--force" in again.stderr
    _exchange(tmp_path / "s", tmp_path / "r")
    (tmp_path / "notes.txt").write_text("configured")
    (tmp_path / "usb").mkdir()
    sent = run_airgap(
        ["send", "--file", tmp_path / "notes.txt", "--to", tmp_path / "usb"], env=sender
    )
    assert sent.returncode == 0, sent.stderr
    assert list((tmp_path / "usb").glob("*.tar.zst.age"))  # encrypted to the receiver
    fetched = run_airgap(
        ["fetch", "--from", tmp_path / "usb", "--output-dir", tmp_path / "in"], env=receiver
    )
    assert fetched.returncode == 0, fetched.stderr
    assert (tmp_path / "in" / "notes.txt").read_text() == "configured"


def test_configured_drop_box(tmp_path: Path) -> None:
    server = start_server(tmp_path / "root", "--tls", "off")
    try:
        url = f"ftp://sender@127.0.0.1:{server.port}/"
        sender = _init(tmp_path / "s", "sender", "--server", url)
        said = run_airgap(["init", "--role", "sender", "--server", url, "--force"], env=sender)
        assert "password_file in config.toml" in said.stderr, said.stderr
        receiver = _init(tmp_path / "r", "receiver", "--server", url.replace("sender", "receiver"))
        _exchange(tmp_path / "s", tmp_path / "r")
        (tmp_path / "f.txt").write_text("via the drop box")
        sent = run_airgap(
            ["send", "--file", tmp_path / "f.txt"],
            env={**sender, "AIRGAP_PASSWORD": server.password("sender")},
        )
        assert sent.returncode == 0, sent.stderr
        outgoing = server.root / "pub" / "outgoing"
        for _ in range(200):
            if list(outgoing.glob("*.minisig")):
                break
            time.sleep(0.05)
        # The receiver's password from a file the config names, for the configured server only.
        settings = tmp_path / "r" / "config" / "airgap" / "config.toml"
        secret = settings.parent / "keys" / "dropbox-password"
        secret.write_text(server.password("receiver") + "\n")
        secret.chmod(0o644)
        settings.write_text(settings.read_text().replace("# password_file", "password_file"))
        exposed = run_airgap(["fetch", "--output-dir", tmp_path / "in"], env=receiver)
        assert exposed.returncode == 1 and "others may read or write it" in exposed.stderr
        secret.chmod(0o600)
        fetched = run_airgap(["fetch", "--output-dir", tmp_path / "in"], env=receiver)
        assert fetched.returncode == 0, fetched.stderr
        assert (tmp_path / "in" / "f.txt").read_text() == "via the drop box"
        elsewhere = f"ftp://receiver@localhost:{server.port}/"
        other = run_airgap(["ls", "--server", elsewhere], env=receiver)
        assert other.returncode == 2 and "no password for receiver@localhost" in other.stderr
    finally:
        server.stop()


def test_init_with_a_drop_box_on_a_side_set_up_says_how_to_add_it(tmp_path: Path) -> None:
    """Found in review: its hint was --force alone, which loses the keys already carried."""
    env = _init(tmp_path / "r", "receiver")
    pin = "sha256:" + "ab" * 32
    url = "ftps://receiver@127.0.0.1:1/"
    again = run_airgap(
        ["init", "--role", "receiver", "--server", url, "--tls-fingerprint", pin], env=env
    )
    assert again.returncode == 1, again.stderr
    settings = tmp_path / "r" / "config" / "airgap" / "config.toml"
    told = again.stderr.splitlines()
    assert told[0] == (
        f"airgap: to add the drop box and keep the keys, put these lines under [fetch] in "
        f"{settings}, in place of any such lines there:"
    )
    assert told[1:3] == [f'server = "{url}"', f'tls_fingerprint = "{pin}"']
    assert "replace it all with --force (the old keys are lost)" in again.stderr
    text = settings.read_text()  # pasted as printed
    settings.write_text(text.replace("[fetch]\n", "[fetch]\n" + "\n".join(told[1:3]) + "\n"))
    listed = run_airgap(["ls"], env={**env, "AIRGAP_PASSWORD": "x"})
    assert listed.returncode == 4 and "nothing answers at 127.0.0.1:1" in listed.stderr, (
        listed.stderr
    )


def test_init_with_a_drop_box_beside_a_config_alone_speaks_of_no_keys(tmp_path: Path) -> None:
    side = tmp_path / "side"
    side.mkdir()
    (side / "config.toml").write_text("[send]\nlevel = 3\n")
    args = ["init", "--role", "sender", "--dir", side, "--server", "ftp://s@127.0.0.1:1/"]
    again = run_airgap(args)
    assert again.returncode == 1, again.stderr
    assert f"{side} is set up already: config.toml\n" in again.stderr
    assert "keys" not in again.stderr.split("\n", 1)[0]
    assert "replace it with --force" in again.stderr


def test_init_force_keeps_the_recipients_carried_by_hand(tmp_path: Path) -> None:
    """Found in a walkthrough: --force emptied recipients.txt, the receivers' lines carried
    across by hand, while it kept trusted/."""
    env = _init(tmp_path / "s", "sender")
    side = tmp_path / "s" / "config" / "airgap"
    carried = "age1" + "q" * 58 + "\n"
    (side / "recipients.txt").write_text(carried)
    old_key = (side / "keys" / "signing.pub").read_text()
    again = run_airgap(["init", "--role", "sender", "--force"], env=env)
    assert again.returncode == 0, again.stderr
    assert (side / "recipients.txt").read_text() == carried
    assert (side / "keys" / "signing.pub").read_text() != old_key  # what --force is for


def test_a_config_airgap_config_names_must_be_there(tmp_path: Path) -> None:
    """Found in a walkthrough: a mistyped AIRGAP_CONFIG left every setting out without a word,
    and a folder there was told as a raw errno."""
    for named, told in (
        (tmp_path / "typo.toml", "which AIRGAP_CONFIG names, does not exist"),
        (tmp_path, "Is a directory"),
    ):
        fetched = run_airgap(["fetch", "--from", tmp_path], env={"AIRGAP_CONFIG": str(named)})
        assert fetched.returncode == 2, fetched.stderr
        assert f"airgap: error: config {named}" in fetched.stderr
        assert told in fetched.stderr and "Errno" not in fetched.stderr


def test_config_errors_are_usage_errors(tmp_path: Path) -> None:
    bad = tmp_path / "config.toml"
    bad.write_text("[send]\nsign_kee = 'typo'\n")
    with pytest.raises(UsageError, match="unknown key 'sign_kee'"):
        config.load(bad)
    bad.write_text("[fetch]\ntrust = 3\n")
    with pytest.raises(UsageError, match="trust must be"):
        config.load(bad)
    bad.write_text("not toml [")
    with pytest.raises(UsageError):
        config.load(bad)
    assert config.load(tmp_path / "absent.toml") == config.Settings()


def test_init_makes_its_folders_private_whatever_the_umask(tmp_path: Path) -> None:
    """Found in review: under umask 000 trusted/ came out world-writable, and fetch trusts
    every .pub file in it: any local user could add a signer."""
    script = 'umask 000; exec "$@"'
    command = [sys.executable, "-m", "airgap.client", "init", "--role", "receiver"]
    command += ["--dir", str(tmp_path / "side")]
    made = subprocess.run(["sh", "-c", script, "-", *command], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    for folder in ("side", "side/trusted", "side/keys"):
        assert stat.S_IMODE((tmp_path / folder).stat().st_mode) == 0o700, folder
    assert stat.S_IMODE((tmp_path / "side/keys/signing.key").stat().st_mode) == 0o600


@pytest.mark.parametrize(
    ("extra", "said"),
    [
        (["--server", "ftps://sender@dropbox:99999/"], "is not a valid URL"),
        (["--server", "sftp://sender@dropbox/"], "is not an ftp:// or ftps:// URL"),
        (["--server", "ftp://s@h/", "--tls-fingerprint", "sha256:" + "ab" * 32], "is ftp://"),
        (["--server", "ftps://s@h/", "--tls-fingerprint", "sha256:ab"], "64 hex digits"),
        (["--server", "ftps://s@h/"], "needs the appliance's certificate fingerprint"),
        (["--tls-fingerprint", "sha256:" + "ab" * 32], "the --server it goes with"),
    ],
)
def test_init_refuses_a_bad_server_before_writing_anything(
    tmp_path: Path, extra: list[str], said: str
) -> None:
    made = run_airgap(["init", "--role", "sender", "--dir", tmp_path / "side", *extra])
    assert made.returncode == 2 and said in made.stderr, made.stderr
    assert not (tmp_path / "side").exists()


def test_init_writes_all_or_nothing_and_says_how_a_dir_is_read(tmp_path: Path) -> None:
    side = tmp_path / "side"
    made = run_airgap(["init", "--role", "receiver", "--dir", side])
    assert made.returncode == 0, made.stderr
    assert f"AIRGAP_CONFIG={side / 'config.toml'} set" in made.stderr
    shutil.rmtree(side / "keys")  # the config is left: a second init must not mix them
    again = run_airgap(["init", "--role", "receiver", "--dir", side])
    assert again.returncode == 1 and "config.toml" in again.stderr, again.stderr
    assert not (side / "keys").exists()
    default = _init(tmp_path / "home", "sender")  # the default place needs no variable
    assert (
        "AIRGAP_CONFIG"
        not in run_airgap(["init", "--role", "sender", "--force"], env=default).stderr
    )


def test_init_writes_the_file_airgap_config_names(tmp_path: Path) -> None:
    """Whatever it is called: before, init wrote config.toml beside it and every command then
    read the named file, which did not exist, and ran with no settings at all."""
    named = tmp_path / "side" / "client.toml"
    env = {"AIRGAP_CONFIG": str(named), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    made = run_airgap(["init", "--role", "sender"], env=env)
    assert made.returncode == 0, made.stderr
    assert "wrote keys and client.toml" in made.stderr
    assert named.is_file() and not (named.parent / "config.toml").exists()
    (tmp_path / "notes.txt").write_text("configured")
    (tmp_path / "usb").mkdir()
    sent = run_airgap(
        ["send", "--file", tmp_path / "notes.txt", "--to", tmp_path / "usb", "--no-encrypt"],
        env=env,
    )
    assert sent.returncode == 0, sent.stderr  # its signing key came from client.toml


def test_verify_says_when_it_did_not_decrypt(tmp_path: Path, keydir: Path) -> None:
    """It does not take the configured identity: a bundle for another receiver (a shared drop
    box, or the sender checking its own stick) is intact all the same. So it says so."""
    sender = _init(tmp_path / "s", "sender")
    receiver = _init(tmp_path / "r", "receiver")
    _exchange(tmp_path / "s", tmp_path / "r")
    (tmp_path / "notes.txt").write_text("for another receiver")
    (tmp_path / "usb").mkdir()
    other = ["-R", keydir / "recipient.txt"]
    sent = run_airgap(
        ["send", "--file", tmp_path / "notes.txt", "--to", tmp_path / "usb", *other], env=sender
    )
    assert sent.returncode == 0, sent.stderr
    verified = run_airgap(["verify", "--from", tmp_path / "usb"], env=receiver)
    assert verified.returncode == 0, verified.stderr
    assert "checked without decrypting" in verified.stderr
    mine = ["-i", tmp_path / "r" / "config" / "airgap" / "keys" / "identity.txt"]
    decrypting = run_airgap(["verify", "--from", tmp_path / "usb", *mine], env=receiver)
    assert decrypting.returncode == 3 and "no identity opens" in decrypting.stderr
    theirs = run_airgap(["verify", "--from", tmp_path / "usb", "-i", keydir / "identity.txt"])
    assert "checked without decrypting" not in theirs.stderr


def test_a_password_file_holds_the_password_alone_and_only_for_its_owner(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = FtpTarget.parse("ftps://receiver@dropbox:2121/")
    secret = tmp_path / "password"
    secret.write_text("s3cret\nignored\n")
    secret.chmod(0o600)
    monkeypatch.delenv("AIRGAP_PASSWORD", raising=False)
    assert password_for(target, password_file=secret) == "s3cret"
    monkeypatch.setenv("AIRGAP_PASSWORD", "from the environment")
    assert password_for(target, password_file=secret) == "from the environment"
    monkeypatch.delenv("AIRGAP_PASSWORD")
    secret.write_text("\n")
    with pytest.raises(KeyFileError, match="holds no password"):
        password_for(target, password_file=secret)
    with pytest.raises(KeyFileError, match="cannot be read"):
        password_for(target, password_file=tmp_path / "absent")
    with pytest.raises(KeyFileError, match="not a file"):
        password_for(target, password_file=tmp_path)


def test_the_password_file_goes_to_the_configured_server_alone(tmp_path: Path) -> None:
    """Not to another URL, not to another pin (another server, whatever the URL says), and
    never as an anonymous login's password (servers log it, taking it for an address)."""
    pin, other_pin = "sha256:" + "ab" * 32, "sha256:" + "cd" * 32
    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    secret.chmod(0o600)
    settings = tmp_path / "config.toml"
    env = {"AIRGAP_CONFIG": str(settings), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    env |= {"AIRGAP_RETRIES": "1", "NETRC": str(tmp_path / "no-netrc")}

    def ls(server: str, *flags: str) -> subprocess.CompletedProcess[str]:
        lines = [
            f'server = "{server}"',
            f'tls_fingerprint = "{pin}"',
            f'password_file = "{secret}"',
        ]
        settings.write_text("\n".join(["[fetch]", *lines, ""]))
        return run_airgap(["ls", *flags], env=env)

    named = "ftps://receiver@127.0.0.1:1/"
    used = ls(named)  # the password is read; the connection then fails
    assert used.returncode == 4 and "no password" not in used.stderr, used.stderr
    # Its URL typed again, unpinned, is that server, pin and password file (found in review:
    # "ftps:// needs the appliance's certificate fingerprint").
    for typed in (named, "ftps://receiver@127.0.0.1:1", "ftps://receiver@127.0.0.1:1//"):
        again = ls(named, "--server", typed)  # a trailing / or not: one folder (walkthrough)
        assert again.returncode == 4 and "nothing answers at 127.0.0.1:1" in again.stderr, (
            typed,
            again.stderr,
        )
    elsewhere = ["--server", "ftps://receiver@localhost:1/", "--tls-fingerprint", pin]
    deeper = ["--server", "ftps://receiver@127.0.0.1:1/pub", "--tls-fingerprint", pin]
    for flags in (["--tls-fingerprint", other_pin], elsewhere, deeper):
        refused = ls(named, *flags)
        assert refused.returncode == 2 and "no password for receiver@" in refused.stderr, flags
    anonymous = ls("ftps://127.0.0.1:1/")
    assert anonymous.returncode == 2 and "naming its user" in anonymous.stderr


@pytest.mark.parametrize("named", ["recipients.txt", "folder"])
def test_init_refuses_a_config_name_it_cannot_write_whole(tmp_path: Path, named: str) -> None:
    """Found in review: AIRGAP_CONFIG named like another file of init's, or a directory, had
    the keys renamed into place and then the config fail: half a set-up, even with --force."""
    (tmp_path / "side" / "folder").mkdir(parents=True)
    env = {"AIRGAP_CONFIG": str(tmp_path / "side" / named)}
    made = run_airgap(["init", "--role", "receiver", "--force"], env=env)
    assert made.returncode in (1, 2) and "airgap: error:" in made.stderr, made.stderr
    assert sorted(p.name for p in (tmp_path / "side").iterdir()) == ["folder"]


def test_a_hint_names_the_drop_box_as_a_shell_reads_it() -> None:
    """A hint is there to be pasted: a path the shell would expand goes quoted."""
    pin = "sha256:" + "ab" * 32
    plain = Place(server="ftps://sender@dropbox:2121/", fingerprint=pin)
    assert plain.flags() == f"--server ftps://sender@dropbox:2121/ --tls-fingerprint {pin}"
    odd = Place(server="ftp://sender@dropbox:2121/in $(id); x")
    assert shlex.split(odd.flags()) == ["--server", "ftp://sender@dropbox:2121/in $(id); x"]


def test_what_decides_whom_to_trust_is_refused_when_others_could_have_written_it(
    tmp_path: Path,
) -> None:
    """Found in review: a world-writable trusted/ or recipients.txt was read as it was, so
    any local user could add a signer (whose images then load) or a recipient."""
    home = tmp_path / "home"
    env = _init(home, "receiver")
    side = home / "config" / "airgap"
    assert run_airgap(["keygen", "--out", tmp_path / "sender"]).returncode == 0
    shutil.copy(tmp_path / "sender" / "signing.pub", side / "trusted" / "sender.pub")
    drop = tmp_path / "drop"
    drop.mkdir()
    checks = [
        (side / "trusted" / "sender.pub", 0o666, "others may write it (mode 0666)"),
        (side / "trusted", 0o777, "others may write its folder"),
        (side / "config.toml", 0o666, "others may write it (mode 0666)"),
    ]
    for path, mode, said in checks:
        before = stat.S_IMODE(path.stat().st_mode)
        path.chmod(mode)
        refused = run_airgap(["verify", "--from", drop], env=env)
        assert refused.returncode in (1, 2) and said in refused.stderr, refused.stderr
        assert "chmod go-w" in refused.stderr
        path.chmod(before)
    fine = run_airgap(["verify", "--from", drop], env=env)
    assert fine.returncode == 0, fine.stderr


def test_a_sticky_folder_guards_a_file_of_ones_own(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    key = shared / "signing.pub"
    key.write_text("x")
    shared.chmod(0o1777)
    assert written_by_others(key) is None
    shared.chmod(0o777)
    assert written_by_others(key) == f"others may write its folder {shared} (mode 0777)"
    shared.chmod(0o755)
    key.chmod(0o664)
    if os.geteuid() == 0:  # root's group, root's own (as a user private group, umask 002)
        assert grp.getgrgid(key.stat().st_gid).gr_name == "root"
        assert written_by_others(key) is None
        os.chown(key, -1, grp.getgrnam("users").gr_gid)  # a group others may be in
        assert written_by_others(key) == "others may write it (mode 0664)"
    link = tmp_path / "link.pub"
    link.symlink_to(key)
    key.chmod(0o644)
    assert written_by_others(link) is None


def test_init_makes_the_state_folder_a_container_mounts(tmp_path: Path) -> None:
    """Found in review: without it, `docker run -v ~/.local/state/airgap:...` made the folder
    root's, and the container's fetch could not write its ledger."""
    env = _init(tmp_path / "home", "receiver")
    state = Path(env["XDG_STATE_HOME"]) / "airgap"
    assert state.is_dir() and stat.S_IMODE(state.stat().st_mode) == 0o700


def test_a_send_before_recipients_are_added_says_what_to_add(tmp_path: Path) -> None:
    """Found in review: "recipients file holds no recipient", exit 1, with no way forward,
    right after airgap init."""
    env = _init(tmp_path / "home", "sender")
    (tmp_path / "usb").mkdir()
    sent = run_airgap(["send", "--file", tmp_path / "home", "--to", tmp_path / "usb"], env=env)
    assert sent.returncode == 2, sent.stderr
    assert "holds no recipient yet" in sent.stderr
    assert "put each receiver's age1... line (its keys/recipient.txt) into it" in sent.stderr


def test_an_empty_trusted_folder_lists_unverified_and_verifies_nothing(tmp_path: Path) -> None:
    """Right after airgap init: ls lists, unverified (review of a fix that broke it), and
    verify says the folder holds no key."""
    env = _init(tmp_path / "home", "receiver")
    (tmp_path / "usb").mkdir()
    listed = run_airgap(["ls", "--from", tmp_path / "usb"], env=env)
    assert listed.returncode == 0, listed.stderr
    verified = run_airgap(["verify", "--from", tmp_path / "usb"], env=env)
    trusted = tmp_path / "home" / "config" / "airgap" / "trusted"
    assert verified.returncode == 2
    assert f"no trusted signer key: {trusted} holds no .pub file" in verified.stderr


def test_config_errors_name_the_file_and_section(tmp_path: Path) -> None:
    """Found in a walkthrough: a bad pin in the file was told as --tls-fingerprint's, a key
    outside any table had no word of where it goes, a missing password file no reason."""
    bad = tmp_path / "config.toml"
    bad.write_text('[fetch]\ntls_fingerprint = "sha256:abc"\n')
    with pytest.raises(UsageError, match=r"\[fetch\] tls_fingerprint is not sha256:"):
        config.load(bad)
    bad.write_text('server = "ftps://u@h:1/"\n')
    with pytest.raises(UsageError) as caught:
        config.load(bad)
    assert caught.value.hint == "it belongs under [send] or [fetch]"
    bad.write_text(f'[fetch]\nserver = "ftp://u@127.0.0.1:1/"\npassword_file = "{tmp_path}/nope"\n')
    listed = run_airgap(["ls"], env={"AIRGAP_CONFIG": str(bad)})
    assert listed.returncode != 0
    assert "cannot be read as a password file (No such file or directory)" in listed.stderr
