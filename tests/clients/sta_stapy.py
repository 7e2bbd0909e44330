"""Reads a SensorThings service with stapy, a second, independent Python client, and prints what
it read as JSON on standard output: the names of the Datastreams, and every Observation of one
Datastream (found by its sensor key), oldest first, each as [phenomenonTime, result].

stapy keeps its settings in .stapy.ini in the working directory: run this from a directory of
its own.

Usage: python3 sta_stapy.py <service url> <sensor key>
"""

import json
import sys

import stapy
from stapy import Entity, Query


def main():
    url, sensor = sys.argv[1], sys.argv[2]
    stapy.set_sta_url(url)
    names = Query(Entity.Datastream).select("name").get_data_sets()
    found = (
        Query(Entity.Datastream)
        .filter("properties/key eq '{}'".format(sensor.replace("'", "''")))
        .select("@iot.id")
        .get_data_sets()
    )
    if isinstance(found, list):
        raise SystemExit("expected one datastream for {}, found {}".format(sensor, found))
    times, results = (
        Query(Entity.Datastream)
        .entity_id(found)
        .sub_entity(Entity.Observation)
        .select("phenomenonTime", "result")
        .order("phenomenonTime")
        .limit(500)
        .get_data_sets()
    )
    json.dump(
        {
            "datastreams": sorted(names),
            "observations": [[t, r] for t, r in zip(times, results)],
        },
        sys.stdout,
    )


if __name__ == "__main__":
    main()
