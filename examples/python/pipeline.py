#!/usr/bin/env python3
"""What a CI simulation pipeline does with Milepost, with a maintained GraphQL client (gql).

1. Connects over HTTP and fetches the schema with the standard introspection query, so gql
   checks every document below against the server's schema before sending it.
2. Finds its input dataset by name, the latest version unless one is given
   (--dataset NAME[@VERSION]).
3. Reserves it and follows the reservation over the WebSocket subscription until READY
   (exit status 1, with the server's error, if it FAILED or ended otherwise).
4. Runs (here: only reads the materialized directory's size) and registers the run: its
   inputs are the catalog entities it used (--input ID, repeated: drives, scenarios, runs),
   and a tag names the dataset version it read.

    pip install -r examples/python/requirements.txt
    python3 examples/python/pipeline.py --server http://127.0.0.1:8080 --token "$TOKEN" \\
        --dataset nightly-inputs --input drv-0001 --run-id sim-2026-12-06-001

The token needs the PIPELINE role (reserving needs ENGINEER and up, registering a run
PIPELINE or ADMIN). Prints one JSON line per step on stdout.
"""

import argparse
import asyncio
import datetime
import json
import os
import sys

from gql import Client, GraphQLRequest, gql
from gql.transport.aiohttp import AIOHTTPTransport
from gql.transport.websockets import WebsocketsTransport

DATASET_BY_NAME = gql(
    """
    query DatasetByName($name: String!, $version: Int) {
      dataset(name: $name, version: $version) { id name version objectCount totalBytes cachedBytes }
    }
    """
)

RESERVE = gql(
    """
    mutation Reserve($input: ReserveDatasetInput!) {
      reserveDataset(input: $input) { id state bytesTotal }
    }
    """
)

PROGRESS = gql(
    """
    subscription Progress($id: ID!) {
      reservationProgress(id: $id) {
        id state objectsDone objectsTotal bytesDone bytesTotal bytesFromUpstream localPath error
      }
    }
    """
)

RESERVATION = gql(
    """
    query Reservation($id: ID!) {
      reservation(id: $id) { id state bytesDone bytesTotal bytesFromUpstream localPath error }
    }
    """
)

REGISTER_RUN = gql(
    """
    mutation RegisterRun($input: RegisterRunInput!) {
      registerRun(input: $input) { id status inputs { __typename ... on Drive { id } ... on Scenario { id } ... on Run { id } } }
    }
    """
)

FINAL_STATES = {"READY", "FAILED", "RELEASED", "EXPIRED"}


def step(name, **fields):
    print(json.dumps({"step": name, **fields}), flush=True)


def now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat()


async def find_dataset(session, args):
    name, _, version = args.dataset.partition("@")
    request = GraphQLRequest(
        DATASET_BY_NAME,
        variable_values={"name": name, "version": int(version) if version else None},
    )
    dataset = (await session.execute(request))["dataset"]
    if dataset is None:
        raise SystemExit(f"no dataset {args.dataset}")
    return dataset


async def wait_ready(args, schema, reservation_id):
    """Follows the reservation on the subscription until it ends; returns the last row."""
    ws_url = args.server.replace("http://", "ws://", 1).replace("https://", "wss://", 1)
    transport = WebsocketsTransport(
        url=f"{ws_url}/graphql/ws",
        # Browsers cannot set headers on a WebSocket; the server takes the token from
        # connection_init too, which every client can send.
        init_payload={"Authorization": f"Bearer {args.token}"},
    )
    last = None
    async with Client(transport=transport, schema=schema) as session:
        request = GraphQLRequest(PROGRESS, variable_values={"id": reservation_id})
        async for update in session.subscribe(request):
            last = update["reservationProgress"]
            step(
                "progress",
                state=last["state"],
                bytes_done=last["bytesDone"],
                bytes_total=last["bytesTotal"],
            )
            if last["state"] in FINAL_STATES:
                break
    return last


async def main(args):
    headers = {"Authorization": f"Bearer {args.token}"}
    transport = AIOHTTPTransport(url=f"{args.server}/graphql", headers=headers)
    async with Client(
        transport=transport, fetch_schema_from_transport=True, execute_timeout=60
    ) as session:
        schema = session.client.schema
        step("schema", types=len(schema.type_map))

        dataset = await find_dataset(session, args)
        step("found", dataset=dataset["name"], version=dataset["version"],
             objects=dataset["objectCount"], bytes=dataset["totalBytes"])

        reserve = GraphQLRequest(RESERVE, variable_values={"input": {
            "dataset": dataset["name"],
            "version": dataset["version"],
            "ttlSeconds": args.ttl,
            "purpose": f"run {args.run_id}",
        }})
        reservation = (await session.execute(reserve))["reserveDataset"]
        step("reserved", reservation=reservation["id"], state=reservation["state"])

        last = await wait_ready(args, schema, reservation["id"])
        if last is None or last["state"] not in FINAL_STATES:
            # The subscription ended without a final state: ask once.
            request = GraphQLRequest(RESERVATION, variable_values={"id": reservation["id"]})
            last = (await session.execute(request))["reservation"]
        if last["state"] != "READY":
            step("not-ready", state=last["state"], error=last.get("error"))
            return 1
        step("ready", path=last["localPath"], from_upstream=last["bytesFromUpstream"])

        started = now()
        local_bytes = 0
        if last["localPath"] and os.path.isdir(last["localPath"]):
            for root, _, files in os.walk(last["localPath"]):
                local_bytes += sum(os.path.getsize(os.path.join(root, f)) for f in files)
        register = GraphQLRequest(REGISTER_RUN, variable_values={"input": {
            "id": args.run_id,
            "kind": "SIMULATION",
            "pipeline": args.pipeline,
            "status": "PASSED",
            "startedAt": started,
            "finishedAt": now(),
            "inputs": args.input,
            "tags": [f"dataset:{dataset['name']}@{dataset['version']}"],
            "metrics": {"input_bytes": local_bytes, "reservation": reservation["id"]},
        }})
        run = (await session.execute(register))["registerRun"]
        step("registered", run=run["id"], status=run["status"], inputs=run["inputs"])
    return 0


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", default=os.environ.get("MILEPOST_SERVER", "http://127.0.0.1:8080"))
    parser.add_argument("--token", default=os.environ.get("MILEPOST_TOKEN"))
    parser.add_argument("--dataset", required=True, help="NAME or NAME@VERSION")
    parser.add_argument("--input", action="append", default=[],
                        help="id of a drive, scenario or run the run used (repeatable)")
    parser.add_argument("--run-id", required=True)
    parser.add_argument("--pipeline", default="example-simulation")
    parser.add_argument("--ttl", type=int, default=3600, help="reservation seconds")
    args = parser.parse_args(argv)
    if not args.token:
        parser.error("--token or MILEPOST_TOKEN is required")
    args.server = args.server.rstrip("/")
    return args


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args(sys.argv[1:]))))
