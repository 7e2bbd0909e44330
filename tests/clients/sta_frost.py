"""Reads a SensorThings service with frost-sta-client, the reference implementation's Python
client, as a researcher's notebook would, and prints what it read as JSON on standard output:
the names of the Things and Datastreams, and every Observation of one Datastream (found by its
sensor key), oldest first, each as [phenomenonTime, result].

Given a device's API key, a time and a value, it first creates an Observation of that Datastream
as a device would, with the client's own Basic authentication (the key as the password), and
prints the id the service gave it as "created".

Usage: python3 sta_frost.py <service url> <sensor key> [<device key> <time> <value>]
"""

import json
import sys

import frost_sta_client as fsc


def main():
    url, sensor = sys.argv[1], sys.argv[2]
    service = fsc.SensorThingsService(url)
    things = sorted(t.name for t in service.things().query().list())
    datastreams = sorted(d.name for d in service.datastreams().query().list())
    found = list(
        service.datastreams()
        .query()
        .filter("properties/key eq '{}'".format(sensor.replace("'", "''")))
        .list()
    )
    if len(found) != 1:
        raise SystemExit("expected one datastream for {}, found {}".format(sensor, len(found)))
    datastream = found[0]
    created = None
    if len(sys.argv) == 6:
        key, time, value = sys.argv[3], sys.argv[4], float(sys.argv[5])
        device = fsc.SensorThingsService(
            url, auth_handler=fsc.service.auth_handler.AuthHandler(username="device", password=key)
        )
        observation = fsc.Observation(phenomenon_time=time, result=value, datastream=datastream)
        device.create(observation)
        created = observation.id
    observations = (
        datastream.get_observations()
        .query()
        .orderby("phenomenonTime", "asc")
        .top(500)
        .list()
    )
    series = [[o.phenomenon_time, o.result] for o in observations]
    unit = datastream.unit_of_measurement
    json.dump(
        {
            "things": things,
            "datastreams": datastreams,
            "unit": unit.symbol if unit is not None else None,
            "observations": series,
            "created": created,
        },
        sys.stdout,
    )


if __name__ == "__main__":
    main()
