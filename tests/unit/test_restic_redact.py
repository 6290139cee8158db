"""The backup engine's secrets stay out of what it prints, and restic's words (0.14's, as it
says them on stderr) become errors an operator understands. No restic runs here:
tests/integration/test_restic_engine.py runs the real one."""

from __future__ import annotations

from pathlib import Path

import pytest

from rackfire.errors import Conflict, ExecError, NotFound, PrereqError
from rackfire.runtime.restic import Keep, Repository, Restic, _epoch, redact

PASSWORD = "correct-horse-battery-staple"
KEY_ID = "AKIAEXAMPLE7QX3ZV2"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


def s3_repo() -> Repository:
    return Repository("s3:http://127.0.0.1:9600/backups/shop", PASSWORD,
                      (("AWS_ACCESS_KEY_ID", KEY_ID), ("AWS_SECRET_ACCESS_KEY", SECRET)))


def test_redact_masks_every_occurrence() -> None:
    text = f"a {PASSWORD} b {PASSWORD}{SECRET} c"
    assert redact(text, [PASSWORD, SECRET]) == "a *** b ****** c"
    assert redact("nothing here", [PASSWORD]) == "nothing here"
    assert redact("x", ["", ""]) == "x"  # an empty secret masks nothing


def test_redact_masks_the_longest_first() -> None:
    # A secret that holds another is masked whole, not left with a tail showing.
    assert redact("key=abcdef!", ["abc", "abcdef"]) == "key=***!"


def test_repository_prints_its_address_only() -> None:
    repo = s3_repo()
    for shown in (repr(repo), str(repo), f"{repo}", f"{repo!r}", repr([repo])):
        assert "s3:http://127.0.0.1:9600/backups/shop" in shown
        for secret in (PASSWORD, KEY_ID, SECRET):
            assert secret not in shown
    assert repo.redact(f"{PASSWORD} {KEY_ID} {SECRET}") == "*** *** ***"


def test_a_password_in_the_url_is_masked() -> None:
    repo = Repository("rest:https://backup:s3cr3t-in-url@host:8000/shop", PASSWORD)
    assert str(repo) == "rest:https://backup:***@host:8000/shop"
    assert "s3cr3t-in-url" not in repr(repo)
    assert repo.redact("GET https://backup:s3cr3t-in-url@host") == "GET https://backup:***@host"


def test_repository_refuses_what_it_cannot_use() -> None:
    with pytest.raises(PrereqError, match="password is empty"):
        Repository("/srv/backup", "")
    with pytest.raises(PrereqError, match="address"):
        Repository("", PASSWORD)
    # RESTIC_PASSWORD_COMMAND and the like would override what the engine sets (or run).
    for name in ("RESTIC_PASSWORD_COMMAND", "restic_repository", "BAD NAME", ""):
        with pytest.raises(PrereqError, match="environment variable") as e:
            Repository("/srv/backup", PASSWORD, ((name, "value-of-it"),))
        assert "value-of-it" not in str(e.value.message)


def test_local_path() -> None:
    assert Repository("/srv/backup", PASSWORD).local_path == Path("/srv/backup")
    assert Repository("local:/srv/backup", PASSWORD).local_path == Path("/srv/backup")
    assert s3_repo().local_path is None
    assert Repository("sftp:host:/srv", PASSWORD).local_path is None


# What restic 0.14 says on stderr, word for word (with the secrets put in, to be masked).
WRONG_PASSWORD = "Fatal: wrong password or no key found\n"
REFUSED = ('Fatal: unable to open config file: Stat: Get "http://127.0.0.1:9649/backups/'
           '?location=": dial tcp 127.0.0.1:9649: connect: connection refused\n'
           "Is there a repository at the following location?\n"
           "s3:http://127.0.0.1:9649/backups/shop\n")
NO_BUCKET = ("Fatal: unable to open config file: Stat: The specified bucket does not exist\n"
             "Is there a repository at the following location?\ns3:http://x/nobucket/shop\n")
NO_REPO = ("Fatal: unable to open config file: Stat: The specified key does not exist.\n"
           "Is there a repository at the following location?\ns3:http://x/backups/shop\n")
LOCKED = ("unable to create lock in backend: repository is already locked exclusively by "
          "PID 15554 on vm by root (UID 0, GID 0)\nlock was created at 2026-12-07 13:33:17 "
          "(672.072376ms ago)\nstorage ID 293f2f74\n"
          "the `unlock` command can be used to remove stale locks\n")
NO_SNAPSHOT = 'invalid id "deadbeef": no matching ID found for prefix "deadbeef"\n'
NO_FILE = 'cannot dump file: path "/db.img" not found in snapshot\n'
DAMAGED = ("error for tree 10e933f5:\n  decrypting blob 10e933f5 failed: ciphertext "
           "verification failed\nFatal: repository contains errors\n")
DENIED = (f"Fatal: unable to open config file: Stat: The AWS Access Key Id {KEY_ID} you "
          "provided does not exist in our records. (InvalidAccessKeyId)\n")


@pytest.mark.parametrize(("stderr", "kind", "words"), [
    (WRONG_PASSWORD, PrereqError, "wrong password"),
    (REFUSED, PrereqError, "is unreachable: connection refused"),
    (NO_BUCKET, PrereqError, "is unreachable: no such bucket"),
    (NO_REPO, NotFound, "is not initialised"),
    (LOCKED, Conflict, "is locked by PID 15554 on vm"),
    (NO_SNAPSHOT, NotFound, "no snapshot deadbeef"),
    (NO_FILE, NotFound, "no file /db.img in snapshot"),
    (DAMAGED, ExecError, "failed its check: error for tree 10e933f5"),
    (DENIED, PrereqError, "refused access"),
    ("Fatal: something new\n", ExecError, "restic backup on s3:http://127.0.0.1:9600/backups"
                                          "/shop failed (exit 1): something new"),
])
def test_restic_errors_read_as_an_operator_would(tmp_path: Path, stderr: str,
                                                   kind: type[Exception], words: str) -> None:
    engine = Restic(s3_repo(), tmp_path)
    leaky = f"{stderr}env: {PASSWORD} {SECRET} {KEY_ID}\n"
    err = engine._error("backup", 1, leaky)
    assert type(err) is kind
    assert words in err.message
    for secret in (PASSWORD, KEY_ID, SECRET):
        assert secret not in err.message and secret not in err.hint
        assert secret not in str(err.to_dict())


def test_a_missing_directory_is_unreachable_not_uninitialised(tmp_path: Path) -> None:
    stderr = ("Fatal: unable to open config file: stat /x/config: no such file or directory\n"
              "Is there a repository at the following location?\n/x\n")
    missing = Restic(Repository(str(tmp_path / "missing"), PASSWORD), tmp_path)
    err = missing._error("list snapshots", 1, stderr)
    assert type(err) is PrereqError and "no such directory" in err.message
    empty = Restic(Repository(str(tmp_path), PASSWORD), tmp_path)
    err = empty._error("list snapshots", 1, stderr)
    assert type(err) is NotFound and "not initialised" in err.message


def test_keep_policy() -> None:
    assert Keep(hourly=24, daily=7).args() == ["--keep-hourly=24", "--keep-daily=7"]
    assert Keep().args() == []
    with pytest.raises(PrereqError):
        Keep(last=-1)


def test_restic_times() -> None:
    # Go's nanoseconds, in UTC or with the host's offset.
    assert _epoch("2026-12-07T13:32:42.741218242Z") == pytest.approx(1796650362.741218)
    assert _epoch("2026-12-07T14:32:42.5+01:00") == pytest.approx(1796650362.5)
    assert _epoch("2026-12-07T13:32:42Z") == 1796650362.0
