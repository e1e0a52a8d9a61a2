"""Writes MCAP files with the official Python `mcap` package (an independent writer) and
describes them with its reader, for indexer/tests/indexer/mcap_reference.rs.

    python3 mcap_reference.py DIR

Writes DIR/<case>.mcap for each case and prints one JSON object: per case, the messages per
topic, the first and last log time and the message count, as the Python reader sees them.
"""

import json
import os
import sys

from mcap.reader import make_reader
from mcap.writer import CompressionType, IndexType, Writer

TOPICS = ["/pose", "/can/vehicle_state", "/camera/front/info"]
T0 = 1_761_991_200_000_000_000  # 2025-11-01T10:00:00Z

CASES = {
    # Chunked, with chunk and message indexes, no statistics record.
    "no-statistics": dict(use_statistics=False),
    # The same with small zstd chunks: many chunk indexes and message indexes.
    "no-statistics-small-chunks": dict(use_statistics=False, chunk_size=2048),
    # Uncompressed chunks, channels not repeated in the summary.
    "no-statistics-uncompressed": dict(
        use_statistics=False, compression=CompressionType.NONE, repeat_channels=True
    ),
    # Chunk indexes but no message indexes: counts cannot be read.
    "no-statistics-no-message-index": dict(
        use_statistics=False, index_types=IndexType.CHUNK
    ),
    # Not chunked: no chunk indexes either.
    "no-statistics-unchunked": dict(use_statistics=False, use_chunking=False),
}


def write(path, options):
    with open(path, "wb") as f:
        writer = Writer(f, **options)
        writer.start(profile="", library="milepost-test")
        schema = writer.register_schema(name="Sample", encoding="jsonschema", data=b"{}")
        channels = {
            topic: writer.register_channel(topic=topic, message_encoding="json", schema_id=schema)
            for topic in TOPICS
        }
        for i in range(2500):
            topic = TOPICS[(i * 7 + i // 11) % len(TOPICS)]
            t = T0 + i * 4_000_000 + (i % 5) * 1_000
            writer.add_message(
                channel_id=channels[topic],
                log_time=t,
                publish_time=t,
                data=json.dumps({"i": i, "pad": "x" * (i % 40)}).encode(),
                sequence=i,
            )
        writer.finish()


def describe(path):
    counts, first, last, total = {}, None, None, 0
    with open(path, "rb") as f:
        for _, channel, message in make_reader(f).iter_messages():
            counts[channel.topic] = counts.get(channel.topic, 0) + 1
            first = message.log_time if first is None else min(first, message.log_time)
            last = message.log_time if last is None else max(last, message.log_time)
            total += 1
    return {"topics": counts, "start": first, "end": last, "messages": total}


def main(out_dir):
    report = {}
    for name, options in CASES.items():
        path = os.path.join(out_dir, f"{name}.mcap")
        write(path, options)
        report[name] = describe(path)
    print(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1])
