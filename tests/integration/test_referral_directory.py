"""The service directory through the API: anyone reads; only the jurisdiction's coordinator writes."""

from tests.support.referral_support import auth, ref, screened  # noqa: F401 - ref and auth are fixtures

NEW_SERVICE = {"id": "MX-PSI-2", "agency_id": "MX-PSI", "area": "MX", "name": "Atención psicosocial móvil",
               "need_codes": ["SGBV_SURVIVOR", "CRIME_VICTIM"], "age_min": 12, "age_max": 120,
               "languages": ["es", "mam"], "opening_hours": "Mo-Sa 09:00-18:00", "capacity": 3}


async def test_any_agency_reads_the_seeded_directory(ref, auth):
    r = await ref.client.get("/agencies", headers=auth("GT-IGM"), params={"jurisdiction": "MX"})
    assert r.status_code == 200 and "MX-COORD" in [a["id"] for a in r.json()]
    r = await ref.client.get("/services", headers=auth("GT-IGM"),
                             params={"jurisdiction": "PA", "need_code": "UNACCOMPANIED_CHILD"})
    [service] = r.json()
    assert service["id"] == "PA-SENNIAF-1" and service["agency_type"] == "child_protection"
    assert service["age_max"] == 17 and service["opening_hours"]
    # GT-IGM, a migration authority, gets no load figure (the information barrier); a protection agency does.
    assert service["open_referrals"] is None
    r = await ref.client.get(f"/services/{service['id']}", headers=auth("MX-COMAR"))
    assert r.status_code == 200 and r.json()["open_referrals"] == 0
    assert (await ref.client.get("/services/NOPE", headers=auth("GT-IGM"))).status_code == 404
    assert (await ref.client.get("/agencies/CR-PANI", headers=auth("GT-IGM"))).json()["type"] == "child_protection"


async def test_only_the_coordinator_of_the_jurisdiction_writes(ref, auth):
    for agency in ("MX-COMAR", "GT-COORD", "MX-INM"):
        r = await ref.client.post("/services", headers=auth(agency), json=NEW_SERVICE)
        assert r.status_code == 403 and r.headers["content-type"] == "application/problem+json", agency
        assert (await ref.client.put("/services/MX-PSI-1", headers=auth(agency),
                                     json={k: v for k, v in NEW_SERVICE.items()
                                           if k not in ("id", "agency_id", "area")})).status_code == 403
        assert (await ref.client.delete("/services/MX-PSI-1", headers=auth(agency))).status_code == 403
        assert (await ref.client.patch("/agencies/MX-PSI", headers=auth(agency), json={"name": "x"})).status_code == 403
    coord = auth("MX-COORD")
    r = await ref.client.post("/services", headers=coord | {"Idempotency-Key": "svc-1"}, json=NEW_SERVICE)
    assert r.status_code == 201, r.text
    again = await ref.client.post("/services", headers=coord | {"Idempotency-Key": "svc-1"}, json=NEW_SERVICE)
    assert again.status_code == 201 and again.json() == r.json()
    assert (await ref.client.post("/services", headers=coord, json=NEW_SERVICE)).status_code == 409
    update = {k: v for k, v in NEW_SERVICE.items() if k not in ("id", "agency_id", "area")} | {"active": False}
    r = await ref.client.put("/services/MX-PSI-2", headers=coord, json=update)
    assert r.status_code == 200 and r.json()["active"] is False
    assert (await ref.client.delete("/services/MX-PSI-2", headers=coord)).status_code == 204
    assert (await ref.client.get("/services/MX-PSI-2", headers=coord)).status_code == 404


async def test_directory_input_is_validated(ref, auth):
    coord = auth("MX-COORD")
    cases = [
        ({"need_codes": ["HUNGRY"]}, "body/need_codes/0"),
        ({"age_min": 18, "age_max": 12}, "body"),
        ({"capacity": -1}, "body/capacity"),
        ({"languages": ["Spanish"]}, "body/languages/0"),
    ]
    for change, path in cases:
        r = await ref.client.post("/services", headers=coord, json=NEW_SERVICE | change)
        assert r.status_code == 422, r.text
        assert any(e["path"] == path for e in r.json()["errors"]), r.json()
    r = await ref.client.post("/services", headers=coord, json=NEW_SERVICE | {"area": "GT"})
    assert r.status_code == 422 and r.json()["errors"][0]["path"] == "body/area"
    r = await ref.client.post("/services", headers=coord, json=NEW_SERVICE | {"agency_id": "MX-NOPE"})
    assert r.status_code == 422


async def test_services_in_use_and_agencies_with_services_cannot_be_deleted(ref, auth):
    await ref.deliver(screened("UNACCOMPANIED_CHILD", age_band="12-17"))
    coord = auth("MX-COORD")
    r = await ref.client.delete("/services/MX-PFPNNA-1", headers=coord)
    assert r.status_code == 409 and "active=false" in r.json()["detail"]
    assert (await ref.client.get("/services/MX-PFPNNA-1", headers=coord)).json()["open_referrals"] == 1
    assert (await ref.client.delete("/agencies/MX-PFPNNA", headers=coord)).status_code == 409
    r = await ref.client.post("/agencies", headers=coord, json={"id": "MX-NEW", "name": "Nueva", "type": "health",
                                                                "jurisdiction": "MX"})
    assert r.status_code == 201
    assert (await ref.client.post("/agencies", headers=coord, json={
        "id": "GT-NEW", "name": "x", "type": "health", "jurisdiction": "GT"})).status_code == 403
    assert (await ref.client.patch("/agencies/MX-NEW", headers=coord, json={"name": "Renombrada"})).json()["name"] == \
        "Renombrada"
    assert (await ref.client.delete("/agencies/MX-NEW", headers=coord)).status_code == 204


async def test_an_inactive_or_full_service_is_not_routed_to(ref, auth):
    coord = auth("MX-COORD")
    current = (await ref.client.get("/services/MX-PFPNNA-1", headers=coord)).json()
    fields = {k: current[k] for k in ("name", "need_codes", "age_min", "age_max", "languages", "opening_hours",
                                      "capacity", "active")}
    await ref.client.put("/services/MX-PFPNNA-1", headers=coord, json=fields | {"capacity": 1})
    await ref.deliver(screened("UNACCOMPANIED_CHILD", age_band="12-17"))
    await ref.deliver(screened("UNACCOMPANIED_CHILD", age_band="12-17"))
    first, second = await ref.referrals(coord, direction="jurisdiction")
    assert first["to_service_id"] == "MX-PFPNNA-1"
    assert second["to_agency_id"] is None and second["escalation_reason"] == "NO_ELIGIBLE_AGENCY"
    assert [e["code"] for e in second["routing"]["excluded"]] == ["NO_CAPACITY"]
    await ref.client.put("/services/MX-PFPNNA-1", headers=coord, json=fields | {"active": False})
    await ref.deliver(screened("SEPARATED_CHILD", age_band="0-11"))
    queued = [r for r in await ref.referrals(coord, direction="queue") if r["need_code"] == "SEPARATED_CHILD"]
    assert [e["code"] for e in queued[0]["routing"]["excluded"]] == ["INACTIVE"]
