"""ServiceSecrets: secrets a service holds for others, sealed under a key derived from its key-encryption key."""

import base64
import os

import pytest

from enlace_platform.crypto import PREFIX, CorruptValue, Sealer, ServiceSecrets

KEK = os.urandom(32)
SECRET = "whsec_" + base64.b64encode(os.urandom(32)).decode()


def test_a_sealed_secret_opens_for_its_owner_and_field_and_shows_nothing_in_clear():
    sealed = ServiceSecrets(KEK, "test-purpose").sealer("sub_1").seal("secret", SECRET)
    assert sealed.startswith(PREFIX)
    assert SECRET not in sealed and SECRET[len("whsec_"):] not in sealed
    # Another instance with the same key-encryption key and purpose (a restart, another replica) opens it.
    assert ServiceSecrets(KEK, "test-purpose").sealer("sub_1").open("secret", sealed) == SECRET


def test_sealing_is_randomised():
    sealer = ServiceSecrets(KEK, "test-purpose").sealer("sub_1")
    assert sealer.seal("secret", SECRET) != sealer.seal("secret", SECRET)


@pytest.mark.parametrize("owner, field", [("sub_2", "secret"), ("sub_1", "previous_secret")])
def test_a_value_moved_to_another_owner_or_field_does_not_open(owner, field):
    secrets = ServiceSecrets(KEK, "test-purpose")
    sealed = secrets.sealer("sub_1").seal("secret", SECRET)
    with pytest.raises(CorruptValue):
        secrets.sealer(owner).open(field, sealed)


def test_another_key_encryption_key_or_purpose_does_not_open_it():
    sealed = ServiceSecrets(KEK, "test-purpose").sealer("sub_1").seal("secret", SECRET)
    with pytest.raises(CorruptValue):
        ServiceSecrets(os.urandom(32), "test-purpose").sealer("sub_1").open("secret", sealed)
    with pytest.raises(CorruptValue):
        ServiceSecrets(KEK, "other-purpose").sealer("sub_1").open("secret", sealed)


def test_the_key_encryption_key_itself_is_not_the_sealing_key():
    sealed = ServiceSecrets(KEK, "test-purpose").sealer("sub_1").seal("secret", SECRET)
    with pytest.raises(CorruptValue):
        Sealer("sub_1", KEK).open("secret", sealed)


def test_a_value_in_clear_is_refused_not_returned():
    with pytest.raises(CorruptValue, match="not sealed"):
        ServiceSecrets(KEK, "test-purpose").sealer("sub_1").open("secret", SECRET)
