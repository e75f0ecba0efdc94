"""Drives a running carevault with the fhirpy client library: create, read, search, update, delete.

Usage: fhirpy_client.py BASE_URL TOKEN CA_FILE. Exits non-zero with a message on the first mismatch.
"""
import sys

from fhirpy import SyncFHIRClient
from fhirpy.base.exceptions import ResourceNotFound


def main() -> None:
    base, token, ca = sys.argv[1:4]
    client = SyncFHIRClient(base, authorization=f"Bearer {token}", requests_config={"verify": ca})

    patient = client.resource("Patient", name=[{"family": "Fhirpy", "given": ["Py"]}], gender="female", birthDate="1985-07-14")
    patient.save()
    assert patient.id, "server assigned no id"
    assert patient["meta"]["versionId"] == "1", patient["meta"]

    fetched = client.reference("Patient", patient.id).to_resource()
    assert fetched["name"][0]["family"] == "Fhirpy", fetched

    found = client.resources("Patient").search(family="fhirpy").fetch_all()
    assert [p.id for p in found] == [patient.id], found

    fetched["gender"] = "other"
    fetched.save()
    again = client.reference("Patient", patient.id).to_resource()
    assert again["gender"] == "other" and again["meta"]["versionId"] == "2", again

    obs = client.resource(
        "Observation",
        status="final",
        code={"coding": [{"system": "http://loinc.org", "code": "29463-7"}]},
        subject=patient.to_reference(),
        valueQuantity={"value": 61.5, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"},
    )
    obs.save()
    by_patient = client.resources("Observation").search(patient=patient.id, code="http://loinc.org|29463-7").fetch()
    assert [o.id for o in by_patient] == [obs.id], by_patient
    assert client.resources("Observation").search(patient=patient.id).count() == 1

    obs.delete()
    try:
        client.reference("Observation", obs.id).to_resource()
    except ResourceNotFound:
        pass
    else:
        raise AssertionError("deleted Observation still readable")
    print("fhirpy: create/read/search/update/delete agree")


if __name__ == "__main__":
    main()
