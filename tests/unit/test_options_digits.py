"""Numbers a user types are ASCII digits, whatever script `str.isdigit()` and `int()` would accept (issue 12).

"²" is a digit to `isdigit()` but not to `int()` (it was an internal error), "١٢" (Arabic-Indic) is 12 to both
(it was taken as VNI 12), and 5000 ASCII digits are too many for `int()` (an internal error too).  Each must be
refused with the message that names the option or setting, from the network options and from the settings.
"""

from __future__ import annotations

import pytest

from vxlanpy.config import Settings
from vxlanpy.digits import ascii_int
from vxlanpy.errors import InvalidOption
from vxlanpy.ipam import parse_auto_pools
from vxlanpy.metrics import parse_metrics_addr
from vxlanpy.store.etcd import EtcdConfig

from .conftest import Harness

NOT_ASCII_NUMBERS = [
    "²",  # SUPERSCRIPT TWO: isdigit() but int() raises
    "١٢",  # ARABIC-INDIC 12: int() reads 12
    "４２",  # FULLWIDTH 42
    "1" * 5000,  # more digits than int() converts
    "1_000",  # int() accepts underscores
    " 42",  # int() accepts spaces; options are stripped, settings are not
    "+42",
    "",
]


@pytest.mark.parametrize("raw", ["²", "١٢", "４２", "𝟒𝟐", "1" * 5000, "1_0", "+1", "-1", "1.0", " 1", "1 ", ""])
def test_ascii_int_refuses_everything_but_ascii_digits(raw: str) -> None:
    assert ascii_int(raw, 0, 16777215) is None


def test_ascii_int_reads_ascii_digits_within_bounds() -> None:
    assert ascii_int("42", 1, 100) == 42
    assert ascii_int("0" * 5000 + "7", 1, 100) == 7
    assert ascii_int("101", 1, 100) is None and ascii_int("0", 1, 100) is None


@pytest.mark.parametrize("raw", ["²", "١٢", "４２", "1" * 5000, "1_000", "+42"])
@pytest.mark.parametrize(
    ("option", "phrase"),
    [
        ("vni", "is not valid; use a whole number from 1 to 16777215"),
        ("dstport", "is not valid; use a whole number from 1 to 65535"),
        ("ttl", "is not valid; use a whole number from 1 to 255"),
        ("mtu", "is not valid; use a whole number from 576 to 1450"),
        ("com.docker.network.driver.mtu", "is not valid; use a whole number from 576 to 1450"),
    ],
)
def test_unicode_digits_in_options_are_refused(harness: Harness, option: str, phrase: str, raw: str) -> None:
    status, body = harness.create_network(generic={option: raw})
    assert status == 400, body
    assert body["Err"].startswith(f"{option}=") and phrase in body["Err"], body
    assert harness.store.list_networks() == [] and harness.links.networks == {}


def test_unicode_digits_are_refused_by_gw_alloc_check_too(harness: Harness) -> None:
    status, body = harness.call(
        "NetworkDriver.GwAllocCheck", {"Options": {"com.docker.network.generic": {"vni": "١٢"}}}
    )
    assert status == 400 and "vni='١٢' is not valid" in body["Err"], body


@pytest.mark.parametrize("raw", NOT_ASCII_NUMBERS)
@pytest.mark.parametrize("name", ["VXLANPY_THREADS", "VXLANPY_LEASE_TTL", "VXLANPY_ETCD_TIMEOUT"])
def test_unicode_digits_in_number_settings_are_refused(name: str, raw: str) -> None:
    with pytest.raises(InvalidOption, match=f"^{name}=.* is not valid; use a whole number of at least 1"):
        Settings.from_env({name: raw})


@pytest.mark.parametrize("raw", ["١٢-٢٠", "²-9", "1-²", "12-" + "9" * 5000, "1-١٠", "+1-9", "1-9 "])
def test_unicode_digits_in_vni_range_are_refused(raw: str) -> None:
    with pytest.raises(InvalidOption, match="^VXLANPY_VNI_RANGE=.* is not valid; use LOW-HIGH within 1-16777215"):
        Settings.from_env({"VXLANPY_VNI_RANGE": raw})


def test_ascii_settings_still_work() -> None:
    settings = Settings.from_env(
        {"VXLANPY_THREADS": "16", "VXLANPY_VNI_RANGE": "100-200", "VXLANPY_LEASE_TTL": "5", "VXLANPY_ETCD_TIMEOUT": "2"}
    )
    assert (settings.threads, settings.vni_range, settings.lease_ttl, settings.etcd_timeout) == (16, (100, 200), 5, 2.0)


@pytest.mark.parametrize("port", ["٩٤٧٨", "²", "9" * 5000])
def test_unicode_digits_in_the_metrics_port_are_refused(port: str) -> None:
    with pytest.raises(InvalidOption, match="^VXLANPY_METRICS_ADDR=.* is not valid: use HOST:PORT"):
        parse_metrics_addr(f"127.0.0.1:{port}")


@pytest.mark.parametrize("port", ["٢٣٧٩", "²", "9" * 5000])
def test_unicode_digits_in_the_etcd_port_are_refused(port: str) -> None:
    with pytest.raises(InvalidOption, match=r"^VXLANPY_STORE=.* is not valid; use etcd://HOST:PORT"):
        EtcdConfig.from_url(f"etcd://127.0.0.1:{port}")


@pytest.mark.parametrize("length", ["٢٤", "²", "2" * 5000])
def test_unicode_digits_in_the_ipam_pool_size_are_refused(length: str) -> None:
    with pytest.raises(InvalidOption, match="^VXLANPY_IPAM_POOL4=.* is not valid: it must end with :PREFIXLEN"):
        parse_auto_pools(f"10.200.0.0/16:{length}", 4)
