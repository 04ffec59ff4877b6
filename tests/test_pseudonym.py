import os
import stat

import pytest

from cohortseg.pseudonym import Pseudonymiser, load_or_create_key


def test_ids_are_keyed_deterministic_and_carry_no_identifier(tmp_path):
    key = load_or_create_key(tmp_path / "priv")
    assert stat.S_IMODE(os.stat(tmp_path / "priv" / "key").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "priv").st_mode) == 0o700
    p = Pseudonymiser(key)
    a = p.subject("PID123456")
    assert a == p.subject("PID123456") and a.startswith("sub-") and len(a) == 14
    assert "123456" not in a
    assert a != p.subject("PID123457")
    other = Pseudonymiser(os.urandom(32))
    assert other.subject("PID123456") != a, "a different key must give different ids"
    assert load_or_create_key(tmp_path / "priv") == key, "the key is reused, so ids are stable across runs"
    # kinds are separated: a series UID equal to a patient id does not give the same digest
    assert p.digest("subject", "x") != p.digest("series", "x")


def test_world_readable_key_is_refused(tmp_path):
    load_or_create_key(tmp_path)
    os.chmod(tmp_path / "key", 0o644)
    with pytest.raises(PermissionError, match="chmod 600"):
        load_or_create_key(tmp_path)
