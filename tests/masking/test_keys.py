"""Master key loading and contract key derivation (format v1), checked against an independent model."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.errors import ContractExtractsError, KeyMaterialError
from masking.keys import (
    MASTER_KEY_ENV,
    MASTER_KEY_FILE_ENV,
    PURPOSES,
    ContractKeys,
    MasterKey,
    derive_key,
    key_id,
    load_master_key,
    load_master_key_file,
    new_master_key_file,
    parse_master_key,
)

from .vectors import MASTER, expected_contract_key, expected_key_id, hkdf_cryptography, hkdf_rfc5869, info_for

# Pinned values for MASTER = bytes(range(32)), computed with tests/masking/vectors.py (design.md text).
PINNED_KEY_ID = "fa0cde5e86539aca"
PINNED_PSEUDONYM_KEY_C_DEMO_001 = "05e7975e83cf820dd540cd7d1bbbe96d4d17498d55a30f533790e204c2c9c683"

SECRET_HEX = "5f" * 16 + "a3" * 16  # 64 hex characters, easy to spot in messages


def test_hkdf_models_agree_with_each_other() -> None:
    info = info_for("pseudonym", "C-DEMO-001")
    assert hkdf_rfc5869(MASTER, info) == hkdf_cryptography(MASTER, info)


def test_key_id_known_answer() -> None:
    assert key_id(MASTER) == expected_key_id(MASTER) == PINNED_KEY_ID
    assert MasterKey(secret=MASTER, source="test").key_id == PINNED_KEY_ID


def test_pseudonym_key_known_answer() -> None:
    derived = derive_key(MASTER, "pseudonym", "C-DEMO-001")
    assert derived.hex() == PINNED_PSEUDONYM_KEY_C_DEMO_001
    assert derived == expected_contract_key(MASTER, "pseudonym", "C-DEMO-001")


@pytest.mark.parametrize("purpose", PURPOSES)
@pytest.mark.parametrize(("contract_id", "delivery_id"), [
    ("C-DEMO-001", None),
    ("C-DEMO-002", None),
    ("C-2026-017", None),
    ("C-DEMO-001", "20261125T020000Z-1a2b3c4d"),
    ("C-DEMO-001", "20261126T020000Z-00000000"),
], ids=["demo-1", "demo-2", "c-2026-017", "demo-1-delivery-a", "demo-1-delivery-b"])
def test_derive_key_known_answer(purpose: str, contract_id: str, delivery_id: str | None) -> None:
    derived = derive_key(MASTER, purpose, contract_id, delivery_id)
    assert len(derived) == 32
    assert derived == expected_contract_key(MASTER, purpose, contract_id, delivery_id)


@settings(max_examples=60, deadline=None)
@given(master=st.binary(min_size=32, max_size=32),
       purpose=st.sampled_from(PURPOSES),
       contract_id=st.from_regex(r"\A[A-Z][A-Z0-9]{0,5}(-[A-Z0-9]{1,4}){0,3}\Z"),
       delivery_id=st.none() | st.from_regex(r"\A[0-9]{8}T[0-9]{6}Z-[0-9a-f]{8}\Z"))
def test_derive_key_matches_rfc5869_for_random_inputs(master: bytes, purpose: str, contract_id: str,
                                                      delivery_id: str | None) -> None:
    assert derive_key(master, purpose, contract_id, delivery_id) == \
        hkdf_rfc5869(master, info_for(purpose, contract_id, delivery_id))
    assert key_id(master) == expected_key_id(master)


def test_keys_differ_by_purpose_contract_and_delivery() -> None:
    keys = {
        derive_key(MASTER, purpose, contract, delivery)
        for purpose in PURPOSES
        for contract in ("C-DEMO-001", "C-DEMO-002")
        for delivery in (None, "20261125T020000Z-1a2b3c4d", "20261125T020000Z-1a2b3c4e")
    }
    assert len(keys) == len(PURPOSES) * 2 * 3 == 4 * 2 * 3


def test_unknown_purpose_is_refused() -> None:
    with pytest.raises(ValueError, match="purpose"):
        derive_key(MASTER, "encryption", "C-DEMO-001")


def test_contract_keys_derive() -> None:
    master = MasterKey(secret=MASTER, source="test")
    keys = ContractKeys.derive(master, "C-DEMO-001", None)
    assert keys.key_id == PINNED_KEY_ID
    for purpose in PURPOSES:
        assert getattr(keys, purpose) == expected_contract_key(MASTER, purpose, "C-DEMO-001")
    per_delivery = ContractKeys.derive(master, "C-DEMO-001", "20261125T020000Z-1a2b3c4d")
    assert per_delivery.pseudonym == expected_contract_key(MASTER, "pseudonym", "C-DEMO-001",
                                                           "20261125T020000Z-1a2b3c4d")
    assert per_delivery.pseudonym != keys.pseudonym
    for text in (repr(keys), str(keys), repr(master), str(master)):
        assert MASTER.hex() not in text
        assert keys.pseudonym.hex() not in text


# ---- master key loading -------------------------------------------------------------------------


def _assert_no_secret(error: BaseException, secret_hex: str = SECRET_HEX) -> None:
    text = str(error) + repr(error) + repr(error.args)
    assert secret_hex not in text
    assert secret_hex.upper() not in text
    assert secret_hex[:16] not in text  # not even a prefix of it


def write_key_file(tmp_path: Path, content: str, mode: int = 0o600, name: str = "master.key") -> Path:
    path = tmp_path / name
    path.write_text(content)
    os.chmod(path, mode)
    return path


def test_load_from_environment_variable() -> None:
    key = load_master_key({MASTER_KEY_ENV: SECRET_HEX + "\n"})
    assert key.secret == bytes.fromhex(SECRET_HEX)
    assert MASTER_KEY_ENV in key.source


def test_load_from_private_file(tmp_path: Path) -> None:
    path = write_key_file(tmp_path, SECRET_HEX + "\n")
    key = load_master_key({MASTER_KEY_FILE_ENV: str(path)})
    assert key.secret == bytes.fromhex(SECRET_HEX)
    assert str(path) in key.source


def test_missing_configuration_is_refused() -> None:
    with pytest.raises(KeyMaterialError, match="no master key") as info:
        load_master_key({})
    assert "Fix:" in str(info.value)


def test_missing_key_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "absent.key"
    with pytest.raises(KeyMaterialError) as info:
        load_master_key({MASTER_KEY_FILE_ENV: str(path)})
    assert str(path) in str(info.value)
    assert "does not exist" in str(info.value)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o666, 0o602],
                         ids=["0644", "0640", "0604", "0660", "0666", "0602"])
def test_key_file_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = write_key_file(tmp_path, SECRET_HEX + "\n", mode=mode)
    with pytest.raises(KeyMaterialError) as info:
        load_master_key({MASTER_KEY_FILE_ENV: str(path)})
    text = str(info.value)
    assert str(path) in text
    assert f"chmod 600 {path}" in text
    assert f"{mode:04o}" in text
    _assert_no_secret(info.value)


@pytest.mark.parametrize("mode", [0o600, 0o400], ids=["0600", "0400"])
def test_owner_only_modes_are_accepted(tmp_path: Path, mode: int) -> None:
    path = write_key_file(tmp_path, SECRET_HEX, mode=mode)
    assert load_master_key_file(path).secret == bytes.fromhex(SECRET_HEX)


def test_directory_as_key_file_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "keydir"
    folder.mkdir(mode=0o700)
    with pytest.raises(KeyMaterialError, match="not a regular file"):
        load_master_key_file(folder)


MALFORMED = {
    "one-char-short": SECRET_HEX[:-1],
    "one-char-long": SECRET_HEX + "a",
    "two-keys": SECRET_HEX + SECRET_HEX,
    "non-hex-64": SECRET_HEX[:-1] + "g",
    "non-hex-middle": SECRET_HEX[:30] + "zz" + SECRET_HEX[32:],
    "spaced-hex": " ".join(SECRET_HEX[i:i + 2] for i in range(0, 64, 2)),
    "base64": "X/NfX19fX19fX19fX19fo6Ojo6Ojo6Ojo6Ojo6M=",
    "empty": "",
    "raw-label": "master=" + SECRET_HEX,
}


@pytest.mark.parametrize("content", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_key_in_file_is_refused_without_echoing_it(tmp_path: Path, content: str) -> None:
    path = write_key_file(tmp_path, content + "\n")
    with pytest.raises(KeyMaterialError) as info:
        load_master_key_file(path)
    assert str(path) in str(info.value)
    assert "malformed" in str(info.value) or "32 bytes" in str(info.value)
    _assert_no_secret(info.value)
    if content:
        assert content.strip() not in str(info.value)


@pytest.mark.parametrize("content", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_key_in_environment_is_refused_without_echoing_it(content: str) -> None:
    with pytest.raises(KeyMaterialError) as info:
        parse_master_key(content, f"environment variable {MASTER_KEY_ENV}")
    assert MASTER_KEY_ENV in str(info.value)
    _assert_no_secret(info.value)
    if content:
        assert content.strip() not in str(info.value)


def test_binary_key_file_is_refused_without_echoing_it(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    secret = bytes(range(200, 232))
    path.write_bytes(secret)
    os.chmod(path, 0o600)
    with pytest.raises(KeyMaterialError) as info:
        load_master_key_file(path)
    assert secret.hex() not in str(info.value)


def test_master_key_must_be_32_bytes() -> None:
    with pytest.raises(KeyMaterialError, match="32 bytes"):
        MasterKey(secret=b"\x01" * 31, source="test")


def test_new_master_key_file_is_private_and_loadable(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "master.key"
    key = new_master_key_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    content = path.read_text(encoding="ascii")
    assert re.fullmatch(r"[0-9a-f]{64}\n", content)
    assert bytes.fromhex(content.strip()) == key.secret
    assert load_master_key_file(path).key_id == key.key_id == expected_key_id(key.secret)
    assert key.secret.hex() not in repr(key)


def test_new_master_key_file_refuses_to_overwrite(tmp_path: Path) -> None:
    path = write_key_file(tmp_path, SECRET_HEX + "\n")
    with pytest.raises((FileExistsError, ContractExtractsError)):
        new_master_key_file(path)
    assert path.read_text() == SECRET_HEX + "\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_new_master_keys_are_random(tmp_path: Path) -> None:
    a = new_master_key_file(tmp_path / "a.key")
    b = new_master_key_file(tmp_path / "b.key")
    assert a.secret != b.secret
    assert a.key_id != b.key_id


# ---- keyrings, key sources, pinning ------------------------------------------------------------------

from masking.keys import (  # noqa: E402
    CURRENT_KEY_ID_ENV,
    EnvKeySource,
    FileKeySource,
    FixedKeySource,
    Keyring,
    default_key_source,
    load_keyring,
    parse_master_keys,
    resolve_master_key,
)

OTHER_HEX = "c4" * 32
THIRD_HEX = "0e" * 32


def _id(hex_key: str) -> str:
    return expected_key_id(bytes.fromhex(hex_key))


def test_file_with_several_keys_and_comments(tmp_path: Path) -> None:
    path = write_key_file(tmp_path, f"# rotated 2027-01\n{SECRET_HEX}\n\n{OTHER_HEX}  # new\n")
    keyring = load_keyring({MASTER_KEY_FILE_ENV: str(path), CURRENT_KEY_ID_ENV: _id(OTHER_HEX)})
    assert keyring.ids == [_id(SECRET_HEX), _id(OTHER_HEX)]
    assert keyring.current.secret == bytes.fromhex(OTHER_HEX)
    assert keyring.select(_id(SECRET_HEX)).secret == bytes.fromhex(SECRET_HEX)  # a contract pinned to the old key


def test_several_files_joined_by_path_separator(tmp_path: Path) -> None:
    old = write_key_file(tmp_path, SECRET_HEX, name="old.key")
    new = write_key_file(tmp_path, OTHER_HEX, name="new.key")
    source = default_key_source({MASTER_KEY_FILE_ENV: f"{old}{os.pathsep}{new}"})
    assert isinstance(source, FileKeySource)
    keyring = source.load()
    assert set(keyring.ids) == {_id(SECRET_HEX), _id(OTHER_HEX)}
    assert str(old) in keyring.source and str(new) in keyring.source


def test_several_keys_without_a_current_one_refuse_unpinned_runs(tmp_path: Path) -> None:
    path = write_key_file(tmp_path, f"{SECRET_HEX}\n{OTHER_HEX}\n")
    keyring = load_keyring({MASTER_KEY_FILE_ENV: str(path)})
    with pytest.raises(KeyMaterialError) as info:
        keyring.select(None)
    text = str(info.value)
    assert CURRENT_KEY_ID_ENV in text and str(path) in text and _id(SECRET_HEX) in text
    _assert_no_secret(info.value)
    _assert_no_secret(info.value, OTHER_HEX)
    assert keyring.select(_id(OTHER_HEX)).secret == bytes.fromhex(OTHER_HEX)


def test_pinned_key_missing_names_the_source_and_the_ids(tmp_path: Path) -> None:
    path = write_key_file(tmp_path, SECRET_HEX)
    with pytest.raises(KeyMaterialError) as info:
        resolve_master_key(FileKeySource((path,), {}), _id(OTHER_HEX))
    text = str(info.value)
    assert _id(OTHER_HEX) in text and _id(SECRET_HEX) in text and str(path) in text and "key_id" in text
    _assert_no_secret(info.value)


def test_current_key_id_must_be_in_the_ring_and_well_formed() -> None:
    with pytest.raises(KeyMaterialError, match="not among the master keys"):
        EnvKeySource({MASTER_KEY_ENV: SECRET_HEX, CURRENT_KEY_ID_ENV: _id(OTHER_HEX)}).load()
    with pytest.raises(KeyMaterialError, match="not a key id"):
        EnvKeySource({MASTER_KEY_ENV: SECRET_HEX, CURRENT_KEY_ID_ENV: "yesterday's"}).load()


def test_environment_with_several_keys_names_the_bad_one_by_position_only() -> None:
    with pytest.raises(KeyMaterialError) as info:
        EnvKeySource({MASTER_KEY_ENV: f"{SECRET_HEX},{OTHER_HEX[:-2]}zz"}).load()
    text = str(info.value)
    assert "key 2 of 2" in text and MASTER_KEY_ENV in text and "malformed" in text
    _assert_no_secret(info.value)
    _assert_no_secret(info.value, OTHER_HEX)


@pytest.mark.parametrize(("env", "fragment"), [
    ({}, "no master key configured"),
    ({MASTER_KEY_ENV: "   "}, "environment variable CONTRACT_EXTRACTS_MASTER_KEY holds no master key"),
    ({MASTER_KEY_ENV: "# only a comment"}, "holds no master key"),
])
def test_missing_keys_are_clear(env: dict, fragment: str) -> None:
    with pytest.raises(KeyMaterialError, match=fragment):
        resolve_master_key(default_key_source(env))


def test_wrong_permissions_name_the_file_not_the_key(tmp_path: Path) -> None:
    good = write_key_file(tmp_path, SECRET_HEX, name="good.key")
    loose = write_key_file(tmp_path, OTHER_HEX, mode=0o640, name="loose.key")
    with pytest.raises(KeyMaterialError) as info:
        FileKeySource((good, loose), {}).load()
    assert str(loose) in str(info.value) and "chmod 600" in str(info.value)
    _assert_no_secret(info.value, OTHER_HEX)


def test_duplicate_keys_count_once() -> None:
    assert len(parse_master_keys(f"{SECRET_HEX} {SECRET_HEX}", "test")) == 1


def test_fixed_source_and_keyring_repr_hide_keys() -> None:
    keyring = FixedKeySource((MasterKey(bytes.fromhex(SECRET_HEX), "test"),)).load()
    assert isinstance(keyring, Keyring)
    assert SECRET_HEX not in repr(keyring) and SECRET_HEX[:16] not in repr(keyring)


def test_linkage_delivery_keeps_the_contract_sample_key() -> None:
    master = MasterKey(secret=MASTER, source="test")
    delivery = "20261125T020000Z-1a2b3c4d"
    per_contract = ContractKeys.for_delivery(master, "C-DEMO-001", "contract", delivery)
    assert per_contract == ContractKeys.derive(master, "C-DEMO-001", None)
    per_delivery = ContractKeys.for_delivery(master, "C-DEMO-001", "delivery", delivery)
    assert per_delivery.pseudonym == expected_contract_key(MASTER, "pseudonym", "C-DEMO-001", delivery)
    assert per_delivery.dateshift == expected_contract_key(MASTER, "dateshift", "C-DEMO-001", delivery)
    # The same people every delivery (minimum data), though their pseudonyms are new each time.
    assert per_delivery.sample == expected_contract_key(MASTER, "sample", "C-DEMO-001")
