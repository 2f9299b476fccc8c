"""Request rates (enlace_platform.limits): which requests share a budget, and what the in-memory storage keeps."""

import time

import pytest

from enlace_platform.limits import RequestRates


def test_an_ipv6_host_counts_by_its_64_and_an_ipv4_mapped_one_as_ipv4():
    rates = RequestRates("", "2/minute")
    assert rates.charge_address("2001:db8:1:2::1") is None
    assert rates.charge_address("2001:db8:1:2:ffff::9") is None
    assert rates.charge_address("2001:db8:1:2::77") is not None, "a new address in the same /64"
    assert rates.charge_address("2001:db8:1:3::1") is None, "another /64"
    assert rates.charge_address("::ffff:192.0.2.7") is None
    assert rates.charge_address("192.0.2.7") is None
    assert rates.charge_address("192.0.2.7") is not None


def test_agencies_and_addresses_have_budgets_of_their_own_and_an_empty_limit_is_none():
    rates = RequestRates("1/minute", "")
    assert rates.charge_agency("MX-INM") is None
    assert 1 <= rates.charge_agency("MX-INM") <= 60
    assert rates.charge_agency("MX-COMAR") is None
    assert [rates.charge_address("192.0.2.1") for _ in range(100)] == [None] * 100


def test_keys_idle_past_their_longest_window_are_dropped_from_the_storage():
    rates = RequestRates("5/second", "5/second;10/2 seconds")
    rates.SWEEP_INTERVAL_S = 0
    for address in ("192.0.2.1", "192.0.2.2"):
        rates.charge_address(address)
    rates.charge_agency("MX-INM")
    time.sleep(2.1)  # past the longest window: every hit of those keys has expired
    rates.charge_address("192.0.2.3")
    kept = set(rates._limiter.storage.events)
    assert not any("192.0.2.1" in key or "192.0.2.2" in key or "MX-INM" in key for key in kept), kept
    assert any("192.0.2.3" in key for key in kept)


def test_a_malformed_limit_fails_at_start():
    with pytest.raises(ValueError):
        RequestRates("many per second", "")
